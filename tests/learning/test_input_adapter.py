"""The input adapter: off, it changes nothing; fitted on a few labels, it undoes an inversion
or a rotation in front of frozen weights; it survives a checkpoint; replayed rows pass it by;
its router sends the episode's shift through it and the source past it."""

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from datacenter.adaptation import ROUTER_MIN_ACCURACY, adapt, finetune, fit_input_adapter, fit_router
from datacenter.base import train_base
from datacenter import detectors
from datacenter.check import base_takes_over, looks_like_source, specialist_watch
from datacenter.state import StateStore
from mlcore.checkpoints import FORMAT, CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from mlcore.models import ADAPTER_KEYS, CONFIDENCE_KEY, ROUTER_KEYS, ModelSpec, build_model, is_specialist
from mlcore.shifts import apply_image_shifts, parse_shift_list
from mlcore.training import accuracy, predict_proba
from round_helpers import center_over, run_round


@pytest.fixture(scope="module")
def base(trained):
    _, result = trained
    model, _ = load_checkpoint(result["checkpoint"], result["sha256"])
    return model


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_an_inactive_adapter_is_the_identity_bit_for_bit(arch):
    model = build_model(ModelSpec(arch, (8, 8), 10), seed=3)
    x = torch.rand(17, 64)
    direct = model.head(model.body(x.reshape(17, 1, 8, 8)))
    assert not bool(model.adapter.active)
    assert torch.equal(model(x), direct)


def shifted(digits, rows, shift, seed):
    return apply_image_shifts(digits.images[rows], parse_shift_list(shift), np.random.default_rng(seed))


@pytest.mark.parametrize("shift", [[{"name": "invert"}], [{"name": "rotate", "degrees": 30}]])
def test_a_fitted_adapter_undoes_a_shift_with_few_labels(base, digits, splits, settings, shift):
    train_rows, held = splits.stream[:40], splits.evaluation
    x_train = shifted(digits, train_rows, shift, 0)
    x_held = shifted(digits, held, shift, 1)
    before = accuracy(base, x_held, digits.labels[held])
    adapted = fit_input_adapter(base, x_train, digits.labels[train_rows])
    after = accuracy(adapted, x_held, digits.labels[held])
    assert bool(adapted.adapter.active) and not bool(base.adapter.active)
    assert after > before + 0.3
    # 8 numbers learn more from these 40 labels than all the weights do (invert 0.79 vs 0.28, rotate 0.76 vs 0.63)
    tuned = finetune(base, x_train.reshape(40, -1), digits.labels[train_rows], digits, splits,
                     settings.datacenter.finetune, settings.seed, "weights-only")
    assert after > accuracy(tuned, x_held, digits.labels[held]) + 0.05
    # the weights behind the adapter did not move, and the start is untouched
    for (name, fitted), (_, original) in zip(adapted.named_parameters(), base.named_parameters()):
        if not name.startswith("adapter."):
            assert torch.equal(fitted, original), name
    assert accuracy(base, x_held, digits.labels[held]) == before


def test_a_fitted_adapter_is_deterministic_and_round_trips_a_checkpoint(base, digits, splits, tmp_path):
    rows = splits.stream[:30]
    x = shifted(digits, rows, [{"name": "invert"}], 0)
    one = fit_input_adapter(base, x, digits.labels[rows])
    two = fit_input_adapter(base, x, digits.labels[rows])
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    spec = ModelSpec("mlp", (8, 8), 10)
    path, sha = save_checkpoint(one, spec, tmp_path)
    loaded, _ = load_checkpoint(path, sha)
    assert bool(loaded.adapter.active)
    assert np.array_equal(predict_proba(loaded, x), predict_proba(one, x))


def _write(path, state):
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "spec": ModelSpec("mlp", (8, 8), 10).to_dict(), "state_dict": state}, buffer)
    path.write_bytes(buffer.getvalue())
    return sha256_file(path)


def test_a_checkpoint_from_before_adapters_loads_with_the_adapter_off(tmp_path):
    model = build_model(ModelSpec("mlp", (8, 8), 10), seed=1)
    old = {k: v for k, v in model.state_dict().items() if k not in ADAPTER_KEYS}
    sha = _write(tmp_path / "old.pt", old)
    loaded, _ = load_checkpoint(tmp_path / "old.pt", sha)
    x = torch.rand(5, 64)
    assert not bool(loaded.adapter.active)
    assert torch.equal(loaded(x), model(x))
    # half an adapter is a broken file, not an old one
    partial = {k: v for k, v in model.state_dict().items() if k != "adapter.theta"}
    sha = _write(tmp_path / "partial.pt", partial)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "partial.pt", sha)


