"""Cluster benchmark: what a round costs under SLURM (profiles/slurm) against a local run.

Prints a Markdown table and writes it to benchmarks/results/cluster.md. Runs one small
scenario (one edge, the first rounds of tests/workflow's SMALL_ROUNDS: clean, rotate 30 —
a retraining —, contrast; the small config of make_workdir) twice, one after the other:

- locally, `snakemake --cores 2`, as shipped (warm starter on);
- `snakemake --profile profiles/slurm` on a real single-node SLURM cluster of its own
  (tests/cluster/slurm_cluster.py: munged, slurmctld, slurmd; needs root and apt-get for
  slurm-wlm/munge), where every job is an sbatch job running a nested snakemake, cold.

Per round = total wall / number of edge_round jobs. Per job: submission until snakemake
sees it finished, from snakemake's own log (1 s resolution); under SLURM also the job's
queue time (Submit -> Start) and run time (Start -> End) from `scontrol show job` (1 s
resolution); the round's own compute is the `seconds` its checkpoint.json records.
Also checks that both runs wrote the same checkpoints.

    python benchmarks/cluster_bench.py             # 3 rounds
    python benchmarks/cluster_bench.py --rounds 4  # all of SMALL_ROUNDS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cluster.md"
PROFILE = REPO / "profiles" / "slurm"
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests" / "workflow")]

from slurm_cluster import SlurmCluster, run_bounded  # noqa: E402
from snakemake_workdir import SMALL_ROUNDS, SNAKEMAKE, Workdir, make_workdir  # noqa: E402

TIMEOUT = 900  # seconds a run may take before it is killed
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def parse_stamp(text: str) -> float:
    return datetime.strptime(text, "%a %b %d %H:%M:%S %Y").timestamp()


def job_latencies(output: str) -> list[dict]:
    """Snakemake's log: per job, its rule, wildcards and seconds from start/submission until finished."""
    stamp, pending, jobs, finished = None, None, {}, {}
    for line in output.splitlines():
        if match := STAMP.match(line):
            stamp = parse_stamp(match.group(1))
        elif match := RULE.match(line):
            pending = {"rule": match.group(1), "started": stamp, "wildcards": ""}
        elif pending and (match := WILDCARDS.match(line)):
            pending["wildcards"] = match.group(1)
        elif pending and (match := JOBID.match(line)):
            jobs[int(match.group(1))] = pending
        elif match := FINISHED.match(line):
            finished[int(match.group(1))] = stamp
        elif not line.strip():
            pending = None
    return [{**job, "seconds": finished[jobid] - job["started"]} for jobid, job in jobs.items() if jobid in finished]


def describe(entry: dict) -> str:
    """A round as `r02 rotate30`."""
    shifts = "+".join(step["name"] + "".join(str(v) for k, v in step.items() if k != "name") for step in entry["shift"])
    return f"{entry['id']} {shifts or 'clean'}"


def compute_seconds(work: Workdir) -> dict[str, float]:
    return {str(path.parent.name): float(json.loads(path.read_text())["seconds"])
            for path in sorted(work.path.glob("results/edges/*/rounds/*/checkpoint.json"))}


def hashes(work: Workdir) -> dict[str, str]:
    return {str(path.relative_to(work.path)): json.loads(path.read_text())["sha256"]
            for path in sorted(work.path.glob("results/edges/*/rounds/*/checkpoint.json"))}


def measure(work: Workdir, env: dict[str, str], *args: str) -> dict:
    code, output, wall = run_bounded([*SNAKEMAKE, *args], cwd=work.path, env=env, timeout=TIMEOUT)
    if code != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed ({code}) in {work.path}:\n{output[-4000:]}")
    jobs = job_latencies(output)
    rounds = [job for job in jobs if job["rule"] == "edge_round"]
    return {"wall": wall, "jobs": jobs, "rounds": rounds, "compute": compute_seconds(work), "hashes": hashes(work)}


def slurm_seconds(cluster: SlurmCluster) -> list[dict]:
    """Per SLURM job: its rule (the plugin's comment), queue time and run time."""
    def at(value: str) -> float:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()

    return [{"comment": job.comment, "queued": at(job.start) - at(job.fields["SubmitTime"]),
             "ran": at(job.end) - at(job.start), "state": job.state} for job in cluster.jobs()]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def table(local: dict, slurm: dict, slurm_jobs: list[dict]) -> str:
    rounds_slurm = [job for job in slurm_jobs if job["comment"].startswith("rule_edge_round_")]
    rows = [
        "| | total wall (s) | edge_round jobs | wall / round (s) | mean round latency, submitted -> seen finished (s) "
        "| mean SLURM queue, Submit -> Start (s) | mean SLURM run, Start -> End (s) | mean round compute (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run, extra in (("local, `--cores 2` (warm starter)", local, None),
                             ("SLURM, `--profile profiles/slurm` (cold)", slurm, rounds_slurm)):
        n = len(run["rounds"])
        queue = f"{mean([j['queued'] for j in extra]):.1f}" if extra else "-"
        ran = f"{mean([j['ran'] for j in extra]):.1f}" if extra else "-"
        rows.append(f"| {name} | {run['wall']:.1f} | {n} | {run['wall'] / n:.1f} | "
                    f"{mean([j['seconds'] for j in run['rounds']]):.1f} | {queue} | {ran} | "
                    f"{mean(list(run['compute'].values())):.2f} |")
    return "\n".join(rows)


