"""The data center's decisions, one method per message type, free of any network code.

`DataCenter.handle(message_type, query_dataframe, random_dataframe, metadata)` is what the
protocol server (or `mlcore.contract.in_process`) calls. Each request names the parent state
it builds on (`metadata["state"]`) and the round; the reply (`mlcore.contract.Reply`) carries
the child state's key in `info["state"]` and, when it names a checkpoint, the checkpoint's
bytes: the model travels with the answer, so the edge never opens a data-center path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mlcore.checkpoints import load_checkpoint, save_checkpoint, sha256_file
from mlcore.contract import LabelNeeds, Reply, may_query
from mlcore.datasets import Dataset, Splits
from mlcore.frames import frame_digest, frame_features, frame_labels, validate_sample_frame
from mlcore.models import ModelSpec
from mlcore.seeding import rng_for
from mlcore.settings import Settings
from mlcore.training import accuracy, accuracy_of, embed, predict_proba

from . import detectors, selection
from .adaptation import finetune
from .state import Episode, EpisodeData, Snapshot, StateError, StateStore, ZooEntry, state_key

log = logging.getLogger("datacenter")

MIN_REFERENCE_ROWS = 10


class RequestError(ValueError):
    """The request cannot be served as sent; the message says why (it reaches the edge)."""


class DataCenter:
    def __init__(self, settings: Settings, dataset: Dataset, splits: Splits, store: StateStore) -> None:
        self.settings = settings
        self.dataset = dataset
        self.splits = splits
        self.store = store
        self.n_features = dataset.image_shape[0] * dataset.image_shape[1]
        self._models: dict[str, nn.Module] = {}

    # ---- helpers -------------------------------------------------------------------------
    def model(self, sha: str) -> nn.Module:
        if sha not in self._models:
            self._models[sha], _ = load_checkpoint(self.store.checkpoint_path(sha), sha)
        return self._models[sha]

    def checkpoint_reply(self, flag: bool, sha: str, info: dict[str, Any]) -> Reply:
        """A reply naming checkpoint `sha`, with its bytes (verified against the name)."""
        path = self.store.checkpoint_path(sha)
        data = path.read_bytes()
        if sha256_file(path) != sha:
            raise RequestError(f"the data center's copy of checkpoint {sha[:12]} is damaged")
        return Reply(flag, sha, info, data)

    def label_needs(self) -> LabelNeeds:
        """Which labels this data center's detector and selection need from the edge."""
        config = self.settings.datacenter
        return LabelNeeds(check=self.settings.edge.random_sample if detectors.DETECTORS[config.detector].needs_labels else 0,
                          prepare=config.selection_labels if config.selection in ("leep", "logme") else 0)

    def _reference_rows(self, data: EpisodeData) -> np.ndarray:
        """Post-shift images for a new reference window: those no label was bought for, if enough."""
        post_x = self._shape(data.post_x)
        unseen = data.unseen_post()
        return post_x[unseen] if unseen.sum() >= MIN_REFERENCE_ROWS else post_x

    def _shape(self, features: np.ndarray) -> np.ndarray:
        """Flat feature rows as images (the model's input shape)."""
        return features.reshape(len(features), *self.dataset.image_shape)

    def _parent(self, metadata: dict[str, Any]) -> tuple[str, Snapshot]:
        key = metadata.get("state")
        if key is None:
            raise RequestError("the request must carry extra={'state': <parent state key>, 'round': <round id>}")
        try:
            return key, self.store.load(key)
        except StateError as exc:
            raise RequestError(str(exc)) from exc

    def _frame(self, frame: Any, name: str, *, labelled: bool = False) -> pd.DataFrame:
        if frame is None:
            raise RequestError(f"{name} is required for this message")
        try:
            return validate_sample_frame(frame, n_features=self.n_features, labelled=labelled, name=name)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc

    # ---- dispatch ------------------------------------------------------------------------
    def handle(self, message_type: str, query_dataframe: pd.DataFrame | None = None,
               random_dataframe: pd.DataFrame | None = None, metadata: dict[str, Any] | None = None) -> Reply:
        metadata = dict(metadata or {})
        handlers = {"handshake": self.handshake, "normal": self.normal,
                    "prep_retraining": self.prep_retraining, "retraining": self.retraining}
        if message_type not in handlers:
            raise RequestError(f"unknown message type {message_type!r}; known: {sorted(handlers)}")
        reply = handlers[message_type](query_dataframe, random_dataframe, metadata)
        log.info("%s round=%s edge=%s -> flag=%s state=%s", message_type, metadata.get("round"),
                 metadata.get("edge_id"), reply.flag, str(reply.info.get("state", ""))[:12])
        return reply

    def handshake(self, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
        info: dict[str, Any] = {
            "ready": True, "arch": self.settings.model.arch, "n_classes": self.dataset.n_classes,
            "n_features": self.n_features, "dataset": self.dataset.name,
            "detector": self.settings.datacenter.detector, "selection": self.settings.datacenter.selection,
            **self.label_needs().to_info(),
        }
        if metadata.get("state") is None:
            return Reply(False, None, info)
        key, snapshot = self._parent(metadata)
        info.update(state=key, current=snapshot.current, zoo_size=len(snapshot.zoo))
        fetch = metadata.get("fetch")
        if fetch is None:
            return Reply(False, None, info)
        if fetch != snapshot.current and fetch not in {entry.sha256 for entry in snapshot.zoo}:
            raise RequestError(f"checkpoint {str(fetch)[:12]} is not in the lineage of state {key[:12]}")
        return self.checkpoint_reply(False, fetch, info)

    def normal(self, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
        """Drift check of the current model on the unlabelled random sample; state unchanged."""
        key, snapshot = self._parent(metadata)
        frame = self._frame(random, "random_dataframe")
        probabilities = predict_proba(self.model(snapshot.current), self._shape(frame_features(frame)))
        verdict = self.detect(snapshot.monitor_reference(), probabilities, frame_labels(frame), metadata)
        return Reply(verdict.drift, None, {
            "state": key, "flagged": verdict.drift, "detector": verdict.detector, "p_value": verdict.p_value,
            "statistic": verdict.statistic, "current": snapshot.current,
        })

    def detect(self, reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, metadata: dict) -> detectors.Verdict:
        config = self.settings.datacenter
        observation = detectors.Observation(reference, probabilities, labels, config,
                                            rng_for(self.settings.seed, "mmd", metadata.get("round")))
        try:
            return detectors.DETECTORS[config.detector].run(observation)
        except ValueError as exc:  # e.g. a labelled detector given no labels
            raise RequestError(str(exc)) from exc

    def prep_retraining(self, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
        """Open an episode: score every zoo model on post-shift data, start from the best."""
        key, snapshot = self._parent(metadata)
        round_id = str(metadata.get("round"))
        post = self._frame(random, "random_dataframe")
        method = self.settings.datacenter.selection
        labelled = None
        if method in ("leep", "logme"):
            labelled = self._frame(query, "query_dataframe", labelled=True)
        elif query is not None:
            labelled = self._frame(query, "query_dataframe", labelled=True)
        # the frames become arrays once, here at the boundary
        data = EpisodeData(
            post_x=frame_features(post), post_ids=post["id"].to_numpy(dtype=np.int64),
            x=frame_features(labelled) if labelled is not None else np.zeros((0, self.n_features), np.float32),
            y=frame_labels(labelled) if labelled is not None else np.zeros(0, np.int64),
            ids=labelled["id"].to_numpy(dtype=np.int64) if labelled is not None else np.zeros(0, np.int64),
        )
        scores = [self.transferability(entry.sha256, snapshot, data) for entry in snapshot.zoo]
        best = int(np.argmax(scores))  # ties: the earliest entry (the base model first)
        start = snapshot.zoo[best].sha256
        child_key = state_key(key, round_id, "prep_retraining", frame_digest(post) + frame_digest(labelled))
        monitor_ref = None
        n_labels = 0 if labelled is None else len(labelled)
        start_accuracy = None
        if labelled is not None:
            start_accuracy = accuracy_of(predict_proba(self.model(start), self._shape(data.x)), data.y)
        target = self.settings.datacenter.target_accuracy
        needed = target is None or start_accuracy is None or start_accuracy < target
        if needed:
            episode = Episode(id=child_key, round=round_id, start=start, iterations=0, labels_used=n_labels)
        else:
            # the shift is harmless for the chosen model: adopt it and its outputs here as the new
            # normal (no fine-tuning), so the same shift does not trigger again next round
            episode = None
            monitor_ref = predict_proba(self.model(start), self._reference_rows(data))
            data = None
        child = Snapshot(key, round_id, "prep_retraining", start, snapshot.zoo, episode, snapshot.references,
                         monitor_ref, data)
        self.store.save(child_key, child)
        ranking = {snapshot.zoo[i].sha256[:12]: round(float(s), 6) for i, s in enumerate(scores)}
        return self.checkpoint_reply(needed, start, {
            "start_accuracy": start_accuracy, "retraining_needed": needed,
            "state": child_key, "sha256": start, "selection": method, "selected_index": best,
            "selected_round": snapshot.zoo[best].round, "selected_shift": snapshot.zoo[best].shift,
            "score": float(scores[best]), "scores": json.dumps(ranking, sort_keys=True), "labels_used": n_labels,
        })

    def transferability(self, sha: str, snapshot: Snapshot, data: EpisodeData) -> float:
        model = self.model(sha)
        method = self.settings.datacenter.selection
        if method == "label_free":
            return selection.label_free_fit(snapshot.reference(sha), predict_proba(model, self._shape(data.post_x)))
        images, labels = self._shape(data.x), data.y
        if method == "leep":
            return selection.leep(predict_proba(model, images), labels, self.dataset.n_classes,
                                  prior=self.settings.datacenter.leep_prior)
        return selection.logme(embed(model, images), labels, self.dataset.n_classes)

    def retraining(self, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
        """One episode iteration: add the newly queried labels, fine-tune, register, reset the reference."""
        key, snapshot = self._parent(metadata)
        if snapshot.episode is None or snapshot.data is None:
            raise RequestError("retraining needs an open episode: send prep_retraining first and pass its state")
        episode, seen = snapshot.episode, snapshot.data
        config = self.settings.datacenter
        edge = self.settings.edge
        new = self._frame(query, "query_dataframe", labelled=True)
        if not may_query(edge.label_budget - episode.labels_used, episode.iterations, query_size=len(new),
                         max_iterations=edge.max_iterations):
            raise RequestError(f"these {len(new)} labels are past the episode's budget (max_iterations="
                               f"{edge.max_iterations}, label_budget={edge.label_budget}, used {episode.labels_used})")
        new_ids = new["id"].to_numpy(dtype=np.int64)
        if np.isin(new_ids, seen.ids).any():
            raise RequestError("query_dataframe repeats sample ids already labelled in this episode")
        previous = self.model(snapshot.current)
        new_x, new_y = frame_features(new), frame_labels(new)
        prequential = accuracy_of(predict_proba(previous, self._shape(new_x)), new_y)
        data = seen.with_labels(new_x, new_y, new_ids)
        model = finetune(self.model(episode.start), data.x, data.y, self.dataset, self.splits, config.finetune,
                         self.settings.seed, episode.id)
        spec = ModelSpec(self.settings.model.arch, self.dataset.image_shape, self.dataset.n_classes)
        _, sha = save_checkpoint(model, spec, self.store.checkpoints)
        self._models.setdefault(sha, model)
        post_x = self._shape(data.post_x)
        reference = predict_proba(model, self._reference_rows(data))
        post_now = predict_proba(model, post_x).argmax(1)
        post_before = predict_proba(previous, post_x).argmax(1)
        agreement = float(np.mean(post_now == post_before))
        iterations = episode.iterations + 1
        labels_used = episode.labels_used + len(new)
        metrics = {
            "source_eval_accuracy": accuracy(model, self.dataset.images[self.splits.evaluation],
                                             self.dataset.labels[self.splits.evaluation]),
            "prequential_accuracy": prequential, "agreement_with_previous": agreement,
            "train_labels": int(len(data.y)), "replay": int(config.finetune.replay),
        }
        round_id = str(metadata.get("round", episode.round))
        self.store.write_registry_entry(sha, {"parent": episode.start, "round": episode.round, "episode": episode.id,
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
        self.store.save(child_key, child)
        return self.checkpoint_reply(more, sha, {
            "state": child_key, "sha256": sha, "more_needed": more, "iteration": iterations,
            "labels_used": labels_used, "prequential_accuracy": prequential, "agreement": agreement,
            "converged": converged,
        })
