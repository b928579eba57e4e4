"""Which zoo model to start from on post-shift data: scores where higher is better.

`likelihood` (the default) is the candidate's own mean log p(y|x) on the uniformly drawn
harm-check labels: zoo models share the label space, so the model that is right on those
labels is the one to start from (it picked the best model in 6 of 6 cases where LogME and
LEEP failed, review findings 2 and 8). LEEP (Nguyen et al. 2020) and LogME (You et al. 2021)
score a probe on the outputs or features instead; they use the same labels. `label_free_fit`
uses no labels: it asks to which model the new outputs look most like its own reference.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def likelihood(probabilities: np.ndarray, labels: np.ndarray, floor: float = 1e-4) -> float:
    """Mean log p(y|x) of the labels, with p floored so one confident mistake costs log(floor), not -inf."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(np.mean(np.log(np.maximum(picked, floor))))


def leep(source_probabilities: np.ndarray, labels: np.ndarray, n_target_classes: int | None = None,
         prior: float = 0.0) -> float:
    """Mean log-likelihood of the labels under the 'dummy' classifier P(y|z) built from the outputs.

    `prior` > 0 adds that many pseudo-samples per class mapping source class z to target class z
    (only when both label spaces are the same). With 10 labels for 10 classes the paper's
    estimate (prior 0) rewards any confident consistent mapping, even a wrong one (inverted
    digits: accuracy 0, yet LEEP near its maximum); the prior ties it back to the shared labels.
    """
    theta = source_probabilities.astype(np.float64)
    n, n_source = theta.shape
    k = n_target_classes or int(labels.max()) + 1
    joint = np.zeros((k, n_source))
    for y in range(k):
        joint[y] = theta[labels == y].sum(axis=0) / n
    if prior > 0:
        if k != n_source:
            raise ValueError("leep prior needs the same label space on both sides")
        joint += prior * np.eye(k) / n
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    likelihood = (theta @ conditional.T)[np.arange(n), labels]
    return float(np.mean(np.log(np.maximum(likelihood, 1e-300))))


def _svd_terms(features: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    projected = u.T @ target
    return s, projected, max(float(target @ target - projected @ projected), 0.0)


def _evidence(s: np.ndarray, projected: np.ndarray, outside: float, n: int, d: int, alpha: float, beta: float) -> float:
    sigma = s ** 2
    m_coef = beta * s * projected / (alpha + beta * sigma)
    m2 = float(m_coef @ m_coef)
    res2 = float(((projected - s * m_coef) ** 2).sum()) + outside
    # log|A| with A = alpha I_d + beta F^T F; directions outside F's row space contribute log(alpha)
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
    return float((d / 2.0) * np.log(alpha) + (n / 2.0) * np.log(beta) - (alpha / 2.0) * m2 - (beta / 2.0) * res2
                 - 0.5 * log_det - (n / 2.0) * np.log(2.0 * np.pi))


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) for w ~ N(0, I/alpha), target ~ N(F w, I/beta)."""
    n, d = features.shape
    s, projected, outside = _svd_terms(features.astype(np.float64), target.astype(np.float64))
    return _evidence(s, projected, outside, n, d, alpha, beta)


def logme_single(features: np.ndarray, target: np.ndarray, iterations: int = 100) -> tuple[float, float, float]:
    """(max log evidence / n, alpha, beta) by the fixed-point iteration of You et al. (2021)."""
    n, d = features.shape
    s, projected, outside = _svd_terms(features.astype(np.float64), target.astype(np.float64))
    sigma = s ** 2
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        m_coef = beta * s * projected / (alpha + beta * sigma)
        m2 = float(m_coef @ m_coef)
        res2 = float(((projected - s * m_coef) ** 2).sum()) + outside
        new_alpha = gamma / (m2 + 1e-12)
        new_beta = (n - gamma) / (res2 + 1e-12)
        converged = abs(new_alpha - alpha) / alpha < 1e-6 and abs(new_beta - beta) / beta < 1e-6
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return _evidence(s, projected, outside, n, d, alpha, beta) / n, alpha, beta


def scored_classes(labels: np.ndarray) -> np.ndarray:
    """The classes LogME averages over: those with at least 2 labelled rows, else all present.

    An absent class has an all-zero target column, its evidence runs to the 1e-12 guards and
    adds about +11.3 that depends only on the scale of the features (review finding 2); a
    class seen once fits any features perfectly and says as little.
    """
    classes, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return classes[counts >= 2] if np.any(counts >= 2) else classes


def logme(features: np.ndarray, labels: np.ndarray, n_target_classes: int | None = None) -> float:
    """Mean over the scored classes of the per-sample log evidence for the one-hot label columns.

    `n_target_classes` is accepted for callers that know the label space; classes without
    labels are left out whatever it says.
    """
    f = features.astype(np.float64)
    scores = [logme_single(f, (labels == c).astype(np.float64))[0] for c in scored_classes(labels)]
    return float(np.mean(scores))


def label_free_fit(reference: np.ndarray, probabilities: np.ndarray) -> float:
    """Minus the largest per-class KS distance between the model's outputs here and on its own
    in-distribution reference, standardised: the model to whom the new data looks most familiar wins.

    The distance is multiplied by sqrt(n m / (n + m)), so that models whose references differ
    in size (180 rows for the base, ~70 for adapted ones) are compared on the same null scale
    (review finding 9).
    """
    n, m = len(reference), len(probabilities)
    distances = [stats.ks_2samp(reference[:, d], probabilities[:, d]).statistic for d in range(reference.shape[1])]
    return -float(max(distances)) * float(np.sqrt(n * m / (n + m)))
