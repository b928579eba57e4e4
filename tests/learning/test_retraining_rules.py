"""An episode's rules: which fine-tuned model is kept, when it stops, and self-training on the random sample."""

import asyncio
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from datacenter.errors import RequestError
from datacenter.adaptation import confident_rows
from datacenter.prepare import fits_as_is
from datacenter.retrain import judge, unlabelled_rows
from datacenter.service import DataCenter
from datacenter.state import EpisodeData, StateStore
from edge.round_runner import EdgeRound
from mlcore.contract import in_process
from mlcore.frames import build_sample_frame, frame_features
from mlcore.rounds import parse_round
from mlcore.shifts import apply_image_shifts, parse_shift_list
from mlcore.training import predict_proba

NAN = (math.nan, math.nan)


@pytest.mark.parametrize("new, best, start, held_back, expected", [
    ((0.8, -0.5), (0.8, -0.3), (0.6, -1.0), 5, (True, True)),  # ties the best on accuracy: the newer (more labels) wins
    ((0.5, -0.9), (1.0, -0.1), (0.0, -5.0), 2, (True, True)),  # one held-back label fewer right: noise, the newer wins
    ((0.6, -0.1), (0.8, -0.3), (0.6, -1.0), 10, (False, True)),  # two labels fewer right than the best: kept out
    ((0.0, -3.0), (1.0, -0.1), (0.0, -5.0), 2, (False, True)),  # both held-back labels wrong where the best had both
    ((0.6, -1.1), None, (0.6, -1.0), 5, (False, False)),  # nothing beat the start yet and the new one does not
    ((0.6, -0.9), None, (0.6, -1.0), 5, (True, True)),  # same accuracy as the start, more likely: better
    ((1.0, -0.2), (0.8, -0.5), (0.6, -1.0), 5, (True, True)),
    ((11 / 12, -0.3), (1.0, -0.2), (1.0, -0.25), 12, (True, False)),  # a start that fit these labels: 1 worse is noise
    ((10 / 12, -0.3), (11 / 12, -0.2), (1.0, -0.25), 12, (False, False)),  # 2 worse than the start: no drift down
    (NAN, NAN, NAN, 0, (True, True)),  # no held-back labels: nothing to judge by
])
def test_judge_keeps_the_model_trained_on_more_labels_unless_it_is_worse(new, best, start, held_back, expected):
    assert judge(new, best, start, held_back) == expected


def rotated_episode(digits, splits, n_post=60, n_uniform=20):
    """A random sample of rotated stream rows whose first `n_uniform` rows are labelled, split as
    prepare does: every other one held back."""
    rows = splits.stream[:n_post]
    x = apply_image_shifts(digits.images[rows], parse_shift_list([{"name": "rotate", "degrees": 15}]),
                           np.random.default_rng(0)).reshape(n_post, -1).astype(np.float32)
    y = digits.labels[rows]
    held = np.arange(n_uniform) % 2 == 1
    return EpisodeData(post_x=x, post_ids=rows.astype(np.int64), val_x=x[:n_uniform][held], val_y=y[:n_uniform][held],
                       x=x[:n_uniform][~held], y=y[:n_uniform][~held], ids=rows[:n_uniform][~held].astype(np.int64))


def test_pseudo_labels_come_only_from_unlabelled_rows_and_confident_predictions(trained, settings, digits, splits):
    state_dir, base = trained
    center = DataCenter(settings, digits, splits, StateStore(state_dir))
    model = center.model(base["sha256"])
    data = rotated_episode(digits, splits)
    pool = unlabelled_rows(data)
    assert len(pool) == len(data.post_x) - 20  # the 20 uniform rows (trained on or held back) are left out
    assert not {row.tobytes() for row in pool} & {row.tobytes() for row in np.concatenate([data.val_x, data.x])}
    shape = digits.image_shape
    assert confident_rows(model, pool, shape, 0.0) is None  # off
    loose = confident_rows(model, pool, shape, 0.5)
    strict = confident_rows(model, pool, shape, 0.99)
    assert loose is not None and 0 < len(loose[1]) <= len(pool)
    assert strict is None or len(strict[1]) < len(loose[1])
    probabilities = predict_proba(model, center.as_images(loose[0]))
    assert (probabilities.max(1) >= 0.5).all() and (probabilities.argmax(1) == loose[1]).all()


