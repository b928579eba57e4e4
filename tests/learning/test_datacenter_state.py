"""The data center's episodes, lineage-keyed state, restarts, idempotence and bad requests."""

import hashlib
import json

import numpy as np
import pytest

from datacenter.base import train_base
from datacenter.service import RequestError
from datacenter.state import StateStore
from edge.round_runner import summary_line
from mlcore.frames import build_sample_frame
from round_helpers import center_over, run_round


ROT = [{"name": "rotate", "degrees": 20}]


def test_episode_adapts_and_records(trained, settings, digits, splits):
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    quiet = run_round(center, settings, digits, splits, {"id": "e01", "shift": []}, base)
    assert not quiet.metrics["flagged"] and quiet.checkpoint["state"] == base["state"] and quiet.metrics["labels_used"] == 0
    out = run_round(center, settings, digits, splits, {"id": "e02", "shift": ROT}, quiet.checkpoint)
    m = out.metrics
    assert m["flagged"] and m["retrained"] and m["accuracy_after"] > m["accuracy_before"] + 0.1
    assert 0 < m["labels_queried"] <= settings.edge.label_budget and m["labels_used"] == m["labels_queried"] + m["labels_uniform"]
    assert 1 <= m["iterations"] <= settings.edge.max_iterations
    assert summary_line(out).startswith("round e02 shift=rotate20 held-out acc ")
    registry = json.loads((state_dir / "registry" / f"{out.checkpoint['sha256']}.json").read_text())
    assert registry["parent"] == base["sha256"] and registry["round"] == "e02"
    # the model kept is the episode's best on its held-back labels: the last iteration's, or an earlier one's
    # (the first trains on the check's labels alone: 0 queried)
    assert 0 <= registry["labels_used"] <= m["labels_queried"] and registry["labels_used"] % settings.edge.query_size == 0
    assert "source_eval_accuracy" in registry["metrics"]
    # on by default: fitted only with a router that tells the rotated rows from the source (test_input_adapter.py)
    fitted, router = registry["metrics"]["input_adapter"], registry["metrics"]["router_held_out_accuracy"]
    assert router is not None and (fitted is None) == (router < 0.95) and (fitted is None or fitted["routed"])
    snapshot = StateStore(state_dir).load(out.checkpoint["state"])
    assert snapshot.current == out.checkpoint["sha256"] and len(snapshot.zoo) == 2
    # the reference window was reset to the adapted model: the same shift no longer triggers
    again = run_round(center, settings, digits, splits, {"id": "e03", "shift": ROT}, out.checkpoint)
    assert not again.metrics["flagged"]


def test_restart_and_rerun_give_the_same_files(trained, settings, digits, splits, tmp_path):
    state_dir, base = trained
    first = run_round(center_over(state_dir, settings, digits, splits), settings, digits, splits,
                      {"id": "k01", "shift": [{"name": "invert"}]}, base)
    # a restarted server (new objects, same files) answers the same requests identically
    second = run_round(center_over(state_dir, settings, digits, splits), settings, digits, splits,
                       {"id": "k01", "shift": [{"name": "invert"}]}, base)
    assert first.checkpoint == {**second.checkpoint, "seconds": first.checkpoint["seconds"]}
    # a fresh state directory trained from the same seed gives the same bytes all along
    fresh = tmp_path / "fresh"
    fresh_base = train_base(settings, digits, splits, StateStore(fresh))
    assert fresh_base["sha256"] == base["sha256"] and fresh_base["state"] == base["state"]
    third = run_round(center_over(fresh, settings, digits, splits), settings, digits, splits,
                      {"id": "k01", "shift": [{"name": "invert"}]}, {**fresh_base})
    assert third.checkpoint["sha256"] == first.checkpoint["sha256"] and third.checkpoint["state"] == first.checkpoint["state"]
    assert (fresh / "checkpoints" / f"{third.checkpoint['sha256']}.pt").read_bytes() == \
        (state_dir / "checkpoints" / f"{first.checkpoint['sha256']}.pt").read_bytes()
    assert (fresh / "states" / f"{third.checkpoint['state']}.npz").read_bytes() == \
        (state_dir / "states" / f"{first.checkpoint['state']}.npz").read_bytes()