def test_an_adapter_from_before_routers_loads_unrouted_and_half_a_router_is_refused(base, digits, splits, tmp_path):
    rows = splits.stream[:30]
    x = shifted(digits, rows, [{"name": "invert"}], 0)
    adapted = fit_input_adapter(base, x, digits.labels[rows])
    before_routers = {k: v for k, v in adapted.state_dict().items() if k not in ROUTER_KEYS}
    sha = _write(tmp_path / "unrouted.pt", before_routers)
    loaded, _ = load_checkpoint(tmp_path / "unrouted.pt", sha)
    assert bool(loaded.adapter.active) and not bool(loaded.adapter.routed)
    assert np.array_equal(predict_proba(loaded, x), predict_proba(adapted, x))
    partial = {k: v for k, v in adapted.state_dict().items() if k != "adapter.route_bias"}
    sha = _write(tmp_path / "half-router.pt", partial)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "half-router.pt", sha)


def _router_model(base, digits, splits, settings, shift):
    rows = splits.stream[:120]
    target = shifted(digits, rows, shift, 0).reshape(len(rows), -1)
    router = fit_router(target, digits, splits, settings.seed, "router-test")
    adapted = fit_input_adapter(base, target[:40], digits.labels[rows[:40]])
    adapted.adapter.route(torch.from_numpy(router.weight), router.bias)
    return router, adapted


def test_a_router_sends_the_shift_through_the_adapter_and_the_source_past_it(base, digits, splits, settings, tmp_path):
    router, adapted = _router_model(base, digits, splits, settings, [{"name": "invert"}])
    assert router.held_out_accuracy >= ROUTER_MIN_ACCURACY
    held = splits.evaluation
    clean = digits.images[held]
    inverted = shifted(digits, held, [{"name": "invert"}], 1)
    score = lambda images: images.reshape(len(images), -1) @ router.weight + router.bias  # noqa: E731
    assert (score(inverted) > 0).mean() > 0.95 and (score(clean) <= 0).mean() > 0.95
    # one model, right on both: the adapter undoes the inversion, the source passes unchanged
    assert accuracy(adapted, inverted, digits.labels[held]) > accuracy(base, inverted, digits.labels[held]) + 0.3
    assert accuracy(adapted, clean, digits.labels[held]) > accuracy(base, clean, digits.labels[held]) - 0.03
    unrouted = fit_input_adapter(adapted, inverted[:40], digits.labels[held[:40]])  # a fit starts unrouted
    assert not bool(unrouted.adapter.routed) and bool(adapted.adapter.routed)
    assert accuracy(unrouted, clean, digits.labels[held]) < 0.5  # what the router saves the source from
    # deterministic, and the router survives a checkpoint
    again = fit_router(shifted(digits, splits.stream[:120], [{"name": "invert"}], 0).reshape(120, -1),
                       digits, splits, settings.seed, "router-test")
    assert np.array_equal(again.weight, router.weight) and again.bias == router.bias
    path, sha = save_checkpoint(adapted, ModelSpec("mlp", (8, 8), 10), tmp_path)
    loaded, _ = load_checkpoint(path, sha)
    assert bool(loaded.adapter.routed)
    both = np.concatenate([clean[:50], inverted[:50]])
    assert np.array_equal(predict_proba(loaded, both), predict_proba(adapted, both))


def test_a_router_that_cannot_tell_the_episode_from_the_source_is_not_used(base, digits, splits, settings):
    router, _ = _router_model(base, digits, splits, settings, [])
    assert router.held_out_accuracy < ROUTER_MIN_ACCURACY


ROTATE = [{"name": "rotate", "degrees": 30}]


