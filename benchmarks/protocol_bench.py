"""Protocol benchmark: issue 8 §3 ("small frames fast"), every target in one run.

Prints a Markdown report and writes it to benchmarks/results/protocol.md. Everything is
measured in one run, on 127.0.0.1 only, with every server in its own spawned process
(the clients run in this one, so both cores work as in a deployment) and the candidates
interleaved repetition by repetition, so drift on the machine hits them all alike:

(a) the original design, reimplemented here as the baseline: a new asyncio connection per
    request, `pickle.dumps(request)` + `write_eof()`, the server `read(-1)`s, unpickles,
    calls the callback and answers with a pickled `(flag, checkpoint)`, then closes;
(b) `protocol` (`AsyncServer` / `AsyncClient`): a new connection per request
    (`client.send_data`) and a persistent session (`async with client`), on asyncio and
    on uvloop (server and client on the same kind of loop);
(c) Arrow Flight: `do_put` of `pa.Table.from_pandas(frame)`, the server `read_all()`s and
    calls `to_pandas()` (it must end with a DataFrame, as the others do) and answers in
    the put's metadata stream; one reused `FlightClient` (a persistent gRPC channel);
(d) the loopback ceiling: blocking sockets, `sendall` against `recv_into` a preallocated
    buffer, the frame's Arrow size in bytes.

Workloads:
- frames: id, label (int64), a path string, 64 float32 features (1k / 10k / 100k / 1M
  rows = 67 columns), sent as query_data;
- the edge's real sample frames (`mlcore.frames.build_sample_frame`: id, x = object column
  of float32 arrays of 64 values, label Int64 with <NA>, round str, shift str): 100 rows
  as random_data (the state check) and 10 rows as query_data (a query batch);
- tiny requests (no DataFrame), 16 concurrent clients.

Times are end to end (encode, send, decode into a DataFrame on the server, callback,
reply, decode). On a session the connection is opened and used once before the clock
starts, then several requests are timed one by one. Figures are medians with the
interquartile range over every timed request (rates: median and min-max over
repetitions). Server CPU time is read from the server process's CPU clock, client CPU
time from this process's. The foreign CPU load (other processes on the machine) is
estimated from /proc/stat for the whole run and for each part.

A last, in-process part profiles the sans-I/O conversation (`ClientConversation` +
`ServerConversation` wired in memory) with cProfile, and times each step of a round trip
against a pickle round trip of the same request: that is what bounds each figure.

    python benchmarks/protocol_bench.py            # full run, about 4-5 minutes
    python benchmarks/protocol_bench.py --quick    # about a minute
    python benchmarks/protocol_bench.py --profile  # only the in-process profile (prints it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import functools
import gc
import io
import multiprocessing as mp
import os
import pickle
import platform
import pstats
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "protocol.md"

from machine_load import LoadMeter, process_cpu  # noqa: E402
from mlcore.frames import build_sample_frame  # noqa: E402

try:  # (b) is measured only when this project's protocol package imports
    import protocol
    from protocol import AsyncClient, AsyncServer, ClientConversation, RequestBlock, ResponseBlock, ServerConversation
except ImportError as exc:
    PROTOCOL_MISSING: ImportError | None = exc
else:
    PROTOCOL_MISSING = None

HOST = "127.0.0.1"
FEATURES = 64
SIZES = (1_000, 10_000, 100_000, 1_000_000)
LOOPS = ("asyncio", "uvloop")
CLIENTS = 16
ORIGINAL = "original"
ORIGINAL_LABEL = "original: pickle, new connection, read(-1) [asyncio]"
FLIGHT_LABEL = "Arrow Flight do_put, from_pandas/to_pandas [reused client]"
RAW_LABEL = "raw socket ceiling (same bytes)"
SAMPLE_ROWS, BATCH_ROWS = 100, 10
SAMPLE_TARGET_S = 1e-3


@dataclass(frozen=True)
class Plan:
    reps: dict[int, int]  # frame rows -> timed repetitions (after one warm-up)
    per_session: int  # requests timed on one session per repetition, frames up to 10k rows and sample frames
    sample_reps: int  # repetitions of the sample-frame workloads
    tiny_reps: int  # repetitions of each tiny-request rate
    new_connection_requests: int  # per client and repetition
    session_requests: int  # per client and repetition


FULL = Plan({1_000: 20, 10_000: 12, 100_000: 7, 1_000_000: 7}, per_session=10, sample_reps=20, tiny_reps=5,
            new_connection_requests=100, session_requests=1000)
QUICK = Plan({1_000: 8, 10_000: 4, 100_000: 2, 1_000_000: 2}, per_session=5, sample_reps=8, tiny_reps=3,
             new_connection_requests=40, session_requests=300)


# ----------------------------------------------------------------------------- data
def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    columns: dict[str, Any] = {
        "id": np.arange(rows, dtype=np.int64),
        "label": rng.integers(0, 10, rows, dtype=np.int64),
        "path": [f"/data/img_{i:06d}.png" for i in range(rows)],
    }
    columns.update({f"f{j}": features[:, j] for j in range(FEATURES)})
    return pd.DataFrame(columns)


def make_sample_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """The edge's frame: 8x8 digit images flattened to 64 float32 values, half the labels <NA>."""
    rng = np.random.default_rng(seed)
    images = rng.random((rows, 8, 8), dtype=np.float32)
    labels = np.where(rng.random(rows) < 0.5, -1, rng.integers(0, 10, rows))
    return build_sample_frame(np.arange(rows, dtype=np.int64), images, labels, "round-3", "none")