def test_bad_requests_get_clear_errors(trained, settings, digits, splits):
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    frame = build_sample_frame(np.arange(5), digits.images[:5], None, "b1", "none")
    with pytest.raises(RequestError, match="unknown message type"):
        center.handle("reboot", None, frame, {"state": base["state"]})
    with pytest.raises(RequestError, match="must carry extra"):
        center.handle("normal", None, frame, {})
    with pytest.raises(RequestError, match="unknown state"):
        center.handle("normal", None, frame, {"state": "0" * 64})
    with pytest.raises(RequestError, match="64 hex"):
        center.handle("normal", None, frame, {"state": "../../etc/passwd"})
    with pytest.raises(RequestError, match="random_dataframe is required"):
        center.handle("normal", None, None, {"state": base["state"]})
    wrong_size = build_sample_frame(np.arange(5), np.zeros((5, 4, 4)), None, "b1", "none")
    with pytest.raises(RequestError, match="64 features"):
        center.handle("normal", None, wrong_size, {"state": base["state"]})
    with pytest.raises(RequestError, match="open episode"):
        labelled = build_sample_frame(np.arange(5), digits.images[:5], digits.labels[:5], "b1", "none")
        center.handle("retraining", labelled, None, {"state": base["state"], "round": "b1"})
    with pytest.raises(RequestError, match="needs a label"):
        center.handle("prep_retraining", frame, frame, {"state": base["state"], "round": "b1"})
    hello = center.handle("handshake", None, None, {"state": base["state"]})
    assert hello.info["ready"] and hello.info["n_features"] == 64 and hello.info["zoo_size"] >= 1
    assert hello.data is None and hello.info["labels_check"] == 0  # the default detector (ks) is label-free
    fetched = center.handle("handshake", None, None, {"state": base["state"], "fetch": base["sha256"]})
    assert fetched.sha256 == base["sha256"] and hashlib.sha256(fetched.data).hexdigest() == base["sha256"]
    with pytest.raises(RequestError, match="not in the lineage"):
        center.handle("handshake", None, None, {"state": base["state"], "fetch": "0" * 64})


@pytest.mark.parametrize("method", ["leep", "label_free"])
def test_switch_back_selects_the_model_adapted_earlier(trained, settings, digits, splits, method):
    import dataclasses
    state_dir, base = trained
    # recognise_zoo off: the switch back goes through selection (with it on the check adopts the
    # model label-free: test_a_switch_back_is_recognised_and_costs_no_label)
    chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, selection=method,
                                                                          recognise_zoo=False))
    center = center_over(state_dir, chosen, digits, splits)
    rot = [{"name": "rotate", "degrees": 30}]
    a = run_round(center, chosen, digits, splits, {"id": f"{method}-a", "shift": rot}, base)
    b = run_round(center, chosen, digits, splits, {"id": f"{method}-b", "shift": [{"name": "invert"}]}, a.checkpoint)
    back = run_round(center, chosen, digits, splits, {"id": f"{method}-c", "shift": rot}, b.checkpoint)
    assert a.metrics["retrained"] and b.metrics["retrained"] and back.metrics["flagged"]
    assert back.metrics["selected_checkpoint"] == a.checkpoint["sha256"]
    assert back.metrics["selection"] == method


def test_a_switch_back_is_recognised_and_costs_no_label(trained, settings, digits, splits):
    """rotate 30, invert, rotate 30 again: the third sample matches the rotate-30 model's own window,
    so the check adopts that model as it is, with no label and no episode; with recognise_zoo off the
    same round pays for a harm test and a selection."""
    import dataclasses
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    rot = [{"name": "rotate", "degrees": 30}]
    a = run_round(center, settings, digits, splits, {"id": "rz-a", "shift": rot}, base)
    b = run_round(center, settings, digits, splits, {"id": "rz-b", "shift": [{"name": "invert"}]}, a.checkpoint)
    back = run_round(center, settings, digits, splits, {"id": "rz-c", "shift": rot}, b.checkpoint)
    assert a.metrics["retrained"] and b.metrics["retrained"] and back.metrics["flagged"]
    assert back.metrics["decision"] == "adopt" and back.metrics["labels_used"] == 0 and back.metrics["iterations"] == 0
    assert back.checkpoint["sha256"] == a.checkpoint["sha256"]
    assert back.metrics["accuracy_after"] > back.metrics["accuracy_before"] + 0.2  # held out
    off = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, recognise_zoo=False))
    paid = run_round(center_over(state_dir, off, digits, splits), off, digits, splits,
                     {"id": "rz-c-off", "shift": rot}, b.checkpoint)
    assert paid.metrics["flagged"] and paid.metrics["labels_used"] > 0


