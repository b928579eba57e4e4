"""The pipeline on a real single-node SLURM cluster (issue 12): `snakemake --profile profiles/slurm`.

One module-scoped cluster of our own (slurm_cluster.py: munged, slurmctld, slurmd, no systemd,
everything under pytest's temp dir), the same small scenario run twice in temp workdirs:
locally (`--cores 2`, warm starter on, as shipped) and through the profile (every job an
sbatch job, cold processes). The SLURM run must have run its edge rounds as SLURM jobs, start
the data center once (onstart on the submitting host, not in the jobs' nested snakemake), and
produce the local run's checkpoints bit for bit.

Skipped, with the reason, only where the cluster cannot exist: not root, or slurm-wlm/munge
not installable with apt-get.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import slurm_cluster  # noqa: E402
from slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed, run_bounded  # noqa: E402
from snakemake_workdir import REPO, SMALL_ROUNDS, SNAKEMAKE, Workdir, make_workdir  # noqa: E402

PROFILE = REPO / "profiles" / "slurm"
#: One edge, three rounds: clean, a harmful rotation (the edge retrains), a contrast change.
SCENARIO = SMALL_ROUNDS[:3]
#: Bounds of each snakemake run (SIGTERM, then SIGKILL 15 s later), safety nets only: the runs take
#: about 20 s and 115-145 s on an idle machine, up to 190 s on a busy one (7 jobs, each seen finished
#: 12 or 33 s after its submission: the plugin's status checks come 1 s, 11 s and 21 s apart, and a
#: job takes 7-17 s, more under load; benchmarks/results/cluster.md).
LOCAL_TIMEOUT = 120
SLURM_TIMEOUT = 300
#: summary.csv columns that measure time, not results.
TIMING_COLUMNS = {"queue_wait"}

#: The first test sets the fixtures up: maybe apt-get (about 15 s with cached lists, more after an update), both runs.
pytestmark = pytest.mark.timeout(SLURM_TIMEOUT + 120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("a SLURM cluster's daemons need root")
    try:
        ensure_installed()
    except ClusterUnavailable as reason:
        pytest.skip(str(reason))
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def run(work: Workdir, env: dict[str, str], timeout: float, *args: str) -> str:
    code, output, _ = run_bounded([*SNAKEMAKE, *args], cwd=work.path, env=env, timeout=timeout)
    assert code == 0, f"snakemake {' '.join(args)} exited {code}:\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def runs(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Workdir, Workdir, str]:
    """(the local run, the SLURM run, the SLURM run's output), run side by side to save time."""
    local = make_workdir(tmp_path_factory.mktemp("local") / "wf")
    on_slurm = make_workdir(tmp_path_factory.mktemp("on-slurm") / "wf")
    for work in (local, on_slurm):
        work.write_rounds(SCENARIO)
    with ThreadPoolExecutor(2) as pool:
        local_done = pool.submit(run, local, dict(os.environ), LOCAL_TIMEOUT, "--cores", "2")
        # The plugin deletes a successful job's log unless told to keep it; the test reads them.
        slurm_done = pool.submit(run, on_slurm, cluster.env, SLURM_TIMEOUT, "--profile", str(PROFILE),
                                 "--slurm-keep-successful-logs")
        local_done.result()
        return local, on_slurm, slurm_done.result()


def checkpoints(work: Workdir) -> dict[str, str]:
    return {str(path.relative_to(work.path)): json.loads(path.read_text())["sha256"]
            for path in sorted(work.path.glob("results/edges/*/rounds/*/checkpoint.json"))}


def summary_without_timing(work: Workdir) -> list[dict]:
    with open(work.path / "results/summary.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def test_the_edge_rounds_ran_as_slurm_jobs(cluster: SlurmCluster, runs: tuple[Workdir, Workdir, str]) -> None:
    _, work, output = runs
    rounds = [entry["id"] for entry in SCENARIO]
    # The controller's record (kept MinJobAge=600 s): one completed job per round, the plugin's
    # comment naming the rule and wildcards.
    jobs = [job for job in cluster.jobs() if job.comment.startswith("rule_edge_round_")]
    assert sorted(job.comment for job in jobs) == [f"rule_edge_round_wildcards_edge_{r}" for r in rounds], \
        [(job.id, job.comment) for job in cluster.jobs()]
    assert {job.state for job in jobs} == {"COMPLETED"}
    # The plugin's per-job logs: each names its SLURM job id and ran the rule in a nested snakemake.
    logs = sorted((work.path / ".snakemake/slurm_logs/rule_edge_round").rglob("*.log"))
    assert len(logs) == len(rounds), logs
    assert {int(log.stem) for log in logs} == {job.id for job in jobs}
    for log in logs:
        assert "rule edge_round:" in log.read_text(), log
    assert "Job" in output and "has been submitted with SLURM jobid" in output


def test_checkpoints_match_the_local_run_bit_for_bit(runs: tuple[Workdir, Workdir, str]) -> None:
    local_run, work, _ = runs
    expected = checkpoints(local_run)
    assert len(expected) == len(SCENARIO)
    assert checkpoints(work) == expected
    assert summary_without_timing(work) == summary_without_timing(local_run)
    # The scenario really retrains (r02, rotate 30): otherwise equal checkpoints would prove little.
    assert any(row["retrained"] == "True" for row in local_run.summary()), local_run.summary()


def test_the_data_center_starts_once_on_the_submitting_host(runs: tuple[Workdir, Workdir, str]) -> None:
    _, work, _ = runs
    # onstart ran once: the jobs' nested snakemake runs with --no-hooks (snakemake/spawn_jobs.py),
    # so no job started a second data center or replaced the token.
    log = (work.path / "logs/datacenter.log").read_text()
    assert log.count("serving on") == 1, log
    # warm_start: false from the profile: no warm starter, so no socket a job could fork from
    # (each job's launcher then starts a cold process).
    assert not (work.path / "logs/warm-starter.log").exists()
    assert not (work.path / "results/server/warm.sock").exists()
    for job_log in (work.path / ".snakemake/slurm_logs").rglob("*.log"):
        assert "serving on" not in job_log.read_text(), job_log


def test_a_slurm_conf_already_in_etc_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc/slurm/slurm.conf"
    system.parent.mkdir(parents=True)
    system.write_text("ClusterName=theirs\n")
    monkeypatch.setattr(slurm_cluster, "SYSTEM_CONF", system)
    cluster = SlurmCluster(tmp_path / "cluster")
    cluster.root.mkdir()
    cluster.conf.write_text(f"{slurm_cluster.MARKER}\nClusterName=ours\n")
    cluster._install_system_conf()
    assert system.read_text() == cluster.conf.read_text()
    cluster.stop()
    assert system.read_text() == "ClusterName=theirs\n"
    assert list(system.parent.iterdir()) == [system]
