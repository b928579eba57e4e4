"""The asyncio shell shared by server and client: one `BufferedProtocol` per connection.

It receives straight into the buffer `FrameDecoder` hands out (a large body lands in its
final place with no intermediate copies) and passes whole frames up. Subclasses decide
what a frame means; everything they send goes through `send_frame`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import ProtocolError
from .frame import FrameDecoder, RawFrame
from .limits import Limits

log = logging.getLogger("protocol")


class FrameConnection(asyncio.BufferedProtocol):
    """Frames in, frames out; counts bytes; remembers why it closed."""

    def __init__(self, limits: Limits) -> None:
        self.decoder = FrameDecoder(limits)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.closed = asyncio.get_running_loop().create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        try:
            frames = self.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self.stream_error(exc)
            return
        for frame in frames:
            self.frame_received(frame)
        if self.decoder.error is not None:  # bad bytes followed those frames in the same read
            self.stream_error(self.decoder.error)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- for subclasses
    def frame_received(self, frame: RawFrame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stream_error(self, exc: ProtocolError) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send_frame(self, parts: list[Any]) -> None:
        """Queue one frame's buffers; asyncio sends what it can now and buffers the rest."""
        if not self.is_open:
            return
        for part in parts:
            self.transport.write(part)  # type: ignore[union-attr]
            self.bytes_sent += len(part)

    async def drain(self) -> None:
        await self._can_write.wait()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
