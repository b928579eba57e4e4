"""Each round's batch, drawn from the stream split by (seed, round id) alone.

So editing or inserting one round never changes another round's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import Dataset, Splits
from .rounds import RoundSpec
from .seeding import rng_for
from .shifts import apply_image_shifts, class_weights


@dataclass(frozen=True)
class RoundBatch:
    ids: np.ndarray  # (n,) int64 dataset row ids
    images: np.ndarray  # (n, h, w) float32, shifted
    labels: np.ndarray  # (n,) int64 true labels: only the oracle and evaluation may read them
    shifted: np.ndarray  # (n,) bool, which rows carry the image shift


def draw_round_batch(dataset: Dataset, splits: Splits, spec: RoundSpec, seed: int, default_size: int) -> RoundBatch:
    size = spec.size or default_size
    base_seed = seed if spec.seed is None else spec.seed
    rng = rng_for(base_seed, "batch", spec.id)
    pool = splits.stream
    weights = class_weights(spec.shifts, dataset.n_classes)
    probabilities = None
    if weights is not None:
        row_weights = weights[dataset.labels[pool]]
        if row_weights.sum() <= 0:
            raise ValueError(f"round {spec.id}: the label prior leaves no stream samples")
        probabilities = row_weights / row_weights.sum()
    available = len(pool) if probabilities is None else int(np.count_nonzero(probabilities))
    if size > available:
        raise ValueError(f"round {spec.id}: batch size {size} exceeds the {available} stream samples available")
    ids = np.sort(rng.choice(pool, size=size, replace=False, p=probabilities)).astype(np.int64)
    shifted = rng.random(size) < spec.mix if spec.mix < 1.0 else np.ones(size, dtype=bool)
    images = dataset.images[ids].copy()
    if shifted.any():
        images[shifted] = apply_image_shifts(images[shifted], spec.shifts, rng_for(base_seed, "shift", spec.id))
    return RoundBatch(ids, images, dataset.labels[ids].copy(), shifted)
