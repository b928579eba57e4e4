"""`AsyncServer`: the data center's side of the protocol — a thin asyncio shell.

It listens, admits connections (a global cap, a per-peer cap, and eviction of the
oldest connection that has not yet authenticated when full, so silent sockets cannot
lock token holders out), runs TLS handshakes under a deadline, and dispatches each
request a `ServerConversation` reports to the callback. Whatever goes wrong — bad
frames, bad auth, oversize input, a callback that raises — gets an error reply where the
stream still allows one, a log line, and the server goes on serving.

Sync callbacks run in daemon worker threads, so a minute of training never blocks the
event loop nor, after `drain_timeout`, the process's exit. Calls that change state are
serialized. Signals, port and token files belong to the program that runs the server
(see `datacenter/server.py`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import ssl as ssl_module
import time
from typing import Any, Callable, Collection

from .auth import DEFAULT_MAX_SKEW_SECONDS, ReplayGuard, normalize_token
from .blocks import MESSAGE_TYPES, MessageType, RequestBlock, ResponseBlock
from .codec import decode_request, decodes_quickly
from .connection import ConversationProtocol, start_eagerly
from .conversation import BodyBudget, ConnectionClosed, Event, RequestReceived, ServerConversation
from .deadlines import DeadlineQueue
from .errors import PeerError, ProtocolError, UsageError, describe
from .loop import loop_name
from .limits import (
    DEFAULT_AUTH_TIMEOUT, DEFAULT_DECODE_INLINE_BYTES, DEFAULT_DECODE_INLINE_CELLS, DEFAULT_FRAME_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Limits,
)
from .workers import DaemonWorkers

log = logging.getLogger("protocol.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_response(result: Any) -> ResponseBlock:
    """The callback's answer: a ResponseBlock or, as in the original, a `(flag, checkpoint)` tuple."""
    if isinstance(result, ResponseBlock):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        flag, checkpoint = result
        return ResponseBlock(bool(flag), None if checkpoint is None else str(checkpoint))
    raise TypeError(f"callback returned {type(result).__name__}; expected a ResponseBlock or (flag, checkpoint)")


def _accepts_metadata(callback: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "metadata" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value!r}")


