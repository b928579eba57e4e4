"""One loop timer for many deadlines that come in order — a fresh connection's, a connect's.

`loop.call_at` makes each timer a heap entry ordered by Python-level comparisons
(`TimerHandle.__lt__`), and a cancelled one stays in the heap until it reaches the top.
A request on a new connection armed and cancelled three (the client's connect and reply
deadlines, the server's auth deadline), though almost none ever fires: with
`asyncio.timeout`'s two coroutines, 5-8% of its time in process. Each of those deadlines
is "now + the same delay", so they come in the order they are asked for: a FIFO keeps
them, one loop timer waits for the oldest, and cancelling one is a dict deletion. A
deadline earlier than the last one queued gets a loop timer of its own.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from types import TracebackType
from typing import Callable


class QueuedCall:
    """What `DeadlineQueue.call_at` returns for a queued deadline: `cancel()` as a TimerHandle's."""

    __slots__ = ("_due", "callback")

    def __init__(self, due: "OrderedDict[QueuedCall, float]", callback: Callable[[], object]) -> None:
        self._due = due
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        self._due.pop(self, None)
        self.callback = None  # (also when it is due in the batch running now, as a TimerHandle)


class DeadlineQueue:
    """`call_at` for deadlines asked for in time order, on one loop timer.

    Each callback runs once, at (or just after) its deadline, unless cancelled first, as
    with `loop.call_at`; an exception it raises goes to the loop's exception handler, as
    there. Deadlines that would break the order go to `loop.call_at`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: OrderedDict[QueuedCall, float] = OrderedDict()  # oldest first
        self._last = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def call_at(self, when: float, callback: Callable[[], object]) -> QueuedCall | asyncio.TimerHandle:
        if when < self._last:
            return self.loop.call_at(when, callback)
        self._last = when
        call = QueuedCall(self._due, callback)
        self._due[call] = when
        if self._timer is None:
            self._timer = self.loop.call_at(when, self._fire)
        return call

    def timeout_at(self, when: float) -> "Timeout":
        """`asyncio.timeout_at(when)`'s contract, on this queue, as a plain (not async) `with`."""
        return Timeout(self, when)

    def close(self) -> None:
        """Drop every queued call and the loop timer (the owner stops)."""
        for call in self._due:
            call.callback = None
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        """Run the calls that are due, oldest first, after waiting again for the next one
        (calls queued by these callbacks are due later: they wait for that timer)."""
        due, now = self._due, self.loop.time()
        ready: list[QueuedCall] = []
        while due:
            call, when = next(iter(due.items()))
            if when > now:
                break
            del due[call]
            ready.append(call)
        self._timer = self.loop.call_at(next(iter(due.values())), self._fire) if due else None
        for call in ready:
            callback, call.callback = call.callback, None
            if callback is None:  # cancelled by a callback before it
                continue
            try:
                callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as asyncio's Handle: logged, the loop goes on
                self.loop.call_exception_handler(
                    {"message": f"Exception in deadline callback {callback!r}", "exception": exc})


class Timeout:
    """Cancel the current task at `when`; leaving the `with` block turns that cancellation into
    `TimeoutError` — as `asyncio.Timeout` does (same `cancelling`/`uncancel` accounting, so a
    cancellation from elsewhere still propagates), without its loop timer and two coroutines."""

    __slots__ = ("_queue", "_when", "_task", "_cancelling", "_call", "_expired")

    def __init__(self, queue: DeadlineQueue, when: float) -> None:
        self._queue, self._when = queue, when

    def __enter__(self) -> "Timeout":
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeout should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._call = self._queue.call_at(self._when, self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._call.cancel()
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
