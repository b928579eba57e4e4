"""The pipeline's properties, each checked by running the real snakemake (issue 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snakemake_workdir import SMALL_ROUNDS, Workdir, hashes, planned, server_pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_default_scenario_runs_and_summarizes(finished_run: Workdir) -> None:
    rows = finished_run.summary()
    assert [r["round"] for r in rows] == [r["id"] for r in SMALL_ROUNDS]
    assert {r["edge"] for r in rows} == {"edge"}, "a plain rounds list is one edge, id `edge`"
    by_round = {r["round"]: r for r in rows}
    assert by_round["r02"]["flagged"] == "True", "a 30-degree rotation must trigger retraining"
    assert by_round["r02"]["retrained"] == "True"
    assert float(by_round["r02"]["accuracy_after"]) > float(by_round["r02"]["accuracy_before"])
    assert by_round["r01"]["labels_used"] == "0", "monitoring a clean round must spend no labels"
    # the decision of each round, and each label-free estimate's error against the held-out truth
    assert by_round["r01"]["decision"] == "stable" and by_round["r02"]["decision"] == "retrain"
    for row in rows:
        for name in ("atc", "doc"):
            assert float(row[f"estimate_{name}_error"]) == pytest.approx(
                float(row[f"estimate_{name}"]) - float(row["accuracy_before"]), abs=2e-4)
    for name in ("accuracy.svg", "labels.svg", "fleet_accuracy.svg", "queue_wait.svg"):
        assert (finished_run.path / "results/plots" / name).read_text().lstrip().startswith("<?xml")
    for round_id in by_round:
        record = json.loads((finished_run.path / f"results/edges/edge/rounds/{round_id}/checkpoint.json").read_text())
        assert record["sha256"] == by_round[round_id]["sha256"]
    assert not alive(int((finished_run.path / "results/server/pid").read_text())), "the server outlived the run"


def test_second_run_does_nothing(run_copy: Workdir) -> None:
    before = run_copy.mtimes("results/**/*")
    result = run_copy.run("--cores", "2")
    assert "Nothing to be done" in result.stderr
    assert run_copy.mtimes("results/**/*") == before
    assert "data center listening" not in result.stderr, "a run with nothing to do must not start the server"


def test_editing_a_round_reruns_it_and_later_only(run_copy: Workdir) -> None:
    rounds = run_copy.rounds()
    rounds[2]["shift"] = [{"name": "rotate", "degrees": 15}]
    run_copy.write_rounds(rounds)
    dry = run_copy.run("-n", "--cores", "2").stdout
    assert planned(dry) == {("edge", "r03"), ("edge", "r04")}


def test_appending_a_round_runs_only_it_with_one_core(run_copy: Workdir) -> None:
    before = run_copy.mtimes()
    run_copy.write_rounds([*run_copy.rounds(), {"id": "r05", "shift": [{"name": "rotate", "degrees": 30}]}])
    run_copy.run("--cores", "1")
    after = run_copy.mtimes()
    assert {k: v for k, v in after.items() if "r05" not in k} == before
    assert "results/edges/edge/rounds/r05/checkpoint.json" in after
    assert [r["round"] for r in run_copy.summary()][-1] == "r05"


def test_killed_server_fails_the_run_and_the_rerun_matches(fresh: Workdir, finished_run: Workdir) -> None:
    process = fresh.popen("--cores", "2")
    pid = server_pid(fresh)
    first_round = fresh.path / "results/edges/edge/rounds/r01/checkpoint.json"
    deadline = time.monotonic() + 120
    while not first_round.exists():
        assert time.monotonic() < deadline and process.poll() is None, "round r01 never finished"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "data center" in output.lower() or "cannot connect" in output.lower(), output[-3000:]
    kept = fresh.mtimes()
    assert "results/edges/edge/rounds/r01/checkpoint.json" in kept
    fresh.run("--cores", "2")
    assert {k: v for k, v in fresh.mtimes().items() if k in kept} == kept, "finished rounds were redone"
    assert hashes(fresh) == hashes(finished_run), "an interrupted run must end with the same checkpoints"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_stopping_snakemake_leaves_no_server(fresh: Workdir, sig: signal.Signals) -> None:
    process = fresh.popen("--cores", "2")
    pid = server_pid(fresh)
    process.send_signal(sig)
    process.communicate(timeout=60)
    assert wait_gone(pid), f"server {pid} survived {sig.name} of snakemake"


@pytest.mark.parametrize(
    "where, value, named",
    [
        (("edge", "batch_size"), "many", "batch_size"),
        (("edge", "random_sample"), -3, "random_sample"),
        (("datacenter", "detector"), "crystal-ball", "detector"),
        (("model",), None, "model"),
    ],
)
def test_invalid_config_is_refused_before_any_job(fresh: Workdir, where: tuple, value: object, named: str) -> None:
    config = fresh.config()
    node = config
    for key in where[:-1]:
        node = node[key]
    if value is None:
        del node[where[-1]]
    else:
        node[where[-1]] = value
    fresh.write_config(config)
    result = fresh.run("--cores", "2", check=False)
    assert result.returncode != 0
    assert named in result.stderr
    assert not (fresh.path / "results").exists(), "a job ran despite the invalid config"


@pytest.mark.parametrize(
    "rounds, named",
    [
        ([{"id": "r01", "shift": [{"name": "spin"}]}], "spin"),
        ([{"id": "r01", "shift": [], "size": -1}], "size"),
        ([{"shift": []}], "id"),
        ([{"id": "r01", "shift": [{"name": "rotate"}]}], "degrees"),
        ([{"id": "r01", "shift": []}, {"id": "r01", "shift": []}], "duplicate"),
    ],
)
def test_invalid_rounds_are_refused_before_any_job(fresh: Workdir, rounds: list, named: str) -> None:
    fresh.write_rounds(rounds)
    result = fresh.run("--cores", "2", check=False)
    assert result.returncode != 0
    assert named in result.stderr
    assert not (fresh.path / "results").exists()


def test_lint_is_clean_and_report_works_offline(run_copy: Workdir) -> None:
    lint = run_copy.run("--lint")
    assert "Congratulations" in lint.stdout + lint.stderr
    run_copy.run("--report", "results/report.html")
    html = (run_copy.path / "results/report.html").read_text(errors="replace")
    for name in ("accuracy.svg", "labels.svg", "fleet_accuracy.svg", "queue_wait.svg"):
        assert name in html
    assert not alive(int((run_copy.path / "results/server/pid").read_text()))


BLOCK_IMPORTS = '''
import sys

class _Block:
    """torch and the project's packages other than runtime cannot be imported."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mlcore", "protocol", "edge", "datacenter"):
            raise ImportError(f"{name}: blocked by the test")
        return None

