"""Fixtures: a real AsyncServer on 127.0.0.1 (port 0) in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from protocol import AsyncClient, AsyncServer
from protocol.codec import encode_request
from protocol.blocks import RequestBlock


def echo_callback(message_type, query_dataframe, random_dataframe):
    """Answers with the message type and the shape of what arrived."""
    rows = None if query_dataframe is None else len(query_dataframe)
    return message_type == "retraining", f"{message_type}:{rows}"


class RunningServer:
    def __init__(self, **kwargs) -> None:
        self.server = AsyncServer(kwargs.pop("callback", echo_callback), 0, **kwargs)
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "server did not start"
        if self.error:
            raise self.error
        self.port = self.server.port

    def _run(self) -> None:
        async def main():
            task = asyncio.create_task(self.server.start_server())
            await self.server.wait_started()
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test via self.error
            self.error = exc
            self._ready.set()

    def client(self, **kwargs) -> AsyncClient:
        return AsyncClient(self.port, timeout=kwargs.pop("timeout", 10), **kwargs)

    def ask(self, message_type="handshake", *args, **kwargs):
        """One request from a fresh client, on a fresh loop; returns the ResponseBlock."""
        client_kwargs = {k: kwargs.pop(k) for k in ("token", "ssl", "server_hostname", "timeout") if k in kwargs}
        return asyncio.run(self.client(**client_kwargs).send_data(message_type, *args, **kwargs))

    def assert_serving(self, **kwargs) -> None:
        """The server still answers a valid request correctly."""
        flag, checkpoint = self.ask("normal", **kwargs)
        assert (flag, checkpoint) == (False, "normal:None")

    def raw_exchange(self, data: bytes, *, wait: float = 5.0) -> bytes:
        """Send raw bytes, half-close, and return everything the server sends back."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "server did not stop"


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request_bytes(message_type="normal", *args, token=None, **kwargs) -> bytes:
    return b"".join(bytes(p) for p in encode_request(RequestBlock(message_type, *args, **kwargs), token=token))


@pytest.fixture
def start_server():
    """Factory: start_server(**AsyncServer kwargs) -> RunningServer; all stopped at teardown."""
    servers: list[RunningServer] = []

    def start(**kwargs) -> RunningServer:
        servers.append(RunningServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    return start_server()
