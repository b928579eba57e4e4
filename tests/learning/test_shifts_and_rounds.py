"""Each shift transform on tiny images, spec validation, schedules, per-round batches and the
held-out evaluation batch (on the real digits: a 539-row stream)."""

import numpy as np
import pytest

from mlcore.evaluation import weighted_accuracy
from mlcore.rounds import (RoundsError, gradual_ramp, hard_switch, load_edge_rounds, load_fleet, parse_fleet, parse_round,
                           parse_rounds, random_mixture, static_mixture)
from mlcore.shifts import ShiftError, apply_image_shifts, class_weights, parse_shift_list, shift_tag
from mlcore.stream import draw_evaluation_batch, draw_round_batch

ROTATE = [{"name": "rotate", "degrees": 15}]


def image_with_bar() -> np.ndarray:
    """A 1x5x5 image: a vertical bar in the middle column."""
    image = np.zeros((1, 5, 5), dtype=np.float32)
    image[0, 1:4, 2] = 1.0
    return image


def shifted(spec, images=None, seed=0):
    return apply_image_shifts(image_with_bar() if images is None else images, parse_shift_list(spec), np.random.default_rng(seed))


def test_rotate_90_turns_a_vertical_bar_horizontal():
    out = shifted([{"name": "rotate", "degrees": 90}])
    expected = np.zeros((5, 5), dtype=np.float32)
    expected[2, 1:4] = 1.0
    assert np.allclose(out[0], expected, atol=1e-6)
    assert np.allclose(shifted([{"name": "rotate", "degrees": 0}]), image_with_bar())


def test_thicker_and_thinner():
    thick = shifted([{"name": "thicker"}])[0]
    assert thick.sum() > image_with_bar().sum() and (thick >= image_with_bar()[0]).all()
    block = np.zeros((1, 5, 5), dtype=np.float32)
    block[0, 1:4, 1:4] = 1.0
    thin = shifted([{"name": "thinner"}], block)[0]
    assert 0 < thin.sum() < block.sum() and (thin <= block[0]).all()


def test_noise_blur_contrast_invert_translate():
    base = image_with_bar()
    noisy = shifted([{"name": "noise", "sigma": 0.1}])
    assert not np.allclose(noisy, base) and noisy.min() >= 0 and noisy.max() <= 1
    assert np.allclose(shifted([{"name": "noise", "sigma": 0.1}]), noisy)  # same rng seed, same noise
    blurred = shifted([{"name": "blur", "sigma": 1.0}])[0]
    assert blurred[2, 2] < 1.0 and blurred[2, 1] > 0 and blurred.sum() == pytest.approx(base.sum(), rel=0.05)
    assert np.allclose(shifted([{"name": "contrast", "factor": 0.5}]), base * 0.5)
    assert np.allclose(shifted([{"name": "invert"}]), 1.0 - base)
    moved = shifted([{"name": "translate", "dx": 1, "dy": 0}])[0]
    assert np.allclose(moved[:, 3], base[0][:, 2]) and moved[:, 2].sum() == 0


def test_composition_applies_in_order():
    once = shifted([{"name": "contrast", "factor": 0.5}, {"name": "invert"}])
    other = shifted([{"name": "invert"}, {"name": "contrast", "factor": 0.5}])
    assert np.allclose(once, 1.0 - 0.5 * image_with_bar())
    assert np.allclose(other, 0.5 * (1.0 - image_with_bar()))
    assert shift_tag(parse_shift_list([{"name": "rotate", "degrees": 15}, {"name": "thicker"}])) == "rotate15+thicker"
    assert shift_tag(parse_shift_list([])) == "none"


@pytest.mark.parametrize("spec, field", [
    ([{"name": "spin"}], r"shift\[0\].name"),
    ([{"name": "rotate"}], r"shift\[0\].degrees: required"),
    ([{"name": "rotate", "degrees": "a lot"}], r"shift\[0\].degrees"),
    ([{"name": "noise", "sigma": 1, "mu": 0}], r"shift\[0\]: unknown parameter"),
    ([{"name": "label_prior"}], r"exactly one of weights"),
    ("rotate", "must be a list"),
])
def test_bad_shift_specs_name_the_field(spec, field):
    with pytest.raises(ShiftError, match=field):
        parse_shift_list(spec)


def test_label_prior_weights():
    weights = class_weights(parse_shift_list([{"name": "label_prior", "classes": [1, 3]}]), 4)
    assert weights.tolist() == [0, 1, 0, 1]
    with pytest.raises(ShiftError, match="one per class"):
        class_weights(parse_shift_list([{"name": "label_prior", "weights": [1, 2]}]), 4)


