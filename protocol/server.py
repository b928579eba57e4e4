"""`AsyncServer`: the data center's side of the protocol.

A thin asyncio shell over the codec. Each connection may carry many requests (one at a
time, in order); each request is decoded, dispatched by `receive_send` to the user's
callback and answered. Whatever goes wrong — bad frames, bad auth, oversize input, a
callback that raises — gets an error response where the stream still allows one, a log
line, and the server goes on serving. Sync callbacks run in worker threads, so a minute
of training never blocks the event loop; calls that mutate state are serialized.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import ipaddress
import logging
import signal
import ssl as ssl_module
import threading
from typing import Any, Callable, Collection

from .auth import DEFAULT_MAX_SKEW_SECONDS, AuthenticationError, ReplayGuard, normalize_token
from .blocks import MESSAGE_TYPES, MessageType, RequestBlock, ResponseBlock
from .codec import decode_request, encode_response
from .connection import FrameConnection
from .errors import PeerError, ProtocolError, UsageError
from .files import write_port_file
from .frame import RawFrame
from .limits import Limits

log = logging.getLogger("protocol.server")

#: Bodies larger than this are decoded in a worker thread so the loop keeps serving.
DECODE_IN_THREAD_BYTES = 1 << 20
#: Longest error message sent to a peer; details stay in the server log.
MAX_ERROR_CHARS = 1000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_response(result: Any) -> ResponseBlock:
    """Accept what the original callbacks returned: a ResponseBlock, (flag, checkpoint) or a path."""
    if isinstance(result, ResponseBlock):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        flag, checkpoint = result
        return ResponseBlock(bool(flag), None if checkpoint is None else str(checkpoint))
    if isinstance(result, str):
        return ResponseBlock(False, result)
    if result is None:
        return ResponseBlock(False, None)
    raise TypeError(f"callback returned {type(result).__name__}; expected ResponseBlock, (flag, checkpoint) or str")


def _accepts_metadata(callback: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "metadata" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class AsyncServer:
    """Serve `callback(message_type=, query_dataframe=, random_dataframe=)` over the protocol."""

    def __init__(
        self,
        callback: Callable[..., Any],
        port: int = 9999,
        *,
        host: str = "127.0.0.1",
        token: str | bytes | None = None,
        ssl: ssl_module.SSLContext | None = None,
        limits: Limits | None = None,
        idle_timeout: float = 60.0,
        frame_timeout: float = 120.0,
        max_connections: int = 128,
        drain_timeout: float = 30.0,
        port_file: str | None = None,
        handle_signals: bool = True,
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
        for name, value in (("idle_timeout", idle_timeout), ("frame_timeout", frame_timeout), ("drain_timeout", drain_timeout)):
            if not value > 0:
                raise UsageError(f"{name} must be positive")
        if max_connections < 1:
            raise UsageError("max_connections must be at least 1")
        self.callback = callback
        self.host, self.port = host, port
        self.token = normalize_token(token)
        self.ssl = ssl
        self.limits = limits or Limits()
        self.idle_timeout, self.frame_timeout, self.drain_timeout = idle_timeout, frame_timeout, drain_timeout
        self.max_connections = max_connections
        self.port_file = port_file
        self.handle_signals = handle_signals
        self.message_types = frozenset(message_types)
        self.concurrent_types = frozenset(concurrent_types)
        self.replay_guard = ReplayGuard(max_clock_skew)
        self._is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)
        )
        self._pass_metadata = _accepts_metadata(callback)
        self._connections: set[_ServerConnection] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._state_lock = asyncio.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self.requests_served = 0

    # ------------------------------------------------------------------ lifecycle
    async def start_server(self) -> None:
        """Listen, then serve until `stop()`, SIGTERM or SIGINT; drain in-flight requests; return."""
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback")
        self._server = await self._loop.create_server(
            lambda: _ServerConnection(self), self.host, self.port, ssl=self.ssl, backlog=512
        )
        self.port = self._server.sockets[0].getsockname()[1]
        installed = self._install_signal_handlers()
        try:
            if self.port_file:
                write_port_file(self.port_file, self.port)
            log.info(
                "listening on %s:%d (auth=%s, tls=%s)", self.host, self.port, "token" if self.token else "none",
                "on" if self.ssl else "off",
            )
            self._started.set()
            await self._stop.wait()
            await self._shutdown()
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def wait_started(self) -> int:
        """Wait until the server listens; return the bound port (useful with port 0)."""
        await self._started.wait()
        return self.port

    def stop(self) -> None:
        """Ask the server to stop accepting, answer requests in flight, then return. Thread-safe."""
        try:
            caller = asyncio.get_running_loop()
        except RuntimeError:
            caller = None
        if self._loop is not None and caller is not self._loop:  # another thread (the server's may not be main)
            self._loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    def _install_signal_handlers(self) -> list[int]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)  # type: ignore[union-attr]
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
                pass
        return installed

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: draining %d request(s) in flight", signal.Signals(sig).name, self._in_flight)
        self.stop()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.close()
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain timed out after %.0f s with %d request(s) unanswered", self.drain_timeout, self._in_flight)
        for conn in list(self._connections):
            conn.close()
        log.info("stopped after %d request(s)", self.requests_served)

    # ------------------------------------------------------------------ dispatch
    async def receive_send(self, request: RequestBlock) -> ResponseBlock:
        """Answer one received request: check its type, run the callback, shape the reply."""
        if request.request_type not in self.message_types:
            expected = ", ".join(sorted(self.message_types))
            return ResponseBlock.failure(
                "unknown_request_type", f"unknown request type {request.request_type!r} (expected one of: {expected})"
            )
        kwargs: dict[str, Any] = {
            "message_type": request.request_type,
            "query_dataframe": request.query_data,
            "random_dataframe": request.random_data,
        }
        if self._pass_metadata:
            kwargs["metadata"] = {"request_id": request.request_id, "edge_id": request.edge_id, "round": request.round, **request.extra}
        try:
            if request.request_type in self.concurrent_types:
                result = await self._call(kwargs)
            else:
                async with self._state_lock:
                    result = await self._call(kwargs)
            return to_response(result)
        except Exception as exc:  # the callback is user code: anything can come out of it
            log.exception("callback failed on %s request %s", request.request_type, request.request_id)
            return ResponseBlock.failure("callback_error", f"callback failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        if self._is_async:
            return await self.callback(**kwargs)
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, functools.partial(self.callback, **kwargs))

    async def decode(self, raw: RawFrame) -> RequestBlock:
        decode = functools.partial(decode_request, raw, token=self.token, replay_guard=self.replay_guard, limits=self.limits)
        if raw.header.body_len > DECODE_IN_THREAD_BYTES:
            assert self._loop is not None
            return await self._loop.run_in_executor(self._executor, decode)
        return decode()

    def _request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _request_finished(self) -> None:
        self._in_flight -= 1
        self.requests_served += 1
        if self._in_flight == 0:
            self._idle.set()


class _ServerConnection(FrameConnection):
    """One client connection: frames in order, one request at a time, timeouts on reads."""

    def __init__(self, server: AsyncServer) -> None:
        super().__init__(server.limits)
        self.server = server
        self.busy = False
        self._queue: list[RawFrame] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        if len(server._connections) >= server.max_connections:
            log.warning("refusing %s: %d connections open (max_connections)", self.peer, len(server._connections))
            self._reply_error("busy", f"server busy: {server.max_connections} connections open", close=True)
            return
        if server._stop.is_set():
            self._reply_error("shutting_down", "server is shutting down", close=True)
            return
        server._connections.add(self)
        self._arm_timer(server.idle_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server._connections.discard(self)
        self._cancel_timer()

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        if self.decoder.in_frame and self._timer_kind != "frame" and self.is_open:
            self._arm_timer(self.server.frame_timeout, self._on_frame_timeout)

    # -- timers
    _timer_kind = ""

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, callback)
        self._timer_kind = "frame" if callback == self._on_frame_timeout else "idle"

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = ""

    def _on_idle_timeout(self) -> None:
        log.info("%s: idle for %.0f s, closing", self.peer, self.server.idle_timeout)
        self.close()

    def _on_frame_timeout(self) -> None:
        log.warning("%s: frame not complete within %.0f s, closing", self.peer, self.server.frame_timeout)
        self._reply_error("timeout", f"frame not complete within {self.server.frame_timeout:.0f} s", close=True)

    # -- frames
    def frame_received(self, frame: RawFrame) -> None:
        self._cancel_timer()
        self._queue.append(frame)
        if not self.busy:
            self.busy = True
            self.server._request_started()
            self._loop.create_task(self._serve_queue())

    def stream_error(self, exc: ProtocolError) -> None:
        log.warning("%s: %s (%s)", self.peer, exc.message, exc.code)
        self._reply_error(exc.code, exc.message, close=True)

    async def _serve_queue(self) -> None:
        try:
            while self._queue and self.is_open:
                await self._serve_one(self._queue.pop(0))
        finally:
            self.busy = False
            self.server._request_finished()
            if self.server._stop.is_set():
                self.close()
            elif self.is_open and not self.decoder.in_frame:
                self._arm_timer(self.server.idle_timeout, self._on_idle_timeout)

    async def _serve_one(self, raw: RawFrame) -> None:
        server = self.server
        try:
            request = await server.decode(raw)
        except PeerError as exc:
            log.warning("%s: rejected request: %s (%s)", self.peer, exc.message, exc.code)
            self._reply_error(exc.code, exc.message, close=isinstance(exc, AuthenticationError))
            return
        except Exception:  # a decoder bug must not take the server down
            log.exception("%s: internal error while decoding a request", self.peer)
            self._reply_error("internal", "internal error while decoding the request", close=True)
            return
        response = await server.receive_send(request)
        if response.error is not None:
            log.warning("%s: %s request %s answered with error %s: %s", self.peer, request.request_type,
                        request.request_id, response.error_code, response.error)
        response.request_id = request.request_id
        self._send(response)
        await self.drain()

    def _send(self, response: ResponseBlock) -> None:
        try:
            parts = encode_response(response, token=self.server.token, limits=self.server.limits)
        except ProtocolError as exc:
            log.error("%s: cannot encode the response: %s", self.peer, exc.message)
            parts = encode_response(ResponseBlock.failure("internal", "the response could not be encoded",
                                                          request_id=response.request_id), token=self.server.token)
        self.send_frame(parts)

    def _reply_error(self, code: str, message: str, *, close: bool) -> None:
        self._send(ResponseBlock.failure(code, message))
        if close:
            self.close()
