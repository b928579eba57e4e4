"""Where the data center runs is not a result: moving it or turning TLS on reruns nothing,
and a round redone over TLS gives the same checkpoint as over plain TCP."""

from __future__ import annotations

import json
import shutil

import pytest
from serving import make_tls_contexts
from snakemake_workdir import Workdir, planned


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_server_settings_rerun_nothing_and_a_round_over_tls_matches(run_copy: Workdir) -> None:
    round_file = "results/edges/edge/rounds/r04/checkpoint.json"
    before = json.loads((run_copy.path / round_file).read_text())
    (run_copy.path / "certs").mkdir()
    make_tls_contexts(run_copy.path / "certs")  # a self-signed certificate for 127.0.0.1: its own CA
    cert, key = "certs/cert.pem", "certs/key.pem"
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
    # with TLS the data center runs on asyncio, not uvloop (docs/cluster.md: uvloop 0.23's server-side start_tls)
    assert "tls=on, loop=asyncio)" in (run_copy.path / "logs/datacenter.log").read_text()
