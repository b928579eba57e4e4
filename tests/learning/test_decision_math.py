"""The decision math of issue 10, checked by simulation and by exact numbers.

Harm test: seeded Bernoulli label streams against the Wald error rates and the exact operating
characteristic. Label shift and accuracy estimates: synthetic classifier outputs whose true
weights, posteriors and accuracies are known. k-center: embeddings that coincide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from datacenter.estimates import SCORES, accuracy_estimates, atc_estimate, atc_threshold
from datacenter.check import harm_decision, looks_hurt
from datacenter.harm_test import HarmDecision, HarmTest
from datacenter.label_shift import bbse_weights, confusion_matrix, explains_shift, prior_log_shift, weighted_ks_test
from edge.strategies import k_center_greedy, select_queries
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
    # the defaults call a benign round benign only at the 40-label cap, and only if 38 of 40 are
    # right (truncation at p0): 88% of unhurt rounds, while a 10-point drop passes 9% of the time,
    # a 15-point drop 2% (a midpoint rule let the 10-point drop through one time in five)
    benign, _, labels = simulate(test, 0.97, seed=6)
    assert 0.85 <= benign <= 0.92 and 38 <= labels < 40  # curtailed: a round that cannot pass stops early
    assert 0.05 < test.operating_characteristic(0.87)[0] < 0.12
    assert test.operating_characteristic(0.82)[0] < 0.025


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
    # three are not enough for Wald's limit (2.69) but doom the truncated test (37 of 40 right
    # at best): curtailed; two are neither, and later correct labels do not undo a decision
    doomed = test.decide(np.array([False, False, False, True, True]))
    assert (doomed.outcome, doomed.labels) == ("harmful", 5) and doomed.log_ratio < test.upper
    assert test.decide(np.array([False, False, True, True, True])).outcome == "more"
    # at the cap 38/40 = 0.95 >= p0 is benign; a third error dooms it at once (37/40 < p0 at best)
    for errors, outcome, labels in ((2, "benign", 40), (3, "harmful", 30)):
        stream = np.ones(40, dtype=bool)
        stream[np.arange(errors) * 10 + 9] = False  # spread out, so no Wald limit settles it early
        decision = test.decide(stream)
        assert (decision.outcome, decision.labels) == (outcome, labels)
    assert HarmTest(0.999, tolerance=0.0).p0 == 0.995 and HarmTest(0.05).p1 == 0.01
    assert HarmTest(0.2, tolerance=0.0, harm=0.19).p1 < HarmTest(0.2, tolerance=0.0, harm=0.19).p0
    with pytest.raises(ValueError):
        HarmTest(0.97, tolerance=0.1, harm=0.1)


def uncurtailed(test: HarmTest, correct: np.ndarray) -> tuple[str, int]:
    """The truncated SPRT without curtailment, written out plainly: (outcome, labels used)."""
    for seen in test.boundaries():
        hits = int(correct[:seen].sum())
        ratio = hits * math.log(test.p1 / test.p0) + (seen - hits) * math.log((1 - test.p1) / (1 - test.p0))
        if ratio >= test.upper:
            return "harmful", int(seen)
        if ratio <= test.lower:
            return "benign", int(seen)
    return ("benign" if hits / seen >= test.truncation_accuracy else "harmful"), int(seen)


@pytest.mark.parametrize("reference, max_labels", [(0.97, 40), (0.99, 40), (0.9, 60), (0.97, 400)])
def test_curtailment_changes_no_decision_and_only_saves_labels(reference, max_labels):
    test = HarmTest(reference, max_labels=max_labels)
    rng = np.random.default_rng(11)
    saved = 0
    for accuracy in (reference, reference - 0.03, reference - 0.06, reference - 0.12):
        for _ in range(300):
            stream = rng.random(max_labels) < accuracy
            decision = test.decide(stream)
            outcome, labels = uncurtailed(test, stream)
            assert decision.outcome == outcome and decision.labels <= labels
            saved += decision.labels < labels
    assert saved > 0  # some calls did stop before the plain test would have


def test_harm_test_from_settings():
    settings = HarmCheckSettings(batch=10, max_labels=60, tolerance=0.01, harm=0.05, alpha=0.1, beta=0.02)
    test = HarmTest.from_settings(0.9, settings)
    assert (test.reference_accuracy, test.batch, test.max_labels, test.tolerance, test.harm, test.alpha, test.beta) \
        == (0.9, 10, 60, 0.01, 0.05, 0.1, 0.02)


# label shift ------------------------------------------------------------------------------

CLASSES = 10


def test_a_benign_call_is_disputed_by_a_label_free_drop_the_labels_do_not_contradict():
    """The seed-1 contrast round of benchmarks/results/learning.md: reference 0.972, DoC 0.899,
    39 of 40 right. The harm test alone adopts it; the label-free estimate disputes that, unless
    the labels make the estimate unlikely, or the estimate is within `label_free_drop` of the
    reference."""
    test = HarmTest(reference_accuracy=0.972)
    right = lambda k: test.decide(np.arange(40) < k)  # noqa: E731 - k of 40 right
    assert right(39).outcome == "benign"
    assert looks_hurt(0.899, 0.972, right(39), drop=0.04)
    assert not looks_hurt(0.899, 0.972, right(40), drop=0.04)  # 40 of 40 at 0.899: p = 0.014, contradicted
    assert not looks_hurt(0.80, 0.972, right(39), drop=0.04)  # an estimate the labels refute
    assert not looks_hurt(0.94, 0.972, right(39), drop=0.04)  # within the drop: the labels decide alone
    assert not looks_hurt(0.50, 0.972, HarmDecision("benign", 0, math.nan, 0.0, 0), drop=0.04)


def test_a_disputed_call_runs_on_to_twice_the_labels_and_they_decide():
    """`check.harm_decision` on seeded streams of 80 labels, reference 0.972, DoC estimate 0.90.

    Undisputed, it is the harm test's own decision. Disputed, it asks for the next batch while
    the labels allow it, and decides by the same rules at up to 80 labels. Against overruling a
    disputed call outright (the rule before), it adopts a truly unhurt round twice as often (0.67
    against 0.33 here: the overrule adopted only where all 40 labels were right), at the price of
    adopting a 5-point drop 7.5% of the time instead of 2.9% (the harm test alone: 16%)."""
    test, settings = HarmTest(reference_accuracy=0.972), HarmCheckSettings()
    assert settings.disputed_labels == 80
    rng = np.random.default_rng(10)

    def shares(truth: float, runs: int = 2000) -> tuple[float, float, float]:
        """(adopted, adopted by the overrule, disputed) shares of `runs` streams at accuracy `truth`."""
        adopted = overruled = disputed = 0
        for stream in rng.random((runs, 80)) < truth:
            decision, was_disputed = harm_decision(test, stream, 0.90, settings, 100)
            alone = test.decide(stream)
            assert decision.outcome != "more" and decision.labels <= 80
            if not was_disputed:
                assert decision == alone
            else:
                assert alone.outcome == "benign" and decision.labels > 40
                assert harm_decision(test, stream[:decision.labels - 1], 0.90, settings, 100)[0].outcome == "more"
            adopted += decision.outcome == "benign"
            overruled += alone.outcome == "benign" and not looks_hurt(0.90, 0.972, alone, settings.label_free_drop)
            disputed += was_disputed
        return adopted / runs, overruled / runs, disputed / runs

    # a random sample of fewer rows caps the run-on; one of max_labels rows leaves the labels' call
    stream = np.arange(80) >= 1  # 1 wrong of 40, then all right: disputed at DoC 0.90
    assert harm_decision(test, stream, 0.90, settings, 100)[0].labels == 65  # Wald's benign limit
    assert harm_decision(test, stream, 0.90, settings, 60)[0].labels == 60
    assert harm_decision(test, stream, 0.90, settings, 40) == (test.decide(stream), True)

    unhurt, hurt = shares(0.972), shares(0.92)
    assert unhurt[2] > 0.3 and hurt[2] > 0.08  # the dispute happens, on both
    assert unhurt[0] > 0.55 and unhurt[0] > 1.6 * unhurt[1]
    assert hurt[0] < 0.11 < stats.binom.sf(38, 40, 0.92)  # the labels alone: 39 of 40 adopt, ~0.16


def classifier_outputs(labels: np.ndarray, rng: np.random.Generator, peak: float = 6.0) -> np.ndarray:
    """Softmax-like rows of a 10-class classifier that mostly gets y right and confuses y with y+1."""
    concentration = np.ones((len(labels), CLASSES))
    concentration[np.arange(len(labels)), labels] += peak
    concentration[np.arange(len(labels)), (labels + 1) % CLASSES] += peak / 3
    draws = rng.gamma(concentration)  # a Dirichlet draw per row, vectorised
    return draws / draws.sum(axis=1, keepdims=True)


SKEWED = np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])


def test_bbse_recovers_the_class_weights():
    rng = np.random.default_rng(10)
    source_labels = rng.integers(0, CLASSES, size=20000)
    source = classifier_outputs(source_labels, rng)
    confusion = confusion_matrix(source.argmax(1), source_labels, CLASSES)
    assert confusion.sum() == pytest.approx(1.0) and np.trace(confusion) < 0.95  # real confusions
    target_labels = rng.choice(CLASSES, size=20000, p=SKEWED)
    weights = bbse_weights(confusion, classifier_outputs(target_labels, rng).argmax(1), CLASSES)
    true_weights = SKEWED / np.bincount(source_labels, minlength=CLASSES) * len(source_labels)
    assert weights @ confusion.sum(axis=0) == pytest.approx(1.0)
    assert np.abs(weights - true_weights).max() < 0.15
    # no shift: weights near 1
    same = bbse_weights(confusion, classifier_outputs(rng.integers(0, CLASSES, 20000), rng).argmax(1), CLASSES)
    assert np.abs(same - 1).max() < 0.1


def shifted_pair(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A uniform-prior labelled reference and a SKEWED-prior target sample, with the true row weights."""
    reference_labels = rng.integers(0, CLASSES, size=n)
    target_labels = rng.choice(CLASSES, size=m, p=SKEWED)
    row_weights = (SKEWED * CLASSES)[reference_labels]
    return (classifier_outputs(reference_labels, rng), reference_labels, row_weights,
            classifier_outputs(target_labels, rng))