def arrow_nbytes(frame: pd.DataFrame) -> int:
    return pa.Table.from_pandas(frame, preserve_index=False).nbytes


def rows_of(frame: pd.DataFrame | None) -> int:
    return 0 if frame is None else len(frame)


def answer(message_type: str, query_dataframe: pd.DataFrame | None, random_dataframe: pd.DataFrame | None) -> tuple[bool, str]:
    """The trivial callback every server calls: proves it holds DataFrames of the right lengths."""
    return False, f"ok {rows_of(query_dataframe)} {rows_of(random_dataframe)}"


def check(reply: Any, query_rows: int, random_rows: int = 0) -> None:
    flag, checkpoint = reply
    if checkpoint != f"ok {query_rows} {random_rows}":
        raise RuntimeError(f"wrong reply {checkpoint!r} for frames of {query_rows} and {random_rows} rows")


def run_on(loop: str, main: Awaitable[Any]) -> Any:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)  # type: ignore[arg-type]


@dataclass
class Work:
    """One workload: the request's frames and what the raw ceiling sends."""

    name: str
    query: pd.DataFrame | None
    random: pd.DataFrame | None
    payload: np.ndarray | None = None  # as many bytes as the frame's Arrow size

    @property
    def expected(self) -> tuple[int, int]:
        return rows_of(self.query), rows_of(self.random)


@dataclass
class Sample:
    """Timed requests of one measurement, and (on sessions) the CPU both sides spent on them."""

    times: list[float]
    server_cpu: float | None = None
    client_cpu: float | None = None


# ----------------------------------------------------------------------------- (a) original design
@dataclass
class PickledRequest:
    """The original RequestBlock: the whole object, DataFrames included, goes through pickle."""

    request_type: str
    query_data: pd.DataFrame | None = None
    random_data: pd.DataFrame | None = None


async def original_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = pickle.loads(await reader.read(-1))
    writer.write(pickle.dumps(answer(request.request_type, request.query_data, request.random_data)))
    await writer.drain()
    writer.close()


async def original_exchange(port: int, query: pd.DataFrame | None, random: pd.DataFrame | None = None) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(pickle.dumps(PickledRequest("normal", query, random)))
    writer.write_eof()
    reply = pickle.loads(await reader.read(-1))
    writer.close()
    return reply


async def original_timed(port: int, work: Work) -> Sample:
    start = time.perf_counter()
    reply = await original_exchange(port, work.query, work.random)
    elapsed = time.perf_counter() - start
    check(reply, *work.expected)
    return Sample([elapsed])


async def original_workers(port: int, count: int) -> None:
    for _ in range(count):
        check(await original_exchange(port, None), 0)


# ----------------------------------------------------------------------------- (b) protocol
async def protocol_callback(message_type: str, query_dataframe: Any, random_dataframe: Any) -> Any:
    return ResponseBlock(*answer(message_type, query_dataframe, random_dataframe))


async def protocol_new_connection(port: int, work: Work) -> Sample:
    client = AsyncClient(port)
    start = time.perf_counter()
    reply = await client.send_data("normal", query_data=work.query, random_data=work.random)
    elapsed = time.perf_counter() - start
    check(reply, *work.expected)
    return Sample([elapsed])


async def protocol_session(port: int, server_pid: int, count: int, work: Work) -> Sample:
    """`count` requests timed one by one on a session opened (and used once) before the clock starts."""
    times = []
    async with AsyncClient(port) as client:
        await client.send_data("handshake")
        server0, client0 = process_cpu(server_pid), time.process_time()
        for _ in range(count):
            start = time.perf_counter()
            reply = await client.send_data("normal", query_data=work.query, random_data=work.random)
            times.append(time.perf_counter() - start)
            check(reply, *work.expected)
        server_cpu, client_cpu = process_cpu(server_pid) - server0, time.process_time() - client0
    return Sample(times, server_cpu, client_cpu)


async def protocol_workers(port: int, count: int, session: bool) -> None:
    client = AsyncClient(port)
    async with client if session else contextlib.nullcontext():
        for _ in range(count):
            check(await client.send_data("normal"), 0)


# ----------------------------------------------------------------------------- (c) Arrow Flight
class FlightSink(flight.FlightServerBase):
    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        frame = reader.read_all().to_pandas()
        flag, checkpoint = answer(descriptor.command.decode(), frame, None)
        writer.write(pa.py_buffer(f"{int(flag)}{checkpoint}".encode()))


def flight_frame(client: flight.FlightClient, work: Work) -> Sample:
    assert work.query is not None
    start = time.perf_counter()
    table = pa.Table.from_pandas(work.query, preserve_index=False)
    writer, metadata = client.do_put(flight.FlightDescriptor.for_command(b"normal"), table.schema)
    writer.write_table(table)
    writer.done_writing()
    reply = metadata.read().to_pybytes().decode()
    writer.close()
    elapsed = time.perf_counter() - start
    check((reply[0] == "1", reply[1:]), *work.expected)
    return Sample([elapsed])


# ----------------------------------------------------------------------------- (d) raw sockets
LENGTH = struct.Struct("!Q")


