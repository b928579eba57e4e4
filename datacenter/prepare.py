"""`prep_retraining`: the zoo model that fits the shifted data best; adopt it as it is, or open an episode.

The edge sends the random sample (`random_dataframe`) and uniformly drawn labelled rows of
it (`query_dataframe`: the harm test's labels, at least `selection_labels`). Those labels
choose the start (by each candidate's own likelihood by default); then every other one is held
back from training to decide whether a fine-tuned model is better than its start, and the rest
are the episode's first training labels.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcore.contract import Decision, Reply
from mlcore.frames import frame_digest, frame_features, frame_labels
from mlcore.training import embed, predict_proba

from . import selection
from .errors import RequestError
from .state import Episode, EpisodeData, Snapshot, state_key

if TYPE_CHECKING:
    from .service import DataCenter


def prepare(center: DataCenter, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
    """Score every zoo model on the labelled rows; adopt the best if it passes the harm test, else train."""
    key, snapshot = center.parent_state(metadata)
    round_id = str(metadata.get("round"))
    post = center.sample_frame(random, "random_dataframe")
    method = center.settings.datacenter.selection
    labelled = None
    if query is not None or method != "label_free":
        labelled = center.sample_frame(query, "query_dataframe", labelled=True)
        if not np.isin(labelled["id"].to_numpy(), post["id"].to_numpy()).all():
            raise RequestError("query_dataframe: the labelled rows must be drawn from the random sample "
                               "(uniform labels validate the fine-tuned model)")
    data = episode_data(center, post, labelled)
    scores = [transferability(center, entry.sha256, snapshot, data) for entry in snapshot.zoo]
    best = int(np.argmax(scores))  # ties: the earliest entry (the base model first)
    start = snapshot.zoo[best].sha256
    child_key = state_key(key, round_id, "prep_retraining", frame_digest(post) + frame_digest(labelled))
    adopted = fits_as_is(center, snapshot, start, data)
    if adopted:
        child = Snapshot(key, round_id, "prep_retraining", start, snapshot.zoo, None, snapshot.references)
    else:
        episode = Episode(id=child_key, round=round_id, start=start)
        child = Snapshot(key, round_id, "prep_retraining", start, snapshot.zoo, episode, snapshot.references,
                         None, data)
    center.store.save(child_key, child)
    ranking = {snapshot.zoo[i].sha256[:12]: round(float(s), 6) for i, s in enumerate(scores)}
    return center.checkpoint_reply(not adopted, start, {
        "retraining_needed": not adopted, "decision": Decision.ADOPT.value if adopted else Decision.HARMFUL.value,
        "state": child_key, "sha256": start, "selection": method, "selected_index": best,
        "selected_round": snapshot.zoo[best].round, "selected_shift": snapshot.zoo[best].shift,
        "score": float(scores[best]), "scores": json.dumps(ranking, sort_keys=True),
        "labels_used": int(len(data.val_y)),
    })


def episode_data(center: DataCenter, post: Any, labelled: Any) -> EpisodeData:
    """The random sample, and its uniform labels split in turn: every other one (in the edge's
    labelling order) is held back to validate, the rest is the episode's first training step."""
    x = frame_features(labelled) if labelled is not None else np.zeros((0, center.n_features), np.float32)
    y = frame_labels(labelled) if labelled is not None else np.zeros(0, np.int64)
    ids = labelled["id"].to_numpy(dtype=np.int64) if labelled is not None else np.zeros(0, np.int64)
    held = np.arange(len(y)) % 2 == 1
    return EpisodeData(post_x=frame_features(post), post_ids=post["id"].to_numpy(dtype=np.int64),
                       val_x=x[held], val_y=y[held], x=x[~held], y=y[~held], ids=ids[~held])


def fits_as_is(center: DataCenter, snapshot: Snapshot, start: str, data: EpisodeData) -> bool:
    """Another zoo model passes the harm test on all the uniform labels: adopt it without training."""
    if start == snapshot.current or not len(data.val_y) or not center.settings.datacenter.harm_check.enabled:
        return False
    x, y = interleave(data.x, data.val_x), interleave(data.y, data.val_y)  # back in labelling order
    predicted = predict_proba(center.model(start), center.as_images(x)).argmax(1)
    return center.harm_test(snapshot).decide(predicted == y).outcome == "benign"


def interleave(even: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """The inverse of the even/odd split in `episode_data`."""
    out = np.empty((len(even) + len(odd), *even.shape[1:]), dtype=even.dtype)
    out[0::2], out[1::2] = even, odd
    return out


def transferability(center: DataCenter, sha: str, snapshot: Snapshot, data: EpisodeData) -> float:
    model = center.model(sha)
    method = center.settings.datacenter.selection
    if method == "label_free":
        return selection.label_free_fit(snapshot.reference(sha), predict_proba(model, center.as_images(data.post_x)))
    images, labels = center.as_images(interleave(data.x, data.val_x)), interleave(data.y, data.val_y)
    if method == "likelihood":
        return selection.likelihood(predict_proba(model, images), labels)
    if method == "leep":
        return selection.leep(predict_proba(model, images), labels, center.dataset.n_classes,
                              prior=center.settings.datacenter.leep_prior)
    return selection.logme(embed(model, images), labels, center.dataset.n_classes)