def test_weighted_ks_is_calibrated_under_label_shift_and_sees_real_change():
    rng = np.random.default_rng(11)
    alpha, trials = 0.05, 300
    weighted_rejections = plain_rejections = 0
    for _ in range(trials):
        reference, _, row_weights, sample = shifted_pair(rng, 600, 200)
        weighted_rejections += weighted_ks_test(reference, row_weights, sample, alpha)[0]
        plain_rejections += weighted_ks_test(reference, np.ones(len(reference)), sample, alpha)[0]
    assert 0.01 <= weighted_rejections / trials <= alpha + 0.03  # Bonferroni over 10 outputs is conservative
    assert plain_rejections / trials > 0.9  # the unweighted test flags the label shift
    # a real change (a less sure classifier) is still flagged with the right weights
    reference, _, row_weights, _ = shifted_pair(rng, 600, 200)
    blurred = classifier_outputs(rng.choice(CLASSES, size=200, p=SKEWED), rng, peak=1.5)
    drift, p_value, statistic = weighted_ks_test(reference, row_weights, blurred, alpha)
    assert drift and p_value < 1e-3 and statistic > 0.2


def test_weighted_ks_with_equal_weights_is_the_plain_ks_test():
    rng = np.random.default_rng(12)
    reference, sample = rng.normal(size=(300, 1)), rng.normal(0.2, size=(120, 1))
    _, p_value, statistic = weighted_ks_test(reference, np.full(300, 3.0), sample, 0.05)
    plain = stats.ks_2samp(reference[:, 0], sample[:, 0])
    assert statistic == pytest.approx(plain.statistic)
    assert p_value == pytest.approx(stats.kstwobign.sf(plain.statistic * math.sqrt(300 * 120 / 420)))
    assert p_value == pytest.approx(plain.pvalue, rel=0.15)  # scipy's finite-n tail is close