def recv_exactly(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = conn.recv_into(view[got:])
        if not n:
            raise ConnectionError("sender closed early")
        got += n


def raw_transfer(port: int, work: Work) -> Sample:
    payload = work.payload
    assert payload is not None
    start = time.perf_counter()
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(LENGTH.pack(payload.nbytes))
        sock.sendall(payload)
        if sock.recv(1) != b"k":
            raise RuntimeError("raw receiver did not acknowledge")
    return Sample([time.perf_counter() - start])


# ----------------------------------------------------------------------------- server processes
def serve_original(report: Callable[[int], None]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(original_handle, HOST, 0, backlog=512)
        report(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def serve_protocol(loop: str, report: Callable[[int], None]) -> None:
    async def main() -> None:
        server = AsyncServer(protocol_callback, port=0, host=HOST)
        serving = asyncio.create_task(server.start_server())
        report(await server.wait_started())
        await serving

    run_on(loop, main())


def serve_flight(report: Callable[[int], None]) -> None:
    server = FlightSink(f"grpc://{HOST}:0")
    report(server.port)
    server.serve()


def serve_raw(report: Callable[[int], None]) -> None:
    listener = socket.create_server((HOST, 0))
    report(listener.getsockname()[1])
    buffer = np.empty(0, dtype=np.uint8)
    while True:
        conn, _ = listener.accept()
        with conn:
            header = bytearray(LENGTH.size)
            recv_exactly(conn, memoryview(header))
            (size,) = LENGTH.unpack(header)
            if size > buffer.nbytes:  # allocated once, at the warm-up of the largest frame
                buffer = np.empty(size, dtype=np.uint8)
            recv_exactly(conn, memoryview(buffer)[:size])
            conn.sendall(b"k")


SERVERS: dict[str, Callable[[Callable[[int], None]], None]] = {
    ORIGINAL: serve_original,
    "flight": serve_flight,
    "raw": serve_raw,
    **{f"protocol-{loop}": functools.partial(serve_protocol, loop) for loop in LOOPS},
}


def serve(kind: str, conn: Any) -> None:
    SERVERS[kind](conn.send)


@dataclass
class Servers:
    ports: dict[str, int]
    pids: dict[str, int]


@contextlib.contextmanager
def server_processes(kinds: list[str]):
    """Start one spawned process per server kind; yield their ports and pids; stop them all."""
    ctx = mp.get_context("spawn")
    procs = []
    try:
        for kind in kinds:
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=serve, args=(kind, sender), name=f"bench-{kind}", daemon=True)
            proc.start()
            procs.append((kind, proc, receiver))
        ports = {}
        for kind, proc, receiver in procs:
            if not receiver.poll(120):
                raise RuntimeError(f"the {kind} server did not start within 120 s")
            ports[kind] = receiver.recv()
        yield Servers(ports, {kind: proc.pid for kind, proc, _ in procs})
    finally:
        for _, proc, _ in procs:
            proc.terminate()  # the protocol server drains on SIGTERM; the others just exit
        for _, proc, _ in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


# ----------------------------------------------------------------------------- measurements
def protocol_label(loop: str, session: bool) -> str:
    return f"protocol, {'session' if session else 'new connection'} [{loop}]"


def frame_candidates(servers: Servers, plan: Plan, with_protocol: bool, flight_and_raw: bool,
                     big: bool) -> dict[str, Callable[[Work], Sample]]:
    """Name -> one measurement of a workload (one request, or `per_session` on a session)."""
    ports, pids = servers.ports, servers.pids
    candidates: dict[str, Callable[[Work], Sample]] = {
        ORIGINAL_LABEL: lambda w: run_on("asyncio", original_timed(ports[ORIGINAL], w)),
    }
    if with_protocol:
        per_session = 1 if big else plan.per_session
        for loop in LOOPS:
            port, pid = ports[f"protocol-{loop}"], pids[f"protocol-{loop}"]
            candidates[protocol_label(loop, False)] = (
                lambda w, loop=loop, port=port: run_on(loop, protocol_new_connection(port, w)))
            candidates[protocol_label(loop, True)] = (
                lambda w, loop=loop, port=port, pid=pid: run_on(loop, protocol_session(port, pid, per_session, w)))
    if flight_and_raw:
        client = flight.connect(f"grpc://{HOST}:{ports['flight']}")
        candidates[FLIGHT_LABEL] = lambda w: flight_frame(client, w)
        candidates[RAW_LABEL] = lambda w: raw_transfer(ports["raw"], w)
    return candidates


@dataclass
class CpuCost:
    """Server and client CPU seconds over a number of requests."""

    server: float = 0.0
    client: float = 0.0
    requests: int = 0

    def add(self, server: float, client: float, requests: int) -> None:
        self.server += server
        self.client += client
        self.requests += requests

    def per_request(self) -> tuple[float, float] | None:
        """(server, client) CPU seconds a request; None when nothing was measured."""
        if not self.requests:
            return None
        return self.server / self.requests, self.client / self.requests


@dataclass
class Stats:
    times: list[float] = field(default_factory=list)
    cpu: CpuCost = field(default_factory=CpuCost)
    firsts: list[float] = field(default_factory=list)  # sessions: the first timed request of each
    rests: list[float] = field(default_factory=list)  # sessions: the others

    def add(self, sample: Sample) -> None:
        self.times += sample.times
        if len(sample.times) > 1:
            self.firsts.append(sample.times[0])
            self.rests += sample.times[1:]
        if sample.server_cpu is not None and sample.client_cpu is not None:
            self.cpu.add(sample.server_cpu, sample.client_cpu, len(sample.times))

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def quartiles(self) -> tuple[float, float]:
        if len(self.times) < 2:
            return self.times[0], self.times[0]
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]

    def cpu_per_request(self) -> tuple[float, float] | None:
        return self.cpu.per_request()


Results = dict[str, dict[str, Stats]]  # workload -> candidate -> stats


def rotated(names: list[str], rep: int) -> list[str]:
    """The candidates in repetition `rep`'s order, rotated by one each repetition: no candidate always runs
    first, or right after the same one (the pickle design leaves 1M-row garbage behind it)."""
    shift = rep % len(names) if names else 0
    return names[shift:] + names[:shift]


def measure(results: Results, candidates: dict[str, Callable[[Work], Sample]], work: Work, reps: int) -> None:
    stats = results.setdefault(work.name, {name: Stats() for name in candidates})
    for rep in range(reps + 1):  # repetition 0 warms up and is dropped
        for name in rotated(list(candidates), rep):
            run = candidates[name]
            gc.collect()
            sample = run(work)
            if rep:
                stats[name].add(sample)


def measure_frames(servers: Servers, plan: Plan, with_protocol: bool, results: Results) -> dict[str, int]:
    sizes = {}
    for rows in SIZES:
        frame = make_frame(rows)
        nbytes = arrow_nbytes(frame)
        work = Work(f"{rows:,} rows", frame, None, np.full(nbytes, 7, dtype=np.uint8))
        sizes[work.name] = nbytes
        candidates = frame_candidates(servers, plan, with_protocol, True, big=rows >= 100_000)
        measure(results, candidates, work, plan.reps[rows])
        print(f"  {rows:>9,} rows done", file=sys.stderr, flush=True)
        del frame, work
    return sizes


def sample_works() -> list[Work]:
    return [
        Work(f"{SAMPLE_ROWS}-row sample frame (random_data)", None, make_sample_frame(SAMPLE_ROWS)),
        Work(f"{BATCH_ROWS}-row query batch (query_data)", make_sample_frame(BATCH_ROWS, seed=1), None),
    ]


def measure_samples(servers: Servers, plan: Plan, with_protocol: bool, results: Results) -> None:
    candidates = frame_candidates(servers, plan, with_protocol, False, big=False)
    for work in sample_works():
        measure(results, candidates, work, plan.sample_reps)
        print(f"  {work.name} done", file=sys.stderr, flush=True)


@dataclass
class Rate:
    rates: list[float] = field(default_factory=list)
    cpu: CpuCost = field(default_factory=CpuCost)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def cpu_per_request(self) -> tuple[float, float]:
        cost = self.cpu.per_request()
        assert cost is not None, "a rate is measured with its CPU"
        return cost


async def request_rate(worker: Callable[[int], Awaitable[None]], count: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(worker(count) for _ in range(CLIENTS)))
    return CLIENTS * count / (time.perf_counter() - start)


def measure_tiny(servers: Servers, plan: Plan, with_protocol: bool) -> dict[str, Rate]:
    ports, pids = servers.ports, servers.pids
    candidates: dict[str, tuple[str, int, Callable[[int], Awaitable[None]], int]] = {
        ORIGINAL_LABEL: ("asyncio", pids[ORIGINAL], functools.partial(original_workers, ports[ORIGINAL]),
                         plan.new_connection_requests),
    }
    if with_protocol:
        for session in (False, True):
            count = plan.session_requests if session else plan.new_connection_requests
            for loop in LOOPS:
                worker = functools.partial(protocol_workers, ports[f"protocol-{loop}"], session=session)
                candidates[protocol_label(loop, session)] = (loop, pids[f"protocol-{loop}"], worker, count)
    rates = {name: Rate() for name in candidates}
    for rep in range(plan.tiny_reps + 1):  # repetition 0 warms up and is dropped
        for name in rotated(list(candidates), rep):
            loop, pid, worker, count = candidates[name]
            gc.collect()
            server0, client0 = process_cpu(pid), time.process_time()
            rate = run_on(loop, request_rate(worker, count))
            if rep:
                rates[name].rates.append(rate)
                rates[name].cpu.add(process_cpu(pid) - server0, time.process_time() - client0, CLIENTS * count)
    return rates


# ----------------------------------------------------------------------------- in-process profile
def wired() -> tuple[Any, Any, float]:
    now = time.monotonic()
    return ClientConversation(now=now), ServerConversation(now=now), now


def round_trip(client: Any, server: Any, now: float, make: Callable[[], Any], steps: list[float] | None = None) -> None:
    """One request and its reply through the two conversations, in memory (`steps`: ns per step)."""
    clock = time.perf_counter_ns
    t0 = clock()
    client.send_request(make(), now, 600)
    out = client.data_to_send()
    t1 = clock()
    for part in out:
        server.receive_data(part, now)
    event = server.next_event()
    t2 = clock()
    request = protocol.decode_request(event.frame)
    t3 = clock()
    server.send_response(ResponseBlock(*answer(request.request_type, request.query_data, request.random_data)), now)
    back = server.data_to_send()
    t4 = clock()
    for part in back:
        client.receive_data(part, now)
    reply = client.next_event()
    t5 = clock()
    assert reply is not None and reply.response.checkpoint.startswith("ok"), reply
    if steps is not None:
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            steps[i] += b - a


STEPS = ("client: build + encode request", "server: receive + frame + check head", "server: decode_request",
         "server: encode reply", "client: receive + decode reply")


@dataclass
class Breakdown:
    name: str
    steps_us: list[float]
    pickle_us: tuple[float, float, float, float]  # request dumps, loads, reply dumps, loads

    @property
    def client_us(self) -> float:
        return self.steps_us[0] + self.steps_us[4]

    @property
    def server_us(self) -> float:
        return sum(self.steps_us[1:4])


def breakdown(name: str, make: Callable[[], Any], pickled: Callable[[], Any], budget_s: float) -> Breakdown:
    """Per-step µs of the sans-I/O round trip, best of 3 batches, and the pickle round trip's parts."""
    client, server, now = wired()
    for _ in range(20):
        round_trip(client, server, now, make)
    start = time.perf_counter()
    round_trip(client, server, now, make)
    n = max(5, min(3000, int(budget_s / 3 / max(time.perf_counter() - start, 1e-6))))
    best: list[float] | None = None
    for _ in range(3):
        steps = [0.0] * len(STEPS)
        for _ in range(n):
            round_trip(client, server, now, make, steps)
        if best is None or sum(steps) < sum(best):
            best = steps
    assert best is not None
    reply = answer("normal", None, None)
    req_bytes, rep_bytes = pickle.dumps(pickled()), pickle.dumps(reply)
    timers = (lambda: pickle.dumps(pickled()), lambda: pickle.loads(req_bytes), lambda: pickle.dumps(reply),
              lambda: pickle.loads(rep_bytes))
    pick = []
    for fn in timers:
        best_t = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best_t = min(best_t, (time.perf_counter() - t) / n)
        pick.append(best_t * 1e6)
    return Breakdown(name, [s / n / 1000 for s in best], tuple(pick))  # type: ignore[arg-type]


def hot_spots(make: Callable[[], Any], count: int, top: int = 12) -> tuple[float, list[tuple[str, int, float, float]]]:
    """cProfile of `count` round trips: (total profiled s, [(function, calls, own µs per round trip, share)])."""
    client, server, now = wired()
    for _ in range(50):
        round_trip(client, server, now, make)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        round_trip(client, server, now, make)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = stats.stats  # type: ignore[attr-defined]
    # The driver's own time (the profiler books time it cannot attribute there) is left out of the shares.
    total = sum(v[2] for k, v in entries.items() if package_of(k[0]) != "benchmark harness")
    rows = []
    groups: dict[str, float] = {}
    for (path, line, func), (cc, nc, tt, ct, callers) in sorted(entries.items(), key=lambda kv: -kv[1][2]):
        if package_of(path) == "benchmark harness":
            continue
        groups[package_of(path)] = groups.get(package_of(path), 0.0) + tt
        if len(rows) >= top:
            continue
        where = f"{Path(path).name}:{line}({func})" if path != "~" else func
        if str(REPO) in path:
            where = f"{Path(path).relative_to(REPO)}:{line} {func}"
        rows.append((where, round(nc / count, 1), tt / count * 1e6, tt / total))
    by_package = sorted(((g, t / count * 1e6, t / total) for g, t in groups.items()), key=lambda x: -x[1])
    return total / count * 1e6, rows, by_package


def package_of(path: str) -> str:
    """protocol/<file>, pandas, numpy, pyarrow, json, builtins (C functions), stdlib or other."""
    if path == "~":
        return "builtins (C functions, methods)"
    if str(REPO) in path:
        rel = Path(path).relative_to(REPO)
        return str(rel) if rel.parts[0] == "protocol" else "benchmark harness"
    for package in ("pandas", "numpy", "pyarrow", "json"):
        if f"/{package}/" in path:
            return package
    return "stdlib / other"


@dataclass
class Profile:
    tiny_plain_us: float
    breakdowns: list[Breakdown]
    tiny_hot: tuple[float, list]
    sample_hot: tuple[float, list]


def run_profile(quick: bool) -> Profile:
    frame_1k = make_frame(1_000)
    sample, batch = sample_works()
    budget = 0.5 if quick else 1.5
    tiny = functools.partial(RequestBlock, "handshake")
    breakdowns = [
        breakdown("tiny (handshake, no DataFrame)", tiny, lambda: PickledRequest("handshake"), budget),
        breakdown(batch.name, lambda: RequestBlock("normal", query_data=batch.query),
                  lambda: PickledRequest("normal", batch.query), budget),
        breakdown(sample.name, lambda: RequestBlock("normal", random_data=sample.random),
                  lambda: PickledRequest("normal", None, sample.random), budget),
        breakdown("1,000 rows x 67 columns (query_data)", lambda: RequestBlock("normal", query_data=frame_1k),
                  lambda: PickledRequest("normal", frame_1k), budget),
    ]
    client, server, now = wired()
    for _ in range(200):
        round_trip(client, server, now, tiny)
    plain = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(1000):
            round_trip(client, server, now, tiny)
        plain.append((time.perf_counter() - t) / 1000 * 1e6)
    return Profile(
        tiny_plain_us=min(plain),
        breakdowns=breakdowns,
        tiny_hot=hot_spots(tiny, 2000 if quick else 5000),
        sample_hot=hot_spots(lambda: RequestBlock("normal", random_data=sample.random), 100 if quick else 300),
    )


# ----------------------------------------------------------------------------- report
def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def fmt_iqr(stats: Stats) -> str:
    lo, hi = stats.quartiles()
    return f"{fmt_ms(stats.median)} [{fmt_ms(lo)}–{fmt_ms(hi)}]"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def machine() -> str:
    import uvloop

    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}, pandas {pd.__version__}, numpy {np.__version__}, uvloop {uvloop.__version__}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def workload_table(results: Results, names: list[str], sizes: dict[str, int] | None) -> str:
    headers = ["candidate"] + [f"{n} ({sizes[n] / 1e6:.1f} MB)" if sizes else n for n in names]
    if sizes:
        headers.append("GB/s at 1M rows")
    candidates = list(results[names[0]])
    rows = []
    for cand in candidates:
        row = [cand]
        for n in names:
            s, base = results[n][cand], results[n][ORIGINAL_LABEL]
            row.append(f"{fmt_iqr(s)} ({s.median / base.median:.2f}x)")
        if sizes:
            last = names[-1]
            row.append(f"{sizes[last] / results[last][cand].median / 1e9:.2f}")
        rows.append(row)
    return markdown_table(headers, rows)


