"""`retraining`: one episode iteration — add the queried labels, fine-tune, register, decide on more."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataclasses import replace

import numpy as np

from mlcore.checkpoints import save_checkpoint
from mlcore.contract import Reply, may_query
from mlcore.frames import frame_digest, frame_features, frame_labels
from mlcore.models import ModelSpec
from mlcore.training import accuracy, accuracy_of, predict_proba

from .adaptation import finetune
from .errors import RequestError
from .state import Snapshot, ZooEntry, state_key

if TYPE_CHECKING:
    from .service import DataCenter


def retrain(center: DataCenter, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
    """One episode iteration: add the newly queried labels, fine-tune, register, reset the reference."""
    key, snapshot = center.parent_state(metadata)
    if snapshot.episode is None or snapshot.data is None:
        raise RequestError("retraining needs an open episode: send prep_retraining first and pass its state")
    episode, seen = snapshot.episode, snapshot.data
    config = center.settings.datacenter
    edge = center.settings.edge
    new = center.sample_frame(query, "query_dataframe", labelled=True)
    if not may_query(edge.label_budget - episode.labels_used, episode.iterations, query_size=len(new),
                     max_iterations=edge.max_iterations):
        raise RequestError(f"these {len(new)} labels are past the episode's budget (max_iterations="
                           f"{edge.max_iterations}, label_budget={edge.label_budget}, used {episode.labels_used})")
    new_ids = new["id"].to_numpy(dtype=np.int64)
    if np.isin(new_ids, seen.ids).any():
        raise RequestError("query_dataframe repeats sample ids already labelled in this episode")
    previous = center.model(snapshot.current)
    new_x, new_y = frame_features(new), frame_labels(new)
    prequential = accuracy_of(predict_proba(previous, center.as_images(new_x)), new_y)
    data = seen.with_labels(new_x, new_y, new_ids)
    model = finetune(center.model(episode.start), data.x, data.y, center.dataset, center.splits, config.finetune,
                     center.settings.seed, episode.id)
    spec = ModelSpec(center.settings.model.arch, center.dataset.image_shape, center.dataset.n_classes)
    _, sha = save_checkpoint(model, spec, center.store.checkpoints)
    center._models.setdefault(sha, model)
    post_x = center.as_images(data.post_x)
    reference = predict_proba(model, center.reference_rows(data))
    post_now = predict_proba(model, post_x).argmax(1)
    post_before = predict_proba(previous, post_x).argmax(1)
    agreement = float(np.mean(post_now == post_before))
    iterations = episode.iterations + 1
    labels_used = episode.labels_used + len(new)
    metrics = {
        "source_eval_accuracy": accuracy(model, center.dataset.images[center.splits.evaluation],
                                         center.dataset.labels[center.splits.evaluation]),
        "prequential_accuracy": prequential, "agreement_with_previous": agreement,
        "train_labels": int(len(data.y)), "replay": int(config.finetune.replay),
    }
    round_id = str(metadata.get("round", episode.round))
    center.store.write_registry_entry(sha, {"parent": episode.start, "round": episode.round, "episode": episode.id,
                                          "kind": "adapted", "shift": str(new["shift"].iloc[0]),
                                          "labels_used": labels_used, "metrics": metrics})
    entry = ZooEntry(sha, episode.round, episode.start, episode.id, str(new["shift"].iloc[0]), labels_used)
    zoo = tuple(e for e in snapshot.zoo if e.episode != episode.id) + (entry,)
    kept = {e.sha256 for e in zoo}
    references = {z: window for z, window in snapshot.references.items() if z in kept} | {sha: reference}
    converged = iterations >= 2 and agreement >= config.stop_agreement
    reached = config.target_accuracy is not None and prequential >= config.target_accuracy
    more = (may_query(edge.label_budget - labels_used, iterations, query_size=edge.query_size,
                      max_iterations=edge.max_iterations) and not converged and not reached)
    child_key = state_key(key, round_id, "retraining", frame_digest(new))
    child = Snapshot(key, round_id, "retraining", sha, zoo,
                     replace(episode, iterations=iterations, labels_used=labels_used), references, None, data)
    center.store.save(child_key, child)
    return center.checkpoint_reply(more, sha, {
        "state": child_key, "sha256": sha, "more_needed": more, "iteration": iterations,
        "labels_used": labels_used, "prequential_accuracy": prequential, "agreement": agreement,
        "converged": converged,
    })