def test_an_episode_with_self_training_records_it_is_deterministic_and_helps_on_held_out_data(
        trained, settings, digits, splits, tmp_path):
    """A real episode (rotate 25) with pseudo_confidence on: its fine-tunes train on confident
    predictions for the unlabelled random-sample rows too (recorded in the registry), the same
    requests give the same checkpoint, and the kept model beats the entering one on held-out rows."""
    state_dir, base = trained
    tuned = dataclasses.replace(settings, datacenter=dataclasses.replace(
        settings.datacenter, finetune=dataclasses.replace(settings.datacenter.finetune, pseudo_confidence=0.9)))
    spec = parse_round({"id": "pl01", "shift": [{"name": "rotate", "degrees": 25}]})
    outcomes = []
    for copy in ("one", "two"):  # two data centers on copies of the base state: identical answers
        root = tmp_path / copy
        shutil.copytree(state_dir, root)
        center = DataCenter(tuned, digits, splits, StateStore(root))
        outcomes.append((root, asyncio.run(EdgeRound(tuned, digits, splits, spec, base, in_process(center.handle),
                                                     tmp_path / f"{copy}-edge").run())))
    (root, first), (_, second) = outcomes
    assert first.checkpoint["sha256"] == second.checkpoint["sha256"] and first.metrics["retrained"]
    assert first.metrics["episode_stop"] in ("converged", "answered", "budget")  # why it ended, recorded
    assert first.metrics["accuracy_after"] > first.metrics["accuracy_before"] + 0.1
    entries = [json.loads(p.read_text()) for p in (root / "registry").glob("*.json")]
    adapted = [e for e in entries if e.get("kind") == "adapted" and e.get("round") == "pl01"]
    assert adapted and all(e["metrics"]["pseudo_labels"] > 0 for e in adapted)


def test_stop_on_stall_ends_an_episode_whose_models_never_beat_the_start(trained, settings, digits, splits, tmp_path):
    """Queried labels that are wrong (true label + 1) teach nothing that beats the start on the
    correct held-back labels: with stop_on_stall the episode ends, rolled back, at its second
    iteration; without it, it runs on to its budget. The rows are clean, so no router tells them
    from the source; routed by confidence, an adapter would carry the wrong labels through its warp
    while the replayed rows keep the unwarped reading right, and that model can beat the start."""
    state_dir, base = trained
    spent = {}
    for stall in (True, False):
        chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(
            settings.datacenter, stop_on_stall=stall, stop_agreement=1.0,
            finetune=dataclasses.replace(settings.datacenter.finetune, route_by_confidence=False)))
        root = tmp_path / f"stall-{stall}"
        shutil.copytree(state_dir, root)
        center = DataCenter(chosen, digits, splits, StateStore(root))
        post = splits.stream[:100]
        reply = center.handle("prep_retraining", frame(digits, post[:10]), frame(digits, post, labelled=False),
                              {"state": base["state"], "round": "st01"})
        assert reply.flag  # the base model is the current one: an episode opens
        state, more, seen = reply.info["state"], True, []
        batches = np.array_split(splits.stream[100:100 + 10 * chosen.edge.max_iterations], chosen.edge.max_iterations)
        while more:
            ids = batches[len(seen)]
            out = center.handle("retraining", frame(digits, ids, wrong=True), None, {"state": state, "round": "st01"})
            state, more = out.info["state"], out.flag
            seen.append(out.info["beats_start"])
        spent[stall] = (len(seen), out.info["decision"], out.info["stalled"], out.info["stopped"])
        assert not any(seen[1:])
    assert spent[True] == (2, "rolled_back", True, "stalled")
    edge = chosen.edge
    assert spent[False][0] == min(edge.max_iterations, edge.label_budget // edge.query_size) > 2 and not spent[False][2]
    assert spent[False][3] == "budget"


def test_a_flag_on_the_data_a_rolled_back_episode_failed_on_spends_no_labels(trained, settings, digits, splits,
                                                                             tmp_path):
    """An episode on rotate-30 rows rolls back (every queried label wrong, so no fine-tune beats
    the start). A fresh rotate-30 sample is then flagged but not retried (`unrecovered`, 0 labels),
    where the same sample from the base state asks for harm-test labels; inverted rows, which the
    episode never saw, still go to the harm test."""
    state_dir, base = trained
    finetune = dataclasses.replace(settings.datacenter.finetune, input_adapter=False, pseudo_confidence=0.0)
    chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, stop_agreement=1.0,
                                                                          finetune=finetune))
    root = tmp_path / "unrecovered"
    shutil.copytree(state_dir, root)
    center = DataCenter(chosen, digits, splits, StateStore(root))
    rot = [{"name": "rotate", "degrees": 30}]
    post, fresh = splits.stream[:100], splits.stream[200:300]
    rotated = center.as_images(frame_features(frame(digits, post, False, shift=rot)))
    right = predict_proba(center.model(base["sha256"]), rotated).argmax(1) == digits.labels[post]
    post = np.concatenate([post[right][:10], post[~right], post[right][10:]])  # labelled: rows the start gets right
    reply = center.handle("prep_retraining", frame(digits, post[:10], shift=rot), frame(digits, post, False, shift=rot),
                          {"state": base["state"], "round": "ur01"})
    state, more, queries = reply.info["state"], reply.flag, iter(np.array_split(splits.stream[100:200], 10))
    while more:
        out = center.handle("retraining", frame(digits, next(queries), wrong=True, shift=rot), None,
                            {"state": state, "round": "ur01"})
        state, more = out.info["state"], out.flag
    assert out.info["decision"] == "rolled_back" and out.sha256 == base["sha256"]
    again = center.handle("normal", None, frame(digits, fresh, False, shift=rot), {"state": state, "round": "ur02"})
    assert again.info["flagged"] and again.info["decision"] == "unrecovered" and not again.flag
    assert again.info["labels_wanted"] == 0 and again.info["p_value_failed"] >= 0.1
    from_base = center.handle("normal", None, frame(digits, fresh, False, shift=rot),
                              {"state": base["state"], "round": "ur02"})
    assert from_base.info["flagged"] and from_base.info["labels_wanted"] > 0
    inverted = center.handle("normal", None, frame(digits, fresh, False, shift=[{"name": "invert"}]),
                             {"state": state, "round": "ur03"})
    assert inverted.info["flagged"] and inverted.info["decision"] != "unrecovered" and inverted.info["labels_wanted"] > 0