def test_rounds_validation_names_the_field():
    ok = parse_rounds({"rounds": [{"id": "r01", "shift": []}, {"id": "r02", "shift": [{"name": "invert"}], "mix": 0.5, "size": 50}]})
    assert [r.id for r in ok] == ["r01", "r02"] and ok[1].mix == 0.5 and ok[1].size == 50
    for raw, field in [
        ({"rounds": []}, "non-empty list"),
        ({"rounds": [{"id": "r01"}, {"id": "r01"}]}, r"rounds\[1\].id: duplicate"),
        ({"rounds": [{"id": "r 1"}]}, r"rounds\[0\].id"),
        ({"rounds": [{"id": "r1", "mix": 2}]}, r"rounds\[0\].mix"),
        ({"rounds": [{"id": "r1", "shift": [{"name": "rotate"}]}]}, r"rounds\[0\].shift\[0\].degrees"),
        ({"rounds": [{"id": "r1", "shfit": []}]}, "unknown key"),
    ]:
        with pytest.raises(RoundsError, match=field):
            parse_rounds(raw)


def test_schedules_produce_valid_explicit_rounds():
    rot = [{"name": "rotate", "degrees": 15}]
    inv = [{"name": "invert"}]
    switch = parse_rounds(hard_switch(6, 2, [], inv))
    assert [r.tag for r in switch] == ["none", "none", "invert", "invert", "none", "none"]
    ramp = parse_rounds(gradual_ramp(5, rot, start=1))
    assert [r.mix for r in ramp] == pytest.approx([1.0, 0.25, 0.5, 0.75, 1.0]) and ramp[0].shifts == ()
    static = parse_rounds(static_mixture(3, rot, 0.3))
    assert all(r.mix == 0.3 and r.tag == "rotate15@0.3" for r in static)
    mixed = parse_rounds(random_mixture(8, [[], rot, inv], seed=4))
    assert mixed == parse_rounds(random_mixture(8, [[], rot, inv], seed=4)) and len({r.tag for r in mixed}) > 1


def batches(digits, splits, raw_rounds, size=100):
    return [draw_round_batch(digits, splits, spec, 0, size) for spec in parse_rounds({"rounds": raw_rounds}, size)]


def test_offsets_are_the_sizes_of_the_earlier_rounds():
    specs = parse_rounds({"rounds": [{"id": "a"}, {"id": "b", "size": 30}, {"id": "c"}, {"id": "d"}]}, 100)
    assert [s.offset for s in specs] == [0, 100, 130, 230]
    assert [s.offset for s in parse_rounds({"rounds": [{"id": "a"}, {"id": "b"}]})] == [None, None]
    workflow_document = {"rounds": [{"id": "c", "shift": ROTATE}], "offset": 130}  # what common.smk writes to spec.json
    assert parse_rounds(workflow_document) == [specs[2].__class__("c", parse_shift_list(ROTATE), offset=130)]
    for raw, message in [
        ({"rounds": [{"id": "a"}], "offset": -1}, "offset: must be an integer >= 0"),
        ({"rounds": [{"id": "a"}], "offset": True}, "offset: must be an integer >= 0"),
        ({"rounds": [{"id": "a"}, {"id": "b"}], "offset": 5}, "only a one-round document"),
    ]:
        with pytest.raises(RoundsError, match=message):
            parse_rounds(raw)


def test_the_workflow_and_mlcore_agree_on_offsets(tmp_path):
    """common.smk expands the fleet without mlcore; both must give every edge's round of config/rounds.yaml
    the same shift and start."""
    from pathlib import Path

    import yaml
    rounds_file = Path(__file__).resolve().parents[2] / "config" / "rounds.yaml"
    raw = yaml.safe_load(rounds_file.read_text())
    edges = raw.get("edges", ["edge"])
    raw["rounds"][3].setdefault("per_edge", {}).setdefault(edges[-1], {})["size"] = 57  # moves that edge's later rounds only
    (tmp_path / "rounds.yaml").write_text(yaml.safe_dump(raw))
    expected = {}
    for edge in edges:  # the loop of common.smk's load_rounds
        expected[edge], offset = [], 0
        for entry in raw["rounds"]:
            if edge not in entry.get("only", (edge,)):
                continue
            resolved = {k: v for k, v in entry.items() if k not in ("only", "per_edge")}
            resolved.update(entry.get("per_edge", {}).get(edge, {}))
            expected[edge].append((entry["id"], len(resolved.get("shift", [])), offset))
            offset += resolved.get("size", 200)
    fleet = load_fleet(tmp_path / "rounds.yaml", 200)
    assert {edge: [(s.id, len(s.shifts), s.offset) for s in specs] for edge, specs in fleet.items()} == expected
    assert fleet[edges[-1]][4].offset - fleet[edges[-1]][3].offset == 57
    assert fleet[edges[0]][4].offset - fleet[edges[0]][3].offset == 200


