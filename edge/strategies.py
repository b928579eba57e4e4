"""Active-query strategies: which unlabelled rows of the batch are worth a label.

Scores are computed on the batch in row order and the selection returns row positions of
that same order (the ancestor scored a shuffled loader and applied the scores to unshuffled
rows). Uncertainty scores: higher means more informative; ties go to the lower row.
"""

from __future__ import annotations

import numpy as np

SCORE_STRATEGIES = ("entropy", "margin", "least_confidence")
STRATEGIES = (*SCORE_STRATEGIES, "uniform", "kcenter", "badge")


def entropy_scores(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def margin_scores(probabilities: np.ndarray) -> np.ndarray:
    """Minus the gap between the two largest probabilities (a small gap scores high)."""
    top2 = np.sort(probabilities.astype(np.float64), axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def least_confidence_scores(probabilities: np.ndarray) -> np.ndarray:
    return 1.0 - probabilities.astype(np.float64).max(axis=1)


SCORERS = {"entropy": entropy_scores, "margin": margin_scores, "least_confidence": least_confidence_scores}


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidate rows with the highest scores (stable: ties go to the lower row)."""
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order[:k]]


def k_center_greedy(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Coreset (Sener & Savarese 2018): repeatedly take the row farthest from every chosen centre.

    Chosen rows get distance -inf so they cannot come back: with coinciding embeddings (blank
    images, dead ReLUs) every distance reaches 0 and argmax would return the same row again,
    which the frame validation then refuses (review finding 12). When no unchosen row is
    farther than 0 from the centres, the rest are drawn uniformly from the unchosen rows.
    """
    points = embeddings.astype(np.float64)
    k = min(k, len(candidates))
    chosen: list[int] = []
    if len(labelled):
        distance = np.min(((points[candidates, None, :] - points[None, labelled, :]) ** 2).sum(-1), axis=1)
    else:
        first = int(rng.integers(len(candidates)))
        chosen.append(first)
        distance = ((points[candidates] - points[candidates[first]]) ** 2).sum(-1)
        distance[first] = -np.inf
    while len(chosen) < k:
        pick = int(np.argmax(distance))
        if distance[pick] <= 0:
            rest = np.flatnonzero(np.isfinite(distance))  # the unchosen positions
            chosen.extend(rng.choice(rest, size=k - len(chosen), replace=False).tolist())
            break
        chosen.append(pick)
        distance = np.minimum(distance, ((points[candidates] - points[candidates[pick]]) ** 2).sum(-1))
        distance[chosen] = -np.inf
    return candidates[np.asarray(chosen, dtype=np.int64)]


def badge(probabilities: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """BADGE (Ash et al. 2020): k-means++ seeding on last-layer gradient embeddings
    (p - onehot(prediction)) x features, which mixes uncertainty and diversity."""
    p = probabilities[candidates].astype(np.float64)
    grad = p.copy()
    grad[np.arange(len(p)), p.argmax(1)] -= 1.0
    g = (grad[:, :, None] * embeddings[candidates].astype(np.float64)[:, None, :]).reshape(len(p), -1)
    norms = (g * g).sum(1)
    picks = [int(np.argmax(norms))]
    distance = ((g - g[picks[0]]) ** 2).sum(1)
    while len(picks) < k:
        total = distance.sum()
        if total <= 0:
            remaining = np.setdiff1d(np.arange(len(g)), picks)
            picks.extend(remaining[: k - len(picks)].tolist())
            break
        pick = int(rng.choice(len(g), p=distance / total))
        picks.append(pick)
        distance = np.minimum(distance, ((g - g[pick]) ** 2).sum(1))
    return candidates[np.asarray(picks[:k], dtype=np.int64)]


def select_queries(
    strategy: str,
    probabilities: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    labelled: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Row positions (into the batch) of the next k rows to label, never an already labelled one."""
    if strategy not in STRATEGIES:
        raise ValueError(f"edge.strategy: unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
    n = len(probabilities)
    labelled = np.zeros(0, dtype=np.int64) if labelled is None else np.asarray(labelled, dtype=np.int64)
    candidates = np.setdiff1d(np.arange(n), labelled)
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if strategy in SCORERS:
        return top_k(SCORERS[strategy](probabilities), candidates, k)
    if strategy == "uniform":
        return np.sort(rng.choice(candidates, size=k, replace=False))
    if embeddings is None:
        raise ValueError(f"strategy {strategy!r} needs the model's embeddings")
    if strategy == "kcenter":
        return k_center_greedy(embeddings, candidates, labelled, k, rng)
    return badge(probabilities, embeddings, candidates, k, rng)