def flight_table(results: Results, names: list[str]) -> str:
    rows = []
    for cand in results[names[0]]:
        if cand.startswith("protocol"):
            rows.append([cand] + [f"{results[n][cand].median / results[n][FLIGHT_LABEL].median:.2f}x" for n in names])
    return markdown_table(["protocol / Flight time"] + names, rows)


def tiny_table(rates: dict[str, Rate]) -> str:
    base = rates[ORIGINAL_LABEL].median
    rows = []
    for name, r in rates.items():
        server_us, client_us = (x * 1e6 for x in r.cpu_per_request())
        rows.append([name, f"{r.median:,.0f} [{min(r.rates):,.0f}–{max(r.rates):,.0f}]", f"{r.median / base:.2f}x",
                     f"{1e6 / r.median:.0f}", f"{server_us:.0f}", f"{client_us:.0f}"])
    return markdown_table(
        [f"tiny requests, {CLIENTS} concurrent clients", "requests/s [min–max]", "x original", "wall µs/request",
         "server CPU µs/request", "client CPU µs/request"], rows)


def cpu_table(results: Results, names: list[str]) -> str:
    rows = []
    for n in names:
        for cand, s in results[n].items():
            cpu = s.cpu_per_request()
            if cpu is not None:
                rows.append([n, cand, f"{s.median * 1e6:,.0f}", f"{cpu[0] * 1e6:,.0f}", f"{cpu[1] * 1e6:,.0f}"])
    return markdown_table(["workload", "candidate", "median wall µs", "server CPU µs/request", "client CPU µs/request"], rows)


