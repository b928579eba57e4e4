"""`AsyncClient`: the edge's side of the protocol.

`await client.send_data(...)` opens a connection, sends one request and returns the
`ResponseBlock` (as the original did, but with a real answer). `async with client:` keeps
one connection open for many requests. While the server is still starting, "connection
refused" is retried with backoff for a bounded time. An error response raises
`RemoteError` carrying the server's code and message.
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
from .codec import decode_response, encode_request
from .connection import FrameConnection
from .errors import ConnectionLost, PeerError, ProtocolError, RemoteError
from .frame import RawFrame
from .limits import Limits

log = logging.getLogger("protocol.client")

_REFUSED = (ConnectionRefusedError, ConnectionResetError)
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EADDRNOTAVAIL}


class _ClientConnection(FrameConnection):
    """Waits for exactly one response frame per request."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._waiter: asyncio.Future[RawFrame] | None = None

    def expect_response(self) -> asyncio.Future[RawFrame]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def frame_received(self, frame: RawFrame) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(frame)
        else:
            self.stream_error(PeerError("unsolicited frame from the server"))

    def stream_error(self, exc: ProtocolError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost("the server closed the connection before answering"))


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
        self._session: _ClientConnection | None = None
        self._in_session = False
        self._lock: asyncio.Lock | None = None

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
        """Send one request and return the server's `ResponseBlock` (raises `RemoteError` on error)."""
        ids = {"request_id": request_id} if request_id else {}
        request = RequestBlock(message_type, query_data, random_data, edge_id=self.edge_id, round=round, extra=extra or {}, **ids)
        return await self.request(request, port=port)

    async def request(self, request: RequestBlock, *, port: int | None = None) -> ResponseBlock:
        parts = encode_request(request, token=self.token, limits=self.limits)
        if self._in_session and port in (None, self.port):
            assert self._lock is not None
            async with self._lock:
                if self._session is None or not self._session.is_open:
                    self._session = await self._connect(self.port)
                try:
                    raw = await self._exchange(self._session, parts)
                except BaseException:
                    self._account(self._session)
                    self._session.abort()
                    self._session = None
                    raise
        else:
            conn = await self._connect(port or self.port)
            try:
                raw = await self._exchange(conn, parts)
            finally:
                conn.close()
                self._account(conn)
        return self._check(raw, request)

    def _account(self, conn: _ClientConnection) -> None:
        self.bytes_sent += conn.bytes_sent
        self.bytes_received += conn.bytes_received
        conn.bytes_sent = conn.bytes_received = 0

    async def _exchange(self, conn: _ClientConnection, parts: list[Any]) -> RawFrame:
        waiter = conn.expect_response()
        try:
            conn.send_frame(parts)
        except BaseException:
            waiter.cancel()
            raise
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"no response from {self.host}:{conn.transport and self.port} within {self.timeout:.0f} s", code="timeout") from None

    def _check(self, raw: RawFrame, request: RequestBlock) -> ResponseBlock:
        response = decode_response(raw, token=self.token, limits=self.limits)
        if response.error is not None:
            raise RemoteError(f"server error ({response.error_code}): {response.error}", code=response.error_code)
        if response.request_id != request.request_id:
            raise PeerError(f"response is for request {response.request_id!r}, not {request.request_id!r}")
        return response

    async def _connect(self, port: int) -> _ClientConnection:
        """Connect, retrying refused connections with backoff for up to `retry_for` seconds."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.retry_for
        delay = 0.02
        while True:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _ClientConnection(self.limits), self.host, port, ssl=self.ssl,
                        server_hostname=self.server_hostname if self.ssl else None,
                    ),
                    self.connect_timeout,
                )
                return conn
            except (OSError, asyncio.TimeoutError) as exc:
                refused = isinstance(exc, _REFUSED) or getattr(exc, "errno", None) in _REFUSED_ERRNOS
                if not refused or time.monotonic() + delay > deadline:
                    raise ConnectionLost(f"cannot connect to {self.host}:{port}: {exc or type(exc).__name__}") from exc
                log.debug("connection to %s:%d refused; retrying in %.2f s", self.host, port, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
