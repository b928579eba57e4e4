"""Base training: the base model (and optional zoo seed models) and the root state."""

from __future__ import annotations

import hashlib
import json
import logging

from mlcore.checkpoints import save_checkpoint
from mlcore.datasets import Dataset, Splits
from mlcore.models import ModelSpec, build_model
from mlcore.seeding import derive_seed, rng_for
from mlcore.settings import Settings
from mlcore.shifts import apply_image_shifts, parse_shift_list, shift_tag
from mlcore.training import accuracy, accuracy_of, predict_proba, train_model

from .state import Snapshot, StateStore, ZooEntry, state_key

log = logging.getLogger("datacenter")


def _train_one(settings: Settings, dataset: Dataset, splits: Splits, shifts: tuple, name: str):
    spec = ModelSpec(settings.model.arch, dataset.image_shape, dataset.n_classes)
    shift_rng = rng_for(settings.seed, "zoo-shift", name)
    train_x = apply_image_shifts(dataset.images[splits.source_train], shifts, shift_rng) if shifts else dataset.images[splits.source_train]
    reference_x = apply_image_shifts(dataset.images[splits.reference], shifts, shift_rng) if shifts else dataset.images[splits.reference]
    model = build_model(spec, derive_seed(settings.seed, "init", name))
    train_model(model, train_x, dataset.labels[splits.source_train], epochs=settings.model.epochs,
                lr=settings.model.lr, batch_size=settings.model.batch_size, seed=settings.seed, purpose=f"base:{name}")
    reference = predict_proba(model, reference_x)
    metrics = {
        "eval_accuracy": accuracy(model, dataset.images[splits.evaluation], dataset.labels[splits.evaluation]),
        "reference_accuracy": accuracy_of(reference, dataset.labels[splits.reference]),
    }
    return model, spec, reference, metrics


def train_base(settings: Settings, dataset: Dataset, splits: Splits, store: StateStore) -> dict:
    """Train, save content-addressed checkpoints with registry entries, write the root state."""
    zoo, references, base_result = [], {}, None
    jobs = [("base", ())] + [(f"seed{i}", parse_shift_list(raw, f"zoo.seed_shifts[{i}]")) for i, raw in enumerate(settings.zoo.seed_shifts)]
    for name, shifts in jobs:
        model, spec, reference, metrics = _train_one(settings, dataset, splits, shifts, name)
        path, sha = save_checkpoint(model, spec, store.checkpoints)
        tag = shift_tag(shifts)
        store.write_registry_entry(sha, {"parent": None, "round": None, "episode": None, "kind": name,
                                         "shift": tag, "labels_used": 0, "metrics": metrics})
        zoo.append(ZooEntry(sha, None, None, None, tag, 0))
        references[sha] = reference
        log.info("trained %s model (shift %s): sha256 %s, eval accuracy %.3f", name, tag, sha[:12], metrics["eval_accuracy"])
        if base_result is None:
            base_result = {"checkpoint": str(path), "sha256": sha, "metrics": metrics}
    digest = hashlib.sha256(json.dumps([e.sha256 for e in zoo]).encode()).hexdigest()
    root = Snapshot(parent=None, round=None, message="train-base", current=zoo[0].sha256, zoo=tuple(zoo), references=references)
    key = store.save(state_key(None, None, "train-base", digest), root)
    log.info("root state %s with %d zoo model(s)", key[:12], len(zoo))
    return {**base_result, "state": key}
