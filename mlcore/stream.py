"""What each round sees: its batch from the stream split, and its held-out evaluation batch.

The stream is permuted once per seed, and the rounds of a scenario walk that order one after
the other: a round starts at its `offset` (the sizes of the rounds before it, mlcore/rounds.py),
so rounds take disjoint rows until the stream is exhausted, then wrap around (a row comes back
only a full pass later, never twice in one batch). A round with its own `seed` walks that
seed's order. A label-prior round walks from its offset too, but each class at a speed
proportional to its weight (`_walk`): it gets its class mix without any coin, and reads on
past its slice, so it may share rows of the classes it favours with the rounds after it.
Offsets depend only on the earlier rounds' sizes and every other draw on (seed, round id),
so editing one round's shift never changes another round's rows.

Each edge of a fleet walks its own order: the stream permuted by (seed, edge id), and its
mix coin and shift noise drawn by (seed, edge id, round id); so edges see different batches,
and adding, removing or editing an edge changes no other edge's rows. The one edge of a
one-edge scenario (id `edge`, mlcore.rounds.DEFAULT_EDGE) walks the seed's own order, as
before fleets existed. Edges share the evaluation batch of a round id (same held-out rows,
the same shift noise): edges that see the same shift are scored on the same rows.

The evaluation batch comes from the evaluation split (never trained on, never queried), with
the round's image shift and mix; a label prior becomes per-row weights, so a weighted
accuracy (mlcore/evaluation.py) is the accuracy under the round's class mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import Dataset, Splits
from .rounds import DEFAULT_EDGE, RoundSpec
from .seeding import rng_for
from .shifts import apply_image_shifts, class_weights


@dataclass(frozen=True)
class RoundBatch:
    ids: np.ndarray  # (n,) int64 dataset row ids
    images: np.ndarray  # (n, h, w) float32, shifted
    labels: np.ndarray  # (n,) int64 true labels: only the oracle and evaluation may read them
    shifted: np.ndarray  # (n,) bool, which rows carry the image shift


@dataclass(frozen=True)
class EvaluationBatch:
    ids: np.ndarray  # (n,) int64 dataset row ids, all in splits.evaluation
    images: np.ndarray  # (n, h, w) float32, shifted as the round says
    labels: np.ndarray  # (n,) int64
    weights: np.ndarray  # (n,) float64, mean 1: the round's class weight of each row's label (all 1 without a label prior)
    shifted: np.ndarray  # (n,) bool, which rows carry the image shift


def _edge_key(edge: str | None) -> tuple[str, ...]:
    """The purpose key of an edge's draws: none for the one-edge scenario's edge (its draws are
    those of the seed alone), the edge id for every other."""
    return () if edge in (None, DEFAULT_EDGE) else (edge,)


def stream_order(splits: Splits, seed: int, edge: str | None = None) -> np.ndarray:
    """The stream split in the order the rounds of one edge consume it (by seed and edge id)."""
    return rng_for(seed, "stream", *_edge_key(edge)).permutation(splits.stream).astype(np.int64)


def _walk(order: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, start: int, size: int, round_id: str) -> np.ndarray:
    """`size` distinct rows of one pass through `order` from `start`, nearest first.

    With class weights, "nearest" is stretched by class: a row `d` steps into the pass ranks
    at (d + 1) / weight of its class, so each class contributes in proportion to its weight
    times its count (the round's class mix) until its rows run out; weight 0 never comes.
    """
    passage = np.roll(order, -(start % len(order)))
    rank = np.arange(1, len(passage) + 1, dtype=np.float64)
    if weights is not None:
        with np.errstate(divide="ignore"):
            rank = rank / weights[labels[passage]]
    available = int(np.count_nonzero(np.isfinite(rank)))
    if size > available:
        raise ValueError(f"round {round_id}: batch size {size} exceeds the {available} stream samples available")
    return np.sort(passage[np.argsort(rank, kind="stable")[:size]])


def _shift_part(images: np.ndarray, spec: RoundSpec, seed: int, purpose: str,
                edge_key: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Shift the share `spec.mix` of the rows (chosen by a coin of (seed, purpose, edge key, id)); returns (images, shifted)."""
    n = len(images)
    coin = rng_for(seed, purpose, *edge_key, spec.id)
    shifted = coin.random(n) < spec.mix if spec.mix < 1.0 else np.ones(n, dtype=bool)
    out = images.copy()
    if shifted.any():
        out[shifted] = apply_image_shifts(out[shifted], spec.shifts, rng_for(seed, f"{purpose}-shift", *edge_key, spec.id))
    return out, shifted


def draw_round_batch(dataset: Dataset, splits: Splits, spec: RoundSpec, seed: int, default_size: int) -> RoundBatch:
    """The round's batch: `size` rows of its edge's stream order from `spec.offset` (None: 0), shifted as the round says."""
    size = spec.size or default_size
    base_seed = seed if spec.seed is None else spec.seed
    weights = class_weights(spec.shifts, dataset.n_classes)
    ids = _walk(stream_order(splits, base_seed, spec.edge), dataset.labels, weights, spec.offset or 0, size, spec.id)
    images, shifted = _shift_part(dataset.images[ids], spec, base_seed, "batch", _edge_key(spec.edge))
    return RoundBatch(ids, images, dataset.labels[ids].copy(), shifted)


def draw_evaluation_batch(dataset: Dataset, splits: Splits, spec: RoundSpec, seed: int, size: int) -> EvaluationBatch:
    """At most `size` held-out rows (all of the evaluation split if smaller), with the round's shift and mix."""
    base_seed = seed if spec.seed is None else spec.seed
    pool = splits.evaluation
    if len(pool) > size:
        pool = np.sort(rng_for(base_seed, "evaluation", spec.id).choice(pool, size=size, replace=False))
    ids = pool.astype(np.int64)
    labels = dataset.labels[ids].copy()
    weights = np.ones(len(ids))
    prior = class_weights(spec.shifts, dataset.n_classes)
    if prior is not None:
        weights = prior[labels]
        if weights.sum() <= 0:
            raise ValueError(f"round {spec.id}: the label prior gives every evaluation sample weight 0")
        weights = weights / weights.mean()
    images, shifted = _shift_part(dataset.images[ids], spec, base_seed, "evaluation")
    return EvaluationBatch(ids, images, labels, weights, shifted)
