"""Label-free accuracy estimates on post-shift outputs: for the report, never a trigger (DoC may
only dispute a benign harm-test call where its labels allow, and then more labels decide:
`check.harm_decision`).

ATC (Garg et al. 2022) and DoC (Guillory et al. 2021) read the target accuracy off the
model's confidence, calibrated on labelled source data. They cannot see a model that is
confident and wrong (inverted digits: estimated 0.82-0.89, true 0.00, review finding 7), so
decisions rest on the harm test's labels; these numbers only say how bad a shift looks.
"""

from __future__ import annotations

import numpy as np


def max_probability(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, dtype=np.float64).max(axis=1)


def negative_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


# ATC's confidence score: the max softmax probability by default (ATC-MC); Garg et al. find
# negative entropy (ATC-NE) a little better, so it is one keyword away.
SCORES = {"max_probability": max_probability, "negative_entropy": negative_entropy}


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)))


def atc_threshold(source_probabilities: np.ndarray, source_labels: np.ndarray, score: str = "max_probability") -> float:
    """t such that the share of source rows scoring above t equals the source accuracy."""
    scores = np.sort(SCORES[score](source_probabilities))
    above = int(round(_accuracy(source_probabilities, source_labels) * len(scores)))
    if above >= len(scores):
        return float(scores[0] - 1.0)  # every row counts as right; a finite value keeps it serialisable
    return float(scores[len(scores) - above - 1])


def atc_estimate(threshold: float, target_probabilities: np.ndarray, score: str = "max_probability") -> float:
    """Estimated target accuracy: the share of target rows scoring above the source threshold."""
    return float(np.mean(SCORES[score](target_probabilities) > threshold))


def doc_estimate(source_probabilities: np.ndarray, source_labels: np.ndarray, target_probabilities: np.ndarray) -> float:
    """Source accuracy minus the drop in mean max-probability, clipped to [0, 1]."""
    drop = max_probability(source_probabilities).mean() - max_probability(target_probabilities).mean()
    return float(np.clip(_accuracy(source_probabilities, source_labels) - drop, 0.0, 1.0))


def accuracy_estimates(source_probabilities: np.ndarray, source_labels: np.ndarray,
                       target_probabilities: np.ndarray) -> dict[str, float]:
    """{"atc": ..., "doc": ...} for one target sample against labelled source outputs."""
    threshold = atc_threshold(source_probabilities, source_labels)
    return {"atc": atc_estimate(threshold, target_probabilities),
            "doc": doc_estimate(source_probabilities, source_labels, target_probabilities)}
