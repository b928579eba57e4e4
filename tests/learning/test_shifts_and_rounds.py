"""Each shift transform on tiny images, spec validation, schedules and per-round batches."""

import numpy as np
import pytest

from mlcore.rounds import (RoundsError, gradual_ramp, hard_switch, parse_rounds, random_mixture, static_mixture)
from mlcore.shifts import ShiftError, apply_image_shifts, class_weights, parse_shift_list, shift_tag
from mlcore.stream import draw_round_batch


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


def test_round_batches_depend_only_on_seed_and_round(digits, splits):
    specs = parse_rounds({"rounds": [{"id": "r01"}, {"id": "r02", "shift": [{"name": "rotate", "degrees": 15}]}]})
    edited = parse_rounds({"rounds": [{"id": "r01", "shift": [{"name": "invert"}]}, {"id": "r02", "shift": [{"name": "rotate", "degrees": 15}]}]})
    a = draw_round_batch(digits, splits, specs[1], 0, 100)
    b = draw_round_batch(digits, splits, edited[1], 0, 100)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.images, b.images)
    other = draw_round_batch(digits, splits, specs[0], 0, 100)
    assert not np.array_equal(a.ids, other.ids)
    assert np.isin(a.ids, splits.stream).all() and len(set(a.ids.tolist())) == 100
    assert np.array_equal(a.labels, digits.labels[a.ids])


def test_label_prior_and_mix_in_batches(digits, splits):
    spec = parse_rounds({"rounds": [{"id": "r1", "shift": [{"name": "label_prior", "classes": [3, 7]}, {"name": "invert"}], "mix": 0.5}]})[0]
    batch = draw_round_batch(digits, splits, spec, 0, 60)
    assert set(batch.labels.tolist()) == {3, 7}
    assert 0 < batch.shifted.sum() < 60
    assert np.allclose(batch.images[~batch.shifted], digits.images[batch.ids[~batch.shifted]])
    assert np.allclose(batch.images[batch.shifted], 1.0 - digits.images[batch.ids[batch.shifted]])
    with pytest.raises(ValueError, match="exceeds"):
        draw_round_batch(digits, splits, spec, 0, 10_000)
