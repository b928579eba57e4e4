"""Pipeline benchmark: the Snakemake run of config/rounds.yaml against the same rounds in one process.

Prints a Markdown table and writes it to benchmarks/results/pipeline.md. Measured in one
run, on this machine, in pairs: each repetition runs

- the baseline: the same base training and rounds in one Python process (the ancestor's
  demo-mode style): the data center's `DataCenter.handle` called directly, no network,
  no Snakemake, one torch import, the edges one after another;
- the default `snakemake --cores 2` run (warm starter on, as shipped);

in alternating order (baseline first in even repetitions), so that a change of the
machine's load during the run falls on both; the ratio is taken within each pair. Two
scenarios: the shipped fleet (config/rounds.yaml: 3 edges, which Snakemake runs side by
side) and one edge (edge a's rounds as a plain list: no parallelism to hide overhead).
Optionally once more with `warm_start: false` (a cold Python process per job).

Per-round overhead (one edge) = the round's cycle (time between consecutive rounds'
checkpoint.json writes: Snakemake scheduling + process start + model load + the round)
minus the round's own compute (the `seconds` the edge records). Targets: default run <=
1.25x the one-process run (issue 9); overhead <= 1.5 s a round (issue 4).

    python benchmarks/pipeline_bench.py                  # both scenarios, 3 pairs each
    python benchmarks/pipeline_bench.py --repeat 5 --cold
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
from machine_load import LoadMeter
from workflow_copy import copy_workflow

SCENARIOS = ("fleet", "one edge")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pipeline.md"


# ----------------------------------------------------------------------------- pipeline
def fleet_jobs(workdir: Path) -> list[tuple[str, RoundSpec]]:
    """Every (edge, round) of the scenario, edge by edge in file order, offsets assigned."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    fleet = load_fleet(workdir / config["rounds"], config["edge"]["batch_size"])
    return [(edge, spec) for edge, specs in fleet.items() for spec in specs]


def one_edge_rounds(workdir: Path) -> None:
    """Rewrite the copy's rounds file as the first edge's timeline, a plain one-edge list."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    path = workdir / config["rounds"]
    raw = yaml.safe_load(path.read_text())
    first = (raw.get("edges") or ["edge"])[0]
    rounds = []
    for entry in raw["rounds"]:
        if first in entry.get("only", (first,)):
            resolved = {key: value for key, value in entry.items() if key not in ("only", "per_edge")}
            resolved.update(entry.get("per_edge", {}).get(first, {}))
            rounds.append(resolved)
    path.write_text(yaml.safe_dump({"rounds": rounds}, sort_keys=False))


def scenario_copy(target: Path, scenario: str, settings: dict) -> Path:
    workdir = copy_workflow(target, settings)
    if scenario == "one edge":
        one_edge_rounds(workdir)
    return workdir


def measure_pipeline(workdir: Path) -> dict:
    started = time.time()
    load = LoadMeter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir,
                            capture_output=True, text=True)
    foreign, _ = load.foreign()
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
        "load": foreign,
        "until_base": marks[0] - started,
        "rounds_wall": marks[-1] - marks[0],
        "cycles": cycles,
        "compute": compute,
        "overhead": [c - w for c, w in zip(cycles, compute)],
        "hashes": hashes,
    }



# ----------------------------------------------------------------------------- one process
def in_process(workdir: Path, state: Path) -> dict:
    """The rounds of the workflow copy `workdir` in this one process: DataCenter.handle called directly."""
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
    settings = load_settings(workdir / "config/config.yaml")
    make_deterministic()
    dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
    store = StateStore(state / "datacenter")
    previous = train_base(settings, dataset, splits, store)
    base_done = time.time()
    center = DataCenter(settings, dataset, splits, store)

    compute, hashes, last = [], [], {}
    for edge, spec in fleet_jobs(workdir):  # one edge after another, each chained on its own rounds
        t0 = time.time()
        outcome = asyncio.run(EdgeRound(settings, dataset, splits, spec, last.get(edge, previous),
                                        in_process(center.handle), state / "edges" / edge, edge_id=edge).run())
        compute.append(time.time() - t0)
        last[edge] = outcome.checkpoint
        hashes.append(outcome.checkpoint["sha256"])
    return {"total": time.time() - started, "imports": imported - started, "base": base_done - imported,
            "compute": compute, "hashes": hashes}


def measure_in_process(workdir: Path, state: Path) -> dict:
    """Run `in_process` in a fresh interpreter, so its imports are timed like the pipeline's."""
    load = LoadMeter()
    out = subprocess.run([sys.executable, __file__, "--in-process", str(workdir), str(state)],
                         capture_output=True, text=True)
    foreign, _ = load.foreign()
    if out.returncode != 0:
        raise SystemExit(f"in-process baseline failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": foreign}


