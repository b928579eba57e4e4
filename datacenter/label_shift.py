"""Is a flagged shift only a change of class priors? Black-box shift estimation (BBSE).

A KS test on softmax outputs also fires when only the class mix changed (review finding 7:
classes 0-4 only, pixels unchanged, flagged in up to 8 of 10 rounds), and retraining is the
wrong answer to that. Under label shift p(x|y) stays put, so the confusion matrix of the
source model links the two: mu_target = C w with w_j = q(y=j) / p(y=j) (Lipton et al. 2018).
If re-weighting the labelled reference by w makes the KS flag go away, the shift is explained
by the priors, and adding log w to the final-layer bias is the Bayes-correct adaptation.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Joint C[i, j] = P(yhat=i, y=j) on labelled source data (it sums to 1)."""
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (np.asarray(predicted, dtype=np.int64), np.asarray(labels, dtype=np.int64)), 1.0)
    return joint / max(len(predicted), 1)


def bbse_weights(confusion: np.ndarray, target_predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """w_j = q(y=j) / p(y=j) >= 0 from C w = mu_target, normalised so sum_j w_j p(y=j) = 1.

    Least squares copes with a singular C (a class never predicted, or never seen); negative
    solutions, which sampling noise gives for rare classes, are clipped to 0.
    """
    mu = np.bincount(np.asarray(target_predicted, dtype=np.int64), minlength=n_classes)[:n_classes] / max(
        len(target_predicted), 1)
    weights = np.clip(np.linalg.lstsq(confusion, mu, rcond=None)[0], 0.0, None)
    source_prior = confusion.sum(axis=0)
    mass = float(weights @ source_prior)
    return weights / mass if mass > 0 else np.ones(n_classes)


def _weighted_ks_statistic(reference: np.ndarray, weights: np.ndarray, sample: np.ndarray) -> float:
    """sup_x |F_w(x) - G(x)| with F_w the weighted ECDF of the reference, G the sample's ECDF."""
    order = np.argsort(reference, kind="stable")
    ordered = reference[order]
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])]) / weights.sum()
    sample = np.sort(sample)
    points = np.concatenate([ordered, sample])
    weighted = cumulative[np.searchsorted(ordered, points, side="right")]
    empirical = np.searchsorted(sample, points, side="right") / len(sample)
    return float(np.max(np.abs(weighted - empirical)))


def weighted_ks_test(reference: np.ndarray, reference_weights: np.ndarray, sample: np.ndarray,
                     alpha: float) -> tuple[bool, float, float]:
    """(drift, Bonferroni p, largest statistic): per-dimension two-sample KS against a weighted reference.

    The p-value is the asymptotic Kolmogorov tail at D sqrt(n m / (n + m)) with the reference
    size n replaced by its effective size (sum w)^2 / sum w^2, since unequal weights carry less
    information than as many equal ones.
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    sample = np.asarray(sample, dtype=np.float64).reshape(len(sample), -1)
    weights = np.asarray(reference_weights, dtype=np.float64)
    n_effective = weights.sum() ** 2 / float((weights ** 2).sum())
    m = len(sample)
    scale = np.sqrt(n_effective * m / (n_effective + m))
    statistics = np.array([_weighted_ks_statistic(reference[:, d], weights, sample[:, d])
                           for d in range(reference.shape[1])])
    p_value = min(1.0, reference.shape[1] * float(stats.kstwobign.sf(statistics * scale).min()))
    return p_value < alpha, p_value, float(statistics.max())


def prior_log_shift(weights: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """log(max(w, floor)): added to the final-layer bias it turns p(y|x) into p(y|x) w_y / Z.

    The floor keeps a class BBSE put at 0 (often sampling noise) recoverable instead of -inf.
    """
    return np.log(np.maximum(np.asarray(weights, dtype=np.float64), floor))


def explains_shift(reference: np.ndarray, reference_labels: np.ndarray, weights: np.ndarray, sample: np.ndarray,
                   alpha: float, *, min_change: float = 0.2) -> bool:
    """Does re-weighting the labelled reference by the class weights explain the flag?

    Yes when the weighted KS test no longer rejects and the weights really moved (some class
    weight off 1 by at least `min_change`): otherwise the flag was noise or is not label shift.
    """
    row_weights = np.asarray(weights, dtype=np.float64)[np.asarray(reference_labels, dtype=np.int64)]
    if row_weights.sum() <= 0:
        return False
    drift, _, _ = weighted_ks_test(reference, row_weights, sample, alpha)
    return (not drift) and float(np.max(np.abs(np.asarray(weights) - 1.0))) >= min_change