def test_the_first_retraining_may_train_on_the_check_labels_alone(trained, settings, digits, splits, tmp_path):
    """A `retraining` request without a query frame is the episode's first fine-tune, on the half of
    the uniform labels prep_retraining kept for training: no label spent. Only the first may do
    that, and only when there are such labels."""
    state_dir, base = trained
    root = tmp_path / "first-fit"
    shutil.copytree(state_dir, root)
    center = DataCenter(settings, digits, splits, StateStore(root))
    rot, post = [{"name": "rotate", "degrees": 30}], splits.stream[:100]
    reply = center.handle("prep_retraining", frame(digits, post[:10], shift=rot), frame(digits, post, False, shift=rot),
                          {"state": base["state"], "round": "ff01"})
    assert reply.flag
    first = center.handle("retraining", None, None, {"state": reply.info["state"], "round": "ff01"})
    assert first.info["iteration"] == 1 and first.info["labels_used"] == 0 and first.info["prequential_accuracy"] is None
    registry = json.loads((root / "registry" / f"{first.info['trained']}.json").read_text())
    assert registry["metrics"]["train_labels"] == 5 and registry["shift"] == "none"  # the random frame's tag
    with pytest.raises(RequestError, match="first iteration"):
        center.handle("retraining", None, None, {"state": first.info["state"], "round": "ff01"})
    second = center.handle("retraining", frame(digits, splits.stream[100:110], shift=rot), None,
                           {"state": first.info["state"], "round": "ff01"})
    assert second.info["iteration"] == 2 and second.info["labels_used"] == 10
    label_free = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter,
                                                                              selection="label_free"))
    center = DataCenter(label_free, digits, splits, StateStore(root))
    unlabelled = center.handle("prep_retraining", None, frame(digits, post, False, shift=rot),
                               {"state": base["state"], "round": "ff02"})
    with pytest.raises(RequestError, match="no uniform training labels"):
        center.handle("retraining", None, None, {"state": unlabelled.info["state"], "round": "ff02"})