def test_an_adapted_model_is_recognised_only_where_the_base_does_not_tell_the_data_from_its_episode(
        trained, settings, digits, splits):
    """A rotate-30 sample that an adapted model's own outputs cannot tell from its window (here: its
    window is its outputs on that very sample, p = 1) is adopted for no label only if the base's
    outputs on it are not told apart from the base's outputs on the model's episode sample: with a
    rotate-30 episode sample it is; with a rotate-45 one the harm test asks for labels instead, and
    prep_retraining trains from the model rather than adopt it as it is. (The witness is the base's
    gate on 100 rows: this MLP base does not tell rotate 15 from rotate 30 there, p = 0.04, so a
    milder rotation is not the case tested.)"""
    from datacenter.prepare import fits_as_is
    from datacenter.state import EpisodeData, Snapshot, ZooEntry, state_key
    from mlcore.seeding import rng_for
    from mlcore.shifts import apply_image_shifts, parse_shift_list
    from mlcore.training import predict_proba

    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    root = center.store.load(base["state"])
    adapted = center.reweighted(base["sha256"], np.full(digits.n_classes, 1.1))  # any other model
    n = settings.edge.random_sample

    def rotated(rows, degrees):
        images = apply_image_shifts(digits.images[rows], parse_shift_list([{"name": "rotate", "degrees": degrees}]),
                                    rng_for(0, "witness-test", degrees))
        return images.reshape(len(rows), -1).astype(np.float32)

    ids = splits.stream[:n]
    sample = rotated(ids, 30)
    frame = build_sample_frame(ids, sample, None, "w02", "rotate30")
    # prep_retraining's "adopt it as it is", on 40 labels the model gets all right: the harm test alone
    # would pass it; where the base tells the data apart it is trained from instead
    images = center.as_images(sample)
    right = predict_proba(center.model(adapted), images).argmax(1)
    replies, adopts = {}, {}
    for case, degrees in (("same shift", 30), ("another rotation", 45)):
        episode_ids = splits.stream[n:2 * n]  # other rows than the sample's
        empty_x, empty = np.zeros((0, sample.shape[1]), np.float32), np.zeros(0, np.int64)
        episode_key = state_key(base["state"], "w01", "prep_retraining", case)
        center.store.save(episode_key, Snapshot(base["state"], "w01", "prep_retraining", base["sha256"], root.zoo,
                                                None, root.references, None,
                                                EpisodeData(rotated(episode_ids, degrees), episode_ids.astype(np.int64),
                                                            empty_x, empty, empty_x, empty, empty)))
        zoo = root.zoo + (ZooEntry(adapted, "w01", base["sha256"], episode_key, f"rotate{degrees}", 20),)
        references = {**root.references, adapted: predict_proba(center.model(adapted), center.as_images(sample))}
        key = state_key(base["state"], "w01", "retraining", case)
        center.store.save(key, Snapshot(base["state"], "w01", "retraining", base["sha256"], zoo, None, references))
        replies[case] = center.handle("normal", None, frame, {"state": key, "round": "w02"})
        adopts[case] = fits_as_is(center, center.store.load(key), adapted, images[:40], right[:40], images).outcome
    for reply in replies.values():
        assert reply.info["flagged"] and not reply.info["source_like"]
    assert adopts == {"same shift": "benign", "another rotation": "harmful"}
    assert replies["same shift"].info["decision"] == "adopt" and replies["same shift"].sha256 == adapted
    assert replies["same shift"].info["labels_wanted"] == 0
    assert replies["another rotation"].info["decision"] == "test" and replies["another rotation"].info["labels_wanted"] > 0


