"""The decision math of issue 10, checked by simulation and by exact numbers.

Harm test: seeded Bernoulli label streams against the Wald error rates and the exact operating
characteristic. Label shift and accuracy estimates: synthetic classifier outputs whose true
weights, posteriors and accuracies are known.
"""

from __future__ import annotations

import math
import numpy as np
import pytest

from datacenter.harm_test import HarmTest
from mlcore.settings import HarmCheckSettings

RUNS = 3000


def simulate(test: HarmTest, accuracy: float, seed: int, runs: int = RUNS) -> tuple[float, float, float]:
    """(share benign, share harmful, mean labels) over seeded label streams."""
    rng = np.random.default_rng(seed)
    decisions = [test.decide(rng.random(test.max_labels) < accuracy) for _ in range(runs)]
    assert all(d.outcome != "more" for d in decisions)
    benign = np.mean([d.outcome == "benign" for d in decisions])
    harmful = np.mean([d.outcome == "harmful" for d in decisions])
    return float(benign), float(harmful), float(np.mean([d.labels for d in decisions]))


def test_harm_test_keeps_its_error_rates_when_truncation_does_not_bind():
    test = HarmTest(0.97, max_labels=2000)
    benign_at_reference, _, _ = simulate(test, 0.97, seed=0)
    _, harmful_at_p0, _ = simulate(test, test.p0, seed=1)
    benign_at_harm, _, _ = simulate(test, 0.97 - test.harm, seed=2)
    assert benign_at_reference >= 1 - test.alpha - 0.01
    assert harmful_at_p0 <= test.alpha + 0.015
    assert benign_at_harm <= test.beta + 0.01


def test_harm_test_defaults_match_the_exact_operating_characteristic():
    test = HarmTest(0.97)
    for accuracy, seed in ((0.97, 3), (0.92, 4), (0.87, 5)):
        benign, _, labels = simulate(test, accuracy, seed)
        exact_benign, exact_labels = test.operating_characteristic(accuracy)
        assert benign == pytest.approx(exact_benign, abs=3 * math.sqrt(0.25 / RUNS))
        assert labels == pytest.approx(exact_labels, abs=0.5)
    # the defaults call a benign round benign, but only at the 40-label cap, and the cap costs
    # the nominal beta: a 10-point drop is called benign about one time in five (see the report)
    benign, _, labels = simulate(test, 0.97, seed=6)
    assert benign >= 1 - test.alpha - 0.01
    assert test.operating_characteristic(0.87)[0] > 10 * test.beta


def test_harm_test_does_not_depend_on_how_the_labels_arrived():
    test = HarmTest(0.97)
    rng = np.random.default_rng(7)
    for _ in range(200):
        stream = rng.random(test.max_labels) < 0.9
        whole = test.decide(stream)
        asked = 0
        step = test.decide(stream[:0])
        while step.outcome == "more":
            asked = step.wanted + int(rng.integers(0, 3))  # the edge may send a few extra
            step = test.decide(stream[:asked])
        assert (step.outcome, step.labels, step.log_ratio) == (whole.outcome, whole.labels, whole.log_ratio)


def test_harm_test_steps_and_limits():
    test = HarmTest(0.97)
    empty = test.decide(np.zeros(0, dtype=bool))
    assert (empty.outcome, empty.labels, empty.wanted) == ("more", 0, 5) and math.isnan(empty.accuracy)
    partial = test.decide(np.ones(7, dtype=bool))
    assert (partial.outcome, partial.labels, partial.accuracy, partial.wanted) == ("more", 5, 1.0, 10)
    # four errors in the first five: 4 log(0.13/0.05) + log(0.87/0.95) = 3.73 > log(0.99/0.05) = 2.99
    early = test.decide(np.array([False, False, False, False, True, True, True]))
    assert early.outcome == "harmful" and early.labels == early.wanted == 5
    assert early.log_ratio == pytest.approx(4 * math.log(0.13 / 0.05) + math.log(0.87 / 0.95))
    # three are not enough (2.69), and later correct labels do not undo a decision
    assert test.decide(np.array([False, False, False, True, True])).outcome == "more"
    # at the cap: 37/40 = 0.925 >= (0.95 + 0.87) / 2 is benign, 36/40 = 0.90 is harmful
    for errors, outcome in ((3, "benign"), (4, "harmful")):
        stream = np.ones(40, dtype=bool)
        stream[np.arange(errors) * 10 + 9] = False  # spread out, so no boundary settles it early
        decision = test.decide(stream)
        assert (decision.outcome, decision.labels) == (outcome, 40)
    assert HarmTest(0.999, tolerance=0.0).p0 == 0.995 and HarmTest(0.05).p1 == 0.01
    assert HarmTest(0.2, tolerance=0.0, harm=0.19).p1 < HarmTest(0.2, tolerance=0.0, harm=0.19).p0
    with pytest.raises(ValueError):
        HarmTest(0.97, tolerance=0.1, harm=0.1)


def test_harm_test_from_settings():
    settings = HarmCheckSettings(batch=10, max_labels=60, tolerance=0.01, harm=0.05, alpha=0.1, beta=0.02)
    test = HarmTest.from_settings(0.9, settings)
    assert (test.reference_accuracy, test.batch, test.max_labels, test.tolerance, test.harm, test.alpha, test.beta) \
        == (0.9, 10, 60, 0.01, 0.05, 0.1, 0.02)
