"""Protocol benchmark: this project's wire against the original design, Arrow Flight and raw sockets.

Prints a Markdown table and writes it to benchmarks/results/protocol.md. Everything is
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

Frames: id int64, label int64, a path string, 64 float32 features (1k / 10k / 100k / 1M
rows). Times are medians of end-to-end requests (encode, send, decode into a DataFrame on
the server, callback, reply, decode); GB/s is the frame's Arrow size over that time.
Tiny requests carry no DataFrame; 16 concurrent clients.

    python benchmarks/protocol_bench.py           # full run, a few minutes
    python benchmarks/protocol_bench.py --quick   # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gc
import multiprocessing as mp
import os
import pickle
import platform
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass
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

try:  # (b) is measured only when this project's protocol package imports
    from protocol import AsyncClient, AsyncServer, ResponseBlock
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


@dataclass(frozen=True)
class Plan:
    reps: dict[int, int]  # frame rows -> timed repetitions (after one warm-up)
    tiny_reps: int  # repetitions of each tiny-request rate
    new_connection_requests: int  # per client and repetition
    session_requests: int  # per client and repetition


FULL = Plan({1_000: 20, 10_000: 20, 100_000: 10, 1_000_000: 5}, tiny_reps=5, new_connection_requests=100, session_requests=1000)
QUICK = Plan({1_000: 8, 10_000: 8, 100_000: 4, 1_000_000: 2}, tiny_reps=3, new_connection_requests=40, session_requests=300)


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


def arrow_nbytes(frame: pd.DataFrame) -> int:
    return pa.Table.from_pandas(frame, preserve_index=False).nbytes


def answer(message_type: str, query_dataframe: pd.DataFrame | None, random_dataframe: pd.DataFrame | None) -> tuple[bool, str]:
    """The trivial callback every server calls: proves it holds a DataFrame of the right length."""
    rows = 0 if query_dataframe is None else len(query_dataframe)
    return False, f"ok {rows}"


def check(reply: Any, rows: int) -> None:
    flag, checkpoint = reply
    if checkpoint != f"ok {rows}":
        raise RuntimeError(f"wrong reply {checkpoint!r} for a frame of {rows} rows")


def run_on(loop: str, main: Awaitable[Any]) -> Any:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)  # type: ignore[arg-type]


async def timed_check(reply: Awaitable[Any], rows: int) -> float:
    start = time.perf_counter()
    result = await reply
    elapsed = time.perf_counter() - start
    check(result, rows)
    return elapsed


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


async def original_exchange(port: int, frame: pd.DataFrame | None) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(pickle.dumps(PickledRequest("normal", frame)))
    writer.write_eof()
    reply = pickle.loads(await reader.read(-1))
    writer.close()
    return reply


async def original_workers(port: int, count: int) -> None:
    for _ in range(count):
        check(await original_exchange(port, None), 0)


# ----------------------------------------------------------------------------- (b) protocol
async def protocol_callback(message_type: str, query_dataframe: Any, random_dataframe: Any) -> Any:
    return ResponseBlock(*answer(message_type, query_dataframe, random_dataframe))


async def protocol_frame(port: int, frame: pd.DataFrame, session: bool) -> float:
    """One timed request; a session is opened (and used once) before the clock starts."""
    client = AsyncClient(port)
    if not session:
        return await timed_check(client.send_data("normal", query_data=frame), len(frame))
    async with client:
        await client.send_data("handshake")
        return await timed_check(client.send_data("normal", query_data=frame), len(frame))


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


def flight_frame(client: flight.FlightClient, frame: pd.DataFrame) -> float:
    start = time.perf_counter()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    writer, metadata = client.do_put(flight.FlightDescriptor.for_command(b"normal"), table.schema)
    writer.write_table(table)
    writer.done_writing()
    reply = metadata.read().to_pybytes().decode()
    writer.close()
    elapsed = time.perf_counter() - start
    check((reply[0] == "1", reply[1:]), len(frame))
    return elapsed


# ----------------------------------------------------------------------------- (d) raw sockets
LENGTH = struct.Struct("!Q")


def recv_exactly(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = conn.recv_into(view[got:])
        if not n:
            raise ConnectionError("sender closed early")
        got += n


def raw_transfer(port: int, payload: np.ndarray) -> float:
    start = time.perf_counter()
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(LENGTH.pack(payload.nbytes))
        sock.sendall(payload)
        if sock.recv(1) != b"k":
            raise RuntimeError("raw receiver did not acknowledge")
    return time.perf_counter() - start


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


@contextlib.contextmanager
def server_processes(kinds: list[str]):
    """Start one spawned process per server kind; yield {kind: port}; stop them all."""
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
        yield ports
    finally:
        for _, proc, _ in procs:
            proc.terminate()  # the protocol server drains on SIGTERM; the others just exit
        for _, proc, _ in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


# ----------------------------------------------------------------------------- measurements
@dataclass(frozen=True)
class Workload:
    rows: int
    frame: pd.DataFrame
    payload: np.ndarray  # as many bytes as the frame's Arrow size, for the raw socket ceiling

    @property
    def nbytes(self) -> int:
        return self.payload.nbytes


def protocol_label(loop: str, session: bool) -> str:
    return f"protocol, {'persistent session' if session else 'new connection'} [{loop}]"


def protocol_on(loop: str, port: int, session: bool, work: Workload) -> float:
    return run_on(loop, protocol_frame(port, work.frame, session))


def frame_candidates(ports: dict[str, int], with_protocol: bool) -> dict[str, Callable[[Workload], float]]:
    """Name -> one timed end-to-end request of a workload."""
    client = flight.connect(f"grpc://{HOST}:{ports['flight']}")
    candidates: dict[str, Callable[[Workload], float]] = {
        ORIGINAL_LABEL: lambda w: run_on("asyncio", timed_check(original_exchange(ports[ORIGINAL], w.frame), w.rows)),
    }
    if with_protocol:
        for loop in LOOPS:
            for session in (False, True):
                candidates[protocol_label(loop, session)] = functools.partial(
                    protocol_on, loop, ports[f"protocol-{loop}"], session
                )
    candidates[FLIGHT_LABEL] = lambda w: flight_frame(client, w.frame)
    candidates[RAW_LABEL] = lambda w: raw_transfer(ports["raw"], w.payload)
    return candidates


def measure_frames(ports: dict[str, int], plan: Plan, with_protocol: bool) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """Median seconds per candidate and frame size, candidates interleaved within each repetition."""
    candidates = frame_candidates(ports, with_protocol)
    medians: dict[str, dict[int, float]] = {name: {} for name in candidates}
    sizes: dict[int, int] = {}
    for rows in SIZES:
        frame = make_frame(rows)
        work = Workload(rows, frame, np.full(arrow_nbytes(frame), 7, dtype=np.uint8))
        sizes[rows] = work.nbytes
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for rep in range(plan.reps[rows] + 1):  # repetition 0 warms up and is dropped
            for name, measure in candidates.items():
                gc.collect()
                elapsed = measure(work)
                if rep:
                    samples[name].append(elapsed)
        for name, values in samples.items():
            medians[name][rows] = statistics.median(values)
        print(f"  {rows:>9,} rows done", file=sys.stderr, flush=True)
        del frame, work
    return medians, sizes


async def request_rate(worker: Callable[[int], Awaitable[None]], count: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(worker(count) for _ in range(CLIENTS)))
    return CLIENTS * count / (time.perf_counter() - start)


def rate_on(loop: str, worker: Callable[[int], Awaitable[None]], count: int) -> float:
    return run_on(loop, request_rate(worker, count))


def tiny_candidates(ports: dict[str, int], plan: Plan, with_protocol: bool) -> dict[str, Callable[[], float]]:
    """Name -> requests per second of one repetition (16 clients)."""
    candidates: dict[str, Callable[[], float]] = {
        ORIGINAL_LABEL: functools.partial(
            rate_on, "asyncio", functools.partial(original_workers, ports[ORIGINAL]), plan.new_connection_requests
        ),
    }
    if with_protocol:
        for session in (False, True):
            count = plan.session_requests if session else plan.new_connection_requests
            for loop in LOOPS:
                worker = functools.partial(protocol_workers, ports[f"protocol-{loop}"], session=session)
                candidates[protocol_label(loop, session)] = functools.partial(rate_on, loop, worker, count)
    return candidates


def measure_tiny(ports: dict[str, int], plan: Plan, with_protocol: bool) -> dict[str, float]:
    candidates = tiny_candidates(ports, plan, with_protocol)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(plan.tiny_reps):
        for name, measure in candidates.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


# ----------------------------------------------------------------------------- report
def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its joined children (the servers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine() -> str:
    import uvloop

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}, pandas {pd.__version__}, numpy {np.__version__}, uvloop {uvloop.__version__}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def frame_table(times: dict[str, dict[int, float]], sizes: dict[int, int]) -> str:
    base = times[ORIGINAL_LABEL]
    headers = ["candidate"] + [f"{rows:,} rows ({sizes[rows] / 1e6:.1f} MB)" for rows in SIZES] + ["GB/s at 1M rows"]
    rows = [
        [name]
        + [f"{fmt_ms(t[rows])} ({t[rows] / base[rows]:.2f}x)" for rows in SIZES]
        + [f"{sizes[SIZES[-1]] / t[SIZES[-1]] / 1e9:.2f}"]
        for name, t in times.items()
    ]
    return markdown_table(headers, rows)


def flight_table(times: dict[str, dict[int, float]]) -> str:
    flight_times = times[FLIGHT_LABEL]
    rows = [
        [name] + [f"{t[rows] / flight_times[rows]:.2f}x" for rows in SIZES]
        for name, t in times.items() if name.startswith("protocol")
    ]
    return markdown_table(["protocol / Flight time"] + [f"{rows:,}" for rows in SIZES], rows)


def tiny_table(rates: dict[str, float]) -> str:
    base = rates[ORIGINAL_LABEL]
    rows = [[name, f"{rate:,.0f}", f"{rate / base:.1f}x"] for name, rate in rates.items()]
    return markdown_table([f"tiny requests, {CLIENTS} concurrent clients", "requests/s", "x original"], rows)


def target_rows(times: dict[str, dict[int, float]], sizes: dict[int, int], rates: dict[str, float]) -> list[list[str]]:
    rows = []
    bulk = SIZES[-1]
    for name, t in times.items():
        if not name.startswith("protocol"):
            continue
        ratio = t[100_000] / times[ORIGINAL_LABEL][100_000]
        rows.append(["100k-row request <= 0.30x original", name, f"{ratio:.2f}x", verdict(ratio <= 0.30)])
        gbps = sizes[bulk] / t[bulk] / 1e9
        rows.append(["bulk (1M rows) >= 1 GB/s", name, f"{gbps:.2f} GB/s", verdict(gbps >= 1.0)])
        slower = [f"{rows_:,}" for rows_ in SIZES if t[rows_] >= times[FLIGHT_LABEL][rows_]]
        rows.append(["faster than Flight at every size", name,
                     "slower at " + ", ".join(slower) if slower else "faster at all sizes", verdict(not slower)])
    for name, rate in rates.items():
        if name.startswith("protocol"):
            floor = 40_000 if "session" in name else 5_000
            rows.append([f"tiny requests >= {floor:,}/s ({CLIENTS} clients)", name, f"{rate:,.0f}/s", verdict(rate >= floor)])
    return rows


def report(
    times: dict[str, dict[int, float]], sizes: dict[int, int], rates: dict[str, float], plan: Plan, quick: bool,
    foreign: float,
) -> str:
    reps = ", ".join(f"{rows:,}: {n}" for rows, n in plan.reps.items())
    parts = [
        "# Protocol benchmark",
        "",
        f"Machine: {machine()}.",
        f"Other processes used {foreign:.0%} of the machine's CPU during the run (0% = the benchmark had both cores; "
        "more slows every candidate, tiny requests most).",
        "",
        f"`python benchmarks/protocol_bench.py{' --quick' if quick else ''}`; servers in their own spawned processes, "
        "clients in the benchmark's process, 127.0.0.1 only; candidates interleaved in each repetition. Median of "
        f"end-to-end requests (repetitions per size {reps}, after one warm-up): encode, send, decode into a DataFrame "
        "on the server, trivial callback, reply, decode. Frames: id, label (int64), path string, 64 float32 features; "
        "MB and GB/s use the frame's Arrow size. Ratios in brackets: time / the original design's time in this run.",
        "",
        "## One request carrying a frame: median ms (x original)",
        "",
        frame_table(times, sizes),
    ]
    if any(name.startswith("protocol") for name in times):
        parts += ["", "## Protocol vs Arrow Flight (same frames, same run; < 1 is faster)", "", flight_table(times)]
    parts += [
        "",
        f"## Tiny requests (no DataFrame), {CLIENTS} concurrent clients, median of {plan.tiny_reps} repetitions",
        "",
        tiny_table(rates),
    ]
    if any(name.startswith("protocol") for name in times):
        parts += ["", "## Targets (issue 2)", "", markdown_table(["target", "candidate", "measured", "verdict"], target_rows(times, sizes, rates))]
    else:
        parts += ["", "`protocol` could not be imported: (b) and the targets were not measured."]
    return "\n".join(parts) + "\n"


def protocol_available() -> bool:
    if PROTOCOL_MISSING is not None:
        print(f"protocol not importable ({PROTOCOL_MISSING}); measuring (a), (c), (d) only", file=sys.stderr)
    return PROTOCOL_MISSING is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and requests (about a minute)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the Markdown table")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    with_protocol = protocol_available()
    kinds = [ORIGINAL, "flight", "raw"] + ([f"protocol-{loop}" for loop in LOOPS] if with_protocol else [])
    started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    with server_processes(kinds) as ports:
        print("frames ...", file=sys.stderr, flush=True)
        times, sizes = measure_frames(ports, plan, with_protocol)
        print("tiny requests ...", file=sys.stderr, flush=True)
        rates = measure_tiny(ports, plan, with_protocol)
    wall = time.perf_counter() - started
    foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / (wall * (os.cpu_count() or 1))
    text = report(times, sizes, rates, plan, args.quick, foreign)
    text += f"\nWhole run: {wall:.0f} s.\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
