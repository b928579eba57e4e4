"""Shared by tests/reliability and benchmarks/reliability: payloads whose checksum the server
echoes, a checksum server, a load generator, and a faulty TCP proxy on loopback.

Nothing here is a mock: the server is the real `AsyncServer`, the clients the real
`AsyncClient`, the proxy a real TCP relay between them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from protocol import AsyncClient, AsyncServer, FrameDecoder, ProtocolError, ResponseBlock, decode_response
from protocol.frame import HEADER_SIZE, Header, parse_header
from protocol.limits import Limits

LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------------------- payloads
def payload(seed: int, rows: int = 32, features: int = 64) -> pd.DataFrame:
    """A sample-like frame: ids, a float, a nullable label, a string tag and a feature vector."""
    rng = np.random.default_rng(seed)
    labels = pd.array(rng.integers(0, 10, rows), dtype="Int64")
    labels[rng.random(rows) < 0.2] = pd.NA
    return pd.DataFrame({
        "id": np.arange(seed * rows, (seed + 1) * rows, dtype=np.int64),
        "x": rng.random(rows).astype(np.float32),
        "label": labels,
        "tag": pd.array([f"s{seed}-{i}" for i in range(rows)], dtype="string"),
        "features": list(rng.random((rows, features), dtype=np.float32)),
    })


def checksum(frame: pd.DataFrame | None) -> str:
    """sha256 of a frame's column names, dtypes and values (feature vectors and nulls included)."""
    if frame is None:
        return "none"
    digest = hashlib.sha256()
    for name, column in frame.items():
        digest.update(f"{name}:{column.dtype}:{len(column)};".encode())
        if name == "features":
            values = np.stack(column.to_numpy()) if len(column) else np.empty(0)
        elif isinstance(column.dtype, np.dtype):
            values = column.to_numpy()
        elif column.dtype.kind in "iuf":  # nullable numbers: values, then the null mask
            values = np.concatenate([column.to_numpy("float64", na_value=0.0), column.isna().to_numpy(np.float64)])
        else:
            values = np.frombuffer("\x1f".join("\x00" if v is pd.NA else v for v in column).encode(), np.uint8)
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def echo_callback(message_type: str, query_dataframe: pd.DataFrame | None = None,
                  random_dataframe: pd.DataFrame | None = None) -> ResponseBlock:
    """The checkpoint field echoes what the server received, so a swapped or damaged answer shows."""
    return ResponseBlock(False, f"{message_type}:{checksum(query_dataframe)}:{checksum(random_dataframe)}")


def expected_echo(message_type: str, query: pd.DataFrame | None, random_: pd.DataFrame | None) -> str:
    return f"{message_type}:{checksum(query)}:{checksum(random_)}"


def make_server(token: str | None = None, **kwargs: Any) -> AsyncServer:
    options = {"idle_timeout": 10.0, "frame_timeout": 5.0}
    options.update(kwargs)
    return AsyncServer(echo_callback, 0, host=LOOPBACK, token=token, **options)


async def echo_request(port: int, seed: int, *, token: str | None = None, timeout: float = 10.0,
                       message_type: str = "normal", rows: int = 32) -> None:
    """One request with two payloads; raise AssertionError unless the echo matches."""
    query, random_ = payload(seed, rows), payload(seed + 1_000_000, rows)
    response = await AsyncClient(port, token=token, timeout=timeout, retry_for=0.5).send_data(message_type, query, random_)
    assert response.checkpoint == expected_echo(message_type, query, random_), "echo mismatch"


async def raw_exchange(port: int, data: bytes, *, token: str | None = None, timeout: float = 5.0) -> ResponseBlock:
    """Send raw bytes on a fresh connection, return the server's decoded answer (no client-side checks)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        decoder, frames = FrameDecoder(), []
        while not frames:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            assert chunk, "the server closed the connection without answering"
            frames = decoder.feed(chunk)
    finally:
        writer.close()
    return decode_response(frames[0], token=token.encode() if token else None)


# ----------------------------------------------------------------------------- load
@dataclass
class LoadResult:
    clients: int
    requests: int
    rows: int
    ok: int = 0
    mismatched: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0

    @property
    def lost(self) -> int:
        return self.clients * self.requests - self.ok - self.mismatched

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "requests_per_client": self.requests, "rows": self.rows,
            "answered_ok": self.ok, "mismatched": self.mismatched, "lost": self.lost, "errors": len(self.errors),
            "seconds": round(self.seconds, 3), "requests_per_s": round(self.ok / self.seconds, 1) if self.seconds else 0,
            "MB_per_s": round(self.bytes_sent / self.seconds / 1e6, 1) if self.seconds else 0,
            "p50_ms": round(1e3 * self.percentile(0.50), 2), "p99_ms": round(1e3 * self.percentile(0.99), 2),
            "mean_ms": round(1e3 * statistics.fmean(self.latencies), 2) if self.latencies else None,
        }


async def run_load(port: int, clients: int, requests: int, rows: int = 32, *, token: str | None = None,
                   deadline: float = 60.0, timeout: float = 30.0) -> LoadResult:
    """`clients` concurrent edges, `requests` each; even clients keep one session, odd ones reconnect.

    Every request carries its own payloads; every answer is checked against their checksums.
    """
    result = LoadResult(clients, requests, rows)
    frames = {seed: payload(seed, rows) for seed in range(clients * requests * 2)}
    sums = {seed: checksum(frame) for seed, frame in frames.items()}

    async def edge(index: int) -> None:
        client = AsyncClient(port, token=token, timeout=timeout, retry_for=2.0, edge_id=f"edge{index}")

        async def one(i: int) -> None:
            seed = 2 * (index * requests + i)
            started = time.perf_counter()
            random_ = frames[seed + 1] if i % 5 == 0 else None  # both sections on every 5th request
            try:
                response = await client.send_data("normal", frames[seed], random_, round=i)
            except ProtocolError as exc:
                result.errors.append(f"edge{index}#{i}: {type(exc).__name__}: {exc}")
                return
            result.latencies.append(time.perf_counter() - started)
            if response.checkpoint == f"normal:{sums[seed]}:{sums[seed + 1] if random_ is not None else 'none'}":
                result.ok += 1
            else:
                result.mismatched += 1

        if index % 2 == 0:
            async with client:
                for i in range(requests):
                    await one(i)
        else:
            for i in range(requests):
                await one(i)
        result.bytes_sent += client.bytes_sent

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(edge(i) for i in range(clients))), deadline)
    result.seconds = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------- the proxy
@dataclass
class Faults:
    """What the proxy does to the bytes. Offsets count bytes of one connection and direction."""

    delay: float = 0.0                  # seconds before forwarding each chunk read
    chunk: int | str | None = None      # 1: one byte per write; "random": random sizes 1..4096
    drop_after: tuple[str, int] | None = None  # ("up"|"down", n): close both sides after n bytes
    skip: tuple[str, int, int] | None = None   # ("up"|"down", offset, n): silently lose n bytes
    flip: tuple[str, int] | None = None        # ("up"|"down", offset): xor one byte with 0xFF
    seed: int = 0


class FrameWatcher:
    """Follows the frames of one client->server stream; reports each request's type."""

    def __init__(self, on_request: Callable[[str], None]) -> None:
        self.on_request = on_request
        self.buffer = bytearray()
        self.header: Header | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.header is None:
                if len(self.buffer) < HEADER_SIZE:
                    return
                self.header = parse_header(self.buffer, Limits())
            total = self.header.frame_len
            if len(self.buffer) < HEADER_SIZE + self.header.meta_len:
                return
            meta = json.loads(bytes(self.buffer[HEADER_SIZE : HEADER_SIZE + self.header.meta_len]))
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            self.header = None
            self.on_request(meta.get("request_type", "?"))


