"""The thin network shell: the protocol's AsyncServer around `DataCenter.handle`."""

from __future__ import annotations

import asyncio
import logging

from mlcore.processes import pid_alive
from protocol import AsyncServer, ResponseBlock

from .service import DataCenter

log = logging.getLogger("datacenter")


def make_callback(center: DataCenter):
    """A sync callback (the server runs it in a worker thread, one request at a time)."""

    def callback(message_type, query_dataframe=None, random_dataframe=None, metadata=None):
        reply = center.handle(message_type, query_dataframe, random_dataframe, metadata)
        return ResponseBlock(reply.retraining_flag, reply.checkpoint, info=reply.info)

    return callback


async def _stop_when_gone(server: AsyncServer, pid: int, interval: float = 1.0) -> None:
    while pid_alive(pid):
        await asyncio.sleep(interval)
    log.info("process %d is gone: stopping", pid)
    server.stop()


async def serve(center: DataCenter, *, host: str, port: int, port_file: str, token: str | None,
                exit_with_pid: int | None) -> None:
    server = AsyncServer(make_callback(center), port, host=host, token=token, port_file=port_file)
    watcher = asyncio.create_task(_stop_when_gone(server, exit_with_pid)) if exit_with_pid else None
    try:
        await server.start_server()
    finally:
        if watcher:
            watcher.cancel()
