"""Is the edge's model still in its element? Tests on its outputs, label-free by default.

Each detector returns a `Verdict`; only `ece` needs labels, and it is never the default.
`DETECTORS` names them for the settings; the data center runs whichever is configured and
tells the edge whether it needs labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Verdict:
    drift: bool
    p_value: float | None  # None for threshold rules
    statistic: float
    detector: str


def ks_softmax_test(reference: np.ndarray, sample: np.ndarray, alpha: float) -> Verdict:
    """Two-sample KS per softmax dimension, Bonferroni over dimensions (Rabanser et al. 2019)."""
    _check_pair(reference, sample)
    dims = reference.shape[1]
    p_values, statistics = [], []
    for d in range(dims):
        result = stats.ks_2samp(reference[:, d], sample[:, d], method="auto")
        p_values.append(float(result.pvalue))
        statistics.append(float(result.statistic))
    p_min = min(p_values)
    return Verdict(p_min < alpha / dims, min(1.0, p_min * dims), max(statistics), "ks")


def _rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.maximum(sq, 0.0) / (2.0 * bandwidth * bandwidth))


def mmd_statistic(kernel: np.ndarray, n: int) -> float:
    """Biased MMD^2 from the joint kernel matrix whose first n rows are the reference."""
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float(kxx.mean() + kyy.mean() - 2.0 * kxy.mean())


def mmd_permutation_test(reference: np.ndarray, sample: np.ndarray, alpha: float, permutations: int, rng: np.random.Generator) -> Verdict:
    """RBF-kernel MMD with the median-distance bandwidth; p-value by label permutation."""
    _check_pair(reference, sample)
    joint = np.concatenate([reference, sample]).astype(np.float64)
    sq = ((joint[:, None, :] - joint[None, :, :]) ** 2).sum(-1)
    bandwidth = float(np.sqrt(np.median(sq[sq > 0]) / 2.0)) if np.any(sq > 0) else 1.0
    kernel = _rbf_kernel(joint, joint, bandwidth)
    n = len(reference)
    observed = mmd_statistic(kernel, n)
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(len(joint))
        exceed += mmd_statistic(kernel[np.ix_(order, order)], n) >= observed
    p_value = (exceed + 1) / (permutations + 1)
    return Verdict(p_value < alpha, p_value, observed, "mmd")


def calibration_errors(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """(ECE, MCE) with equal-width confidence bins (0, 1/b], ..., ((b-1)/b, 1]."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece, mce = 0.0, 0.0
    for b in range(bins):
        in_bin = which == b
        if not in_bin.any():
            continue
        gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
        ece += in_bin.mean() * gap
        mce = max(mce, gap)
    return float(ece), float(mce)


def ece_rule(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> Verdict:
    """Flag when the expected calibration error on labelled rows exceeds `threshold`."""
    known = labels >= 0
    if not known.any():
        raise ValueError("detector 'ece' needs labelled rows in the random sample; use ks, mmd or entropy for label-free checks")
    ece, _ = calibration_errors(probabilities[known], labels[known])
    return Verdict(ece > threshold, None, ece, "ece")


def mean_entropy(probabilities: np.ndarray) -> float:
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum(axis=1).mean())


def entropy_rule(probabilities: np.ndarray, threshold: float) -> Verdict:
    """Flag when the mean predictive entropy (nats) exceeds `threshold` (blind to confident errors)."""
    value = mean_entropy(probabilities)
    return Verdict(value > threshold, None, value, "entropy")


def _check_pair(reference: np.ndarray, sample: np.ndarray) -> None:
    if reference.ndim != 2 or sample.ndim != 2 or reference.shape[1] != sample.shape[1]:
        raise ValueError(f"reference and sample must be (n, d) with equal d, got {reference.shape} and {sample.shape}")
    if len(reference) < 2 or len(sample) < 2:
        raise ValueError("a two-sample test needs at least 2 rows on each side")


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Observation:
    """What a detector may look at: the reference window, the sample's outputs and labels."""

    reference: np.ndarray  # softmax outputs of the current model on in-distribution data
    probabilities: np.ndarray  # its outputs on the edge's random sample
    labels: np.ndarray  # the sample's labels, -1 where unlabelled (only detectors that need labels get any)
    config: Any  # the data center's settings (alpha, thresholds, permutations)
    rng: np.random.Generator  # seeded per round, for permutation tests


@dataclass(frozen=True)
class Detector:
    """A drift check, and whether it needs labels on the random sample (announced to the edge)."""

    run: Callable[[Observation], Verdict]
    needs_labels: bool = False


#: Every detector by its settings name (`datacenter.detector`). Adding one: a function above,
#: an entry here, its name in the config schema's enum.
DETECTORS: dict[str, Detector] = {
    "ks": Detector(lambda o: ks_softmax_test(o.reference, o.probabilities, o.config.alpha)),
    "mmd": Detector(lambda o: mmd_permutation_test(o.reference, o.probabilities, o.config.alpha,
                                                   o.config.mmd_permutations, o.rng)),
    "ece": Detector(lambda o: ece_rule(o.probabilities, o.labels, o.config.ece_threshold), needs_labels=True),
    "entropy": Detector(lambda o: entropy_rule(o.probabilities, o.config.entropy_threshold)),
}