def test_a_models_own_shift_back_after_a_benign_clean_spell_is_adopted_home_without_labels(
        trained, settings, digits, splits):
    """rotate 45 retrained, then clean data adopted as benign (the gate now watches the clean
    window), then rotate 45 again: that is the current model's own data, so it is adopted home
    with no label and its own window watched again (the fleet benchmark paid 40 labels here)."""
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    rot = [{"name": "rotate", "degrees": 45}]
    episode = run_round(center, settings, digits, splits, {"id": "home-a", "shift": rot}, base)
    clean = run_round(center, settings, digits, splits, {"id": "home-b", "shift": []}, episode.checkpoint)
    assert episode.metrics["retrained"] and clean.metrics["flagged"] and clean.metrics["decision"] == "benign"
    assert clean.metrics["labels_used"] == 0 and clean.checkpoint["sha256"] == episode.checkpoint["sha256"]
    assert center.store.load(clean.checkpoint["state"]).monitor_ref is not None
    back = run_round(center, settings, digits, splits, {"id": "home-c", "shift": rot}, clean.checkpoint)
    m = back.metrics
    assert m["flagged"] and m["decision"] == "adopt" and m["labels_used"] == 0 and not m["retrained"]
    assert back.checkpoint["sha256"] == episode.checkpoint["sha256"] and m["p_value_original"] >= 0.1
    assert center.store.load(back.checkpoint["state"]).monitor_ref is None  # its own window again
    again = run_round(center, settings, digits, splits, {"id": "home-d", "shift": rot}, back.checkpoint)
    assert not again.metrics["flagged"] and again.metrics["labels_used"] == 0


def test_ece_detector_spends_counted_labels(trained, settings, digits, splits):
    import dataclasses
    state_dir, base = trained
    ece = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, detector="ece"),
                              edge=dataclasses.replace(settings.edge, max_iterations=0))
    center = center_over(state_dir, ece, digits, splits)
    quiet = run_round(center, ece, digits, splits, {"id": "ece1", "shift": []}, base)
    loud = run_round(center, ece, digits, splits, {"id": "ece2", "shift": [{"name": "invert"}]}, base)
    assert not quiet.metrics["flagged"] and loud.metrics["flagged"] and loud.metrics["detector"] == "ece"
    assert quiet.metrics["labels_used"] == ece.edge.random_sample


def test_a_benign_shift_costs_a_few_labels_and_no_training_a_harmful_one_is_retrained(trained, settings, digits, splits):
    """contrast x0.5 moves the softmax outputs (KS fires) but barely hurts accuracy: the harm
    test on uniformly drawn labels says so, the outputs are adopted, nothing is trained. A 30-degree
    rotation hurts: the same test sends it to an episode."""
    state_dir, base = trained
    settings = harm_test_alone(settings)  # this MLP's confidence falls further than its accuracy: see below
    center = center_over(state_dir, settings, digits, splits)
    contrast = [{"name": "contrast", "factor": 0.5}]
    first = run_round(center, settings, digits, splits, {"id": "t01", "shift": contrast}, base)
    m = first.metrics
    assert m["flagged"] and m["decision"] == "benign" and not m["retrained"] and m["iterations"] == 0
    assert 0 < m["labels_used"] == m["labels_check"] <= settings.datacenter.harm_check.max_labels
    assert m["harm_accuracy"] >= m["reference_accuracy"] - settings.datacenter.harm_check.harm
    assert first.checkpoint["state"] != base["state"] and first.checkpoint["sha256"] == base["sha256"]
    assert not m["confirming"] and center.store.load(first.checkpoint["state"]).unconfirmed
    # the same shift again: the model's own window still flags it, so the benign call is tested once more
    second = run_round(center, settings, digits, splits, {"id": "t02", "shift": contrast}, first.checkpoint)
    m = second.metrics
    assert m["flagged"] and m["confirming"] and m["decision"] == "benign" and not m["retrained"]
    assert 0 < m["labels_used"] == m["labels_check"] and not center.store.load(second.checkpoint["state"]).unconfirmed
    # confirmed: the benign shift costs nothing more
    third = run_round(center, settings, digits, splits, {"id": "t03", "shift": contrast}, second.checkpoint)
    assert not third.metrics["flagged"] and third.metrics["labels_used"] == 0
    fourth = run_round(center, settings, digits, splits, {"id": "t04", "shift": [{"name": "rotate", "degrees": 30}]},
                       third.checkpoint)
    assert fourth.metrics["flagged"] and fourth.metrics["decision"] == "retrain" and fourth.metrics["retrained"]
    assert not fourth.metrics["confirming"]
    assert fourth.metrics["accuracy_after"] > fourth.metrics["accuracy_before"] + 0.1  # held out