def test_label_shift_explains_a_prior_change_but_not_a_real_one():
    rng = np.random.default_rng(13)
    reference, reference_labels, _, sample = shifted_pair(rng, 2000, 300)
    confusion = confusion_matrix(reference.argmax(1), reference_labels, CLASSES)
    weights = bbse_weights(confusion, sample.argmax(1), CLASSES)
    assert explains_shift(reference, reference_labels, weights, sample, 0.01)
    blurred = classifier_outputs(rng.choice(CLASSES, size=300, p=SKEWED), rng, peak=1.5)
    blurred_weights = bbse_weights(confusion, blurred.argmax(1), CLASSES)
    assert not explains_shift(reference, reference_labels, blurred_weights, blurred, 0.01)
    same = classifier_outputs(rng.integers(0, CLASSES, 300), rng)
    assert not explains_shift(reference, reference_labels, np.ones(CLASSES), same, 0.01)  # nothing to explain


def test_prior_log_shift_gives_the_bayes_adjusted_posterior():
    rng = np.random.default_rng(14)
    logits = rng.normal(scale=3.0, size=(50, CLASSES))
    weights = SKEWED * CLASSES
    weights[3] = 0.0
    adjusted = logits + prior_log_shift(weights)
    posterior = np.exp(adjusted - adjusted.max(1, keepdims=True))
    posterior /= posterior.sum(1, keepdims=True)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    floored = np.maximum(weights, 1e-3)
    expected = p * floored / (p * floored).sum(1, keepdims=True)
    np.testing.assert_allclose(posterior, expected, rtol=1e-9)
    assert prior_log_shift(weights)[3] == pytest.approx(math.log(1e-3))