def test_an_episode_stops_once_the_model_already_gets_its_queries_right(trained, settings, digits, splits, tmp_path):
    """A query batch the model entering the iteration already gets right (prequential accuracy at
    least stop_query_accuracy) ends the episode once it is trained on; a batch it gets wrong does
    not, and with the stop off (None) neither does a right one."""
    state_dir, base = trained
    rot, post, pool = [{"name": "rotate", "degrees": 30}], splits.stream[:100], splits.stream[100:300]
    outcome = {}
    for threshold, kind in ((0.9, "right"), (0.9, "wrong"), (None, "right")):
        chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(
            settings.datacenter, stop_agreement=1.0, stop_query_accuracy=threshold))
        root = tmp_path / f"{threshold}-{kind}"
        shutil.copytree(state_dir, root)
        center = DataCenter(chosen, digits, splits, StateStore(root))
        reply = center.handle("prep_retraining", frame(digits, post[:10], shift=rot),
                              frame(digits, post, False, shift=rot), {"state": base["state"], "round": "sq01"})
        first = center.handle("retraining", None, None, {"state": reply.info["state"], "round": "sq01"})
        assert first.flag and not first.info["answered"]  # no queries yet: nothing to answer
        images = center.as_images(frame_features(frame(digits, pool, False, shift=rot)))
        right = predict_proba(center.model(first.sha256), images).argmax(1) == digits.labels[pool]
        ids = (pool[right] if kind == "right" else pool[~right])[:10]
        second = center.handle("retraining", frame(digits, ids, shift=rot), None,
                               {"state": first.info["state"], "round": "sq01"})
        outcome[threshold, kind] = (second.info["prequential_accuracy"], second.info["answered"], second.flag,
                                    second.info["stopped"])
    assert outcome[0.9, "right"] == (1.0, True, False, "answered")
    assert outcome[0.9, "wrong"] == (0.0, False, True, None)
    assert outcome[None, "right"] == (1.0, False, True, None)


def frame(digits, ids, labelled=True, wrong=False, shift=()):
    """A sample frame of rows `ids`, shifted as `shift` says: labelled (wrongly: the next class) or not."""
    labels = (digits.labels[ids] + int(wrong)) % digits.n_classes if labelled else np.full(len(ids), -1)
    images = apply_image_shifts(digits.images[ids], parse_shift_list(list(shift)), np.random.default_rng(len(ids)))
    return build_sample_frame(ids, images, labels, "st01", "none")


def test_a_zoo_model_chosen_on_the_check_labels_is_not_adopted_where_its_label_free_estimate_disputes_it(
        trained, settings, digits, splits):
    """prep_retraining's adopt-as-is test is the state check's, label-free dispute included: the
    zoo model it tests was chosen because it fit these very labels best, so 38 of 40 right can
    flatter it. Here the labels are picked that way (38 the base model gets right, 2 it gets wrong)
    from a noisy sample on which its DoC estimate is 0.89 (reference 0.96): disputed, the test asks
    for more labels (45). With 40 more the labels decide: 4 of them wrong, not adopted; all right,
    adopted. The same 40 labels on clean data (estimate 0.95) adopt it, and so does the noisy
    sample with the dispute off."""
    state_dir, base = trained
    center = DataCenter(settings, digits, splits, StateStore(state_dir))
    root = center.store.load(base["state"])
    other = center.reweighted(base["sha256"], np.array([1.2] + [1.0] * 9))  # the current model: not the one tested
    snapshot = dataclasses.replace(root, current=other)
    model = center.model(base["sha256"])
    rows = splits.stream[:100]

    def verdict(shift, drop, then_wrong=None):
        """40 labels (38 right first, then 2 wrong); `then_wrong`: 40 more, that many wrong first."""
        sample = apply_image_shifts(digits.images[rows], parse_shift_list(shift), np.random.default_rng(0))
        right = predict_proba(model, sample).argmax(1) == digits.labels[rows]
        hits, misses = np.flatnonzero(right), np.flatnonzero(~right)
        chosen = [hits[:38], misses[:2]]
        if then_wrong is not None:
            chosen += [misses[2:2 + then_wrong], hits[38:38 + 40 - then_wrong]]
        chosen = np.concatenate(chosen)
        tuned = dataclasses.replace(center.settings, datacenter=dataclasses.replace(
            center.settings.datacenter, harm_check=dataclasses.replace(center.settings.datacenter.harm_check,
                                                                       label_free_drop=drop)))
        judged = DataCenter(tuned, digits, splits, center.store)
        return fits_as_is(judged, snapshot, base["sha256"], sample[chosen], digits.labels[rows][chosen], sample)

    noisy = [{"name": "noise", "sigma": 0.2}]
    assert verdict(noisy, 1.0).outcome == "benign"  # the labels alone: 38 of 40 right
    disputed = verdict(noisy, 0.04)
    assert disputed.outcome == "more" and disputed.wanted == 45
    assert verdict(noisy, 0.04, then_wrong=4).outcome == "harmful"
    cleared = verdict(noisy, 0.04, then_wrong=0)
    assert cleared.outcome == "benign" and cleared.labels > 40
    assert verdict([], 0.04).outcome == "benign"