def test_a_harmful_shift_that_passed_one_harm_test_is_caught_by_the_confirmation(trained, settings, digits, splits):
    """A rotation that costs this model 10+ points, whose first 40 labelled rows happen to be all
    right: the harm test calls it benign and its outputs are adopted. The next round of the same
    rotation is flagged by the model's own window (`confirming`), tested on fresh labels and
    retrained; without the confirmation it goes by unflagged."""
    import dataclasses

    from mlcore.checkpoints import load_checkpoint
    from mlcore.seeding import rng_for
    from mlcore.shifts import apply_image_shifts, parse_shift_list
    from mlcore.training import predict_proba

    state_dir, base = trained
    rot = [{"name": "rotate", "degrees": 20}]
    stream = splits.stream
    shifted = apply_image_shifts(digits.images[stream], parse_shift_list(rot), rng_for(0, "confirm-test"))
    model, _ = load_checkpoint(base["checkpoint"], base["sha256"])
    right = predict_proba(model, shifted).argmax(1) == digits.labels[stream]
    assert right.mean() < 0.85  # harmful for this model
    lucky = np.flatnonzero(right)[:settings.datacenter.harm_check.max_labels]  # the labelled rows come first
    order = np.concatenate([lucky, np.setdiff1d(np.arange(len(stream)), lucky)])[:settings.edge.random_sample]
    ids = stream[order]
    frame = build_sample_frame(ids, shifted[order].reshape(len(ids), -1), digits.labels[ids], "c01", "rotate20")
    outcomes = {}
    for confirm in (True, False):
        harm = dataclasses.replace(harm_test_alone(settings).datacenter.harm_check, confirm=confirm)
        chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, harm_check=harm))
        center = center_over(state_dir, chosen, digits, splits)
        passed = center.handle("normal", None, frame, {"state": base["state"], "round": "c01"})
        assert passed.info["decision"] == "benign" and not passed.flag
        assert center.store.load(passed.info["state"]).unconfirmed  # recorded either way: the setting decides
        outcomes[confirm] = run_round(center, chosen, digits, splits, {"id": "c02", "shift": rot},
                                      {**base, "state": passed.info["state"]}).metrics
    assert outcomes[True]["flagged"] and outcomes[True]["confirming"] and outcomes[True]["retrained"]
    assert outcomes[True]["accuracy_after"] > outcomes[True]["accuracy_before"] + 0.05  # held out
    assert not outcomes[False]["flagged"] and outcomes[False]["labels_used"] == 0