class FaultyProxy:
    """A TCP relay on 127.0.0.1 that delays, re-chunks, drops, loses or flips bytes.

    Runs its own event loop in a thread, so it can sit between real processes too.
    `on_request(type)` is called (in the proxy's thread) once a whole request frame has
    been forwarded; with `hold_replies_after` set, no reply is forwarded from the moment a
    request of that type is seen (the client must notice the server's death itself).
    """

    def __init__(self, upstream_port: int | Callable[[], int], faults: Faults | None = None, *,
                 on_request: Callable[[str], None] | None = None, hold_replies_after: str | None = None) -> None:
        self.upstream = upstream_port
        self.faults = faults or Faults()
        self.on_request = on_request
        self.hold_replies_after = hold_replies_after
        self.port = 0
        self.connections = 0
        self.requests_seen: list[str] = []
        self._rng = random.Random(self.faults.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stopped: asyncio.Event | None = None

    # -- lifecycle
    def __enter__(self) -> "FaultyProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped.wait()
            self._server.close()

        asyncio.run(main())

    # -- relaying
    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        port = self.upstream() if callable(self.upstream) else self.upstream
        try:
            server_reader, server_writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            client_writer.close()
            return
        held = asyncio.Event()
        pending: list[str] = []

        def seen(request_type: str) -> None:
            self.requests_seen.append(request_type)
            if request_type == self.hold_replies_after:
                held.set()  # before the request leaves: its answer can never slip through
            pending.append(request_type)

        def forwarded() -> None:
            while pending:
                request_type = pending.pop(0)
                if self.on_request is not None:
                    self.on_request(request_type)

        watcher = FrameWatcher(seen)
        up = asyncio.create_task(self._pump("up", client_reader, server_writer, watcher, held, forwarded))
        down = asyncio.create_task(self._pump("down", server_reader, client_writer, None, held))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pump(self, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    watcher: FrameWatcher | None, held: asyncio.Event,
                    forwarded: Callable[[], None] | None = None) -> None:
        faults, offset = self.faults, 0
        while True:
            data = await reader.read(65536)
            if not data:
                return
            start, end = offset, offset + len(data)  # offsets in the stream as received
            offset = end
            if faults.delay:
                await asyncio.sleep(faults.delay)
            data = bytearray(data)
            if faults.flip and faults.flip[0] == direction and start <= faults.flip[1] < end:
                data[faults.flip[1] - start] ^= 0xFF
            if faults.drop_after and faults.drop_after[0] == direction and end >= faults.drop_after[1]:
                await self._write(writer, bytes(data[: faults.drop_after[1] - start]))
                return  # the caller closes both sides
            if faults.skip and faults.skip[0] == direction:
                lo, hi = max(faults.skip[1], start), min(faults.skip[1] + faults.skip[2], end)
                if lo < hi:
                    del data[lo - start : hi - start]
            if direction == "down" and held.is_set():
                continue  # the reply is swallowed: the client only learns of the server's death
            if watcher is not None:
                try:
                    watcher.feed(bytes(data))
                except (ProtocolError, ValueError):
                    watcher = None  # damaged on purpose: stop following frames
            await self._write(writer, bytes(data))
            if forwarded is not None:
                forwarded()  # on_request fires once the whole request has been handed to the server

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        chunk = self.faults.chunk
        if chunk is None:
            writer.write(data)
            await writer.drain()
            return
        view = memoryview(data)
        while view:
            size = 1 if chunk == 1 else self._rng.randint(1, 4096) if chunk == "random" else int(chunk)
            writer.write(bytes(view[:size]))
            view = view[size:]
            await writer.drain()
            await asyncio.sleep(0)  # let each piece leave as its own write
