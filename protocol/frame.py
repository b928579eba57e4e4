"""Frames: a fixed 24-byte header, a JSON metadata section, a body, an optional MAC.

This module is the incremental, I/O-free reader and writer of that envelope (see
docs/protocol.md). `FrameDecoder` hands out the buffer the next bytes should land in
(`get_buffer`), so the asyncio shell can receive a large body straight into its final
place, and checks every declared length against the limits before allocating anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import LimitExceeded, PeerError, ProtocolError
from .limits import Limits

MAGIC = b"DLWP"
VERSION = 1
HEADER = struct.Struct(">4sBBHIQI")  # magic, version, kind, flags, meta_len, body_len, reserved
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 24

KIND_REQUEST = 1
KIND_RESPONSE = 2
KINDS = (KIND_REQUEST, KIND_RESPONSE)

FLAG_MAC = 0x0001  # a 32-byte HMAC-SHA256 trailer follows the body
KNOWN_FLAGS = FLAG_MAC
MAC_SIZE = 32
ALIGN = 8  # metadata and every body section are padded to 8 bytes: Arrow buffers stay aligned

#: Bytes received per read while waiting for a header; a small frame arrives in one read.
SCRATCH_SIZE = 64 * 1024


def receive_buffer(size: int) -> memoryview:
    """Uninitialised memory for a payload: pages are committed only as bytes arrive.

    `bytearray(size)` zeroes all of it at once: a 24-byte header announcing 1 GiB cost the
    server 1 GiB of RAM and ~4 s of its event loop before a byte of body (or any MAC) was
    checked. Every byte of a frame is written before the frame is handed out.
    """
    return memoryview(np.empty(size, dtype=np.uint8))


def padded(length: int) -> int:
    return (length + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    flags: int
    meta_len: int
    body_len: int

    @property
    def has_mac(self) -> bool:
        return bool(self.flags & FLAG_MAC)

    @property
    def payload_len(self) -> int:
        return self.meta_len + self.body_len + (MAC_SIZE if self.has_mac else 0)

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.kind, self.flags, self.meta_len, self.body_len, 0)


def parse_header(data: bytes | bytearray | memoryview, limits: Limits) -> Header:
    """Parse and check a header; raise `PeerError` / `LimitExceeded` before any allocation."""
    magic, version, kind, flags, meta_len, body_len, reserved = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PeerError(f"bad magic {bytes(magic)!r}: not a driftloop frame", code="bad_magic")
    if version != VERSION:
        raise PeerError(f"unsupported protocol version {version} (this side speaks {VERSION})", code="bad_version")
    if kind not in KINDS:
        raise PeerError(f"unknown frame kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise PeerError(f"unknown flags 0x{flags:04x}")
    if reserved != 0:
        raise PeerError("reserved header field is not zero")
    if meta_len > limits.max_metadata_bytes:
        raise LimitExceeded("metadata", meta_len, limits.max_metadata_bytes)
    if body_len > limits.max_body_bytes:
        raise LimitExceeded("body", body_len, limits.max_body_bytes)
    if meta_len % ALIGN or body_len % ALIGN:
        raise PeerError("metadata and body lengths must be multiples of 8")
    return Header(kind, flags, meta_len, body_len)


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One whole frame as received: the header and views into its payload buffer."""

    header: Header
    header_bytes: bytes
    payload: memoryview  # metadata + body + MAC, exactly as received (writable)

    @property
    def metadata(self) -> memoryview:
        return memoryview(self.payload)[: self.header.meta_len]

    @property
    def body(self) -> memoryview:
        start = self.header.meta_len
        return memoryview(self.payload)[start : start + self.header.body_len]

    @property
    def signed(self) -> tuple[bytes, memoryview]:
        """The bytes the MAC covers: header, metadata and body."""
        return self.header_bytes, memoryview(self.payload)[: self.header.meta_len + self.header.body_len]

    @property
    def mac(self) -> bytes | None:
        return bytes(self.payload[-MAC_SIZE:]) if self.header.has_mac else None


class FrameDecoder:
    """Incremental frame reader: `get_buffer()` says where bytes go, `buffer_updated(n)` takes them.

    Any `PeerError` leaves the decoder broken: the stream can no longer be trusted, so the
    connection must be answered (if possible) and closed. Frames completed before the bad
    bytes are still returned (however the bytes were split into reads); the error is then
    pending in `error` and raised by the next call.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._scratch = bytearray(SCRATCH_SIZE)
        self._header_buf = bytearray()
        self._header: Header | None = None
        self._header_bytes = b""
        self._payload: memoryview | None = None
        self._filled = 0
        self._broken: ProtocolError | None = None

    @property
    def error(self) -> ProtocolError | None:
        """The error that broke the stream (raised, or pending after frames it followed)."""
        return self._broken

    @property
    def in_frame(self) -> bool:
        """True once some bytes of a frame have arrived and the frame is not whole yet."""
        return bool(self._header_buf) or self._payload is not None

    def get_buffer(self) -> memoryview:
        if self._broken:
            raise self._broken
        if self._payload is not None:
            return memoryview(self._payload)[self._filled :]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> list[RawFrame]:
        """Account for `nbytes` written into the last buffer; return the frames completed."""
        if self._payload is not None:
            self._filled += nbytes
            return [self._finish()] if self._filled == len(self._payload) else []
        return self._consume(memoryview(self._scratch)[:nbytes])

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        """Convenience for callers that already hold bytes (tests, fuzzers)."""
        frames: list[RawFrame] = []
        view = memoryview(data)
        while view.nbytes and not (frames and self._broken):
            target = self.get_buffer()
            n = min(target.nbytes, view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            frames.extend(self.buffer_updated(n))
        return frames

    def _consume(self, data: memoryview) -> list[RawFrame]:
        frames: list[RawFrame] = []
        while data.nbytes:
            if self._payload is None:
                need = HEADER_SIZE - len(self._header_buf)
                self._header_buf += data[:need]
                data = data[need:]
                if len(self._header_buf) < HEADER_SIZE:
                    break
                try:
                    self._header = parse_header(self._header_buf, self.limits)
                except ProtocolError as exc:
                    self._broken = exc
                    if frames:  # frames completed before the bad bytes are delivered; the next call raises
                        return frames
                    raise
                self._header_bytes = bytes(self._header_buf)
                self._payload = receive_buffer(self._header.payload_len)
                self._filled = 0
                if not self._payload:
                    frames.append(self._finish())
                    continue
            take = min(len(self._payload) - self._filled, data.nbytes)
            self._payload[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled == len(self._payload):
                frames.append(self._finish())
        return frames

    def _finish(self) -> RawFrame:
        assert self._header is not None and self._payload is not None
        frame = RawFrame(self._header, self._header_bytes, self._payload)
        self._header_buf = bytearray()
        self._header, self._payload, self._filled = None, None, 0
        return frame
