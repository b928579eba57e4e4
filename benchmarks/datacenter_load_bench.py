"""Data-center load benchmark: issue 11 §3 — a drift check's latency while trainings run.

Target: a drift check's p99 latency <= 100 ms while a training runs. Everything in one run,
on 127.0.0.1, the data center in its own spawned process (as `python -m datacenter serve`
builds it: `datacenter.server.make_server`), the clients in this one:

- setup: the default config (config/config.yaml: digits, the CNN, 30 fine-tune epochs,
  200 replayed rows), a base model trained into a temporary state directory, and one
  round with a rotation run in process to capture a real `retraining` request (an open
  episode's first query batch) and a real `normal` check (a 100-row random sample of the
  unshifted stream: the quiet path every round takes);
- load: 0 (the baseline), 1, 2 and 4 "edges", each its own client and edge id, sending
  that `retraining` request back to back (the data center fine-tunes it every time: with
  `datacenter.trainings: 1` one training runs and the others wait in the queue);
- measured: `CHECKS` drift checks sent one after another by a third client on a session,
  each timed end to end (encode, send, server, reply, decode); p50, p99 and max; and, from
  the retraining replies during the window, how many trainings finished and their queue
  wait.

For contrast, the server as it was before this change (one lock around every
non-handshake request, so a check waits for the training in progress) is measured at one
training edge, with fewer checks (each takes about a fine-tune).

    python benchmarks/datacenter_load_bench.py           # about 3 minutes
    python benchmarks/datacenter_load_bench.py --quick   # fewer checks
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "datacenter-load.md"
TARGET_MS = 100.0
LEVELS = (0, 1, 2, 4)
CHECKS = 200


def serve_process(config: str, state_dir: str, mode: str, ports: "mp.Queue[int]", stop: "mp.Event") -> None:
    """The data center in its own process: `lanes` (this change) or `serial` (the server before it)."""
    from datacenter.server import SWITCH_INTERVAL, make_server
    from datacenter.service import DataCenter
    from datacenter.state import StateStore
    from mlcore.datasets import load_dataset_and_splits
    from mlcore.seeding import make_deterministic
    from mlcore.settings import load_settings
    from protocol import AsyncServer, ResponseBlock

    settings = load_settings(config)
    make_deterministic()
    dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
    center = DataCenter(settings, dataset, splits, StateStore(state_dir))
    if mode == "lanes":
        sys.setswitchinterval(SWITCH_INTERVAL)  # as `datacenter.server.serve` does

    async def main() -> None:
        if mode == "lanes":
            server, lanes = make_server(center, 0)
        else:  # before: a sync callback in the server's 4 workers, one lock around every non-handshake request
            def callback(message_type, query_dataframe=None, random_dataframe=None, metadata=None):
                reply = center.handle(message_type, query_dataframe, random_dataframe, metadata)
                return ResponseBlock(reply.flag, reply.sha256, info=reply.info, checkpoint_data=reply.data)
            server, lanes = AsyncServer(callback, 0), None
        serving = asyncio.create_task(server.start_server())
        ports.put(await server.wait_started())
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.stop()
        await serving
        if lanes is not None:
            lanes.close()

    asyncio.run(main())


def prepare(workdir: Path):
    """Base model, then one drifted round in process: capture its first retraining request and a quiet check."""
    from datacenter.base import train_base
    from datacenter.service import DataCenter
    from datacenter.state import StateStore
    from edge.round_runner import EdgeRound
    from mlcore.contract import Message, in_process
    from mlcore.datasets import load_dataset_and_splits
    from mlcore.rounds import parse_rounds
    from mlcore.seeding import make_deterministic
    from mlcore.settings import load_settings

    config = str(ROOT / "config" / "config.yaml")
    settings = load_settings(config)
    make_deterministic()
    dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
    store = StateStore(workdir / "datacenter")
    base = train_base(settings, dataset, splits, store)
    center = DataCenter(settings, dataset, splits, store)
    inner, captured = in_process(center.handle), {}

    async def exchange(message, query, random, context):
        if message is Message.RETRAIN:
            captured.setdefault("retraining", (query, context))
        elif message is Message.CHECK and "normal" not in captured:
            captured["normal"] = (random, context)
        return await inner(message, query, random, context)

    for round_id, shift in (("q00", []), ("q01", [{"name": "rotate", "degrees": 30}])):
        spec = parse_rounds({"rounds": [{"id": round_id, "shift": shift}]})[0]
        started = time.perf_counter()
        asyncio.run(EdgeRound(settings, dataset, splits, spec, base, exchange, workdir / "edge").run())
        print(f"  round {round_id}: {time.perf_counter() - started:.1f} s in process", file=sys.stderr)
    assert "retraining" in captured and "normal" in captured, sorted(captured)
    return config, str(store.root), captured


async def measure(port: int, captured, trainers: int, checks: int) -> dict:
    from protocol import AsyncClient

    query, rctx = captured["retraining"]
    random, cctx = captured["normal"]
    running, done = True, []

    async def trainer(i: int) -> None:
        async with AsyncClient(port, edge_id=f"edge-{i}") as client:
            while running:
                reply = await client.send_data("retraining", query, None, round=rctx.round, extra=rctx.extra())
                done.append((time.perf_counter(), float(reply.info["queue_wait"])))

    tasks = [asyncio.create_task(trainer(i)) for i in range(trainers)]
    latencies = []
    async with AsyncClient(port, edge_id="checker") as client:
        for _ in range(3):  # warm: the model and its source outputs cached, the session open
            await client.send_data("normal", None, random, round=cctx.round, extra=cctx.extra())
        await asyncio.sleep(1.0 if trainers else 0.0)  # every trainer's first request is in (training or queued)
        window = time.perf_counter()
        for _ in range(checks):
            started = time.perf_counter()
            reply = await client.send_data("normal", None, random, round=cctx.round, extra=cctx.extra())
            latencies.append(time.perf_counter() - started)
            assert reply.info["state"] == cctx.state  # the quiet check: its own parent state back
        window = (window, time.perf_counter())
    running = False
    await asyncio.gather(*tasks)
    during = [wait for when, wait in done if window[0] <= when <= window[1]]
    waits = [wait for _, wait in done]  # every retraining reply, the ones in flight at the end included
    ms = np.asarray(latencies) * 1e3
    return {"trainers": trainers, "checks": checks, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "seconds": window[1] - window[0],
            "trainings": len(during), "replies": len(waits),
            "queue_wait": float(np.mean(waits)) if waits else float("nan"),
            "queue_wait_max": float(np.max(waits)) if waits else float("nan")}


def run_server(config: str, state_dir: str, mode: str, captured, trainers: int, checks: int) -> dict:
    context = mp.get_context("spawn")
    ports, stop = context.Queue(), context.Event()
    process = context.Process(target=serve_process, args=(config, state_dir, mode, ports, stop), daemon=True)
    process.start()
    try:
        port = ports.get(timeout=120)
        return asyncio.run(measure(port, captured, trainers, checks))
    finally:
        stop.set()
        process.join(60)
        if process.is_alive():
            process.kill()


def cpu_load() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def report(rows: list[dict], serial: dict | None, load: float, argv: list[str]) -> str:
    import torch

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Data-center load benchmark (issue 11 §3: drift checks never wait behind training)", "",
        f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; {when}. CPU busy (all processes, share of all cores) during the run: {load:.0%}.", "",
        f"`python benchmarks/datacenter_load_bench.py {' '.join(argv)}`".replace(" `", "`"), "",
        "The data center in its own process (`datacenter.server.make_server`, config/config.yaml: digits, CNN, "
        "`datacenter.trainings: 1`, 4 check workers, switch interval 0.5 ms as `serve` sets it); clients in the benchmark's process on 127.0.0.1. Each training "
        "edge sends a real `retraining` request (an open episode's first query batch, rotation 30°) back to back; "
        "the checker sends a real quiet `normal` check (100-row random sample) on a session, one after another, "
        "each timed end to end. `trainings` = retraining replies that arrived during the checks' window (a "
        "training was in flight all along: each edge sends its next request on the reply); `queue wait` = "
        "`info.queue_wait` over every retraining reply of the run, mean / max.", "",
        "| training edges | server | checks | p50 ms | p99 ms | max ms | window s | trainings | queue wait s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows + ([serial] if serial else []):
        server = "before (one lock)" if row is serial else "lanes + queue"
        lines.append(f"| {row['trainers']} | {server} | {row['checks']} | {row['p50']:.1f} | {row['p99']:.1f} | "
                     f"{row['max']:.1f} | {row['seconds']:.1f} | {row['trainings']} | "
                     f"{row['queue_wait']:.2f} / {row['queue_wait_max']:.2f} |")
    worst = max(row["p99"] for row in rows if row["trainers"])
    verdict = "PASS" if worst <= TARGET_MS else "**MISS**"
    lines += ["", "## Target", "",
              "| target | measured (worst p99 with trainings running) | verdict |", "|---|---|---|",
              f"| drift check p99 <= {TARGET_MS:.0f} ms while a training runs | {worst:.1f} ms | {verdict} |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 checks per level")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    checks = 50 if args.quick else CHECKS
    with tempfile.TemporaryDirectory(prefix="dcload-") as tmp:
        print("setup: base model and a captured episode", file=sys.stderr)
        config, state_dir, captured = prepare(Path(tmp))
        busy0, total0 = cpu_load()
        rows = []
        for trainers in LEVELS:
            rows.append(run_server(config, state_dir, "lanes", captured, trainers, checks))
            print(f"  {trainers} training edge(s): {rows[-1]}", file=sys.stderr)
        serial = run_server(config, state_dir, "serial", captured, 1, 8)
        print(f"  before, 1 training edge: {serial}", file=sys.stderr)
        busy1, total1 = cpu_load()
    text = report(rows, serial, (busy1 - busy0) / max(1, total1 - total0), sys.argv[1:] if argv is None else argv)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
