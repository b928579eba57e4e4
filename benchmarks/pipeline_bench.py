"""Pipeline benchmark: the Snakemake run of config/rounds.yaml against the same rounds in one process.

Prints a Markdown table and writes it to benchmarks/results/pipeline.md. Measured in one
run, on this machine:

- the default `snakemake --cores 2` run (warm starter on, as shipped), and optionally the
  same with `warm_start: false` (a cold Python process per job);
- the baseline: the same base training and rounds in one Python process (the ancestor's
  demo-mode style): the data center's `DataCenter.handle` called directly, no network,
  no Snakemake, one torch import.

Per-round overhead = the round's cycle (time between consecutive rounds' checkpoint.json
writes, i.e. Snakemake scheduling + process start + imports + model load + the round)
minus the round's own compute (the `seconds` the edge records). Targets (issue 4):
default run <= 60 s; overhead <= 1.5 s a round.

    python benchmarks/pipeline_bench.py            # default scenario, warm and cold
    python benchmarks/pipeline_bench.py --no-cold  # skip the cold-start run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mlcore.rounds import RoundSpec, load_fleet
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pipeline.md"


# ----------------------------------------------------------------------------- pipeline
def fleet_jobs(workdir: Path) -> list[tuple[str, RoundSpec]]:
    """Every (edge, round) of the scenario, edge by edge in file order, offsets assigned."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    fleet = load_fleet(workdir / config["rounds"], config["edge"]["batch_size"])
    return [(edge, spec) for edge, specs in fleet.items() for spec in specs]


def measure_pipeline(workdir: Path) -> dict:
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir,
                            capture_output=True, text=True)
    total = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{result.stderr[-3000:]}")
    marks = [(workdir / "results/models/base.json").stat().st_mtime]
    compute, hashes = [], []
    for edge, spec in fleet_jobs(workdir):
        record_file = workdir / f"results/edges/{edge}/rounds/{spec.id}/checkpoint.json"
        record = json.loads(record_file.read_text())
        marks.append(record_file.stat().st_mtime)
        compute.append(float(record["seconds"]))
        hashes.append(record["sha256"])
    marks = [marks[0], *sorted(marks[1:])]  # edges run side by side: a job's cycle is the gap to the one before it
    cycles = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "total": total,
        "until_base": marks[0] - started,
        "cycles": cycles,
        "compute": compute,
        "overhead": [c - w for c, w in zip(cycles, compute)],
        "hashes": hashes,
    }


# ----------------------------------------------------------------------------- one process
def in_process(workdir: Path) -> dict:
    """The rounds in this one process: DataCenter.handle called directly, no network."""
    started = time.time()
    from datacenter.base import train_base
    from datacenter.service import DataCenter
    from datacenter.state import StateStore
    from edge.round_runner import EdgeRound
    from mlcore.contract import in_process
    from mlcore.datasets import load_dataset_and_splits
    from mlcore.seeding import make_deterministic
    from mlcore.settings import load_settings

    imported = time.time()
    settings = load_settings(REPO / "config/config.yaml")
    make_deterministic()
    dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
    store = StateStore(workdir / "datacenter")
    previous = train_base(settings, dataset, splits, store)
    base_done = time.time()
    center = DataCenter(settings, dataset, splits, store)

    compute, hashes, last = [], [], {}
    for edge, spec in fleet_jobs(REPO):  # one edge after another, each chained on its own rounds
        t0 = time.time()
        outcome = asyncio.run(EdgeRound(settings, dataset, splits, spec, last.get(edge, previous),
                                        in_process(center.handle), workdir / "edges" / edge, edge_id=edge).run())
        compute.append(time.time() - t0)
        last[edge] = outcome.checkpoint
        hashes.append(outcome.checkpoint["sha256"])
    return {"total": time.time() - started, "imports": imported - started, "base": base_done - imported,
            "compute": compute, "hashes": hashes}


def measure_in_process(workdir: Path) -> dict:
    """Run `in_process` in a fresh interpreter, so its imports are timed like the pipeline's."""
    out = subprocess.run([sys.executable, __file__, "--in-process", str(workdir)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"in-process baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def table(runs: dict[str, dict], baseline: dict) -> str:
    lines = ["| | total wall (s) | until base model (s) | mean round cycle (s) | mean round compute (s) | mean overhead a round (s) | max overhead (s) | total / one process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['total']:.1f} | {run['until_base']:.1f} | {mean(run['cycles']):.2f} | "
            f"{mean(run['compute']):.2f} | {mean(run['overhead']):.2f} | {max(run['overhead']):.2f} | "
            f"{run['total'] / baseline['total']:.2f}x |")
    lines.append(
        f"| one process (baseline) | {baseline['total']:.1f} | {baseline['imports'] + baseline['base']:.1f} | "
        f"{mean(baseline['compute']):.2f} | {mean(baseline['compute']):.2f} | 0 | 0 | 1.00x |")
    return "\n".join(lines)


def verdicts(runs: dict[str, dict], baseline: dict) -> list[str]:
    default = runs["snakemake, warm starter (default)"]
    ratio = default["total"] / baseline["total"]
    out = [
        f"- Default run <= 1.25x the one-process run (issue 9): {ratio:.2f}x -> {'PASS' if ratio <= 1.25 else 'MISS'}",
        f"- Default run <= 60 s: {default['total']:.1f} s -> {'PASS' if default['total'] <= 60 else 'MISS'}",
        f"- Overhead <= 1.5 s a round: mean {mean(default['overhead']):.2f} s, max {max(default['overhead']):.2f} s -> "
        f"{'PASS' if mean(default['overhead']) <= 1.5 else 'MISS'}",
    ]
    for name, run in runs.items():
        same = run["hashes"] == baseline["hashes"]
        out.append(f"- {name}: final checkpoints {'identical to' if same else 'DIFFERENT from'} the one-process run")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cold", action="store_true", help="skip the run with warm_start: false")
    parser.add_argument("--in-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(in_process(Path(args.in_process))))
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        tmp_path = Path(tmp)
        baseline = measure_in_process(tmp_path / "inproc")
        runs = {"snakemake, warm starter (default)": measure_pipeline(copy_workflow(tmp_path / "warm", {"warm_start": True}))}
        if not args.no_cold:
            runs["snakemake, cold process a job"] = measure_pipeline(copy_workflow(tmp_path / "cold", {"warm_start": False}))
    n_rounds = len(baseline["compute"])
    report = "\n".join([
        "# Pipeline benchmark",
        "",
        f"`python benchmarks/pipeline_bench.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, the default scenario ({n_rounds} rounds of config/rounds.yaml, "
        "digits, config/config.yaml). Overhead = round cycle - the round's own compute.",
        "",
        table(runs, baseline),
        "",
        *verdicts(runs, baseline),
        "",
    ])
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
