"""The thin network shell: the protocol's AsyncServer around `DataCenter.handle`."""

from __future__ import annotations

import asyncio
import logging
import signal

from mlcore.processes import pid_alive
from protocol import AsyncServer, ResponseBlock, write_port_file

from .service import DataCenter

log = logging.getLogger("datacenter")


def make_callback(center: DataCenter):
    """A sync callback (the server runs it in a worker thread, one request at a time)."""

    def callback(message_type, query_dataframe=None, random_dataframe=None, metadata=None):
        reply = center.handle(message_type, query_dataframe, random_dataframe, metadata)
        return ResponseBlock(reply.flag, reply.sha256, info=reply.info, checkpoint_data=reply.data)

    return callback


async def _stop_when_gone(server: AsyncServer, pid: int, interval: float = 1.0) -> None:
    while pid_alive(pid):
        await asyncio.sleep(interval)
    log.info("process %d is gone: stopping", pid)
    server.stop()


def _on_signal(server: AsyncServer, sig: int) -> None:
    log.info("received %s: draining %d request(s) in flight", signal.Signals(sig).name, server.in_flight)
    server.stop()


async def serve(center: DataCenter, *, host: str, port: int, port_file: str, token: str | None,
                exit_with_pid: int | None) -> None:
    """Serve until SIGTERM/SIGINT or until `exit_with_pid` is gone; publish the port once listening."""
    server = AsyncServer(make_callback(center), port, host=host, token=token)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server, sig)
    serving = asyncio.create_task(server.start_server())
    started = asyncio.create_task(server.wait_started())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():  # listening failed: its error comes out of `serving`
        started.cancel()
        await serving
        return
    write_port_file(port_file, server.port)
    watcher = asyncio.create_task(_stop_when_gone(server, exit_with_pid)) if exit_with_pid else None
    try:
        await serving
    finally:
        if watcher:
            watcher.cancel()