def test_a_shift_adopted_on_top_of_an_adopted_one_is_measured_from_the_models_own_window(
        trained, settings, digits, splits):
    """Contrast x0.5 adopted and confirmed, then x0.4, flagged against the adopted window and
    benign too: the second adoption records the sample's distance to the model's own window
    (what `monitor` compares the own window's statistic with), not to the adopted window. Stored
    from the adopted window (0.28 against 0.69 here), the own window's statistic exceeded it by
    more than the margin every round: x0.4 was flagged twice more, and the third look retrained."""
    from datacenter.detectors import ks_softmax_test

    state_dir, base = trained
    settings = harm_test_alone(settings)
    center = center_over(state_dir, settings, digits, splits)
    out = base
    for i, factor in enumerate((0.5, 0.5, 0.4)):
        out = run_round(center, settings, digits, splits, {"id": f"x0{i}", "shift": [{"name": "contrast", "factor": factor}]},
                        out.checkpoint if i else base)
        assert out.metrics["flagged"] and out.metrics["decision"] == "benign" and out.checkpoint["sha256"] == base["sha256"]
    snapshot = center.store.load(out.checkpoint["state"])
    sample = center.store.load(snapshot.parent)  # the state the x0.4 sample was checked against
    assert sample.monitor_ref is not None and snapshot.unconfirmed
    # the distance the adoption recorded, recomputed: the x0.4 sample's outputs (the adopted window)
    # against the model's own window, and not against the x0.5 window it was flagged by
    own = ks_softmax_test(sample.references[sample.current], snapshot.monitor_ref, settings.datacenter.alpha)
    adopted = ks_softmax_test(sample.monitor_ref, snapshot.monitor_ref, settings.datacenter.alpha)
    assert snapshot.adopted_statistic == pytest.approx(own.statistic) and own.statistic > adopted.statistic + 0.2
    # the same shift again: flagged once, as the confirmation of a call resting on one test; then quiet
    again = run_round(center, settings, digits, splits, {"id": "x03", "shift": [{"name": "contrast", "factor": 0.4}]},
                      out.checkpoint)
    assert again.metrics["flagged"] and again.metrics["confirming"] and again.metrics["decision"] == "benign"
    last = run_round(center, settings, digits, splits, {"id": "x04", "shift": [{"name": "contrast", "factor": 0.4}]},
                     again.checkpoint)
    assert not last.metrics["flagged"] and last.metrics["labels_used"] == 0


def test_a_pure_label_prior_shift_is_reweighted_not_retrained(trained, settings, digits, splits):
    """Only the class mix moves (digits 0-4 alone; the pixels of each class as before): the
    gate flags the outputs, the label-shift test (BBSE) explains them by the priors, and the
    model is re-weighted (a new checkpoint, its weights untouched) instead of retrained; the
    harm test runs on the re-weighted model. Held out with the round's priors it does better."""
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    out = run_round(center, settings, digits, splits,
                    {"id": "p02", "shift": [{"name": "label_prior", "classes": [0, 1, 2, 3, 4]}]}, base)
    m = out.metrics
    assert m["flagged"] and m["decision"] == "label_shift" and m["label_shift"]
    assert not m["retrained"] and m["iterations"] == 0 and m["labels_queried"] == 0
    assert 0 < m["labels_used"] == m["labels_check"] <= settings.datacenter.harm_check.max_labels
    assert out.checkpoint["sha256"] != base["sha256"]  # the re-weighted model
    assert m["accuracy_after"] > m["accuracy_before"]  # (0.945 -> 0.984 here)


def harm_test_alone(settings):
    """`settings` with the label-free dispute of a benign harm test turned off."""
    import dataclasses

    harm = dataclasses.replace(settings.datacenter.harm_check, label_free_drop=1.0)
    return dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, harm_check=harm))