class AsyncServer:
    """Serve `callback(message_type, query_dataframe, random_dataframe[, metadata])` over the protocol.

    The callback may be sync (run in a worker thread) or async; `metadata` (if it takes
    it) is `{"request_id", "edge_id", "round", **extra}`; it returns a `ResponseBlock` or
    a `(retraining_flag, checkpoint)` tuple.
    """

    def __init__(
        self,
        callback: Callable[..., Any],
        port: int = 9999,
        *,
        host: str = "127.0.0.1",
        token: str | bytes | None = None,
        ssl: ssl_module.SSLContext | None = None,
        limits: Limits | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        tls_handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_peer: int | None = None,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        drain_timeout: float = 30.0,
        workers: int = 4,
        message_types: Collection[str] = MESSAGE_TYPES,
        concurrent_types: Collection[str] = (MessageType.HANDSHAKE.value,),
        max_clock_skew: float = DEFAULT_MAX_SKEW_SECONDS,
    ) -> None:
        if not callable(callback):
            raise UsageError("callback must be callable")
        if not is_loopback(host) and token is None and ssl is None:
            raise UsageError(f"refusing to listen on non-loopback address {host!r} without a token or TLS")
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise UsageError("ssl must be an ssl.SSLContext")
        _positive(idle_timeout=idle_timeout, frame_timeout=frame_timeout, auth_timeout=auth_timeout,
                  write_timeout=write_timeout, tls_handshake_timeout=tls_handshake_timeout, drain_timeout=drain_timeout,
                  max_buffered_bytes=max_buffered_bytes)
        # One host's share of the connections. Off (= max_connections) by default: on loopback,
        # or behind a NAT, every edge is the same peer; set it when edges come from many hosts.
        max_connections_per_peer = max_connections if max_connections_per_peer is None else max_connections_per_peer
        if max_connections < 1 or max_connections_per_peer < 1 or workers < 1:
            raise UsageError("max_connections, max_connections_per_peer and workers must be at least 1")
        self.callback = callback
        self.host, self.port = host, port
        self.token = normalize_token(token)
        self.ssl = ssl
        self.limits = limits or Limits()
        self.idle_timeout, self.frame_timeout, self.auth_timeout = idle_timeout, frame_timeout, auth_timeout
        self.write_timeout, self.tls_handshake_timeout, self.drain_timeout = write_timeout, tls_handshake_timeout, drain_timeout
        self.max_connections, self.max_connections_per_peer = max_connections, max_connections_per_peer
        self.budget = BodyBudget(max_buffered_bytes)
        self.worker_count = workers
        self.message_types = frozenset(message_types)
        self.concurrent_types = frozenset(concurrent_types)
        self.max_clock_skew = max_clock_skew
        self.replay_guard: ReplayGuard | None = None
        self._is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)
        )
        self._pass_metadata = _accepts_metadata(callback)
        self._connections: dict[_ServerProtocol, str] = {}  # admitted connection -> peer host
        self._per_peer: dict[str, int] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._state_lock = asyncio.Lock()
        self._workers: DaemonWorkers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self.first_deadlines: DeadlineQueue | None = None  # each connection's first: accept time + a fixed delay
        self.requests_served = 0

    # ------------------------------------------------------------------ lifecycle
    async def start_server(self) -> None:
        """Listen, then serve until `stop()`; drain requests in flight (up to `drain_timeout`); return."""
        self._loop = asyncio.get_running_loop()
        if self.ssl is not None and loop_name() == "uvloop":
            # uvloop 0.23's server-side start_tls (our TLS after admission) fails the handshake of
            # every client here (tests/network/test_remote_datacenter.py); asyncio's does not.
            raise UsageError("TLS needs asyncio's event loop: run this server with protocol.run(..., use_uvloop=False)")
        # A restarted server refuses requests stamped before it started: no replays across restarts.
        self.replay_guard = ReplayGuard(self.max_clock_skew, not_before=time.time())
        self._workers = DaemonWorkers(self.worker_count)
        self.first_deadlines = DeadlineQueue(self._loop)
        self._server = await self._loop.create_server(lambda: _ServerProtocol(self), self.host, self.port, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            log.info("listening on %s:%d (auth=%s, tls=%s, loop=%s)", self.host, self.port,
                     "token" if self.token else "none", "on" if self.ssl else "off", loop_name())
            self._started.set()
            await self._stop.wait()
            await self._shutdown()
        finally:
            self._workers.shutdown()
            self.first_deadlines.close()

    async def wait_started(self) -> int:
        """Wait until the server listens; return the bound port (useful with port 0)."""
        await self._started.wait()
        return self.port

    def stop(self) -> None:
        """Stop accepting, answer requests in flight, then let `start_server` return. Thread-safe."""
        try:
            caller = asyncio.get_running_loop()
        except RuntimeError:
            caller = None
        if self._loop is not None and caller is not self._loop:
            self._loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._connections):
            if not conn.conversation.in_flight:
                conn.close_when_sent()
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain timed out after %.0f s: abandoning %d request(s) in flight", self.drain_timeout,
                        self._in_flight)
        for conn in list(self._connections):
            conn.abort()
        log.info("stopped after %d request(s)", self.requests_served)

    # ------------------------------------------------------------------ admission
    def admit(self, conn: "_ServerProtocol", host: str) -> tuple[str, str] | None:
        """Count an accepted socket; return (code, message) when it must be refused."""
        if self._stop.is_set():
            return "shutting_down", "server is shutting down"
        if self._per_peer.get(host, 0) >= self.max_connections_per_peer and not self._evict(host):
            return "busy", f"server busy: {self.max_connections_per_peer} connections open from {host}"
        if len(self._connections) >= self.max_connections and not self._evict(None):
            return "busy", f"server busy: {self.max_connections} connections open"
        self._connections[conn] = host
        self._per_peer[host] = self._per_peer.get(host, 0) + 1
        return None

    def _evict(self, host: str | None) -> bool:
        """Close the oldest connection (of `host`, or any) that has not authenticated; False if none."""
        victim = next((c for c, h in self._connections.items()
                       if not c.conversation.authenticated and host in (None, h)), None)
        if victim is None:
            return False
        log.warning("%s: evicted (not authenticated) to admit a new connection", victim.peer)
        victim.refuse("busy", "server full: connections that have not authenticated are closed first")
        self.release(victim)
        return True

    def release(self, conn: "_ServerProtocol") -> None:
        host = self._connections.pop(conn, None)
        if host is not None:
            self._per_peer[host] -= 1
            if not self._per_peer[host]:
                del self._per_peer[host]

    # ------------------------------------------------------------------ dispatch
    async def receive_send(self, request: RequestBlock) -> ResponseBlock:
        """Answer one decoded request: check its type, run the callback, shape the reply."""
        if request.request_type not in self.message_types:
            expected = ", ".join(sorted(self.message_types))
            raise PeerError(f"unknown request type {request.request_type!r} (expected one of: {expected})",
                            code="unknown_request_type")
        args: list[Any] = [request.request_type, request.query_data, request.random_data]
        if self._pass_metadata:
            args.append({"request_id": request.request_id, "edge_id": request.edge_id, "round": request.round,
                         **request.extra})
        try:
            if request.request_type in self.concurrent_types:
                result = await (self.callback(*args) if self._is_async else self._call(args))
            else:
                lock = self._state_lock
                await lock.acquire()  # (not `async with`: two coroutines less a request)
                try:
                    result = await (self.callback(*args) if self._is_async else self._call(args))
                finally:
                    lock.release()
            return to_response(result)
        except Exception as exc:  # the callback is user code: anything can come out of it
            log.exception("callback failed on %s request %s", request.request_type, request.request_id)
            raise ProtocolError(f"callback failed: {type(exc).__name__}: {exc}", code="callback_error") from None

    async def _call(self, args: list[Any]) -> Any:
        if self._is_async:
            return await self.callback(*args)
        assert self._workers is not None
        return await self._workers.run(self.callback, *args)

    async def decode(self, event: RequestReceived) -> RequestBlock:
        """Decode a request's body in a worker thread (`_serve` decodes small ones of few objects
        on the loop: `codec.decodes_quickly`)."""
        assert self._workers is not None
        return await self._workers.run(
            functools.partial(decode_request, event.frame, token=self.token, limits=self.limits))

    def _request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _request_finished(self) -> None:
        self._in_flight -= 1
        self.requests_served += 1
        if self._in_flight == 0:
            self._idle.set()