def test_an_adapter_routed_by_confidence_keeps_for_each_input_the_surer_reading(base, digits, splits, tmp_path):
    rows, held = splits.stream[:40], splits.evaluation
    adapted = fit_input_adapter(base, shifted(digits, rows, ROTATE, 0), digits.labels[rows])
    adapted.adapter.route_by_confidence()
    assert bool(adapted.adapter.confident) and not bool(adapted.adapter.routed) and is_specialist(adapted)
    rotated = shifted(digits, held, ROTATE, 1)
    both = torch.from_numpy(np.concatenate([digits.images[held], rotated]).reshape(2 * len(held), -1).astype(np.float32))
    labels = np.concatenate([digits.labels[held], digits.labels[held]])
    n = len(both)
    with torch.no_grad():
        through = adapted(both, torch.zeros(n, dtype=torch.bool))  # an explicit bypass: no choice made
        past = adapted(both, torch.ones(n, dtype=torch.bool))
        chosen = adapted(both)
        assert torch.equal(adapted.head(adapted.features(both)), chosen)
    warp = through.softmax(1).amax(1) > past.softmax(1).amax(1)
    assert torch.equal(chosen, torch.where(warp.unsqueeze(1), through, past))
    hits = lambda logits: float((logits.argmax(1).numpy() == labels).mean())  # noqa: E731
    # rotated digits are read through the adapter more often than clean ones, and the choice beats
    # either reading alone (this small MLP's confidence is a weak witness: 0.79 against 0.55 of the
    # rows warped, 0.71 right against 0.66 and 0.62; MNIST's CNN: benchmarks/results/finetune-mnist.md)
    assert warp[len(held):].float().mean() > warp[:len(held)].float().mean() + 0.15
    assert hits(chosen) > max(hits(through), hits(past)) + 0.02
    # the choice survives a checkpoint; one written before it existed loads without it
    path, sha = save_checkpoint(adapted, ModelSpec("mlp", (8, 8), 10), tmp_path)
    loaded, _ = load_checkpoint(path, sha)
    assert bool(loaded.adapter.confident) and np.array_equal(predict_proba(loaded, both.numpy()),
                                                             predict_proba(adapted, both.numpy()))
    before = {k: v for k, v in adapted.state_dict().items() if k != CONFIDENCE_KEY}
    sha = _write(tmp_path / "before-confidence.pt", before)
    older, _ = load_checkpoint(tmp_path / "before-confidence.pt", sha)
    assert bool(older.adapter.active) and not bool(older.adapter.confident) and is_specialist(older)
    # a new fit starts from no routing at all
    refit = fit_input_adapter(adapted, rotated[:20], digits.labels[held[:20]])
    assert not bool(refit.adapter.confident) and not bool(refit.adapter.routed)


@pytest.mark.parametrize("by_confidence", [True, False])
def test_where_the_router_fails_the_adapter_is_routed_by_confidence_or_not_fitted(base, digits, splits, settings,
                                                                                   by_confidence):
    rows = splits.stream[:60]  # clean digits: no linear score tells them from the source
    x = digits.images[rows].reshape(60, -1).astype(np.float32)
    finetune_settings = dataclasses.replace(settings.datacenter.finetune, route_by_confidence=by_confidence)
    out = adapt(base, x[:30], digits.labels[rows[:30]], x[30:], x[30:], digits, splits, finetune_settings,
                settings.seed, "confidence-episode")
    assert out.router.held_out_accuracy < ROUTER_MIN_ACCURACY
    assert bool(out.model.adapter.active) == by_confidence and bool(out.model.adapter.confident) == by_confidence
    assert not bool(out.model.adapter.routed)