def test_a_benign_harm_test_the_label_free_estimate_disputes_runs_on_and_its_labels_decide(
        trained, settings, digits, splits):
    """Contrast x0.5 for this MLP: its confidence falls ~10 points, its held-out accuracy 2. One
    sample, 92 of 100 right, in different orders. Of the first 40 labelled rows, 39 right refute
    the low DoC estimate, so the benign call stands at 40.
    38 right do not: the call is disputed and the reply asks for more uniform labels (45, the next
    step), nothing adopted. Run on (to `disputed_labels`, 80, at most), the labels decide: the next
    40 all right, benign and adopted; 4 of them wrong, harmful and flagged. The harm test alone adopts
    at 38 of 40."""
    from mlcore.checkpoints import load_checkpoint
    from mlcore.seeding import rng_for
    from mlcore.shifts import apply_image_shifts, parse_shift_list
    from mlcore.training import predict_proba

    state_dir, base = trained
    stream = splits.stream
    shifted = apply_image_shifts(digits.images[stream], parse_shift_list([{"name": "contrast", "factor": 0.5}]),
                                 rng_for(0, "overrule-test"))
    model, _ = load_checkpoint(base["checkpoint"], base["sha256"])
    outputs = predict_proba(model, shifted)
    hits = outputs.argmax(1) == digits.labels[stream]
    right, wrong = np.flatnonzero(hits), np.flatnonzero(~hits)
    # right rows of middling confidence (ranks 275-366): the sample's DoC estimate then lands where
    # 38 right of 40 do not refute it and 39 do
    right = right[np.argsort(-outputs[right].max(1), kind="stable")][275:367]
    harm = settings.datacenter.harm_check
    assert harm.disputed_labels == 80 and settings.edge.random_sample >= 80

    def ask(name, first_right, then_right, labelled, config=settings):
        """One sample (92 rows the model gets right, 8 wrong), in an order that puts `first_right`
        of 40 right first, then 40 with `then_right` right (the wrong ones first); the first
        `labelled` rows labelled."""
        taken = (right, wrong[:8])
        first = np.concatenate([taken[0][:first_right], taken[1][:40 - first_right]])
        used = (first_right + then_right, 80 - first_right - then_right)
        second = np.concatenate([taken[1][40 - first_right:used[1]], taken[0][first_right:used[0]]])
        order = np.concatenate([first, second, taken[0][used[0]:], taken[1][used[1]:]])
        assert len(order) == settings.edge.random_sample == 100
        ids = stream[order]
        labels = np.where(np.arange(len(ids)) < labelled, digits.labels[ids], -1)
        frame = build_sample_frame(ids, shifted[order].reshape(len(ids), -1), labels, name, "contrast0.5")
        reply = center_over(state_dir, config, digits, splits).handle("normal", None, frame,
                                                                      {"state": base["state"], "round": name})
        assert reply.info["reference_accuracy"] - reply.info["estimate_candidate"] > harm.label_free_drop
        return reply

    refuted = ask("o39", 39, 40, 40)
    assert refuted.info["decision"] == "benign" and not refuted.flag and not refuted.info["disputed"]
    assert refuted.info["labels_check"] == 40
    disputed = ask("o38", 38, 40, 40)
    assert disputed.info["disputed"] and disputed.info["decision"] == "test" and disputed.info["labels_wanted"] == 45
    assert not disputed.flag and disputed.info["state"] == base["state"]
    cleared = ask("o38+40", 38, 40, 80)
    assert cleared.info["disputed"] and 40 < cleared.info["labels_check"] <= 80  # Wald's benign limit may come first
    assert cleared.info["decision"] == "benign" and not cleared.flag and cleared.info["state"] != base["state"]
    upheld = ask("o38+36", 38, 36, 80)
    assert upheld.info["disputed"] and upheld.info["decision"] == "harmful" and upheld.flag
    assert upheld.info["state"] == base["state"] and 40 < upheld.info["labels_check"] <= 80
    alone = ask("o38", 38, 40, 40, harm_test_alone(settings))
    assert alone.info["decision"] == "benign" and not alone.flag and not alone.info["disputed"]


