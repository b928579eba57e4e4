"""The data center: what every message needs (models, state, frames), and the dispatch.

Each message's decision lives in a module of its own — `check` (normal), `prepare`
(prep_retraining), `retrain` (retraining) — as a plain function of this object; the
handshake is here. No network code.

`DataCenter.handle(message_type, query_dataframe, random_dataframe, metadata)` is what the
protocol server (or `mlcore.contract.in_process`) calls. Each request names the parent state
it builds on (`metadata["state"]`) and the round; the reply (`mlcore.contract.Reply`) carries
the child state's key in `info["state"]` and, when it names a checkpoint, the checkpoint's
bytes: the model travels with the answer, so the edge never opens a data-center path.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlcore.checkpoints import load_checkpoint, save_checkpoint
from mlcore.contract import LabelNeeds, Reply
from mlcore.datasets import Dataset, Splits
from mlcore.frames import validate_sample_frame
from mlcore.models import ModelSpec
from mlcore.settings import Settings
from mlcore.training import accuracy_of, predict_proba

from . import detectors
from .check import check
from .errors import RequestError
from .harm_test import HarmTest
from .label_shift import prior_log_shift
from .prepare import prepare
from .queue import TrainingQueue
from .retrain import retrain
from .state import Snapshot, StateError, StateStore

log = logging.getLogger("datacenter")


class DataCenter:
    def __init__(self, settings: Settings, dataset: Dataset, splits: Splits, store: StateStore) -> None:
        self.settings = settings
        self.dataset = dataset
        self.splits = splits
        self.store = store
        self.n_features = dataset.image_shape[0] * dataset.image_shape[1]
        # Requests run in several threads at once (see datacenter/server.py). Cached models are
        # shared read-only (inference only; training works on a copy); loading one builds a
        # model under torch's global RNG (mlcore.models.build_model), so loads are serialised.
        self._models: dict[str, nn.Module] = {}
        self._source: dict[str, np.ndarray] = {}
        self._loading = threading.Lock()
        self.training_queue = TrainingQueue(settings.datacenter.trainings)  # only fine-tunes hold its slots

    # ---- helpers -------------------------------------------------------------------------
    def model(self, sha: str) -> nn.Module:
        model = self._models.get(sha)
        if model is None:
            with self._loading:
                model = self._models.get(sha)
                if model is None:
                    model, _ = load_checkpoint(self.store.checkpoint_path(sha), sha)
                    model = self._models.setdefault(sha, model)
        return model

    def checkpoint_reply(self, flag: bool, sha: str, info: dict[str, Any]) -> Reply:
        """A reply naming checkpoint `sha`, with its bytes (verified against the name)."""
        data = self.store.checkpoint_path(sha).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:  # the bytes read once, hashed as sent
            raise RequestError(f"the data center's copy of checkpoint {sha[:12]} is damaged")
        return Reply(flag, sha, info, data)

    def label_needs(self) -> LabelNeeds:
        """Which labels this data center's detector and selection need from the edge."""
        config = self.settings.datacenter
        return LabelNeeds(check=self.settings.edge.random_sample if detectors.DETECTORS[config.detector].needs_labels else 0,
                          prepare=config.selection_labels)

    def source_view(self, sha: str) -> tuple[np.ndarray, np.ndarray]:
        """Model `sha`'s outputs on the labelled, held-out source reference split, and the labels.

        What the label-free estimates (ATC, DoC) and the label-shift test are fitted on.
        """
        source = self._source.get(sha)
        if source is None:  # two threads may both compute it: the same array, the first one kept
            source = self._source.setdefault(sha, predict_proba(self.model(sha), self.dataset.images[self.splits.reference]))
        return source, self.dataset.labels[self.splits.reference]

    def reference_accuracy(self, snapshot: Snapshot) -> float:
        """The standard a model is held to: the base model's accuracy on held-out source data."""
        probabilities, labels = self.source_view(snapshot.zoo[0].sha256)
        return accuracy_of(probabilities, labels)

    def harm_test(self, snapshot: Snapshot) -> HarmTest:
        return HarmTest.from_settings(self.reference_accuracy(snapshot), self.settings.datacenter.harm_check)

    def reweighted(self, sha: str, weights: np.ndarray) -> str:
        """A copy of model `sha` whose class priors are multiplied by `weights` (a bias shift), saved."""
        model = copy.deepcopy(self.model(sha))
        with torch.no_grad():
            model.head.bias += torch.from_numpy(prior_log_shift(weights).astype(np.float32))
        _, child = save_checkpoint(model, self.model_spec(), self.store.checkpoints)
        self._models.setdefault(child, model)
        return child

    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.settings.model.arch, self.dataset.image_shape, self.dataset.n_classes)

    def as_images(self, features: np.ndarray) -> np.ndarray:
        """Flat feature rows as images (the model's input shape)."""
        return features.reshape(len(features), *self.dataset.image_shape)

    def parent_state(self, metadata: dict[str, Any]) -> tuple[str, Snapshot]:
        key = metadata.get("state")
        if key is None:
            raise RequestError("the request must carry extra={'state': <parent state key>, 'round': <round id>}")
        try:
            return key, self.store.load(key)
        except StateError as exc:
            raise RequestError(str(exc)) from exc

    def sample_frame(self, frame: Any, name: str, *, labelled: bool = False) -> pd.DataFrame:
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
        handlers = {"handshake": DataCenter.handshake, "normal": check, "prep_retraining": prepare,
                    "retraining": retrain}
        if message_type not in handlers:
            raise RequestError(f"unknown message type {message_type!r}; known: {sorted(handlers)}")
        reply = handlers[message_type](self, query_dataframe, random_dataframe, metadata)
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
        key, snapshot = self.parent_state(metadata)
        info.update(state=key, current=snapshot.current, zoo_size=len(snapshot.zoo))
        fetch = metadata.get("fetch")
        if fetch is None:
            return Reply(False, None, info)
        if fetch != snapshot.current and fetch not in {entry.sha256 for entry in snapshot.zoo}:
            raise RequestError(f"checkpoint {str(fetch)[:12]} is not in the lineage of state {key[:12]}")
        return self.checkpoint_reply(False, fetch, info)