sys.meta_path.insert(0, _Block())
'''


def test_parsing_the_workflow_imports_no_torch_and_no_project_package(fresh: Workdir, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "blocked by the test" in probe.stderr, "the shim does not work"
    for args in (["-n", "--cores", "2"], ["--lint"]):
        result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=fresh.path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]


def test_settings_python_accepts_are_accepted_by_the_workflow(fresh: Workdir) -> None:
    config = fresh.config()
    config["datacenter"]["leep_prior"] = 0.5  # once refused by the schema, accepted by Python
    fresh.write_config(config)
    fresh.run("-n", "--cores", "2")
    config["dataset"] = {"name": "table"}  # a table needs a path
    fresh.write_config(config)
    result = fresh.run("-n", "--cores", "2", check=False)
    assert result.returncode != 0 and "path" in result.stdout + result.stderr


@pytest.mark.parametrize("section, changes, message", [
    ("dataset", {"source_fraction": 0.6, "stream_fraction": 0.4}, "evaluation split"),
    ("edge", {"random_sample": 150, "batch_size": 100}, "must not exceed edge.batch_size"),
    ("datacenter", {"selection_labels": 120}, "neither may exceed edge.random_sample"),
])
def test_rules_the_schema_cannot_state_fail_at_parse_as_in_python(fresh: Workdir, section: str, changes: dict,
                                                                    message: str) -> None:
    """The workflow refuses what mlcore.settings refuses, before any job (or the data center) starts."""
    from mlcore.settings import SettingsError, settings_from_dict

    config = fresh.config()
    config[section].update(changes)
    with pytest.raises(SettingsError):
        settings_from_dict(config)
    fresh.write_config(config)
    result = fresh.run("-n", "--cores", "2", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output[-2000:]
    assert not (fresh.path / "results/server").exists(), "nothing may start for a config that cannot run"
