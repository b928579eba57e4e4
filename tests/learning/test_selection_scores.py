"""LEEP and LogME on tiny examples computed by hand / by brute force."""

import math

import numpy as np
import pytest
from scipy import stats

from datacenter.selection import label_free_fit, leep, log_evidence, logme, logme_single


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
