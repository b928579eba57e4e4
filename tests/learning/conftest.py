"""Shared fixtures: the real digits data and one small trained data center (trained once per run)."""

from __future__ import annotations

import pytest

from datacenter.base import train_base
from datacenter.state import StateStore
from mlcore.datasets import load_digits_dataset, split_dataset
from mlcore.seeding import make_deterministic
from mlcore.settings import settings_from_dict

FAST_CONFIG = {
    "seed": 0,
    "model": {"arch": "mlp", "epochs": 25, "lr": 0.003},
    "edge": {"query_size": 10, "max_iterations": 3, "label_budget": 40},
    "datacenter": {"selection": "logme", "selection_labels": 10, "finetune": {"epochs": 15, "replay": 150}},
}


@pytest.fixture(scope="session", autouse=True)
def deterministic():
    make_deterministic()


@pytest.fixture(scope="session")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="session")
def settings():
    return settings_from_dict(FAST_CONFIG)


@pytest.fixture(scope="session")
def splits(digits, settings):
    return split_dataset(digits, settings.dataset, settings.seed)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, digits, splits, settings):
    """(state_dir, base result) of a base model trained once for the whole run."""
    state_dir = tmp_path_factory.mktemp("datacenter")
    return state_dir, train_base(settings, digits, splits, StateStore(state_dir))
