"""Fixtures: one complete small run per session of one edge (`finished_run`) and of a fleet
(`fleet_run`); tests that change things work on a copy of one (`run_copy`, `fleet_copy`: mtimes
and Snakemake's metadata intact) or from scratch (`fresh`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from snakemake_workdir import SMALL_FLEET, Workdir, make_workdir


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    work = make_workdir(tmp_path_factory.mktemp("finished") / "wf")
    work.run("--cores", "2")
    return work


@pytest.fixture(scope="session")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    work = make_workdir(tmp_path_factory.mktemp("fleet") / "wf")
    work.write_scenario(SMALL_FLEET)
    work.run("--cores", "2")
    return work


def copy_of(run: Workdir, target: Path) -> Workdir:
    shutil.copytree(run.path, target, symlinks=True)
    return Workdir(target)


@pytest.fixture
def run_copy(finished_run: Workdir, tmp_path: Path) -> Workdir:
    return copy_of(finished_run, tmp_path / "wf")


@pytest.fixture
def fleet_copy(fleet_run: Workdir, tmp_path: Path) -> Workdir:
    return copy_of(fleet_run, tmp_path / "wf")


@pytest.fixture
def fresh(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path / "wf")
