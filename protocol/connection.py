"""The asyncio shell shared by server and client: one `BufferedProtocol` driving a conversation.

It receives straight into the buffer the conversation hands out (a large body lands in
its final place), and after every input it `drive()`s: writes what the conversation
queued, hands its events to the subclass, pauses or resumes reading, (re)arms the one
timer at the conversation's deadline, and closes or aborts when it says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

from .conversation import Event, _Conversation

log = logging.getLogger("protocol")

#: Frames up to this size are joined and written at once (one syscall for a small frame).
JOIN_BELOW = 256 * 1024
#: Larger frames are written in slices with a drain in between: asyncio's `writelines`
#: joins its buffers into one copy of the whole frame on Python 3.11.
SLICE_BYTES = 1 << 20


def frame_size(parts: list[Any]) -> int:
    """Bytes in a frame's buffers (the codec makes them bytes or memoryviews)."""
    return sum([p.nbytes if type(p) is memoryview else len(p) for p in parts])


class ConversationProtocol(asyncio.BufferedProtocol):
    """Bytes in and out of `self.conversation`; subclasses set it and handle its events."""

    conversation: _Conversation

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.bytes_sent = 0
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._reading = True
        self._timer: Any = None  # what `cancel()`s the pending timer (a TimerHandle or a QueuedCall)
        self._timer_at: float | None = None
        #: What arms the first timer: the loop, or a `DeadlineQueue` the owner shares between
        #: its connections (a first deadline is almost never reached); later ones, the loop.
        self.first_timers: Any = self.loop
        self._can_write: asyncio.Event | None = None  # made when writing first pauses (large frames only)
        self._driving = self._drive_again = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def peer_address(self) -> Any:
        """As get_extra_info("peername") gives it (asked for only when needed)."""
        return None if self.transport is None else self.transport.get_extra_info("peername")

    @property
    def peer(self) -> str:
        """The peer's address, for log lines (formatted only when one is written)."""
        if self.transport is None:
            return "?"
        peer = self.peer_address
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conversation.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.conversation.buffer_updated(nbytes, self.loop.time())
        self.drive()

    def eof_received(self) -> bool:
        self.conversation.receive_eof(self.loop.time())
        self.drive()
        # Keep our side open: a half-closed peer still gets its answer. TLS cannot half-close
        # (asyncio warns when asked to), so there the answer must already be on its way. Once
        # closing (the drive closed it), "keep open" only made asyncio look for the reader its
        # close removed (two KeyErrors and a repr, a connection); its own close() is a no-op.
        transport = self.transport
        return transport is None or (not transport.is_closing() and transport.get_extra_info("sslcontext") is None)

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = asyncio.Event()
        self._can_write.clear()
        self.conversation.write_blocked(True, self.loop.time())
        self.drive()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.set()
        self.conversation.write_blocked(False, self.loop.time())
        self.drive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conversation.connection_lost()
        if self._can_write is not None:
            self._can_write.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while (event := self.conversation.next_event()) is not None:
            self.handle_event(event)
        if not self.closed.done():
            self.closed.set_result(None)
        self.handle_lost(exc)

    # -- the pump
    def drive(self) -> None:
        """Do what the conversation asks: send, report events, read or not, time, close.

        Not re-entrant: an event handler that answers at once (a request served eagerly)
        calls `drive` again from inside it; that call only asks for one more pass, so a
        burst of pipelined requests is served in a loop, not in a recursion."""
        if self._driving:
            self._drive_again = True
            return
        self._driving = True
        try:
            self._drive_again = True
            while self._drive_again:
                self._drive_again = False
                self._drive_once()
        finally:
            self._driving = False

    def _drive_once(self) -> None:
        conv, transport = self.conversation, self.transport
        if transport is None or transport.is_closing():
            return
        parts = conv.data_to_send()
        if parts:
            self.write(parts)
        while (event := conv.next_event()) is not None:
            self.handle_event(event)
            parts = conv.data_to_send()  # a request answered at once, before a close is acted on
            if parts:
                self.write(parts)
        # A drive() asked for by an event handler is done by the rest of this pass.
        self._drive_again = False
        if conv.aborted:
            transport.abort()
            return
        if conv.closed:
            transport.close()  # after what is buffered has been sent
            return
        wants_read = conv.wants_read
        if wants_read != self._reading:
            self._reading = wants_read
            (transport.resume_reading if wants_read else transport.pause_reading)()
        self.arm_timer(conv.deadline)

    def arm_timer(self, deadline: float | None) -> None:
        """Make sure the timer fires by `deadline` (the conversation's; None: no timer needed)."""
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            # Re-armed only when the deadline moves earlier. A timer left running (the
            # deadline moved later, or went away) fires, finds nothing expired, and is
            # re-armed then: a busy connection costs no timer churn.
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.first_timers.call_at(deadline, self._on_timer)
            self.first_timers = self.loop

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.conversation.on_timeout(self.loop.time())
        self.drive()

    def write(self, parts: list[Any], size: int | None = None) -> None:
        """Write a small frame in one call; large ones go through `write_sliced`."""
        assert self.transport is not None
        if size is None:
            size = frame_size(parts)
        self.bytes_sent += size
        if size <= JOIN_BELOW:
            self.transport.write(b"".join(parts))
        else:
            for part in parts:
                self.transport.write(part)

    async def write_sliced(self, parts: list[Any]) -> None:
        """Write a large frame in slices, waiting for the transport to drain in between."""
        assert self.transport is not None
        size = frame_size(parts)
        if size <= JOIN_BELOW:
            self.write(parts)
            return
        self.bytes_sent += size
        # Slices of SLICE_BYTES across part boundaries: the header, metadata and MAC go out
        # with the start of the body (one send each was a TCP segment, and a wake-up of the
        # peer for 32 bytes); a slice inside one large part is written without a copy.
        pending: list[memoryview] = []
        pending_bytes = 0
        for part in parts:
            view = memoryview(part).cast("B")
            start = 0
            while start < view.nbytes:
                take = min(SLICE_BYTES - pending_bytes, view.nbytes - start)
                pending.append(view[start : start + take])
                pending_bytes += take
                start += take
                if pending_bytes == SLICE_BYTES:
                    if not await self._write_slice(pending):
                        return
                    pending, pending_bytes = [], 0
        if pending:
            await self._write_slice(pending)

    async def _write_slice(self, pieces: list[memoryview]) -> bool:
        """Write one slice and wait for the transport to drain; False once it is closing."""
        assert self.transport is not None
        if self.transport.is_closing():
            return False
        self.transport.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._can_write is not None:
            await self._can_write.wait()
        return True

    # -- for subclasses
    def handle_event(self, event: Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def handle_lost(self, exc: Exception | None) -> None:
        """The transport is gone (after the last events were handled)."""

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.conversation.closed

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def wait_closed(self, timeout: float) -> None:
        """Wait (up to `timeout`) until the transport is gone; never raises."""
        try:
            if self.closed.done():
                return
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except asyncio.TimeoutError:
            pass

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def start_eagerly(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run a coroutine's first step now; only if it suspends does a Task carry it on.

    A request whose callback answers without waiting (the common case: an async callback
    that returns at once, a small body decoded on the loop) is served inside the read
    callback that completed it: no Task, no extra turn of the loop. (Python 3.12's eager
    task factory does the same.) An exception that escapes the coroutine is logged, as an
    unretrieved Task exception would be."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    except Exception:
        log.exception("request handler failed")
        return None
    return loop.create_task(_carry_on(loop, coro, yielded))


async def _carry_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive a started coroutine as a Task would: wait for the future it yielded, resume it."""
    while True:
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0)): one turn of the loop
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False
                waiter = loop.create_future()
                yielded.add_done_callback(lambda _, w=waiter: w.done() or w.set_result(None))
                await waiter
        except BaseException as exc:  # cancelled: the awaited future goes too, the coroutine hears it
            if yielded is not None:
                yielded.cancel()
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value
