"""Where the data center runs is not a result: moving it or turning TLS on reruns nothing,
and a round redone over TLS gives the same checkpoint as over plain TCP."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from snakemake_workdir import Workdir, planned


def self_signed(folder) -> tuple[str, str]:
    folder.mkdir()
    key, cert = folder / "dc-key.pem", folder / "dc.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return "certs/dc.pem", "certs/dc-key.pem"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_server_settings_rerun_nothing_and_a_round_over_tls_matches(run_copy: Workdir) -> None:
    round_file = "results/edges/edge/rounds/r04/checkpoint.json"
    before = json.loads((run_copy.path / round_file).read_text())
    cert, key = self_signed(run_copy.path / "certs")
    config = run_copy.config()
    config["server"].update(advertise="127.0.0.1", tls={"cert": cert, "key": key, "ca": cert})
    config["warm_start"] = False
    run_copy.write_config(config)
    assert planned(run_copy.run("-n", "--cores", "2").stdout) == set()
    run_copy.run("--cores", "2", "--forcerun", round_file, round_file)
    after = json.loads((run_copy.path / round_file).read_text())
    assert after["sha256"] == before["sha256"] and after["state"] == before["state"]
    endpoint = json.loads((run_copy.path / "results/server/endpoint.json").read_text())
    assert endpoint["host"] == "127.0.0.1" and endpoint["tls_ca"] == cert
    assert "(TLS on)" in (run_copy.path / "logs/edges/edge/rounds/r04.log").read_text()
    assert "tls=on" in (run_copy.path / "logs/datacenter.log").read_text()
