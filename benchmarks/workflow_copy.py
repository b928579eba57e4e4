"""A copy of the workflow (Snakefile, workflow/, config/) with some settings changed: the
folder a benchmark runs a real `snakemake` in, leaving the checkout untouched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(target: Path, settings: dict[str, Any]) -> Path:
    """Copy the workflow to `target` (created) and set `settings` in its config/config.yaml;
    a key may be dotted ("datacenter.trainings") to reach into a section."""
    target.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", target / "Snakefile")
    shutil.copytree(REPO / "workflow", target / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", target / "config")
    config_file = target / "config/config.yaml"
    config = yaml.safe_load(config_file.read_text())
    for dotted, value in settings.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return target
