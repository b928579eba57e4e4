"""Run a coroutine on uvloop when it is installed (~1.5-2x faster I/O), else on asyncio."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Awaitable[T], *, use_uvloop: bool = True) -> T:
    """`asyncio.run`, on uvloop when available and wanted."""
    factory = loop_factory() if use_uvloop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def chosen_loop(use_uvloop: bool = True) -> str:
    """The loop `run` would use: "uvloop" or "asyncio" (for the command lines' logs)."""
    return "uvloop" if use_uvloop and loop_factory() is not None else "asyncio"


def loop_name() -> str:
    loop: Any = asyncio.get_running_loop()
    return type(loop).__module__.split(".")[0]
