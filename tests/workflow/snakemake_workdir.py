"""Helpers of the workflow tests: a copy of the workflow with a small config, run by the real snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

#: Small but real: a harmful shift, a benign one, a switch back.
SMALL_ROUNDS = [
    {"id": "r01", "shift": []},
    {"id": "r02", "shift": [{"name": "rotate", "degrees": 30}]},
    {"id": "r03", "shift": [{"name": "contrast", "factor": 0.5}]},
    {"id": "r04", "shift": []},
]

#: A fleet of two edges, two rounds, kept cheap (nothing to retrain): in r02, a benign shift on a and
#: on half of b's batch.
SMALL_FLEET = {
    "edges": ["a", "b"],
    "rounds": [
        {"id": "r01", "shift": []},
        {"id": "r02", "shift": [{"name": "contrast", "factor": 0.8}], "per_edge": {"b": {"mix": 0.5}}},
    ],
}


class Workdir:
    """A copy of the workflow with a small config; runs snakemake inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*SNAKEMAKE, *args], cwd=self.path, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*SNAKEMAKE, *args], cwd=self.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def write_rounds(self, rounds: list[dict]) -> None:
        (self.path / "config/rounds.yaml").write_text(yaml.safe_dump({"rounds": rounds}, sort_keys=False))

    def write_scenario(self, scenario: dict) -> None:
        """A whole rounds document (either form)."""
        (self.path / "config/rounds.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))

    def scenario(self) -> dict:
        return yaml.safe_load((self.path / "config/rounds.yaml").read_text())

    def rounds(self) -> list[dict]:
        return self.scenario()["rounds"]

    def config(self) -> dict:
        return yaml.safe_load((self.path / "config/config.yaml").read_text())

    def write_config(self, config: dict) -> None:
        (self.path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def summary(self) -> list[dict]:
        import csv

        with open(self.path / "results/summary.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    def mtimes(self, pattern: str = "results/edges/*/rounds/*/checkpoint.json") -> dict[str, float]:
        return {str(p.relative_to(self.path)): p.stat().st_mtime_ns for p in sorted(self.path.glob(pattern))}


def planned(dry_run_stdout: str) -> set[tuple[str, str]]:
    """The (edge, round) jobs a `snakemake -n` would run."""
    jobs = set()
    for line in dry_run_stdout.splitlines():
        if "wildcards: edge=" in line:
            fields = dict(item.split("=", 1) for item in line.split("wildcards:")[1].strip().split(", "))
            jobs.add((fields["edge"], fields["round"]))
    return jobs


def make_workdir(path: Path) -> Workdir:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", path / "Snakefile")
    shutil.copytree(REPO / "workflow", path / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", path / "config")
    work = Workdir(path)
    config = work.config()
    config["model"]["epochs"] = 10
    config["datacenter"]["finetune"]["epochs"] = 15
    config["edge"]["max_iterations"] = 3
    config["edge"]["label_budget"] = 30
    work.write_config(config)
    work.write_rounds(SMALL_ROUNDS)
    return work


def server_pid(work: Workdir, timeout: float = 60) -> int:
    """The pid of the data center a run in `work` started, once it has published its port."""
    pid_file = work.path / "results/server/pid"
    port_file = work.path / "results/server/port"
    deadline = time.monotonic() + timeout
    while not (pid_file.exists() and port_file.exists()):
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.05)
    return int(pid_file.read_text())


def hashes(work: Workdir) -> dict[tuple[str, str], str]:
    """Every (edge, round)'s checkpoint sha256, from the summary."""
    return {(r["edge"], r["round"]): r["sha256"] for r in work.summary()}
