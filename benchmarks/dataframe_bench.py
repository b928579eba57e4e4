"""DataFrame codec benchmark: protocol/dataframes.py against its previous version and pickle.

Candidates, interleaved repetition by repetition so that drift on the machine hits them
all alike (the baseline is the implementation at commit c5d4bb9, loaded from git):
  - pickle round trip: `pickle.loads(pickle.dumps(frame, protocol=5))` (no safety at all);
  - old encode / old decode: protocol/dataframes.py before the rewrite;
  - new encode / new decode: protocol/dataframes.py now.
Decoding reads a bytearray (what the receiver owns). Frames: the request frame of
benchmarks/protocol_bench.py (id int64, label int64, path str, f0..f63 float32) at
10 ... 100k rows, and the edge's sample frame (mlcore.frames.build_sample_frame: id,
x = 784 float32 a row, label Int64, round, shift) at 10 and 100 rows.

    python benchmarks/dataframe_bench.py           # a few minutes
    python benchmarks/dataframe_bench.py --quick   # fewer repetitions
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import pickle
import platform
import subprocess
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mlcore.frames import build_sample_frame  # noqa: E402
from protocol import dataframes as new  # noqa: E402
from protocol_bench import make_frame  # noqa: E402

BASELINE_COMMIT = "c5d4bb9"
RESULTS = REPO / "benchmarks" / "results" / "dataframes.md"


def load_baseline() -> Any:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:protocol/dataframes.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path("/tmp") / f"driftloop_dataframes_{BASELINE_COMMIT}.py"
    path.write_text(source.replace("from .errors import", "from protocol.errors import"))
    spec = importlib.util.spec_from_file_location("dataframes_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edge_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    labels = rng.integers(-1, 10, rows)
    return build_sample_frame(np.arange(rows), rng.random((rows, 28, 28), dtype=np.float32), labels, "r7", "rotate")


def candidates(frame: pd.DataFrame, old: Any) -> dict[str, Callable[[], Any]]:
    old_bytes = bytearray(bytes(old.encode_dataframe(frame)))
    new_bytes = bytearray(bytes(new.encode_dataframe(frame)))
    return {
        "pickle round trip": lambda: pickle.loads(pickle.dumps(frame, protocol=5)),
        "old encode": lambda: old.encode_dataframe(frame),
        "old decode": lambda: old.decode_dataframe(old_bytes),
        "new encode": lambda: new.encode_dataframe(frame),
        "new decode": lambda: new.decode_dataframe(new_bytes),
    }


def measure(frame: pd.DataFrame, old: Any, reps: int, inner: int) -> dict[str, list[float]]:
    """Seconds per call: `reps` samples, each the mean of `inner` calls, candidates interleaved."""
    funcs = candidates(frame, old)
    for func in funcs.values():  # warm-up (and the new codec's schema caches)
        func()
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    gc.disable()
    try:
        for _ in range(reps):
            for name, func in funcs.items():
                start = time.perf_counter()
                for _ in range(inner):
                    func()
                samples[name].append((time.perf_counter() - start) / inner)
    finally:
        gc.enable()
    return samples


def fmt(seconds: list[float]) -> str:
    q1, med, q3 = statistics.quantiles(seconds, n=4)
    unit, scale = ("ms", 1e3) if med >= 1e-3 else ("us", 1e6)
    return f"{med * scale:.3g} {unit} ({q1 * scale:.3g}–{q3 * scale:.3g})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    old = load_baseline()
    cases = [(f"request, {n:,} rows", make_frame(n)) for n in (10, 100, 1_000, 10_000, 100_000)]
    cases += [(f"edge sample, {n} rows", edge_frame(n)) for n in (10, 100)]
    header = ("| frame | pickle round trip | old encode | old decode | old enc+dec | new encode | new decode "
              "| new enc+dec | new enc+dec / pickle |")
    lines = [header, "|" + "---|" * 9]
    print(header)
    for label, frame in cases:
        cells = frame.size * 8
        reps = 7 if args.quick else 21
        inner = max(1, min(200, int(2e6 // max(cells, 1))))
        s = measure(frame, old, reps, inner)
        old_rt = [a + b for a, b in zip(s["old encode"], s["old decode"])]
        new_rt = [a + b for a, b in zip(s["new encode"], s["new decode"])]
        ratio = statistics.median(new_rt) / statistics.median(s["pickle round trip"])
        row = (f"| {label} | {fmt(s['pickle round trip'])} | {fmt(s['old encode'])} | {fmt(s['old decode'])} "
               f"| {fmt(old_rt)} | {fmt(s['new encode'])} | {fmt(s['new decode'])} | {fmt(new_rt)} | {ratio:.2f}x |")
        lines.append(row)
        print(row, flush=True)
    load = "load average %.1f %.1f %.1f" % __import__("os").getloadavg()
    env = (f"{dt.date.today()}; {load} at the end; Python {platform.python_version()}, pandas {pd.__version__}, pyarrow {pa.__version__}, "
           f"numpy {np.__version__}; {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# DataFrame codec: protocol/dataframes.py (new) vs its version at "
        f"{BASELINE_COMMIT} (old) vs pickle\n\n"
        f"Produced by `python benchmarks/dataframe_bench.py{' --quick' if args.quick else ''}` ({env}). "
        "Median per call, interquartile range in brackets, candidates interleaved; decode reads a bytearray. "
        "`enc+dec` adds encode and decode sample by sample. Request frame: id int64, label int64, path str, "
        "f0..f63 float32 (67 columns). Edge sample frame: id, x (784 float32 a row), label Int64, round, shift.\n\n"
        + "\n".join(lines) + "\n\n" + NOTES
    )
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")


NOTES = """What bounds each figure (profiled with cProfile and perf_counter loops):
- pickle: pickles the frame's 3 pandas blocks (one 2-D float32 block, one int64 block, the
  string column's Arrow array); fixed per-frame cost ~0.3 ms, then memory copies.
- old encode: one `pa.array` and one `pa.field` with metadata a column (~10 us a column),
  the IPC stream written twice (a dry run to size it); old decode: `Table.to_pandas`-free
  but per-column pyarrow wrappers and `pd.DataFrame(dict)` of 67 columns (~1.3 ms).
- new encode: a fixed ~0.15 ms (block walk, cached schema message, hand-written record
  batch header, one output allocation) plus one copy of each numpy block; the string column
  is a zero-copy Arrow array (its buffers are copied once into the body).
- new decode: a fixed ~0.2 ms (the message headers read in Python, the cached schema plan,
  the string column rebuilt, fully validated and copied, building the DataFrame from blocks)
  plus one copy per dtype block. From 10k rows on both codecs are bound by copying memory
  and by the string column (pickle too). The edge frame's per-row work is done in C loops:
  its object column of arrays is checked with `set(map(...))` (type, ndim, dtype, length)
  and joined by one `np.concatenate` on encode, one array object a row on decode (pickle
  pickles each row's array on its own); its object str columns go to Arrow with
  `from_pandas=True` (no per-row Python); its Int64 column is values + a bitmap read with
  numpy. What is left is the fixed cost per frame and per column.
"""

if __name__ == "__main__":
    main()
