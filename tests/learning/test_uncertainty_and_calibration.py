"""Hand-computed ECE/MCE, uncertainty rankings, and query selection by top score."""

import math

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from datacenter.detectors import calibration_errors, ece_rule, entropy_rule, mean_entropy
from edge.strategies import (entropy_scores, least_confidence_scores, margin_scores, select_queries)

# rows A, B, C, D with distinct rankings under the three scores
PROBS = np.array([
    [0.5, 0.5, 0.0],    # A: margin 0, entropy ln 2, least-confidence 0.5
    [0.6, 0.2, 0.2],    # B: margin 0.4, entropy 0.950, lc 0.4
    [0.9, 0.05, 0.05],  # C: margin 0.85, entropy 0.394, lc 0.1
    [0.4, 0.35, 0.25],  # D: margin 0.05, entropy 1.081, lc 0.6
])
A, B, C, D = range(4)


def test_calibration_errors_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.3, 0.4, 0.3]])
    labels = np.array([0, 1, 0, 1, 0])
    # 2 bins: (0, .5] holds the 0.4 row (wrong): gap 0.4, weight 1/5;
    # (.5, 1] holds .9 (right) .8 (wrong) .6 (right) .7 (right): accuracy .75 = confidence .75
    ece, mce = calibration_errors(probs, labels, bins=2)
    assert ece == pytest.approx(0.08)
    assert mce == pytest.approx(0.4)


def test_ece_rule_needs_labels_and_flags_overconfidence():
    confident_wrong = np.tile([0.95, 0.05], (20, 1))
    assert ece_rule(confident_wrong, np.ones(20, dtype=int), threshold=0.15).drift
    assert not ece_rule(confident_wrong, np.zeros(20, dtype=int), threshold=0.15).drift
    with pytest.raises(ValueError, match="needs labelled rows"):
        ece_rule(confident_wrong, -np.ones(20, dtype=int), threshold=0.15)


def test_mean_entropy_by_hand():
    assert mean_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(math.log(2) / 2)
    assert entropy_rule(np.array([[0.5, 0.5]]), threshold=0.5).drift
    assert not entropy_rule(np.array([[0.99, 0.01]]), threshold=0.5).drift


def test_scores_by_hand():
    assert entropy_scores(PROBS)[A] == pytest.approx(math.log(2))
    assert entropy_scores(PROBS)[D] == pytest.approx(-(0.4 * math.log(0.4) + 0.35 * math.log(0.35) + 0.25 * math.log(0.25)))
    assert margin_scores(PROBS) == pytest.approx([0.0, -0.4, -0.85, -0.05])
    assert least_confidence_scores(PROBS) == pytest.approx([0.5, 0.4, 0.1, 0.6])


@pytest.mark.parametrize("strategy, expected", [
    ("entropy", [D, B, A, C]),
    ("margin", [A, D, B, C]),
    ("least_confidence", [D, A, B, C]),
])
def test_rankings(strategy, expected):
    rng = np.random.default_rng(0)
    for k in range(1, 5):
        chosen = select_queries(strategy, PROBS, k, rng)
        assert chosen.tolist() == expected[:k]
    # already labelled rows are never chosen again
    assert select_queries(strategy, PROBS, 2, rng, labelled=np.array([expected[0]])).tolist() == expected[1:3]


@hsettings(max_examples=40, deadline=None)
@given(st.integers(5, 60), st.integers(1, 10), st.integers(0, 2**31 - 1),
       st.sampled_from(["entropy", "margin", "least_confidence"]))
def test_selected_rows_are_the_top_scores(n, k, seed, strategy):
    """The ancestor scored a shuffled loader: here the chosen rows must carry the top scores."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=n)
    scores = {"entropy": entropy_scores, "margin": margin_scores, "least_confidence": least_confidence_scores}[strategy](probs)
    chosen = select_queries(strategy, probs, k, rng)
    others = np.setdiff1d(np.arange(n), chosen)
    assert len(chosen) == min(k, n) and len(set(chosen.tolist())) == len(chosen)
    if len(others):
        assert scores[chosen].min() >= scores[others].max()
    # permuting the rows permutes the choice: scores follow their rows
    perm = rng.permutation(n)
    chosen_perm = select_queries(strategy, probs[perm], k, rng)
    assert sorted(scores[perm][chosen_perm].tolist()) == pytest.approx(sorted(scores[chosen].tolist()))


@pytest.mark.parametrize("strategy", ["uniform", "kcenter", "badge"])
def test_other_strategies_pick_distinct_unlabelled_rows(strategy):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=50)
    embeddings = rng.normal(size=(50, 8))
    labelled = np.array([0, 1, 2])
    chosen = select_queries(strategy, probs, 10, np.random.default_rng(3), labelled=labelled, embeddings=embeddings)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert not np.isin(chosen, labelled).any()
    again = select_queries(strategy, probs, 10, np.random.default_rng(3), labelled=labelled, embeddings=embeddings)
    assert chosen.tolist() == again.tolist()


def test_kcenter_covers_clusters():
    """Four tight clusters, 4 picks: k-center takes one row from each; uniform would often not."""
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    points = np.repeat(centres, 10, axis=0) + np.random.default_rng(0).normal(scale=0.1, size=(40, 2))
    chosen = select_queries("kcenter", np.full((40, 2), 0.5), 4, np.random.default_rng(0), embeddings=points)
    assert sorted(set((chosen // 10).tolist())) == [0, 1, 2, 3]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="edge.strategy"):
        select_queries("random_rows", PROBS, 1, np.random.default_rng(0))
