"""The two command lines as the workflow calls them: real processes, a real server, real rounds."""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

CONFIG = """seed: 0
model: {arch: mlp, epochs: 20}
edge: {max_iterations: 2, label_budget: 30}
datacenter: {selection: leep, finetune: {epochs: 10, replay: 100}}
"""
ROUNDS = """rounds:
  - {id: r01, shift: []}
  - {id: r02, shift: [{name: rotate, degrees: 30}]}
"""


def run(*args, cwd, check=True):
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed with {result.returncode}:\n{result.stderr}")
    return result


def start_server(cwd, port_file, watch_pid):
    if port_file.exists():
        port_file.unlink()
    return subprocess.Popen([sys.executable, "-m", "datacenter", "serve", "--config", "config.yaml", "--state-dir",
                             "results/datacenter", "--port-file", str(port_file), "--exit-with-pid", str(watch_pid)],
                            cwd=cwd, stderr=subprocess.PIPE, text=True)


def stop(server):
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "rounds.yaml").write_text(ROUNDS)
    return tmp_path


def edge_round(cwd, round_id, previous, outdir, port_file):
    return run("edge", "round", "--config", "config.yaml", "--rounds", "rounds.yaml", "--round", round_id,
               "--previous", previous, "--port-file", str(port_file), "--outdir", outdir, cwd=cwd)


def test_train_serve_rounds_restart(workdir):
    run("datacenter", "train-base", "--config", "config.yaml", "--state-dir", "results/datacenter",
        "--out", "results/models/base.json", cwd=workdir)
    base = json.loads((workdir / "results/models/base.json").read_text())
    assert set(base) >= {"checkpoint", "sha256", "state", "metrics"} and base["metrics"]["eval_accuracy"] > 0.85
    port_file = workdir / "results/port"
    server = start_server(workdir, port_file, os.getpid())
    try:
        first = edge_round(workdir, "r01", "results/models/base.json", "results/rounds/r01", port_file)
        assert first.stdout.strip().startswith("round r01 shift=none held-out acc ") and "decision=stable labels=0" in first.stdout
        second = edge_round(workdir, "r02", "results/rounds/r01/checkpoint.json", "results/rounds/r02", port_file)
        assert "decision=retrain " in second.stdout
    finally:
        assert stop(server) == 0
    # both command lines run on uvloop when it is installed (the README's install commands add it)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert f"{loop} loop" in first.stderr and f"loop={loop})" in server.stderr.read()
    out = workdir / "results/rounds/r02"
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert checkpoint["retrained"] and 0 < metrics["labels_queried"] <= 30 and checkpoint["bytes_sent"] > 0
    assert metrics["flagged"] and metrics["accuracy_after"] > metrics["accuracy_before"] and metrics["p_value"] < 0.01
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert {"id", "label", "pred", "confidence", "pred_before", "confidence_before"} <= set(predictions.columns)
    assert len(predictions) == 200

    # a new server process on the same files gives round r02 the same result; this one ends
    # by itself when the process it watches (--exit-with-pid) is gone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    server = start_server(workdir, port_file, sleeper.pid)
    try:
        edge_round(workdir, "r02", "results/rounds/r01/checkpoint.json", "results/rounds/r02-again", port_file)
        sleeper.kill()
        sleeper.wait()
        assert server.wait(timeout=15) == 0
    finally:
        for process in (sleeper, server):
            if process.poll() is None:
                process.kill()
    again = json.loads((workdir / "results/rounds/r02-again/checkpoint.json").read_text())
    assert (again["sha256"], again["state"], again["labels_used"]) == (checkpoint["sha256"], checkpoint["state"], checkpoint["labels_used"])


def test_bad_input_exits_non_zero_with_one_clear_line(workdir):
    (workdir / "bad.yaml").write_text("edge: {strategy: psychic}\n")
    result = run("datacenter", "train-base", "--config", "bad.yaml", "--state-dir", "x", "--out", "x.json",
                 cwd=workdir, check=False)
    assert result.returncode == 2 and "edge.strategy" in result.stderr and "Traceback" not in result.stderr
    result = run("edge", "round", "--config", "config.yaml", "--rounds", "rounds.yaml", "--round", "r99",
                 "--previous", "none.json", "--port-file", "p", "--outdir", "o", cwd=workdir, check=False)
    assert result.returncode == 2 and "r99" in result.stderr and "Traceback" not in result.stderr


def test_edge_and_data_center_share_nothing_but_the_socket(workdir, tmp_path_factory):
    """Separate result roots: the edge gets every checkpoint as bytes over the protocol and
    keeps its own copies; no output of the edge names a data-center path."""
    center_root = workdir
    edge_root = tmp_path_factory.mktemp("edge-host")
    for name in ("config.yaml", "rounds.yaml"):
        (edge_root / name).write_text((center_root / name).read_text())
    run("datacenter", "train-base", "--config", "config.yaml", "--state-dir", "results/datacenter",
        "--out", "results/models/base.json", cwd=center_root)
    base = json.loads((center_root / "results/models/base.json").read_text())
    # what the edge is told of the base model: its name and state, not where it lies
    (edge_root / "base.json").write_text(json.dumps({"sha256": base["sha256"], "state": base["state"]}))
    server = start_server(center_root, center_root / "port", os.getpid())
    try:
        deadline = time.monotonic() + 60
        while not (center_root / "port").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (edge_root / "port").write_text((center_root / "port").read_text())  # only the port number crosses
        edge_round(edge_root, "r01", "base.json", "out/r01", edge_root / "port")
        edge_round(edge_root, "r02", "out/r01/checkpoint.json", "out/r02", edge_root / "port")
    finally:
        assert stop(server) == 0
    for round_id in ("r01", "r02"):
        checkpoint = json.loads((edge_root / f"out/{round_id}/checkpoint.json").read_text())
        path = (edge_root / checkpoint["checkpoint"]).resolve()
        assert edge_root.resolve() in path.parents, checkpoint["checkpoint"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint["sha256"]
    assert checkpoint["retrained"] and checkpoint["sha256"] != base["sha256"]
    outputs = "".join(p.read_text(errors="replace") for p in (edge_root / "out").rglob("*.json"))
    assert str(center_root) not in outputs and "results/datacenter" not in outputs
