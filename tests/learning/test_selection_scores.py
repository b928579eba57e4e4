"""Selection scores on tiny examples computed by hand / by brute force, and their known failure modes."""

import math

import numpy as np
import pytest
from scipy import stats

from datacenter.selection import label_free_fit, leep, likelihood, log_evidence, logme, logme_single, scored_classes


def test_leep_by_hand():
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1])
    # P(y,z) = [[.4,.1],[.2,.3]], P(y|z) = [[2/3,1/4],[1/3,3/4]]; both likelihoods are 7/12
    assert leep(theta, labels) == pytest.approx(math.log(7 / 12))


def test_leep_extremes():
    labels = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[labels]
    useless = np.full((4, 2), 0.5)
    assert leep(perfect, labels) == pytest.approx(0.0, abs=1e-9)
    assert leep(useless, labels) == pytest.approx(math.log(0.5))


def test_leep_prior_by_hand_and_against_wrong_mappings():
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1])
    # prior 1 adds 1/n = 0.5 to the diagonal: P(y,z) = [[.9,.1],[.2,.8]], P(y|z) = [[9/11,1/9],[2/11,8/9]]
    first = 0.8 * 9 / 11 + 0.2 * 1 / 9
    second = 0.4 * 2 / 11 + 0.6 * 8 / 9
    assert leep(theta, labels, prior=1.0) == pytest.approx((math.log(first) + math.log(second)) / 2)
    # a confident model that is always wrong (class c predicted as c+1) vs a right but less sure one
    wrong_labels = np.arange(10)
    wrong = np.eye(10)[(wrong_labels + 1) % 10] * 0.99 + 0.001
    right = np.eye(10)[wrong_labels] * 0.7 + 0.03
    assert leep(wrong, wrong_labels) > leep(right, wrong_labels)  # the paper's LEEP is fooled
    assert leep(right, wrong_labels, prior=1.0) > leep(wrong, wrong_labels, prior=1.0)
    with pytest.raises(ValueError, match="same label space"):
        leep(theta, np.array([0, 2]), n_target_classes=3, prior=1.0)


def test_log_evidence_matches_the_gaussian_marginal():
    rng = np.random.default_rng(0)
    features, target = rng.normal(size=(7, 3)), rng.normal(size=7)
    alpha, beta = 0.7, 2.5
    covariance = features @ features.T / alpha + np.eye(7) / beta
    expected = stats.multivariate_normal(mean=np.zeros(7), cov=covariance).logpdf(target)
    assert log_evidence(features, target, alpha, beta) == pytest.approx(expected, rel=1e-9)
    # more features than samples (10 labels, 64-dim embeddings in practice)
    wide = rng.normal(size=(5, 9))
    covariance = wide @ wide.T / alpha + np.eye(5) / beta
    expected = stats.multivariate_normal(mean=np.zeros(5), cov=covariance).logpdf(target[:5])
    assert log_evidence(wide, target[:5], alpha, beta) == pytest.approx(expected, rel=1e-9)


def test_logme_finds_the_evidence_maximum():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 4))
    target = features @ np.array([1.0, -0.5, 0.0, 2.0]) + rng.normal(scale=0.3, size=30)
    value, alpha, beta = logme_single(features, target)
    assert value == pytest.approx(log_evidence(features, target, alpha, beta) / 30)
    for da in (0.8, 1.25):
        for db in (0.8, 1.25):
            assert value >= log_evidence(features, target, alpha * da, beta * db) / 30


def test_logme_prefers_informative_features():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    informative = np.eye(3)[labels] * 3 + rng.normal(scale=0.3, size=(30, 3))
    noise = rng.normal(size=(30, 3))
    assert logme(informative, labels) > logme(noise, labels)


def test_label_free_fit_prefers_the_familiar_model():
    rng = np.random.default_rng(3)
    reference = rng.dirichlet([5, 1, 1], size=100)
    same = rng.dirichlet([5, 1, 1], size=100)
    different = rng.dirichlet([1, 1, 5], size=100)
    assert label_free_fit(reference, same) > label_free_fit(reference, different)


def test_logme_ignores_absent_classes_and_feature_scale():
    rng = np.random.default_rng(4)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 5, 5, 7])  # 10 labels: 4 classes of 10 absent, class 7 seen once
    features = rng.normal(size=(10, 64)) + 2 * np.eye(10, 64)[labels]
    assert scored_classes(labels).tolist() == [0, 1, 2, 5]
    assert scored_classes(np.array([3, 4, 8])).tolist() == [3, 4, 8]  # none twice: all present ones
    value = logme(features, labels, 10)
    by_hand = np.mean([logme_single(features, (labels == c).astype(float))[0] for c in (0, 1, 2, 5)])
    assert value == pytest.approx(by_hand)
    assert value < 1.0  # an absent class alone would add about +11.3 / 10 classes
    def over_all_classes(f):  # the old average, absent classes included
        return np.mean([logme_single(f, (labels == c).astype(float))[0] for c in range(10)])

    for scale in (0.5, 2.0):
        assert logme(features * scale, labels, 10) == pytest.approx(value, abs=5e-3)  # fixed-point tolerance
        assert abs(over_all_classes(features * scale) - over_all_classes(features)) > 0.1


def test_likelihood_by_hand_and_prefers_the_model_right_on_the_labels():
    probabilities = np.array([[0.7, 0.3], [0.0, 1.0], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    assert likelihood(probabilities, labels) == pytest.approx((math.log(0.7) + math.log(1e-4) + math.log(0.5)) / 3)
    labels = np.arange(10)
    wrong = np.eye(10)[(labels + 1) % 10] * 0.99 + 0.001  # confident, never right: fools LEEP
    right = np.eye(10)[labels] * 0.7 + 0.03
    assert likelihood(right, labels) > likelihood(wrong, labels)
    assert leep(wrong, labels) > leep(right, labels)


def test_label_free_fit_is_standardised_for_the_reference_size():
    rng = np.random.default_rng(5)
    reference, probabilities = rng.dirichlet([5, 1, 1], size=70), rng.dirichlet([5, 1, 1], size=120)
    distance = max(stats.ks_2samp(reference[:, d], probabilities[:, d]).statistic for d in range(3))
    assert label_free_fit(reference, probabilities) == pytest.approx(-distance * math.sqrt(70 * 120 / 190))
    # two models equally familiar with the data, with references of 180 and 70 rows: the raw
    # distance favours the larger reference, the standardised one does not
    raw = {180: [], 70: []}
    standardised = {180: [], 70: []}
    for _ in range(100):
        sample = rng.dirichlet([5, 1, 1], size=200)
        for size in raw:
            score = label_free_fit(rng.dirichlet([5, 1, 1], size=size), sample)
            standardised[size].append(score)
            raw[size].append(score / math.sqrt(size * 200 / (size + 200)))
    assert np.mean(raw[180]) - np.mean(raw[70]) > 0.02
    assert abs(np.mean(standardised[180]) - np.mean(standardised[70])) < 0.1