def test_an_unfit_model_back_on_source_data_adopts_the_base_without_labels(trained, settings, digits, splits):
    """The current model (the base with its priors pushed hard to class 0: unfit on the source)
    is flagged on a clean sample that looks like source data to it. The base's own outputs match
    its source window too: the base is adopted, no label (`check.source_model`, the witness
    `recognise_zoo`'s stricter p >= 0.1 may miss). When the base's window is not that of
    this data (replaced by its outputs on inverted digits), the flag stands with no adoption."""
    from datacenter.state import Snapshot, ZooEntry, state_key
    from mlcore.seeding import rng_for
    from mlcore.shifts import apply_image_shifts, parse_shift_list
    from mlcore.training import predict_proba

    import dataclasses

    state_dir, base = trained
    # recognise_zoo off: a clean sample matching the base's window would be adopted by it first
    alone = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, recognise_zoo=False))
    center = center_over(state_dir, alone, digits, splits)
    root = center.store.load(base["state"])
    weights = np.full(digits.n_classes, 0.2)
    weights[0] = 50.0
    skewed = center.reweighted(base["sha256"], weights)
    rotated = apply_image_shifts(digits.images[splits.reference], parse_shift_list(ROT), rng_for(0, "unfit-test"))
    inverted = apply_image_shifts(digits.images[splits.reference], parse_shift_list([{"name": "invert"}]),
                                  rng_for(0, "unfit-test"))
    zoo = root.zoo + (ZooEntry(skewed, "u00", base["sha256"], None, "none", 0),)
    ids = splits.stream[:settings.edge.random_sample]
    frame = build_sample_frame(ids, digits.images[ids].reshape(len(ids), -1), None, "u01", "none")
    replies = {}
    for case, base_window in (("base fits", root.references[base["sha256"]]),
                              ("base does not", predict_proba(center.model(base["sha256"]), inverted))):
        # the skewed model's own window: its outputs on rotated digits, so a clean sample flags
        references = {base["sha256"]: base_window, skewed: predict_proba(center.model(skewed), rotated)}
        key = state_key(base["state"], "u00", "normal", case)
        center.store.save(key, Snapshot(base["state"], "u00", "normal", skewed, zoo, None, references))
        replies[case] = center.handle("normal", None, frame, {"state": key, "round": "u01"})
    for reply in replies.values():
        assert reply.info["flagged"] and reply.info["source_like"] and reply.info["labels_wanted"] == 0
    assert replies["base fits"].info["decision"] == "adopt" and replies["base fits"].sha256 == base["sha256"]
    assert not replies["base fits"].flag
    assert replies["base does not"].info["decision"] == "harmful" and replies["base does not"].flag


def test_queries_never_touch_the_random_sample_and_accuracy_is_held_out(trained, settings, digits, splits):
    """The random sample holds the uniform (validation) labels and the next reference: no query
    may come from it. The reported accuracy is on evaluation rows, which no round ever draws."""
    state_dir, base = trained
    center = center_over(state_dir, settings, digits, splits)
    out = run_round(center, settings, digits, splits, {"id": "q01", "shift": ROT}, base)
    p = out.predictions
    assert p["queried"].sum() == out.metrics["labels_queried"] > 0
    assert not set(p["id"]) & set(splits.evaluation.tolist())
    labelled_not_queried = p["labelled"] & ~p["queried"]
    assert labelled_not_queried.sum() == out.metrics["labels_uniform"] > 0
    snapshot = StateStore(state_dir).load(out.checkpoint["state"])
    queried = snapshot.data.ids[~np.isin(snapshot.data.ids, snapshot.data.post_ids)]
    assert len(queried) == out.metrics["labels_queried"]
    ids = snapshot.data.post_ids[:3]
    from_random = build_sample_frame(ids, digits.images[ids], digits.labels[ids], "q01", "rotate20")
    with pytest.raises(RequestError, match="random sample"):
        center.handle("retraining", from_random, None, {"state": out.checkpoint["state"], "round": "q01"})


def test_a_new_detector_is_one_registry_entry_and_the_edge_learns_its_label_needs(
        trained, settings, digits, splits, monkeypatch):
    """Adding a detector: a function and an entry in `DETECTORS` (plus its name in the schema).
    The data center runs it and announces in its handshake that it needs labels."""
    import dataclasses

    from datacenter import detectors

    seen = []

    def always(observation):
        seen.append(int((observation.labels >= 0).sum()))
        return detectors.Verdict(True, None, 1.0, "always")

    monkeypatch.setitem(detectors.DETECTORS, "always", detectors.Detector(always, needs_labels=True))
    state_dir, base = trained
    chosen = dataclasses.replace(settings, datacenter=dataclasses.replace(settings.datacenter, detector="always"))
    center = center_over(state_dir, chosen, digits, splits)
    hello = center.handle("handshake", None, None, {"state": base["state"]})
    assert hello.info["labels_check"] == chosen.edge.random_sample > 0
    out = run_round(center, chosen, digits, splits, {"id": "d01", "shift": []}, base)
    assert out.metrics["flagged"] and out.metrics["detector"] == "always"
    assert seen == [chosen.edge.random_sample]  # the edge labelled the random sample because it was asked to