def test_rounds_are_disjoint_while_the_stream_lasts_then_wrap(digits, splits):
    n = len(splits.stream)  # 539
    rounds = batches(digits, splits, [{"id": f"r{i:02d}", "shift": ROTATE if i % 2 else []} for i in range(12)])
    first_pass = n // 100  # rounds 0..4 fit in one pass (500 rows)
    seen = np.concatenate([b.ids for b in rounds[:first_pass]])
    assert len(np.unique(seen)) == len(seen) == 500 and np.isin(seen, splits.stream).all()
    for b in rounds:
        assert len(np.unique(b.ids)) == 100  # never a row twice in one batch, even across the wrap
    wrapping = rounds[first_pass]  # rows 500..538 then 0..60 of the order
    assert len(np.intersect1d(wrapping.ids, seen)) == 100 - (n - 500)
    # Every row is used once per pass: 1200 rows over a 539-row stream, each row 2 or 3 times.
    counts = np.unique(np.concatenate([b.ids for b in rounds]), return_counts=True)[1]
    assert len(counts) == n and set(counts.tolist()) <= {2, 3}
    assert np.array_equal(rounds[0].labels, digits.labels[rounds[0].ids])


def test_editing_one_round_leaves_the_others_rows_unchanged(digits, splits):
    scenario = [{"id": "r01"}, {"id": "r02", "shift": ROTATE}, {"id": "r03"}]
    edited = [{"id": "r01", "shift": [{"name": "invert"}], "mix": 0.5}, {"id": "r02", "shift": ROTATE},
              {"id": "r03", "shift": [{"name": "label_prior", "classes": [3, 7]}]}]
    a, b = batches(digits, splits, scenario), batches(digits, splits, edited)
    assert np.array_equal(a[1].ids, b[1].ids) and np.array_equal(a[1].images, b[1].images)
    assert np.array_equal(a[0].ids, b[0].ids) and not np.array_equal(a[0].images, b[0].images)  # same rows, new shift
    resized = batches(digits, splits, [{"id": "r01", "size": 40}, *scenario[1:]])
    assert not np.array_equal(resized[1].ids, a[1].ids)  # a size change moves the later rounds: a new offset


def test_a_round_on_its_own_starts_at_the_beginning_of_the_order(digits, splits):
    alone = draw_round_batch(digits, splits, parse_round({"id": "r01"}), 0, 100)
    assert np.array_equal(alone.ids, batches(digits, splits, [{"id": "r01"}])[0].ids)
    other_seed = draw_round_batch(digits, splits, parse_round({"id": "r01", "seed": 5}), 0, 100)
    assert not np.array_equal(alone.ids, other_seed.ids)


def test_label_prior_and_mix_in_batches(digits, splits):
    spec = parse_rounds({"rounds": [{"id": "r1", "shift": [{"name": "label_prior", "classes": [3, 7]}, {"name": "invert"}], "mix": 0.5}]})[0]
    batch = draw_round_batch(digits, splits, spec, 0, 60)
    assert set(batch.labels.tolist()) == {3, 7} and len(np.unique(batch.ids)) == 60
    assert 0 < batch.shifted.sum() < 60
    assert np.allclose(batch.images[~batch.shifted], digits.images[batch.ids[~batch.shifted]])
    assert np.allclose(batch.images[batch.shifted], 1.0 - digits.images[batch.ids[batch.shifted]])
    with pytest.raises(ValueError, match="exceeds"):
        draw_round_batch(digits, splits, spec, 0, 10_000)