class _ServerProtocol(ConversationProtocol):
    """One client connection: admission, TLS, and the requests its conversation reports."""

    def __init__(self, server: AsyncServer) -> None:
        super().__init__()
        self.server = server
        self.conversation = ServerConversation(
            now=self.loop.time(), limits=server.limits, token=server.token, replay_guard=server.replay_guard,
            budget=server.budget, idle_timeout=server.idle_timeout, frame_timeout=server.frame_timeout,
            auth_timeout=server.auth_timeout, write_timeout=server.write_timeout,
        )
        if server.first_deadlines is not None:
            self.first_timers = server.first_deadlines  # (a fresh connection's auth or idle deadline)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.peer_address
        refusal = self.server.admit(self, peer[0] if isinstance(peer, tuple) else str(peer))
        if refusal is not None:
            log.warning("refusing %s: %s", self.peer, refusal[1])
            if self.server.ssl is not None:  # no TLS yet: an error frame in plaintext would help nobody
                transport.abort()
                return
            self.refuse(*refusal)
            return
        if self.server.ssl is not None:
            transport.pause_reading()
            self.loop.create_task(self._start_tls(transport))
            return
        self.arm_timer(self.conversation.deadline)  # (all a drive() does for a fresh conversation)

    async def _start_tls(self, raw: asyncio.BaseTransport) -> None:
        try:
            tls = await self.loop.start_tls(raw, self, self.server.ssl, server_side=True,  # type: ignore[arg-type]
                                            ssl_handshake_timeout=self.server.tls_handshake_timeout)
        except (OSError, asyncio.TimeoutError, ssl_module.SSLError, ConnectionError) as exc:
            log.warning("%s: TLS handshake failed: %s", self.peer, str(exc) or type(exc).__name__)
            raw.abort()
            self.server.release(self)
            return
        if tls is None:  # the peer left during the handshake
            self.server.release(self)
            return
        self.transport = tls  # type: ignore[assignment]
        self.drive()

    def refuse(self, code: str, message: str) -> None:
        self.conversation.refuse(code, message)
        self.drive()

    def close_when_sent(self) -> None:
        self.conversation.close()
        self.drive()

    def handle_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self.server._request_started()
            start_eagerly(self.loop, self._serve(event))
        elif isinstance(event, ConnectionClosed) and event.error is not None:
            log.warning("%s: %s (%s)", self.peer, getattr(event.error, "message", event.error),
                        getattr(event.error, "code", "?"))

    def handle_lost(self, exc: Exception | None) -> None:
        self.server.release(self)

    async def _serve(self, event: RequestReceived) -> None:
        server, conv = self.server, self.conversation
        try:
            try:
                frame = event.frame
                if decodes_quickly(frame, DEFAULT_DECODE_INLINE_BYTES, DEFAULT_DECODE_INLINE_CELLS):  # on the loop
                    request = decode_request(frame, token=server.token, limits=server.limits)
                else:
                    request = await server.decode(event)
                response = await server.receive_send(request)
            except Exception as exc:
                code, message = describe(exc)
                if code == "internal":
                    log.exception("%s: internal error on request %s", self.peer, event.request_id)
                else:
                    log.warning("%s: request %s answered with %s: %s", self.peer, event.request_id, code, message)
                conv.send_error(code, message, self.loop.time())
            else:
                conv.send_response(response, self.loop.time())
            if server._stop.is_set():
                conv.close()
        finally:
            server._request_finished()
        # After the count: drive() may serve the next pipelined request at once (eagerly),
        # which would otherwise be counted while this finished one still was.
        self.drive()