def per_job_table(local: dict, slurm: dict, slurm_jobs: list[dict]) -> str:
    by_comment = {job["comment"]: job for job in slurm_jobs}
    local_by_key = {(job["rule"], job["wildcards"]): job for job in local["jobs"]}
    rows = ["| job | local: submitted -> finished (s) | SLURM: submitted -> seen finished (s) "
            "| SLURM queue (s) | SLURM run (s) |", "|---|---:|---:|---:|---:|"]
    for job in slurm["jobs"]:
        if job["rule"] == "all":
            continue
        key = (job["rule"], job["wildcards"])
        wildcards = "_".join(item.split("=", 1)[1] for item in job["wildcards"].split(", ")) if job["wildcards"] else ""
        comment = f"rule_{job['rule']}" + (f"_wildcards_{wildcards}" if wildcards else "")
        record = by_comment.get(comment, {})
        local_seconds = local_by_key[key]["seconds"] if key in local_by_key else float("nan")
        rows.append(f"| {job['rule']} {job['wildcards']} | {local_seconds:.0f} | {job['seconds']:.0f} | "
                    f"{record.get('queued', float('nan')):.0f} | {record.get('ran', float('nan')):.0f} |")
    return "\n".join(rows)


def versions() -> str:
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return (f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"snakemake {version('snakemake')}, snakemake-executor-plugin-slurm "
            f"{version('snakemake-executor-plugin-slurm')} (+ slurm-jobstep "
            f"{version('snakemake-executor-plugin-slurm-jobstep')}), {slurm}, code of {commit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="how many of SMALL_ROUNDS (1-4)")
    parser.add_argument("--slurm-args", default="", help="more snakemake arguments for the SLURM run, e.g. "
                        "'--slurm-init-seconds-before-status-checks 4' (named in the report)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the report")
    args = parser.parse_args()
    scenario = SMALL_ROUNDS[:args.rounds]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        tmp_path = Path(tmp)
        local_work = make_workdir(tmp_path / "local")
        local_work.write_rounds(scenario)
        local = measure(local_work, dict(os.environ), "--cores", "2")
        started = time.monotonic()
        with SlurmCluster(tmp_path / "slurm") as cluster:
            bring_up = time.monotonic() - started
            slurm_work = make_workdir(tmp_path / "on-slurm")
            slurm_work.write_rounds(scenario)
            slurm = measure(slurm_work, cluster.env, "--profile", str(PROFILE), *shlex.split(args.slurm_args))
            slurm_jobs = slurm_seconds(cluster)
            info = versions()
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    per_round_local = local["wall"] / len(local["rounds"])
    per_round_slurm = slurm["wall"] / len(slurm["rounds"])
    latency_local = mean([job["seconds"] for job in local["rounds"]])
    latency_slurm = mean([job["seconds"] for job in slurm["rounds"]])
    same = local["hashes"] == slurm["hashes"]
    report = "\n".join([
        "# Cluster benchmark: local against SLURM",
        "",
        f"`python benchmarks/cluster_bench.py --rounds {args.rounds}"
        f"{f' --slurm-args {shlex.quote(args.slurm_args)}' if args.slurm_args else ''}` on {time.strftime('%Y-%m-%d')} ({info}). "
        f"Scenario: one edge, {len(scenario)} rounds ({', '.join(describe(entry) for entry in scenario)}), "
        "the small config of tests/workflow/snakemake_workdir.py (digits). The runs one after the other; "
        f"the single-node cluster (slurm_cluster.py) came up in {bring_up:.1f} s, not counted; {load}.",
        "",
        table(local, slurm, slurm_jobs),
        "",
        f"- SLURM / local, per round (total wall / edge_round jobs): {per_round_slurm:.1f} s / {per_round_local:.1f} s "
        f"= **{per_round_slurm / per_round_local:.1f}x**; total wall {slurm['wall'] / local['wall']:.1f}x "
        f"({len(slurm['jobs'])} jobs each: write_settings, train_base, the rounds, summarize).",
        f"- SLURM / local, per edge_round job (submitted -> seen finished): {latency_slurm:.1f} s / "
        f"{latency_local:.1f} s = **{latency_slurm / latency_local:.0f}x**; a SLURM job's own run (Start -> End) "
        f"{mean([j['ran'] for j in slurm_jobs if j['comment'].startswith('rule_edge_round_')]):.1f} s.",
        f"- Checkpoints: {'identical' if same else 'DIFFERENT'} (sha256 of every round's checkpoint).",
        "",
        "Every job, in submission order (1 s resolution):",
        "",
        per_job_table(local, slurm, slurm_jobs),
        "",
    ])
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)


if __name__ == "__main__":
    main()