def target_rows(results: Results, sizes: dict[str, int], rates: dict[str, Rate], frame_names: list[str],
                sample_names: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    first, last = frame_names[0], frame_names[-1]
    base_1k = results[first][ORIGINAL_LABEL].median
    for cand, s in results[first].items():
        if cand.startswith("protocol"):
            ratio = s.median / base_1k
            rows.append(["1k-row, 67-column request <= 1.0x original", cand,
                         f"{fmt_ms(s.median)} ms vs {fmt_ms(base_1k)} ms", f"{ratio:.2f}x", verdict(ratio <= 1.0)])
    for n in sample_names:
        base = results[n][ORIGINAL_LABEL].median
        for cand, s in results[n].items():
            if cand.startswith("protocol") and "session" in cand:
                rows.append([f"{n} on a session <= 1 ms", cand, f"{fmt_ms(s.median)} ms",
                             f"{s.median / base:.2f}x", verdict(s.median <= SAMPLE_TARGET_S)])
    base_bulk = results[last][ORIGINAL_LABEL].median
    for cand, s in results[last].items():
        if cand.startswith("protocol"):
            gbps = sizes[last] / s.median / 1e9
            target = "asyncio" in cand
            rows.append(["plain-asyncio bulk (1M rows) >= 1 GB/s" if target else "(uvloop bulk, reported)", cand,
                         f"{gbps:.2f} GB/s", f"{s.median / base_bulk:.2f}x",
                         verdict(gbps >= 1.0) if target else ("(≥1)" if gbps >= 1.0 else "(<1)")])
    for cand in results[first]:
        if cand.startswith("protocol"):
            ratios = [results[n][cand].median / results[n][FLIGHT_LABEL].median for n in frame_names]
            slower = [n for n, r in zip(frame_names, ratios) if r >= 1.0]
            rows.append(["faster than Arrow Flight at every size", cand,
                         "slower at " + ", ".join(slower) if slower else "faster at all sizes",
                         " / ".join(f"{r:.2f}" for r in ratios) + " x Flight", verdict(not slower)])
    base_rate = rates[ORIGINAL_LABEL].median
    for name, r in rates.items():
        if name.startswith("protocol"):
            floor = 15_000 if "session" in name else 5_000
            target = "uvloop" in name
            label = f"tiny requests >= {floor:,}/s ({CLIENTS} clients)" if target else f"(asyncio, reported vs {floor:,}/s)"
            rows.append([label, name, f"{r.median:,.0f}/s", f"{r.median / base_rate:.2f}x original",
                         verdict(r.median >= floor) if target else ("(≥)" if r.median >= floor else "(<)")])
    return rows


def profile_section(prof: Profile) -> list[str]:
    parts = [
        "### In-process sans-I/O round trip (ClientConversation <-> ServerConversation in memory), µs per round trip",
        "",
        "Best of 3 batches; pickle columns: the original design's `pickle.dumps`/`loads` of the same request and of "
        "its reply. No sockets, no event loop: this is the Python CPU each side spends per request.",
        "",
    ]
    headers = ["request"] + list(STEPS) + ["client total", "server total", "pickle req dumps+loads", "pickle reply dumps+loads"]
    rows = []
    for b in prof.breakdowns:
        rows.append([b.name] + [f"{x:,.0f}" for x in b.steps_us] + [f"{b.client_us:,.0f}", f"{b.server_us:,.0f}",
                    f"{b.pickle_us[0]:,.0f} + {b.pickle_us[1]:,.0f}", f"{b.pickle_us[2]:,.1f} + {b.pickle_us[3]:,.1f}"])
    parts += [markdown_table(headers, rows), ""]
    for title, (total, hot, by_package) in (("tiny request (`RequestBlock('handshake')`, `ResponseBlock(False, 'x')`-shaped reply)", prof.tiny_hot),
                                (f"{SAMPLE_ROWS}-row sample frame as random_data", prof.sample_hot)):
        parts += [
            f"### cProfile, {title}: top functions by own time",
            "",
            f"{total:,.0f} µs of own time per round trip in protocol and the libraries under the profiler "
            f"(the tiny round trip runs in {prof.tiny_plain_us:.0f} µs without it; the table above has the "
            "unprofiled figures). The driver's own time is left out.",
            "",
            markdown_table(["function", "calls/round trip", "own µs/round trip", "share"],
                           [[f"`{w}`", f"{c:g}", f"{us:.1f}", f"{share:.0%}"] for w, c, us, share in hot]),
            "",
            "Own time by package: " + "; ".join(f"{g} {us:,.0f} µs ({share:.0%})" for g, us, share in by_package
                                                if share >= 0.02) + ".",
            "",
        ]
    return parts


def bounds_text(results: Results, sizes: dict[str, int], rates: dict[str, Rate], prof: Profile,
                frame_names: list[str], sample_names: list[str]) -> list[str]:
    """What bounds each target figure, in words, from this run's numbers."""
    lines = []
    tiny_b = prof.breakdowns[0]
    for name, r in rates.items():
        if not name.startswith("protocol"):
            continue
        server_us, client_us = (x * 1e6 for x in r.cpu_per_request())
        wall_us = 1e6 / r.median
        side = "server" if server_us >= client_us else "client"
        lines.append(
            f"- **Tiny, {name}**: {r.median:,.0f}/s = {wall_us:.0f} µs a request; the server spends {server_us:.0f} µs "
            f"of CPU a request ({server_us / wall_us:.0%} of a core), the client {client_us:.0f} µs "
            f"({client_us / wall_us:.0%}). Each side is one Python thread, so the rate is bounded by the {side}'s "
            f"per-request CPU: at most {1e6 / max(server_us, client_us):,.0f}/s even with a free core each. "
            + ("Of that, the sans-I/O conversation itself costs "
               f"{tiny_b.server_us:.0f} µs (server) and {tiny_b.client_us:.0f} µs (client); the rest is the event loop, "
               "transport callbacks and the send/recv syscalls (on loopback a send also runs the receiver's TCP "
               "processing: the largest single item in a profile of either side); the request is served inside "
               "the read callback (no Task) when its callback returns at once."
               if "session" in name else "A new connection adds connect + accept + close to every request.")
        )
    sample_b = {b.name: b for b in prof.breakdowns}
    for n in sample_names:
        b = sample_b.get(n)
        for cand, s in results[n].items():
            cpu = s.cpu_per_request()
            if cpu is None or b is None:
                continue
            lines.append(
                f"- **{n}, {cand}**: {fmt_ms(s.median)} ms end to end; CPU {cpu[0] * 1e6:,.0f} µs server + "
                f"{cpu[1] * 1e6:,.0f} µs client a request, nearly all of it serial (one request at a time), so the "
                f"figure is about the sum. In process, the conversation spends {b.client_us:,.0f} µs on the client "
                f"(encode {b.steps_us[0]:,.0f}) and {b.server_us:,.0f} µs on the server (decode_request "
                f"{b.steps_us[2]:,.0f}); a pickle round trip of the same request costs "
                f"{b.pickle_us[0] + b.pickle_us[1]:,.0f} µs. Bound: CPU on each side, serial — the codec's fixed "
                f"cost per frame and per column in Python (about half of the in-process figure; no pyarrow left on "
                f"the path of this frame's columns), the conversation and event loop, the send of the frame (on "
                f"loopback it runs the receiver's TCP processing) and two process wake-ups a request, each of which "
                f"waits for a core when the machine is shared."
                + (f" Within a session, the first timed request (new loop and connection, right after the handshake; "
                   f"just before it the server was idle and the client ran gc.collect() and the other candidates) "
                   f"takes {fmt_ms(statistics.median(s.firsts))} ms (median), the later ones "
                   f"{fmt_ms(statistics.median(s.rests))} ms: a process that has just been idle or busy with "
                   f"other work answers more slowly (cold caches; a halted vCPU to wake)." if s.firsts and s.rests else "")
            )
    first, last = frame_names[0], frame_names[-1]
    b1k = prof.breakdowns[-1]
    base = results[first][ORIGINAL_LABEL].median
    lines.append(
        f"- **1k rows x 67 columns**: the original takes {fmt_ms(base)} ms (pickle {b1k.pickle_us[0] + b1k.pickle_us[1]:,.0f} µs "
        f"+ a connection); the protocol's codec alone costs {b1k.client_us + b1k.server_us:,.0f} µs in process "
        f"(encode {b1k.steps_us[0]:,.0f}, decode {b1k.steps_us[2]:,.0f}, framing {b1k.steps_us[1]:,.0f}); "
        f"the raw bytes ({sizes[first] / 1e6:.2f} MB) cross loopback in {fmt_ms(results[first][RAW_LABEL].median)} ms. "
        "Bound: per-column encode/decode CPU in Python on each side, then the connection (new connection) — not bandwidth."
    )
    raw = results[last][RAW_LABEL].median
    for cand, s in results[last].items():
        if cand.startswith("protocol") and "asyncio" in cand:
            lines.append(
                f"- **Bulk 1M rows, {cand}**: {sizes[last] / s.median / 1e9:.2f} GB/s against the loopback ceiling's "
                f"{sizes[last] / raw / 1e9:.2f} GB/s (raw sockets, same bytes, no copies). Bound: the loopback copy and "
                "asyncio's transport (1 MiB slices with drain). The frame's float block is sent from the DataFrame's "
                "memory, lands in a pooled receive buffer and stays there as a view; what is still fresh each request "
                "is the decoded int and string columns (~40 MB). On this VM memory freed for about a second goes back "
                "to the host and faults in again at 280-410 ms per 300 MB (45 ms when still resident), so a request "
                "that misses the pool is slow: until ece604c an idle worker thread kept its last request (and its "
                "pooled buffer) alive, and a third to a half of the 1M-row requests took 560-930 ms."
            )
    lines.append(
        "- **vs Arrow Flight**: Flight's per-request cost is gRPC + from_pandas/to_pandas (~ms at 1k rows); at 1M rows "
        "both are bound by copies, and Flight makes more of them."
    )
    return lines


def report(results: Results, sizes: dict[str, int], rates: dict[str, Rate], prof: Profile | None, plan: Plan,
           quick: bool, loads: dict[str, tuple[float, float]]) -> str:
    frame_names = [f"{rows:,} rows" for rows in SIZES]
    sample_names = [w for w in results if w not in frame_names]
    reps = ", ".join(f"{rows:,}: {n}" for rows, n in plan.reps.items())
    load_parts = ", ".join(f"{part} {share:.0%} ({wall:.0f} s)" for part, (share, wall) in loads.items())
    with_protocol = any(c.startswith("protocol") for c in results[frame_names[0]])
    parts = [
        "# Protocol benchmark (issue 8 §3: small frames fast)",
        "",
        f"Machine: {machine()}.",
        f"Foreign CPU load (other processes, share of all cores; 0% = the benchmark had the machine): {load_parts}. "
        "More slows every candidate, tiny requests and small frames most.",
        "",
        f"`python benchmarks/protocol_bench.py{' --quick' if quick else ''}`; servers in their own spawned processes, "
        "clients in the benchmark's process, 127.0.0.1 only; candidates interleaved in each repetition, their order rotated by one each repetition. Times are "
        "end to end (encode, send, decode into a DataFrame on the server, trivial callback, reply, decode): "
        "median [interquartile range] over every timed request; in brackets after, time / the original design's "
        f"time in this run. Repetitions per frame size {reps} (after one warm-up); a session times "
        f"{plan.per_session} requests per repetition up to 10k rows (1 above), opened and used once before the clock "
        f"starts. Sample frames: {plan.sample_reps} repetitions. Frames: id, label (int64), path string, 64 float32 "
        "features; MB and GB/s use the frame's Arrow size.",
        "",
    ]
    if with_protocol:
        parts += ["## Targets", "", markdown_table(["target", "candidate", "measured", "ratio", "verdict"],
                                                   target_rows(results, sizes, rates, frame_names, sample_names)), ""]
    parts += [
        "## One request carrying a frame: median ms [IQR] (x original)",
        "",
        workload_table(results, frame_names, sizes),
        "",
        "## The edge's sample frames (mlcore.frames.build_sample_frame): median ms [IQR] (x original)",
        "",
        workload_table(results, sample_names, None),
        "",
    ]
    if with_protocol:
        parts += ["## Protocol vs Arrow Flight (same frames, same run; < 1 is faster)", "",
                  flight_table(results, frame_names), ""]
    parts += [
        f"## Tiny requests (no DataFrame), {CLIENTS} concurrent clients, median of {plan.tiny_reps} repetitions",
        "",
        "CPU µs/request: the server process's CPU clock and this process's, over the repetitions, / requests.",
        "",
        tiny_table(rates),
        "",
    ]
    if with_protocol:
        parts += ["## What bounds each figure", "",
                  "### CPU per request on a session (same run)", "", cpu_table(results, frame_names + sample_names), ""]
        if prof is not None:
            parts += profile_section(prof)
            parts += ["### In words", ""] + bounds_text(results, sizes, rates, prof, frame_names, sample_names) + [""]
    else:
        parts += ["`protocol` could not be imported: (b), the targets and the profile were not measured.", ""]
    return "\n".join(parts)


def protocol_available() -> bool:
    if PROTOCOL_MISSING is not None:
        print(f"protocol not importable ({PROTOCOL_MISSING}); measuring (a), (c), (d) only", file=sys.stderr)
    return PROTOCOL_MISSING is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and requests (about a minute)")
    parser.add_argument("--profile", action="store_true", help="only the in-process profile; print it, write nothing")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the Markdown report")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    with_protocol = protocol_available()
    if args.profile:
        if not with_protocol:
            raise SystemExit("protocol is not importable")
        print("\n".join(profile_section(run_profile(args.quick))))
        return
    kinds = [ORIGINAL, "flight", "raw"] + ([f"protocol-{loop}" for loop in LOOPS] if with_protocol else [])
    started = time.perf_counter()
    results: Results = {}
    loads: dict[str, tuple[float, float]] = {}
    with server_processes(kinds) as servers:
        meter = LoadMeter(list(servers.pids.values()))
        whole = LoadMeter(list(servers.pids.values()))
        print("frames ...", file=sys.stderr, flush=True)
        sizes = measure_frames(servers, plan, with_protocol, results)
        loads["frames"] = meter.foreign()
        meter.start()
        print("sample frames ...", file=sys.stderr, flush=True)
        measure_samples(servers, plan, with_protocol, results)
        loads["sample frames"] = meter.foreign()
        meter.start()
        print("tiny requests ...", file=sys.stderr, flush=True)
        rates = measure_tiny(servers, plan, with_protocol)
        loads["tiny requests"] = meter.foreign()
        loads["whole measured run"] = whole.foreign()
    prof = None
    if with_protocol:
        print("in-process profile ...", file=sys.stderr, flush=True)
        prof = run_profile(args.quick)
    text = report(results, sizes, rates, prof, plan, args.quick, loads)
    text += f"\nWhole run: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
