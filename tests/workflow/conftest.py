"""Fixtures: one complete small run per session (`finished_run`); tests that change things
work on a copy of it (`run_copy`, mtimes and Snakemake's metadata intact) or from scratch (`fresh`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from snakemake_workdir import Workdir, make_workdir


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    work = make_workdir(tmp_path_factory.mktemp("finished") / "wf")
    work.run("--cores", "2")
    return work


@pytest.fixture
def run_copy(finished_run: Workdir, tmp_path: Path) -> Workdir:
    target = tmp_path / "wf"
    shutil.copytree(finished_run.path, target, symlinks=True)
    return Workdir(target)


@pytest.fixture
def fresh(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path / "wf")