# ----------------------------------------------------------------------------- report
def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(values: list[float]) -> str:
    """Mean with a 95% t-interval (n < 2: the value alone)."""
    if len(values) < 2:
        return f"{mean(values):.2f}"
    half = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean(values):.2f} [{mean(values) - half:.2f}, {mean(values) + half:.2f}]"


def pairs_table(pairs: list[tuple[dict, dict]]) -> str:
    lines = ["| pair | order | one process (s) | snakemake (s) | snakemake / one process | until base model: one process / snakemake (s) "
             "| rounds: sum of compute, one process / snakemake wall (s) | foreign load: one process / snakemake |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for i, (base, run) in enumerate(pairs):
        lines.append(
            f"| {i + 1} | {'one process first' if i % 2 == 0 else 'snakemake first'} | {base['total']:.1f} | {run['total']:.1f} | "
            f"{run['total'] / base['total']:.2f}x | {base['imports'] + base['base']:.1f} / {run['until_base']:.1f} | "
            f"{sum(base['compute']):.1f} / {run['rounds_wall']:.1f} | {base['load']:.0%} / {run['load']:.0%} |")
    return "\n".join(lines)


def scenario_section(scenario: str, pairs: list[tuple[dict, dict]], cold: dict | None) -> list[str]:
    ratios = [run["total"] / base["total"] for base, run in pairs]
    runs = [run for _, run in pairs]
    n_rounds = len(pairs[0][0]["compute"])
    same = all(run["hashes"] == base["hashes"] for base, run in pairs)
    out = [f"## {scenario} ({n_rounds} rounds)", "", pairs_table(pairs), ""]
    out.append(f"- Default run <= 1.25x the one-process run (issue 9): {interval(ratios)}x over {len(ratios)} pairs "
               f"(range {min(ratios):.2f}-{max(ratios):.2f}) -> "
               f"{'PASS' if mean(ratios) <= 1.25 else 'MISS'}")
    if scenario == "one edge":
        overheads = [mean(run["overhead"]) for run in runs]
        worst = max(max(run["overhead"]) for run in runs)
        out.append(f"- Overhead a round (cycle - the round's compute): mean {interval(overheads)} s, max {worst:.2f} s "
                   f"(issue 4: <= 1.5 s) -> {'PASS' if mean(overheads) <= 1.5 else 'MISS'}")
    out.append(f"- Checkpoints of every snakemake run {'identical to' if same else 'DIFFERENT from'} the one-process run's")
    if cold is not None:
        out.append(f"- Cold process a job (`warm_start: false`), once: {cold['total']:.1f} s = "
                   f"{cold['total'] / mean([b['total'] for b, _ in pairs]):.2f}x the mean one-process run; checkpoints "
                   f"{'identical' if cold['hashes'] == pairs[0][0]['hashes'] else 'DIFFERENT'}")
    return [*out, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs (one process, snakemake) per scenario")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    parser.add_argument("--cold", action="store_true", help="also one run per scenario with warm_start: false")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the Markdown report")
    parser.add_argument("--in-process", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(in_process(Path(args.in_process[0]), Path(args.in_process[1]))))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    started = time.time()
    sections = []
    for scenario in SCENARIOS if args.scenario == "both" else (args.scenario,):
        pairs = []
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
                tmp_path = Path(tmp)
                workdir = scenario_copy(tmp_path / "warm", scenario, {"warm_start": True})
                if i % 2 == 0:
                    base = measure_in_process(workdir, tmp_path / "inproc")
                    run = measure_pipeline(workdir)
                else:
                    run = measure_pipeline(workdir)
                    base = measure_in_process(workdir, tmp_path / "inproc")
                pairs.append((base, run))
                print(f"{scenario}, pair {i + 1}: {base['total']:.1f} s one process, {run['total']:.1f} s snakemake", file=sys.stderr)
        cold = None
        if args.cold:
            with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
                cold = measure_pipeline(scenario_copy(Path(tmp) / "cold", scenario, {"warm_start": False}))
        sections += scenario_section(scenario, pairs, cold)
    report = "\n".join([
        "# Pipeline benchmark",
        "",
        f"`python benchmarks/pipeline_bench.py --repeat {args.repeat}` on {time.strftime('%Y-%m-%d')}, commit {commit}, "
        f"{time.time() - started:.0f} s: {os.cpu_count()} cores, Python {platform.python_version()}, digits, "
        "config/config.yaml. Each pair runs the one-process baseline and `snakemake --cores 2` (warm starter, as "
        "shipped) back to back, in alternating order; ratios are within a pair, then averaged (95% t-interval). "
        "Foreign load: the share of all cores used by processes outside the measured run during it (from "
        "/proc/stat, minus this process's waited-for children).",
        "",
        *sections,
    ])
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)


if __name__ == "__main__":
    main()