def test_label_prior_weights_set_the_class_mix_of_a_round(digits, splits):
    weights = [4, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    later = parse_rounds({"rounds": [{"id": "r01"}, {"id": "r02", "shift": [{"name": "label_prior", "weights": weights}]}]}, 200)[1]
    labels = draw_round_batch(digits, splits, later, 0, 200).labels
    share = np.mean(labels == 0)  # expected 4 / 13 = 0.31 (the stream's classes are near balanced); 1/10 without the prior
    assert 0.2 < share < 0.42
    assert len(np.unique(labels)) == 10


def test_evaluation_batch_is_held_out_and_carries_the_shift(digits, splits):
    spec = parse_round({"id": "r04", "shift": [{"name": "invert"}], "mix": 0.5})
    batch = draw_evaluation_batch(digits, splits, spec, 0, 150)
    assert len(batch.ids) == 150 and np.isin(batch.ids, splits.evaluation).all()
    used = np.concatenate([splits.source_train, splits.reference, splits.stream])
    assert not np.isin(batch.ids, used).any()
    assert 0 < batch.shifted.sum() < 150 and np.all(batch.weights == 1.0)
    assert np.allclose(batch.images[batch.shifted], 1.0 - digits.images[batch.ids[batch.shifted]])
    assert np.allclose(batch.images[~batch.shifted], digits.images[batch.ids[~batch.shifted]])
    again = draw_evaluation_batch(digits, splits, spec, 0, 150)
    assert np.array_equal(again.ids, batch.ids) and np.array_equal(again.images, batch.images)
    assert not np.array_equal(draw_evaluation_batch(digits, splits, parse_round({"id": "r05"}), 0, 150).ids, batch.ids)
    whole = draw_evaluation_batch(digits, splits, spec, 0, 10_000)  # the split is smaller: all of it
    assert np.array_equal(whole.ids, splits.evaluation)


def test_evaluation_weights_reproduce_a_label_prior(digits, splits):
    weights = [3, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    spec = parse_round({"id": "r06", "shift": [{"name": "label_prior", "weights": weights}]})
    batch = draw_evaluation_batch(digits, splits, spec, 0, 10_000)
    assert batch.weights.mean() == pytest.approx(1.0) and batch.weights.dtype == np.float64
    assert np.all(batch.weights[batch.labels == 1] == 0) and np.all(batch.shifted)
    assert np.allclose(batch.images, digits.images[batch.ids])  # a label prior moves no pixel
    # Weighted class shares are the prior applied to the split's own class counts.
    counts = np.bincount(batch.labels, minlength=10) * np.asarray(weights, dtype=float)
    shares = np.bincount(batch.labels, weights=batch.weights, minlength=10) / batch.weights.sum()
    assert np.allclose(shares, counts / counts.sum())
    # A predictor right on class 0 only: weighted accuracy = the prior's share of class 0.
    probabilities = np.eye(10)[np.zeros(len(batch.labels), dtype=int)]
    assert weighted_accuracy(probabilities, batch.labels, batch.weights) == pytest.approx(shares[0])
    assert weighted_accuracy(probabilities, batch.labels, np.ones(len(batch.labels))) == pytest.approx(np.mean(batch.labels == 0))
    with pytest.raises(ValueError, match="one weight"):
        weighted_accuracy(probabilities, batch.labels, batch.weights[:-1])


FLEET = {
    "edges": ["a", "b", "c"],
    "rounds": [
        {"id": "r01"},
        {"id": "r02", "shift": ROTATE, "per_edge": {"c": {"shift": [{"name": "invert"}], "mix": 0.5}}},
        {"id": "r03", "shift": ROTATE, "only": ["a", "c"], "per_edge": {"c": {"size": 30}}},
        {"id": "r04"},
    ],
}


def test_a_fleet_expands_into_each_edges_rounds():
    fleet = parse_fleet(FLEET, 100)
    assert list(fleet) == ["a", "b", "c"]
    assert [(s.id, s.tag, s.offset) for s in fleet["a"]] == [("r01", "none", 0), ("r02", "rotate15", 100),
                                                             ("r03", "rotate15", 200), ("r04", "none", 300)]
    assert [(s.id, s.tag, s.offset) for s in fleet["b"]] == [("r01", "none", 0), ("r02", "rotate15", 100), ("r04", "none", 200)]
    assert [(s.id, s.tag, s.offset, s.size) for s in fleet["c"]] == [
        ("r01", "none", 0, None), ("r02", "invert@0.5", 100, None), ("r03", "rotate15", 200, 30), ("r04", "none", 230, None)]
    assert {s.edge for specs in fleet.values() for s in specs} == {"a", "b", "c"}
    one_edge = parse_fleet({"rounds": [{"id": "r01"}, {"id": "r02", "shift": ROTATE}]}, 100)
    assert list(one_edge) == ["edge"] and [s.offset for s in one_edge["edge"]] == [0, 100]
    with pytest.raises(RoundsError, match="parse_fleet"):
        parse_rounds(FLEET)


@pytest.mark.parametrize("raw, message", [
    ({"edges": ["a", "b/c"], "rounds": [{"id": "r01"}]}, r"edges\[1\]"),
    ({"edges": ["a", "a"], "rounds": [{"id": "r01"}]}, "non-unique"),
    ({"edges": [], "rounds": [{"id": "r01"}]}, "edges"),
    ({"edges": ["a"], "rounds": [{"id": "r01", "per_edge": {"z": {"mix": 0.5}}}]}, r"rounds\[0\].per_edge: unknown edge 'z'"),
    ({"edges": ["a"], "rounds": [{"id": "r01", "only": ["z"]}]}, r"rounds\[0\].only: unknown edge 'z'"),
    ({"edges": ["a", "b"], "rounds": [{"id": "r01", "only": ["a"], "per_edge": {"b": {}}}]}, "not in this round's `only`"),
    ({"edges": ["a", "b"], "rounds": [{"id": "r01", "only": ["a"]}]}, "edge 'b' has no round"),
    ({"rounds": [{"id": "r01", "only": ["a"]}]}, "only a fleet names edges"),
    ({"edges": ["a"], "rounds": [{"id": "r01", "per_edge": {"a": {"seed": 3}}}]}, "seed"),
    ({"edges": ["a"], "rounds": [{"id": "r01"}, {"id": "r01"}]}, "duplicate id"),
])
def test_a_bad_fleet_names_the_field(raw, message):
    with pytest.raises(RoundsError, match=message):
        parse_fleet(raw)


def test_the_edge_reads_its_own_rounds(tmp_path):
    import yaml
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
    assert [s.id for s in load_edge_rounds(tmp_path / "fleet.yaml", "b", 100)] == ["r01", "r02", "r04"]
    with pytest.raises(RoundsError, match="edge 'z' is not in"):
        load_edge_rounds(tmp_path / "fleet.yaml", "z")
    (tmp_path / "spec.json").write_text('{"rounds": [{"id": "r02"}], "offset": 100, "edge": "b"}')  # what the workflow writes
    assert [(s.id, s.offset, s.edge) for s in load_edge_rounds(tmp_path / "spec.json", "b")] == [("r02", 100, "b")]
    with pytest.raises(RoundsError, match="edge 'b'"):
        load_edge_rounds(tmp_path / "spec.json", "a")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({"rounds": [{"id": "r01"}, {"id": "r02"}]}))
    assert [(s.offset, s.edge) for s in load_edge_rounds(tmp_path / "plain.yaml", "x", 100)] == [(0, "x"), (100, "x")]


def test_edges_draw_their_own_batches(digits, splits):
    fleet = parse_fleet(FLEET, 100)
    a, b = (draw_round_batch(digits, splits, fleet[edge][0], 0, 100) for edge in ("a", "b"))
    assert not np.array_equal(np.sort(a.ids), np.sort(b.ids))
    assert len(np.intersect1d(a.ids, b.ids)) < 60  # two independent orders: about 100 * 100 / 539 rows in common
    again = draw_round_batch(digits, splits, parse_fleet(FLEET, 100)["a"][0], 0, 100)
    assert np.array_equal(a.ids, again.ids)  # deterministic
    # Within an edge the rounds stay disjoint, as for one edge.
    rounds = [draw_round_batch(digits, splits, spec, 0, 100).ids for spec in fleet["a"][:4]]
    assert len(np.unique(np.concatenate(rounds))) == 400
    # The one-edge scenario's edge keeps the seed's own order, whatever it is called in spec.edge.
    plain = parse_rounds({"rounds": [{"id": "r01"}]}, 100)[0]
    named = parse_fleet({"rounds": [{"id": "r01"}]}, 100)["edge"][0]
    assert np.array_equal(draw_round_batch(digits, splits, plain, 0, 100).ids, draw_round_batch(digits, splits, named, 0, 100).ids)
    # An edge's rows depend on its id only: adding an edge or editing another changes nothing.
    alone = parse_fleet({"edges": ["b"], "rounds": [{"id": "r01", "per_edge": {"b": {"shift": ROTATE}}}]}, 100)["b"][0]
    assert np.array_equal(draw_round_batch(digits, splits, alone, 0, 100).ids, b.ids)
    # The same mix on two edges shifts different rows' worth of coins; their evaluation rows are shared.
    half = {"edges": ["a", "b"], "rounds": [{"id": "r01", "shift": [{"name": "invert"}], "mix": 0.5}]}
    ha, hb = (draw_round_batch(digits, splits, parse_fleet(half, 100)[edge][0], 0, 100) for edge in ("a", "b"))
    assert not np.array_equal(ha.shifted, hb.shifted)
    ea, eb = (draw_evaluation_batch(digits, splits, parse_fleet(half, 100)[edge][0], 0, 150) for edge in ("a", "b"))
    assert np.array_equal(ea.ids, eb.ids) and np.array_equal(ea.images, eb.images)
