"""What tests of every package share: a real AsyncServer in a thread, and a TLS pair.

`ServerThread` runs a server on its own event loop in a background thread, on 127.0.0.1
port 0, and stops it by `stop()` (or leaving the `with` block). `make_tls_contexts` makes a
self-signed certificate for 127.0.0.1 with the openssl CLI.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

from protocol import AsyncServer


class ServerThread:
    """A real AsyncServer on its own event loop in a background thread (port 0)."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server
        self.port = 0
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            task = asyncio.create_task(self.server.start_server())
            self.port = await self.server.wait_started()
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test by start()
            self.error = exc
            self._ready.set()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start within 10 s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(15)
        assert not self._thread.is_alive(), "server did not stop"

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_tls_contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) contexts for a fresh self-signed 127.0.0.1 certificate; None without openssl."""
    if shutil.which("openssl") is None:
        return None
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client
