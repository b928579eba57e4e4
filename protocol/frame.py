"""Frames: a 24-byte header, JSON metadata, an optional head MAC, a body, an optional body MAC.

This module is the incremental, I/O-free reader and writer of that envelope (see
docs/protocol.md §2). The head (header + metadata + head MAC) arrives before the body,
so a receiver authenticates and checks it — through the `head_check` hook — before it
allocates or keeps a byte of the body: a peer without the token costs at most one
metadata section of memory.

`FrameDecoder` hands out the buffer the next bytes should land in (`get_buffer`), so a
large body is received straight into its final place, and parses lazily: it returns at
most one frame per `next_frame()` call and keeps the bytes after it, so a shell that
stops reading while a request is served holds at most one read of pipelined bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from .buffers import receive_buffer  # uninitialised (never zeroed: every byte is written first), large ones reused
from .errors import LimitExceeded, PeerError, ProtocolError
from .limits import Limits

MAGIC = b"DLWP"
VERSION = 2
HEADER = struct.Struct(">4sBBHIQI")  # magic, version, kind, flags, meta_len, body_len, reserved
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 24

KIND_REQUEST = 1
KIND_RESPONSE = 2
KINDS = (KIND_REQUEST, KIND_RESPONSE)

FLAG_MAC = 0x0001  # a head MAC follows the metadata, and a body MAC the body (if any)
KNOWN_FLAGS = FLAG_MAC
MAC_SIZE = 32
ALIGN = 8  # metadata and every body section are padded to 8 bytes: Arrow buffers stay aligned

#: Bytes received per read outside a body; a small frame, or several, arrive in one read.
SCRATCH_SIZE = 64 * 1024


#: Scratch buffers of closed connections, kept for new ones: `bytearray(64 KiB)` zeroes
#: (and so faults in) all its pages, ~40 us a connection on a VM, for every new connection.
_SCRATCH_POOL: list[bytearray] = []
MAX_POOLED_SCRATCH = 32  # 2 MiB at most


def _take_scratch(size: int) -> bytearray:
    if size == SCRATCH_SIZE:
        try:
            return _SCRATCH_POOL.pop()
        except IndexError:
            pass
    return bytearray(size)


def padded(length: int) -> int:
    return (length + ALIGN - 1) // ALIGN * ALIGN


# Header, Head and RawFrame are not frozen: a frozen dataclass takes ~1.5 us longer to
# build (a setattr call a field), a few are built for every frame, and none is changed.
@dataclass(slots=True)
class Header:
    kind: int
    flags: int
    meta_len: int
    body_len: int

    @property
    def has_mac(self) -> bool:
        return bool(self.flags & FLAG_MAC)

    @property
    def head_len(self) -> int:
        """Bytes after the header up to the body: metadata and head MAC."""
        return self.meta_len + (MAC_SIZE if self.flags & FLAG_MAC else 0)

    @property
    def tail_len(self) -> int:
        """Bytes of the body and its MAC (no body MAC when the body is empty)."""
        return self.body_len + (MAC_SIZE if self.flags & FLAG_MAC and self.body_len else 0)

    @property
    def frame_len(self) -> int:
        return HEADER_SIZE + self.head_len + self.tail_len

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.kind, self.flags, self.meta_len, self.body_len, 0)


def parse_header(data: bytes | bytearray | memoryview, limits: Limits) -> Header:
    """Parse and check a header; raise `PeerError` / `LimitExceeded` before any allocation."""
    magic, version, kind, flags, meta_len, body_len, reserved = HEADER.unpack_from(data)
    if (magic == MAGIC and version == VERSION and (kind == KIND_REQUEST or kind == KIND_RESPONSE)
            and not flags & ~KNOWN_FLAGS and not reserved and meta_len <= limits.max_metadata_bytes
            and body_len <= limits.max_body_bytes and not (meta_len | body_len) % ALIGN):
        return Header(kind, flags, meta_len, body_len)  # every check below passes: one test, the common case
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


@dataclass(slots=True)
class Head:
    """The part of a frame before its body, as received."""

    header: Header
    header_bytes: bytes
    metadata: memoryview
    mac: bytes | None


@dataclass(slots=True)
class RawFrame:
    """One whole frame as received; `checked` is what the head check returned (parsed metadata)."""

    head: Head
    body: memoryview  # exactly body_len bytes, writable
    body_mac: bytes | None
    checked: Any = None

    @property
    def header(self) -> Header:
        return self.head.header

    @property
    def metadata(self) -> memoryview:
        return self.head.metadata

    @property
    def header_bytes(self) -> bytes:
        return self.head.header_bytes


#: `head_check(head)` authenticates and parses a head; it raises `ProtocolError` to break
#: the stream, and what it returns travels on as `RawFrame.checked`.
HeadCheck = Callable[[Head], Any]

_HEADER, _HEAD, _BODY = range(3)


def _released_check(head: Head) -> Any:
    """The head check of a released decoder: no frame is ever accepted unchecked."""
    raise PeerError("a frame arrived after the connection was released")

_EMPTY = memoryview(b"")


class FrameDecoder:
    """Incremental frame reader: `get_buffer()` says where bytes go, `buffer_updated(n)` takes
    them, `next_frame()` returns the next whole frame (or None).

    Any `ProtocolError` leaves the decoder broken: the stream can no longer be trusted.
    Frames completed before the bad bytes are still returned; the error is raised by the
    `next_frame()` call that reaches the bad bytes, and by every call after.
    """

    def __init__(self, limits: Limits | None = None, head_check: HeadCheck | None = None,
                 scratch_size: int = SCRATCH_SIZE) -> None:
        self.limits = limits or Limits()
        self.head_check = head_check
        self._scratch = _take_scratch(scratch_size)
        self._start = self._end = 0  # unconsumed bytes are _scratch[_start:_end]
        self._state = _HEADER
        self._header: Header | None = None
        self._header_bytes = b""
        self._head: Head | None = None
        self._checked: Any = None
        self._target: memoryview | None = None  # head or body buffer being filled
        self._filled = 0
        self._broken: ProtocolError | None = None
        self._direct = False

    def release(self) -> None:
        """The connection is gone: hand the scratch buffer to the next decoder. Nothing is
        read from it afterwards (only bytes written by a later connection ever are).

        The head check goes too: it is usually a method of the decoder's owner, which holds
        the decoder, and that cycle left both (and what they hold) for the garbage collector,
        whose collections took ~5% of a request on a new connection."""
        scratch, self._scratch = self._scratch, bytearray()
        self._start = self._end = self._filled = 0
        self._state, self._target, self._header, self._head = _HEADER, None, None, None
        self.head_check = _released_check
        if len(scratch) == SCRATCH_SIZE and len(_SCRATCH_POOL) < MAX_POOLED_SCRATCH:
            _SCRATCH_POOL.append(scratch)

    # ------------------------------------------------------------------ state
    @property
    def error(self) -> ProtocolError | None:
        return self._broken

    @property
    def in_frame(self) -> bool:
        """True once some bytes of a frame are here and the frame is not whole yet."""
        return self._state != _HEADER or self._end > self._start

    # ------------------------------------------------------------------ input
    def get_buffer(self) -> memoryview:
        if self._broken:
            raise self._broken
        self._direct = self._state == _BODY and self._start == self._end and self._target is not None
        if self._direct:
            return self._target[self._filled :]  # a body lands in its final place
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._scratch):
            if self._start:
                self._scratch[: self._end - self._start] = self._scratch[self._start : self._end]
                self._end -= self._start
                self._start = 0
            else:  # only if a caller reads while holding a whole scratch of unparsed bytes
                self._scratch.extend(bytes(len(self._scratch)))
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for `nbytes` written into the last buffer `get_buffer()` returned."""
        if self._direct:  # written straight into the body
            self._filled += nbytes
        else:
            self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        """Take bytes and return every frame they complete (tests, fuzzers, simple callers)."""
        frames: list[RawFrame] = []
        view = memoryview(data).cast("B")
        while True:
            try:
                while (frame := self.next_frame()) is not None:
                    frames.append(frame)
            except ProtocolError:
                if frames:  # frames before the bad bytes are delivered; the next call raises
                    return frames
                raise
            if not view.nbytes:
                return frames
            target = self.get_buffer()
            n = min(target.nbytes, view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    # ------------------------------------------------------------------ parsing
    def next_frame(self) -> RawFrame | None:
        """The next whole frame from the bytes taken so far, or None; raises once broken."""
        if self._broken:
            raise self._broken
        if self._state == _HEADER and self._end - self._start < HEADER_SIZE:
            return None  # not even a header's worth of bytes (after every frame of a read)
        try:
            return self._advance()
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _advance(self) -> RawFrame | None:
        while True:
            if self._state == _HEADER:
                start, available = self._start, self._end - self._start
                if available < HEADER_SIZE:
                    return None
                raw = bytes(self._scratch[start : start + HEADER_SIZE])
                header = self._header = parse_header(raw, self.limits)
                self._header_bytes = raw
                start = self._start = start + HEADER_SIZE
                head_len = header.head_len
                if available - HEADER_SIZE >= head_len:  # the whole head is here (a small frame)
                    self._start = start + head_len
                    tail_len = header.tail_len
                    if available - HEADER_SIZE - head_len >= tail_len:  # and its body: the whole frame
                        return self._whole(header, raw, start, head_len, tail_len)
                    self._take_head(memoryview(self._scratch[start : self._start]))
                else:
                    self._begin(_HEAD, bytearray(head_len))
            elif self._state == _HEAD:
                if not self._fill():
                    return None
                assert self._target is not None
                self._take_head(self._target)
            else:
                if not self._fill():
                    return None
                return self._finish()

    def _whole(self, header: Header, raw: bytes, start: int, head_len: int, tail_len: int) -> RawFrame:
        """A frame whose every byte is in the scratch buffer (the common, small case): its
        head is checked as always before the body is looked at, then the body is copied
        out of the scratch buffer into a buffer of its own, without the state machine."""
        meta_len = header.meta_len
        head = memoryview(self._scratch[start : start + head_len])  # a copy: the scratch is reused
        has_mac = header.flags & FLAG_MAC
        self._head = Head(header, raw, head[:meta_len], bytes(head[meta_len:]) if has_mac else None)
        checked = self.head_check(self._head) if self.head_check else None
        body_start = self._start
        self._start = body_start + tail_len
        if self._start == self._end:
            self._start = self._end = 0
        head_, self._head, self._header = self._head, None, None
        if not tail_len:
            return RawFrame(head_, _EMPTY, None, checked)
        target = receive_buffer(tail_len)
        target[:] = memoryview(self._scratch)[body_start : body_start + tail_len]  # (a bytearray slice copies twice)
        body_len = header.body_len
        return RawFrame(head_, target[:body_len], bytes(target[body_len:]) if has_mac else None, checked)

    def _take_head(self, head: memoryview) -> None:
        """Check a whole head (metadata and MAC), then make room for the body."""
        header = self._header
        assert header is not None
        mac = bytes(head[header.meta_len :]) if header.has_mac else None
        self._head = Head(header, self._header_bytes, head[: header.meta_len], mac)
        self._checked = self.head_check(self._head) if self.head_check else None
        self._begin(_BODY, receive_buffer(header.tail_len) if header.tail_len else _EMPTY)

    def _begin(self, state: int, target: Any) -> None:
        self._state = state
        self._target = memoryview(target)
        self._filled = 0

    def _fill(self) -> bool:
        """Move unconsumed scratch bytes into the current target; True once it is full."""
        target = self._target
        assert target is not None
        take = min(len(target) - self._filled, self._end - self._start)
        if take:
            target[self._filled : self._filled + take] = memoryview(self._scratch)[self._start : self._start + take]
            self._filled += take
            self._start += take
        if self._start == self._end:
            self._start = self._end = 0
        return self._filled == len(target)

    def _finish(self) -> RawFrame:
        header, head, target = self._header, self._head, self._target
        assert header is not None and head is not None and target is not None
        mac = bytes(target[header.body_len :]) if header.has_mac and header.body_len else None
        frame = RawFrame(head, target[: header.body_len], mac, self._checked)
        self._state, self._header, self._head, self._checked, self._target, self._filled = _HEADER, None, None, None, None, 0
        return frame
