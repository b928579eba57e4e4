"""The data center on another network host: TLS and the token across a veth pair, nothing on
disk shared with the edge, and clear refusals of a plaintext edge and of one trusting another CA.

The data center runs in a network namespace made by the test (tests/network/hosts.py), bound
to that namespace's address, in a private tmpfs the edge cannot see. What an operator would
hand over is copied explicitly: to the data center its settings, token, certificate and key;
to the edge the settings, the token, the CA certificate and base.json (the base model's
record: its state key and sha256 — the edge fetches the model itself over the protocol).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hosts import CertificateAuthority, HostUnavailable, OtherHost

pytestmark = pytest.mark.timeout(300)

CONFIG = """seed: 0
model: {arch: mlp, epochs: 20}
edge: {max_iterations: 2, label_budget: 30}
datacenter: {finetune: {epochs: 10, replay: 100}}
"""
ROUNDS = """rounds:
  - {id: r01, shift: [{name: rotate, degrees: 30}]}
  - {id: r02, shift: []}
"""
PORT = 7443  # the namespace is the test's own: nothing else listens there


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the data center exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory):
    """A serving data center on another host: (host, edge's folder, the data center's private folder)."""
    root = tmp_path_factory.mktemp("remote")
    try:
        host = OtherHost().__enter__()
    except HostUnavailable as exc:
        pytest.skip(f"no second network host here: {exc}")
    try:
        authority = CertificateAuthority(root / "ca", "driftloop test CA")
        cert, key = authority.issue(host.address)
        inbox, outbox, private, edge = root / "to-datacenter", root / "from-datacenter", root / "datacenter", root / "edge"
        for folder in (inbox, outbox, edge):
            folder.mkdir()
        (inbox / "config.yaml").write_text(CONFIG)
        subprocess.run([sys.executable, "-c", f"from protocol import create_token_file; create_token_file({str(inbox / 'token')!r})"],
                       check=True, timeout=60)
        shutil.copy(cert, inbox / "cert.pem")
        shutil.copy(key, inbox / "key.pem")
        python = sys.executable
        log = root / "datacenter.log"
        server = host.start(
            f"cp {inbox}/* . && {python} -m datacenter train-base --config config.yaml --state-dir state --out base.json"
            f" && cp base.json {outbox}/base.json"
            f" && exec {python} -m datacenter serve --config config.yaml --state-dir state --host {host.address}"
            f" --port {PORT} --port-file port --token-file token --tls-cert cert.pem --tls-key key.pem"
            f" --exit-with-pid {os.getpid()}",
            private, log, env={"PYTHONPATH": os.pathsep.join(sys.path)})
        wait_until(lambda: (outbox / "base.json").exists(), 120, "base model", server, log)
        wait_until(lambda: accepts(host.address, PORT), 60, f"listener on {host.address}:{PORT}", server, log)
        # The edge's hand-over: settings, token, the CA (not the key), the base model's record.
        for name in ("config.yaml", "token"):
            shutil.copy(inbox / name, edge / name)
        shutil.copy(authority.cert, edge / "ca.pem")
        shutil.copy(outbox / "base.json", edge / "base.json")
        (edge / "rounds.yaml").write_text(ROUNDS)
        other = CertificateAuthority(root / "other-ca", "another CA")
        shutil.copy(other.cert, edge / "other-ca.pem")
        yield host, edge, private, log
    finally:
        host.__exit__(None, None, None)


def edge_round(host: OtherHost, edge: Path, round_id: str, previous: str, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", "round", "--config", "config.yaml", "--rounds", "rounds.yaml", "--round", round_id,
         "--previous", previous, "--host", host.address, "--port", str(PORT), "--token-file", "token",
         "--outdir", f"rounds/{round_id}", "--store", "models", *tls],
        cwd=edge, capture_output=True, text=True, timeout=120)


def test_edge_runs_rounds_against_a_data_center_on_another_host_over_tls(remote) -> None:
    host, edge, private, log = remote
    base = json.loads((edge / "base.json").read_text())
    assert not (private / base["checkpoint"]).exists() and not any(private.iterdir()), "the data center's disk is visible"
    first = edge_round(host, edge, "r01", "base.json", "--tls-ca", "ca.pem")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "decision=retrain" in first.stdout and f"data center at {host.address}:{PORT} (TLS on)" in first.stderr
    second = edge_round(host, edge, "r02", "rounds/r01/checkpoint.json", "--tls-ca", "ca.pem")
    assert second.returncode == 0, second.stderr[-3000:]
    for round_id in ("r01", "r02"):
        record = json.loads((edge / "rounds" / round_id / "checkpoint.json").read_text())
        own = edge / record["checkpoint"] if not Path(record["checkpoint"]).is_absolute() else Path(record["checkpoint"])
        assert own.resolve().is_relative_to((edge / "models").resolve()), record["checkpoint"]  # the edge's own copy
        assert hashlib.sha256(own.read_bytes()).hexdigest() == record["sha256"]
    assert json.loads((edge / "rounds/r01/checkpoint.json").read_text())["retrained"]
    assert (edge / "models" / f"{base['sha256']}.pt").exists()  # the base model came over the wire too
    assert "handshake round=r01" in log.read_text()


def test_a_plaintext_edge_is_refused_with_a_clear_error(remote) -> None:
    host, edge, _, log = remote
    refused = edge_round(host, edge, "r01", "base.json")
    assert refused.returncode == 2
    assert "give its CA with --tls-ca" in refused.stderr, refused.stderr[-2000:]
    assert "TLS handshake failed" in log.read_text()


def test_an_edge_trusting_another_ca_is_refused_with_a_clear_error(remote) -> None:
    host, edge, _, _ = remote
    refused = edge_round(host, edge, "r01", "base.json", "--tls-ca", "other-ca.pem")
    assert refused.returncode == 2
    assert "certificate verify failed" in refused.stderr and "not signed by the CA given with --tls-ca" in refused.stderr, \
        refused.stderr[-2000:]
    again = edge_round(host, edge, "r01", "base.json", "--tls-ca", "ca.pem")  # and the data center still serves
    assert again.returncode == 0, again.stderr[-2000:]
