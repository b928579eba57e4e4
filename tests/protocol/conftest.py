"""Fixtures: a real AsyncServer on 127.0.0.1 (port 0) in a background thread (tests/serving.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from protocol import AsyncClient, AsyncServer
from protocol.codec import encode_request
from protocol.blocks import RequestBlock
from serving import ServerThread


def echo_callback(message_type, query_dataframe, random_dataframe):
    """Answers with the message type and the shape of what arrived."""
    rows = None if query_dataframe is None else len(query_dataframe)
    return message_type == "retraining", f"{message_type}:{rows}"


class RunningServer(ServerThread):
    """The shared ServerThread, started at once around an echo server, with request helpers."""

    def __init__(self, **kwargs) -> None:
        super().__init__(AsyncServer(kwargs.pop("callback", echo_callback), 0, **kwargs))
        self.start()

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
