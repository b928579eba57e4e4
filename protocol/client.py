"""`AsyncClient`: the edge's side of the protocol — a thin asyncio shell.

`await client.send_data(...)` opens a connection, sends one request and returns the
`ResponseBlock` (as the original did, but with a real answer). `async with client:` keeps
one connection open for many requests, one at a time. While the server is still
starting, "connection refused" is retried with backoff for a bounded time. An error
reply raises `RemoteError` carrying the server's code and message. A request is signed
and stamped only when it is its turn to be sent, so waiting behind a long retraining
never makes it stale.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl as ssl_module
import time
from typing import Any, Mapping

import pandas as pd

from .auth import normalize_token
from .blocks import RequestBlock, ResponseBlock, Scalar
from .connection import JOIN_BELOW, ConversationProtocol, frame_size
from .conversation import ClientConversation, ConnectionClosed, Event, ResponseReceived, _remote_error
from .deadlines import DeadlineQueue
from .errors import ConnectionLost
from .limits import Limits

log = logging.getLogger("protocol.client")

_REFUSED = (ConnectionRefusedError, ConnectionResetError)
#: Seconds a one-shot request waits for its connection to finish closing.
CLOSE_WAIT = 1.0
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EADDRNOTAVAIL}


class _ClientProtocol(ConversationProtocol):
    """Hands the conversation's reply (or the reason there is none) to the waiting request."""

    def __init__(self, limits: Limits, token: bytes | None, reply_deadlines: DeadlineQueue) -> None:
        super().__init__()
        self.conversation = ClientConversation(now=self.loop.time(), limits=limits, token=token)
        self.first_timers = reply_deadlines  # (its first deadline: the first reply's, now + the client's timeout)
        self._waiter: asyncio.Future[ResponseBlock] | None = None

    async def exchange(self, request: RequestBlock, timeout: float) -> ResponseBlock:
        conv = self.conversation
        conv.send_request(request, self.loop.time(), timeout)  # signs it now
        waiter = self._waiter = self.loop.create_future()
        parts = conv.data_to_send()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.arm_timer(conv.deadline)  # the response deadline (all a drive() would do here)
        size = frame_size(parts)
        if size <= JOIN_BELOW:
            self.write(parts, size)
        else:
            await self.write_sliced(parts)
        return await waiter

    def handle_event(self, event: Event) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if isinstance(event, ResponseReceived):
            waiter.set_result(event.response)
        elif isinstance(event, ConnectionClosed):
            waiter.set_exception(event.error or ConnectionLost("the server closed the connection"))

    def handle_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost(f"the connection was lost: {exc or 'closed'}"))


class AsyncClient:
    """Send requests to an `AsyncServer`; one connection per request, or one per `async with`."""

    def __init__(
        self,
        port: int = 9999,
        *,
        host: str = "127.0.0.1",
        token: str | bytes | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retry_for: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        limits: Limits | None = None,
        edge_id: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.token = normalize_token(token)
        self.timeout, self.connect_timeout, self.retry_for = timeout, connect_timeout, retry_for
        self.ssl, self.server_hostname = ssl, server_hostname
        self.limits = limits or Limits()
        self.edge_id = edge_id
        self.bytes_sent = 0
        self.bytes_received = 0
        self._session: _ClientProtocol | None = None
        self._in_session = False
        self._lock: asyncio.Lock | None = None
        # Deadlines of connects and of first replies, each now + a fixed timeout: in order,
        # two queues (of the loop this client last connected on) serve them all.
        self._deadlines: tuple[DeadlineQueue, DeadlineQueue] | None = None

    # ------------------------------------------------------------------ sessions
    async def __aenter__(self) -> "AsyncClient":
        self._in_session = True
        self._lock = asyncio.Lock()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self._in_session = False
        if self._session is not None:
            self._account(self._session)
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ requests
    async def send_data(
        self,
        message_type: str,
        query_data: pd.DataFrame | None = None,
        random_data: pd.DataFrame | None = None,
        port: int | None = None,
        *,
        round: str | int | None = None,
        extra: Mapping[str, Scalar] | None = None,
        request_id: str | None = None,
    ) -> ResponseBlock:
        """Send one request and return the server's `ResponseBlock` (raises `RemoteError` on error).

        Large DataFrames are sent from their own memory: do not change them until this returns.
        """
        ids = {"request_id": request_id} if request_id is not None else {}
        request = RequestBlock(message_type, query_data, random_data, edge_id=self.edge_id, round=round,
                               extra=extra or {}, **ids)
        return await self.request(request, port=port)

    async def request(self, request: RequestBlock, *, port: int | None = None) -> ResponseBlock:
        if self._in_session and port in (None, self.port):
            lock = self._lock
            assert lock is not None
            await lock.acquire()  # the request is signed inside the lock, when it is its turn
            try:  # (acquire/release rather than `async with`: two coroutines less a request)
                if self._session is None or not self._session.is_open:
                    self._session = await self._connect(self.port)
                try:
                    response = await self._session.exchange(request, self.timeout)
                except BaseException:
                    self._account(self._session)
                    self._session.abort()
                    self._session = None
                    raise
            finally:
                lock.release()
        else:
            conn = await self._connect(port or self.port)
            try:
                response = await conn.exchange(request, self.timeout)
            finally:
                conn.close()
                self._account(conn)
                if self.ssl is not None:  # a TLS close finishes before the caller's loop may end
                    await conn.wait_closed(CLOSE_WAIT)
                # (a plain one is under way: the socket is closed on the loop's next turn, which
                # asyncio.run's shutdown still takes; waiting for it cost ~40 us a request)
        if response.error is not None:
            raise _remote_error(response)
        return response

    def _account(self, conn: _ClientProtocol) -> None:
        self.bytes_sent += conn.bytes_sent
        self.bytes_received += conn.conversation.bytes_received
        conn.bytes_sent = conn.conversation.bytes_received = 0

    async def _connect(self, port: int) -> _ClientProtocol:
        """Connect, retrying refused connections with backoff for up to `retry_for` seconds."""
        loop = asyncio.get_running_loop()
        if self._deadlines is None or self._deadlines[0].loop is not loop:
            self._deadlines = (DeadlineQueue(loop), DeadlineQueue(loop))
        connects, replies = self._deadlines
        deadline = time.monotonic() + self.retry_for
        delay = 0.02
        while True:
            try:
                # asyncio.timeout's contract, without a Task (as wait_for makes) or a loop timer of its own
                with connects.timeout_at(loop.time() + self.connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: _ClientProtocol(self.limits, self.token, replies), self.host, port, ssl=self.ssl,
                        server_hostname=self.server_hostname if self.ssl else None,
                    )
                return conn
            except (OSError, asyncio.TimeoutError) as exc:
                refused = isinstance(exc, _REFUSED) or getattr(exc, "errno", None) in _REFUSED_ERRNOS
                if not refused or time.monotonic() + delay > deadline:
                    raise ConnectionLost(f"cannot connect to {self.host}:{port}: {exc or type(exc).__name__}") from exc
                log.debug("connection to %s:%d refused; retrying in %.2f s", self.host, port, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

