"""Faults across the pipeline, with the real processes: `python -m datacenter serve` and
`python -m edge round` (forked warm by `runtime.warm`, as the workflow runs them).

- The server is SIGKILLed when a request of each type (normal, prep_retraining, retraining)
  has reached it: the edge exits non-zero with a clear message and writes no output; a
  restarted server on the same state answers a rerun with the uninterrupted run's checkpoint.
- The edge is SIGKILLed mid-round: no output; the server keeps serving; a rerun matches.
- The token is in none of the logs.
A proxy on loopback reads each request's type from the frame metadata to time the kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from protocol import AsyncClient, read_port_file, write_port_file
from protocol.files import create_token_file
from reliability_harness import FaultyProxy

CONFIG = {
    "seed": 0, "rounds": "rounds.yaml", "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "epochs": 5, "lr": 0.003, "batch_size": 64},
    "edge": {"batch_size": 120, "random_sample": 60, "strategy": "margin", "query_size": 10,
             "max_iterations": 1, "label_budget": 20},
    "datacenter": {"detector": "ks", "alpha": 0.01, "selection": "logme", "selection_labels": 10,
                   "finetune": {"epochs": 2, "lr": 0.002, "replay": 50, "batch_size": 32}},
}
ROUNDS = {"rounds": [{"id": "r01", "shift": [{"name": "invert"}]}]}  # flagged: all three message types
WARM = [sys.executable, "-m", "runtime.warm"]
TIMEOUT = 120
#: Seconds between a request reaching the server and its SIGKILL: 0 kills it while working on the
#: request; 0.3 lets it finish and write its state, and the proxy holds the answer back.
KILL_DELAY = {"normal": 0.3, "prep_retraining": 0.3, "retraining": 0.0}


@dataclass
class Server:
    launcher: subprocess.Popen
    pid: int
    port: int
    port_file: Path
    log: Path

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.launcher.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            self.launcher.wait(10)


class Pipeline:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        (root / "rounds.yaml").write_text(yaml.safe_dump(ROUNDS))
        self.token_file = root / "token"
        self.token = create_token_file(self.token_file)
        self.socket = root / "warm.sock"
        self.warm = subprocess.Popen([*WARM, "serve", "--socket", str(self.socket), "--module", "datacenter",
                                      "--module", "edge", "--exit-with-pid", str(os.getpid())],
                                     cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "warm.log", "wb"))
        deadline = time.monotonic() + TIMEOUT
        while not self.socket.exists():
            assert self.warm.poll() is None and time.monotonic() < deadline, (root / "warm.log").read_text()
            time.sleep(0.1)
        result = self.run("datacenter", "train-base", "--config", "config.yaml", "--state-dir", "state-base",
                          "--out", "base.json")
        assert result.returncode == 0, result.stderr
        self.servers: list[Server] = []

    def run(self, module: str, *argv: str, pid_file: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        extra = ["--pid-file", str(pid_file)] if pid_file else []
        return subprocess.run([*WARM, "run", "--socket", str(self.socket), *extra, module, "--", *argv],
                              cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def state_copy(self, name: str) -> Path:
        shutil.copytree(self.root / "state-base", self.root / name)
        return self.root / name

    def serve(self, state_dir: Path, name: str) -> Server:
        port_file, pid_file, log = self.root / f"{name}.port", self.root / f"{name}.pid", self.root / f"{name}.log"
        port_file.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        launcher = subprocess.Popen(
            [*WARM, "run", "--socket", str(self.socket), "--pid-file", str(pid_file), "datacenter", "--", "serve",
             "--config", "config.yaml", "--state-dir", str(state_dir), "--port-file", str(port_file),
             "--token-file", str(self.token_file)],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        deadline = time.monotonic() + TIMEOUT
        while not (port_file.exists() and pid_file.exists()):
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        server = Server(launcher, int(pid_file.read_text()), read_port_file(port_file), port_file, log)
        self.servers.append(server)
        return server

    def edge(self, port: int, outdir: str, *, pid_file: Path | None = None) -> subprocess.CompletedProcess:
        port_file = self.root / f"{outdir}.edgeport"
        write_port_file(port_file, port)
        result = self.run("edge", "round", "--config", "config.yaml", "--rounds", "rounds.yaml", "--round", "r01",
                          "--previous", "base.json", "--port-file", str(port_file), "--token-file", str(self.token_file),
                          "--outdir", outdir, "--wait", "10", pid_file=pid_file)
        (self.root / f"{outdir}.edge.log").write_text(result.stderr)
        return result

    def checkpoint(self, outdir: str) -> dict:
        return json.loads((self.root / outdir / "checkpoint.json").read_text())

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.warm.terminate()
        self.warm.wait(30)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    pipe = Pipeline(tmp_path_factory.mktemp("faults"))
    try:
        pipe.reference = pipe.serve(pipe.state_copy("state-ref"), "reference")
        result = pipe.edge(pipe.reference.port, "out-ref")
        assert result.returncode == 0, result.stderr
        assert pipe.checkpoint("out-ref")["retrained"] is True
        yield pipe
    finally:
        pipe.close()


def _outputs(pipe: Pipeline, outdir: str) -> list[str]:
    folder = pipe.root / outdir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def _handshake(port: int, token: str) -> dict:
    response = await AsyncClient(port, token=token, timeout=10, retry_for=1).send_data("handshake")
    return dict(response.info)


@pytest.mark.parametrize("message_type", ["normal", "prep_retraining", "retraining"])
def test_server_killed_at_each_message_type(pipeline: Pipeline, message_type: str) -> None:
    state = pipeline.state_copy(f"state-kill-{message_type}")
    server = pipeline.serve(state, f"kill-{message_type}")

    def on_request(request_type: str) -> None:
        if request_type == message_type:  # it reached the server: kill it at once (retraining: mid fine-tune)
            threading.Timer(KILL_DELAY[message_type], server.kill).start()  # or once it has answered (held)

    with FaultyProxy(server.port, on_request=on_request, hold_replies_after=message_type) as proxy:
        started = time.monotonic()
        result = pipeline.edge(proxy.port, f"out-kill-{message_type}")
        seconds = time.monotonic() - started
        seen = list(proxy.requests_seen)
    assert seen[-1] == message_type, seen
    assert result.returncode == 2, result.stderr
    assert "edge: error: talking to the data center failed" in result.stderr, result.stderr[-2000:]
    assert "closed the connection" in result.stderr, result.stderr[-2000:]
    assert _outputs(pipeline, f"out-kill-{message_type}") == [], "partial outputs after a failed round"
    assert seconds < 60
    server.launcher.wait(10)

    restarted = pipeline.serve(state, f"restart-{message_type}")  # same state directory, whatever the kill left
    result = pipeline.edge(restarted.port, f"out-rerun-{message_type}")
    assert result.returncode == 0, result.stderr
    assert pipeline.checkpoint(f"out-rerun-{message_type}")["sha256"] == pipeline.checkpoint("out-ref")["sha256"]
    assert pipeline.checkpoint(f"out-rerun-{message_type}")["state"] == pipeline.checkpoint("out-ref")["state"]


def test_edge_killed_mid_round_leaves_no_output_and_the_server_keeps_serving(pipeline: Pipeline) -> None:
    pid_file = pipeline.root / "edge-killed.pid"

    def on_request(request_type: str) -> None:
        if request_type == "retraining":  # the server is fine-tuning for an edge that is about to die
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

    with FaultyProxy(pipeline.reference.port, on_request=on_request) as proxy:
        result = pipeline.edge(proxy.port, "out-edge-killed", pid_file=pid_file)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert _outputs(pipeline, "out-edge-killed") == []
    info = asyncio.run(_handshake(pipeline.reference.port, pipeline.token))
    assert info["ready"] is True
    result = pipeline.edge(pipeline.reference.port, "out-edge-rerun")
    assert result.returncode == 0, result.stderr
    assert pipeline.checkpoint("out-edge-rerun")["sha256"] == pipeline.checkpoint("out-ref")["sha256"]


def test_the_token_is_in_no_log_and_no_output(pipeline: Pipeline) -> None:
    texts = [p for p in pipeline.root.rglob("*") if p.is_file() and p.suffix in {".log", ".json"}]
    assert len(texts) > 5
    for path in texts:
        assert pipeline.token not in path.read_text(errors="replace"), f"the token leaked into {path.name}"
