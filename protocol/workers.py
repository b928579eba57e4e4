"""Worker threads for sync callbacks and large decodes, that never hold up the process's exit.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so a
callback still training after the drain timeout kept a stopped server alive for as long
as it ran (14.7 s after SIGTERM with a 1 s drain). These threads are daemons: when the
server has drained what it could, the process can end, and the server logs what it left.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

_STOP = object()


class DaemonWorkers:
    """A fixed pool of daemon threads running blocking calls for one event loop."""

    def __init__(self, count: int = 4, name: str = "callback") -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `fn(*args)` in a worker; the result arrives on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        """Let idle workers end; busy ones finish their call, or die with the process."""
        for _ in self._threads:
            self._jobs.put(_STOP)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            call_and_deliver(*job)
            # Let go of the job before waiting for the next one: an idle worker that still held
            # its last one kept that request alive (its frame's pooled receive buffer, the
            # decoded DataFrames in the future's result) until the worker's next job.
            del job


def call_and_deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[..., Any],
                     args: tuple) -> None:
    """Run `fn(*args)` in this thread; hand its result or exception to `future` on `loop`."""
    try:
        result, error = fn(*args), None
    except BaseException as exc:  # delivered to the awaiting coroutine
        result, error = None, exc
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