# label-free accuracy estimates ---------------------------------------------------------------

def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(1) == labels))


def test_accuracy_estimates_track_the_source_and_a_confidence_drop():
    rng = np.random.default_rng(20)
    source_labels = rng.integers(0, CLASSES, size=3000)
    source = classifier_outputs(source_labels, rng)
    for score in SCORES:
        threshold = atc_threshold(source, source_labels, score=score)
        assert atc_estimate(threshold, source, score=score) == pytest.approx(accuracy(source, source_labels),
                                                                                abs=1e-3)
    fresh_labels = rng.integers(0, CLASSES, size=3000)
    fresh = classifier_outputs(fresh_labels, rng)
    on_fresh = accuracy_estimates(source, source_labels, fresh)
    assert set(on_fresh) == {"atc", "doc"}
    for value in on_fresh.values():
        assert value == pytest.approx(accuracy(fresh, fresh_labels), abs=0.02)
    # a less sure classifier is also less accurate: both estimates fall; ATC lands near the truth,
    # DoC (mean confidence falls less than accuracy here) only part of the way
    blurred_labels = rng.integers(0, CLASSES, size=3000)
    blurred = classifier_outputs(blurred_labels, rng, peak=2.5)
    truth = accuracy(blurred, blurred_labels)
    on_blurred = accuracy_estimates(source, source_labels, blurred)
    for value in on_blurred.values():
        assert value < min(on_fresh.values()) - 0.05
    assert on_blurred["atc"] == pytest.approx(truth, abs=0.05)


def test_accuracy_estimates_are_blind_to_a_confident_and_wrong_model():
    rng = np.random.default_rng(21)
    source_labels = rng.integers(0, CLASSES, size=3000)
    source = classifier_outputs(source_labels, rng)
    labels = rng.integers(0, CLASSES, size=3000)
    inverted = classifier_outputs((labels + 5) % CLASSES, rng)  # as sure as ever, never right
    assert accuracy(inverted, labels) < 0.01
    for value in accuracy_estimates(source, source_labels, inverted).values():
        assert value > 0.8  # the documented blind spot: the harm test's labels must decide


# k-center with coinciding embeddings ------------------------------------------------------------

def test_k_center_never_returns_a_row_twice():
    same = np.zeros((30, 4))  # blank images: every embedding coincides
    for labelled in (np.zeros(0, dtype=np.int64), np.array([2, 7])):
        candidates = np.setdiff1d(np.arange(30), labelled)
        chosen = k_center_greedy(same, candidates, labelled, 10, np.random.default_rng(0))
        assert len(chosen) == 10 and len(set(chosen.tolist())) == 10 and set(chosen) <= set(candidates)
        again = k_center_greedy(same, candidates, labelled, 10, np.random.default_rng(0))
        np.testing.assert_array_equal(chosen, again)
    # three distinct points, ten copies each: one of each first, then distinct copies
    clusters = np.repeat(np.eye(3, 4) * 5, 10, axis=0)
    chosen = k_center_greedy(clusters, np.arange(30), np.zeros(0, dtype=np.int64), 8, np.random.default_rng(1))
    assert len(set(chosen.tolist())) == 8
    assert {int(c) // 10 for c in chosen[:3]} == {0, 1, 2}
    # asking for more rows than there are gives every candidate once
    everything = select_queries("kcenter", np.full((12, 3), 1 / 3), 20, np.random.default_rng(2),
                                embeddings=np.zeros((12, 4)))
    assert sorted(everything.tolist()) == list(range(12))
