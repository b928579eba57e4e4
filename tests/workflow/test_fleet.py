"""A fleet in one run (issue 11): one job per (edge, round), chained per edge, checked with the real snakemake."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from mlcore.rounds import parse_fleet
from snakemake_workdir import SMALL_FLEET, Workdir, hashes, make_workdir, planned, server_pid


def test_each_edge_runs_its_rounds_and_the_summary_names_it(fleet_run: Workdir) -> None:
    rows = fleet_run.summary()
    assert [(r["edge"], r["round"]) for r in rows] == [("a", "r01"), ("a", "r02"), ("b", "r01"), ("b", "r02")]
    assert {r["shift"] for r in rows if r["round"] == "r02"} == {"contrast0.8", "contrast0.8@0.5"}
    for name in ("summary.csv", "plots/fleet_accuracy.svg", "plots/queue_wait.svg", "plots/labels.svg"):
        assert (fleet_run.path / "results" / name).stat().st_size > 0
    # The workflow (common.smk, without mlcore) and mlcore.rounds expand the fleet alike.
    expected = parse_fleet(SMALL_FLEET, fleet_run.config()["edge"]["batch_size"])
    for edge, specs in expected.items():
        for spec in specs:
            folder = fleet_run.path / f"results/edges/{edge}/rounds/{spec.id}"
            document = json.loads((folder / "spec.json").read_text())
            assert (document["edge"], document["offset"]) == (edge, spec.offset)
            assert (folder / "checkpoint.json").is_file() and (folder / "predictions.parquet").is_file()
    first = {edge: pd.read_parquet(fleet_run.path / f"results/edges/{edge}/rounds/r01/predictions.parquet")["id"]
             for edge in ("a", "b")}
    assert set(first["a"]) != set(first["b"]), "two edges drew the same batch"


def test_a_fleet_reruns_nothing_then_only_what_is_new_or_edited(fleet_copy: Workdir) -> None:
    before = fleet_copy.mtimes("results/**/*")
    assert "Nothing to be done" in fleet_copy.run("--cores", "2").stderr
    assert fleet_copy.mtimes("results/**/*") == before

    scenario = fleet_copy.scenario()
    edited = json.loads(json.dumps(scenario))
    edited["rounds"][0]["per_edge"] = {"b": {"shift": [{"name": "contrast", "factor": 0.5}]}}
    fleet_copy.write_scenario(edited)
    assert planned(fleet_copy.run("-n", "--cores", "2").stdout) == {("b", "r01"), ("b", "r02")}

    grown = json.loads(json.dumps(scenario))
    grown["edges"].append("c")
    fleet_copy.write_scenario(grown)
    assert planned(fleet_copy.run("-n", "--cores", "2").stdout) == {("c", "r01"), ("c", "r02")}

    scenario["rounds"].append({"id": "r03", "shift": [], "only": ["a"]})
    fleet_copy.write_scenario(scenario)
    checkpoints = fleet_copy.mtimes()
    result = fleet_copy.run("--cores", "2")
    assert result.stderr.count("rule edge_round:") == 1, result.stderr[-3000:]  # "localrule edge_round:"
    after = fleet_copy.mtimes()
    assert {k: v for k, v in after.items() if k in checkpoints} == checkpoints
    assert set(after) - set(checkpoints) == {"results/edges/a/rounds/r03/checkpoint.json"}
    assert [(r["edge"], r["round"]) for r in fleet_copy.summary()][-3:] == [("a", "r03"), ("b", "r01"), ("b", "r02")]


@pytest.mark.parametrize(
    "scenario, named",
    [
        ({"edges": ["a", "b c"], "rounds": [{"id": "r01"}]}, "'b c'"),
        ({"edges": ["a"], "rounds": [{"id": "r01", "per_edge": {"z": {"mix": 0.5}}}]}, "unknown edge 'z'"),
        ({"rounds": [{"id": "r01", "per_edge": {"a": {"mix": 0.5}}}]}, "only a fleet names edges"),
        ({"edges": ["a", "b"], "rounds": [{"id": "r01", "only": ["a"]}]}, "edge 'b' has no round"),
    ],
)
def test_an_invalid_fleet_is_refused_before_any_job(fresh: Workdir, scenario: dict, named: str) -> None:
    """The workflow's own checks (common.smk); mlcore.rounds' twins are tested case by case in tests/learning."""
    fresh.write_scenario(scenario)
    result = fresh.run("-n", "--cores", "2", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert named in output, output[-2000:]


def test_share_zoo_gives_each_round_the_other_edges_latest_checkpoints(tmp_path) -> None:
    """Opt-in: with `share_zoo: true` an edge's round names the other edges' latest checkpoints
    (`--peers`): of this round for the edges listed before it, of an earlier round for the
    others, so their models are candidates when it chooses a start; off, none."""
    work = make_workdir(tmp_path / "wf")
    work.write_scenario(SMALL_FLEET)
    plain = work.run("-n", "-p", "--cores", "2").stdout
    assert "--peers  2>" in plain or "--peers 2>" in plain
    config = work.config()
    config["share_zoo"] = True
    work.write_config(config)
    shared = work.run("-n", "-p", "--cores", "2").stdout
    def command(edge: str, round_id: str) -> str:
        lines = [line for line in shared.splitlines() if f"--edge-id {edge} --round {round_id}" in line]
        assert len(lines) == 1, shared[-3000:]
        return lines[0]

    assert "--peers results/edges/a/rounds/r02/checkpoint.json" in command("b", "r02")  # a is listed first
    assert "--peers results/edges/b/rounds/r01/checkpoint.json" in command("a", "r02")  # b's earlier round only
    assert "results/edges/b/" not in command("a", "r01") and "--peers results/edges/a/rounds/r01/" in command("b", "r01")


#: Three edges, two rounds; r02 hurts a and c (they retrain) and leaves b clean.
KILL_FLEET = {
    "edges": ["a", "b", "c"],
    "rounds": [
        {"id": "r01", "shift": []},
        {"id": "r02", "shift": [{"name": "rotate", "degrees": 30}], "per_edge": {"b": {"shift": []}}},
    ],
}


def test_a_killed_data_center_fails_the_run_and_the_rerun_matches_an_uninterrupted_one(tmp_path) -> None:
    """Issue 11: 3 edges, the data center SIGKILLed mid-run (once some round is done), rerun:
    finished rounds are kept, and every edge's checkpoints equal an uninterrupted run's."""
    uninterrupted = make_workdir(tmp_path / "whole")
    uninterrupted.write_scenario(KILL_FLEET)
    uninterrupted.run("--cores", "2")
    work = make_workdir(tmp_path / "killed")
    work.write_scenario(KILL_FLEET)
    process = work.popen("--cores", "2")
    try:
        pid = server_pid(work)
        deadline = time.monotonic() + 120
        while not list(work.path.glob("results/edges/*/rounds/*/checkpoint.json")):
            assert time.monotonic() < deadline and process.poll() is None, "no round ever finished"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode != 0
    kept = work.mtimes()
    assert kept and len(kept) < 6, "the kill came too late to interrupt anything"
    work.run("--cores", "2")
    assert {k: v for k, v in work.mtimes().items() if k in kept} == kept, "finished rounds were redone"
    assert hashes(work) == hashes(uninterrupted) and len(hashes(work)) == 6
