"""The thin network shell: the protocol's AsyncServer around `DataCenter.handle`.

Requests from every edge run at once (the state they build on is named in each request, and
snapshots are immutable, so nothing needs the server's one-at-a-time lock). They run in two
lanes, so that a drift check never waits behind a training:

- handshakes, `normal` checks and `prep_retraining` run in a pool of `workers` threads that
  nothing long ever occupies;
- each `retraining` request runs in a daemon thread of its own (their number is bounded by
  the server's connections, one request in flight each), where it waits for a slot of the
  data center's training queue (`datacenter.trainings`, round-robin across edges) around its
  fine-tune. Waiting costs no core; with the default of one training on 2 cores, the other
  core is left to the checks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from ssl import SSLContext
from typing import Any, Callable

from mlcore.processes import pid_alive
from protocol import MESSAGE_TYPES, AsyncServer, MessageType, ResponseBlock, write_port_file
from protocol.workers import DaemonWorkers, call_and_deliver

from .service import DataCenter

log = logging.getLogger("datacenter")

DEFAULT_WORKERS = 4  # threads for checks, prepares and handshakes (trainings have threads of their own)
# A training thread holds the GIL between torch kernels; a check thread waiting for it gets it
# after the switch interval (CPython's default: 5 ms), and a check needs it hundreds of times.
# 0.5 ms cut a check's p50 under training from 66 to 48 ms (benchmarks/results/datacenter-load.md).
SWITCH_INTERVAL = 0.0005


class Lanes:
    """The server's callback: checks in a pool of `workers` threads, each retraining in a thread of its own."""

    def __init__(self, center: DataCenter, *, workers: int = DEFAULT_WORKERS) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.center, self.workers = center, workers
        self._pool: DaemonWorkers | None = None  # started with the first request, on the serving loop

    async def __call__(self, message_type: str, query_dataframe: Any = None, random_dataframe: Any = None,
                       metadata: dict[str, Any] | None = None) -> ResponseBlock:
        args = (message_type, query_dataframe, random_dataframe, metadata)
        if message_type == MessageType.RETRAINING.value:
            reply = await in_own_thread(self.center.handle, *args)
        else:
            if self._pool is None:
                self._pool = DaemonWorkers(self.workers, name="request")
            reply = await self._pool.run(self.center.handle, *args)
        return ResponseBlock(reply.flag, reply.sha256, info=reply.info, checkpoint_data=reply.data)

    def close(self) -> None:
        """Let the idle pool threads end (busy ones finish their call, or die with the process)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


async def in_own_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a new daemon thread (it never holds up the process's exit); awaited on this loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    threading.Thread(target=call_and_deliver, args=(loop, future, fn, args), name="retraining", daemon=True).start()
    return await future


def make_server(center: DataCenter, port: int = 0, *, host: str = "127.0.0.1", token: str | None = None,
                workers: int = DEFAULT_WORKERS, **options: Any) -> tuple[AsyncServer, Lanes]:
    """The data center's AsyncServer (every message type concurrent) and its callback (close it after)."""
    lanes = Lanes(center, workers=workers)
    server = AsyncServer(lanes, port, host=host, token=token, concurrent_types=MESSAGE_TYPES, **options)
    return server, lanes


async def _stop_when_gone(server: AsyncServer, pid: int, interval: float = 1.0) -> None:
    while pid_alive(pid):
        await asyncio.sleep(interval)
    log.info("process %d is gone: stopping", pid)
    server.stop()


def _on_signal(server: AsyncServer, sig: int) -> None:
    log.info("received %s: draining %d request(s) in flight", signal.Signals(sig).name, server.in_flight)
    server.stop()


async def serve(center: DataCenter, *, host: str, port: int, port_file: str, token: str | None,
                exit_with_pid: int | None, workers: int = DEFAULT_WORKERS, ssl: SSLContext | None = None) -> None:
    """Serve until SIGTERM/SIGINT or until `exit_with_pid` is gone; publish the port once listening."""
    sys.setswitchinterval(SWITCH_INTERVAL)  # this process serves: checks get the GIL back from training sooner
    server, lanes = make_server(center, port, host=host, token=token, workers=workers, ssl=ssl)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server, sig)
    serving = asyncio.create_task(server.start_server())
    started = asyncio.create_task(server.wait_started())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    watcher = None
    try:
        if not started.done():  # listening failed: its error comes out of `serving`
            started.cancel()
            await serving
            return
        write_port_file(port_file, server.port)
        watcher = asyncio.create_task(_stop_when_gone(server, exit_with_pid)) if exit_with_pid else None
        await serving
    finally:
        if watcher:
            watcher.cancel()
        lanes.close()
