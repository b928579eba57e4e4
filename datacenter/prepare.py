"""`prep_retraining`: open an episode from the zoo model that fits the shifted data best."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import json

import numpy as np

from mlcore.contract import Reply
from mlcore.frames import frame_digest, frame_features, frame_labels
from mlcore.training import accuracy_of, embed, predict_proba

from . import selection
from .state import Episode, EpisodeData, Snapshot, state_key

if TYPE_CHECKING:
    from .service import DataCenter


def prepare(center: DataCenter, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
    """Open an episode: score every zoo model on post-shift data, start from the best."""
    key, snapshot = center.parent_state(metadata)
    round_id = str(metadata.get("round"))
    post = center.sample_frame(random, "random_dataframe")
    method = center.settings.datacenter.selection
    labelled = None
    if method in ("leep", "logme"):
        labelled = center.sample_frame(query, "query_dataframe", labelled=True)
    elif query is not None:
        labelled = center.sample_frame(query, "query_dataframe", labelled=True)
    # the frames become arrays once, here at the boundary
    data = EpisodeData(
        post_x=frame_features(post), post_ids=post["id"].to_numpy(dtype=np.int64),
        x=frame_features(labelled) if labelled is not None else np.zeros((0, center.n_features), np.float32),
        y=frame_labels(labelled) if labelled is not None else np.zeros(0, np.int64),
        ids=labelled["id"].to_numpy(dtype=np.int64) if labelled is not None else np.zeros(0, np.int64),
    )
    scores = [transferability(center, entry.sha256, snapshot, data) for entry in snapshot.zoo]
    best = int(np.argmax(scores))  # ties: the earliest entry (the base model first)
    start = snapshot.zoo[best].sha256
    child_key = state_key(key, round_id, "prep_retraining", frame_digest(post) + frame_digest(labelled))
    monitor_ref = None
    n_labels = 0 if labelled is None else len(labelled)
    start_accuracy = None
    if labelled is not None:
        start_accuracy = accuracy_of(predict_proba(center.model(start), center.as_images(data.x)), data.y)
    target = center.settings.datacenter.target_accuracy
    needed = target is None or start_accuracy is None or start_accuracy < target
    if needed:
        episode = Episode(id=child_key, round=round_id, start=start, iterations=0, labels_used=n_labels)
    else:
        # the shift is harmless for the chosen model: adopt it and its outputs here as the new
        # normal (no fine-tuning), so the same shift does not trigger again next round
        episode = None
        monitor_ref = predict_proba(center.model(start), center.reference_rows(data))
        data = None
    child = Snapshot(key, round_id, "prep_retraining", start, snapshot.zoo, episode, snapshot.references,
                     monitor_ref, data)
    center.store.save(child_key, child)
    ranking = {snapshot.zoo[i].sha256[:12]: round(float(s), 6) for i, s in enumerate(scores)}
    return center.checkpoint_reply(needed, start, {
        "start_accuracy": start_accuracy, "retraining_needed": needed,
        "state": child_key, "sha256": start, "selection": method, "selected_index": best,
        "selected_round": snapshot.zoo[best].round, "selected_shift": snapshot.zoo[best].shift,
        "score": float(scores[best]), "scores": json.dumps(ranking, sort_keys=True), "labels_used": n_labels,
    })


def transferability(center: DataCenter, sha: str, snapshot: Snapshot, data: EpisodeData) -> float:
    model = center.model(sha)
    method = center.settings.datacenter.selection
    if method == "label_free":
        return selection.label_free_fit(snapshot.reference(sha), predict_proba(model, center.as_images(data.post_x)))
    images, labels = center.as_images(data.x), data.y
    if method == "leep":
        return selection.leep(predict_proba(model, images), labels, center.dataset.n_classes,
                              prior=center.settings.datacenter.leep_prior)
    return selection.logme(embed(model, images), labels, center.dataset.n_classes)
