"""Accuracy under a round's class mix: each row counts with its weight (mlcore/stream.py's
EvaluationBatch.weights), so a label-prior round is scored on the held-out split as if its
rows came in the round's proportions, without discarding the rows of rare classes."""

from __future__ import annotations

import numpy as np


def weighted_accuracy(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted share of rows whose most probable class is the label (NaN if no row has weight)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(labels) != len(weights) or len(probabilities) != len(labels):
        raise ValueError(f"need one weight and one probability row per label: {len(probabilities)}, {len(labels)}, {len(weights)}")
    total = weights.sum()
    if len(labels) == 0 or total <= 0:
        return float("nan")
    return float(np.dot(weights, probabilities.argmax(axis=1) == labels) / total)