def test_replayed_rows_pass_a_fitted_adapter_by(base, digits, splits, settings):
    rows = splits.stream[:30]
    x = shifted(digits, rows, [{"name": "invert"}], 0)
    adapted = fit_input_adapter(base, x, digits.labels[rows])
    clean = torch.from_numpy(digits.images[splits.evaluation[:8]].reshape(8, -1).astype(np.float32))
    everything = torch.ones(8, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(adapted(clean, everything), base(clean))
        assert not torch.equal(adapted(clean), base(clean))
    # fine-tuning from the adapted model keeps the source accuracy: its replay was not inverted
    tuned = finetune(adapted, x.reshape(30, -1), digits.labels[rows], digits, splits,
                     settings.datacenter.finetune, settings.seed, "adapter-episode")
    held = splits.evaluation
    x_held = shifted(digits, held, [{"name": "invert"}], 1)
    assert accuracy(tuned, x_held, digits.labels[held]) > accuracy(base, x_held, digits.labels[held]) + 0.5
    bypassed = tuned.head(tuned.body(torch.from_numpy(digits.images[held].reshape(len(held), 1, 8, 8).astype(np.float32))))
    source_after = float((bypassed.argmax(1).numpy() == digits.labels[held]).mean())
    assert source_after > accuracy(base, digits.images[held], digits.labels[held]) - 0.05


def test_an_episode_with_the_adapter_on_fits_it_and_records_it(digits, splits, settings, tmp_path):
    """Through the data center: the same inverted round, adapter off and on, from the same base."""
    outcomes = {}
    for on in (False, True):
        tuned = dataclasses.replace(settings, datacenter=dataclasses.replace(
            settings.datacenter, finetune=dataclasses.replace(settings.datacenter.finetune, input_adapter=on)),
            edge=dataclasses.replace(settings.edge, max_iterations=4))  # the first fit and 3 query batches
        state_dir = tmp_path / f"adapter-{on}"
        base = train_base(tuned, digits, splits, StateStore(state_dir))
        out = run_round(center_over(state_dir, tuned, digits, splits), tuned, digits, splits,
                        {"id": "i01", "shift": [{"name": "invert"}]}, base)
        registry = json.loads((state_dir / "registry" / f"{out.checkpoint['sha256']}.json").read_text())
        outcomes[on] = (out.metrics, registry["metrics"]["input_adapter"])
    (off, nothing), (on, fitted) = outcomes[False], outcomes[True]
    assert off["retrained"] and on["retrained"] and nothing is None
    assert fitted["gain"] < 0 < fitted["bias"]  # it found the polarity: an inversion is undone by a negative gain
    assert on["accuracy_after"] > off["accuracy_after"] + 0.1

    # the adapted model is now current, routed: it warps inverted digits and lets clean ones pass
    center = center_over(state_dir, tuned, digits, splits)
    _, snapshot = center.parent_state({"state": out.checkpoint["state"]})
    current = center.model(snapshot.current)
    assert bool(current.adapter.active) and bool(current.adapter.routed) and fitted["routed"]
    assert registry["metrics"]["router_held_out_accuracy"] >= 0.95
    held = splits.evaluation
    clean_held = digits.images[held]
    assert accuracy(current, clean_held, digits.labels[held]) > accuracy(center.model(base["sha256"]), clean_held,
                                                                          digits.labels[held]) - 0.05
    rows = splits.stream[:100]
    clean = digits.images[rows]
    inverted = shifted(digits, rows, [{"name": "invert"}], 2)
    assert specialist_watch(center, snapshot, clean) is None  # routed: not a specialist
    # unrouted (an adapter written before routers), it is one: the base model's monitor watches for its source
    current.adapter.unroute()
    try:
        watch = specialist_watch(center, snapshot, clean)
        assert watch is not None and watch.drift and watch.detector == "specialist_watch"
        assert specialist_watch(center, snapshot, inverted) is None  # its own data: the base tells it apart
        # routed by confidence it may warp source inputs too, so the base's monitor watches it as well
        current.adapter.route_by_confidence()
        watch = specialist_watch(center, snapshot, clean)
        assert watch is not None and watch.drift and specialist_watch(center, snapshot, inverted) is None
        # and its outputs on shifted data can look like its outputs on the source, so "back on the
        # source" (no label spent) needs the base model's own gate to agree
        center._source.pop(snapshot.current, None)
        source_view, _ = center.source_view(snapshot.current)
        on_inverted, on_clean = predict_proba(current, inverted), predict_proba(current, clean)
        assert not detectors.ks_softmax_test(source_view, on_inverted, tuned.datacenter.alpha).drift  # fooled alone
        assert not looks_like_source(center, snapshot, source_view, on_inverted, inverted)
        assert looks_like_source(center, snapshot, source_view, on_clean, clean)
        # and there the base, made for the source, takes over from it, for no label
        assert base_takes_over(center, snapshot, source_view, clean)
        assert not base_takes_over(center, snapshot, source_view, inverted)  # the base's gate flags these
    finally:  # the cached model and its source view were altered above
        center._models.pop(snapshot.current)
        center._source.pop(snapshot.current, None)
    # clean data again: the routed model serves it as the base did, with no episode
    back = run_round(center_over(state_dir, tuned, digits, splits), tuned, digits, splits,
                     {"id": "i02", "shift": []}, out.checkpoint)
    assert not back.metrics["retrained"] and back.metrics["accuracy_after"] > 0.9
