"""Fine-tuning that adapts without forgetting: episode labels plus a replay of source data."""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from mlcore.datasets import Dataset, Splits
from mlcore.seeding import rng_for
from mlcore.settings import FinetuneSettings
from mlcore.training import train_model


def replay_indices(splits: Splits, count: int, seed: int, episode: str) -> np.ndarray:
    """A fixed replay sample of source-training rows per episode (sorted dataset ids)."""
    pool = splits.source_train
    count = min(count, len(pool))
    return np.sort(rng_for(seed, "replay", episode).choice(pool, size=count, replace=False))


def finetune(
    start: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    dataset: Dataset,
    splits: Splits,
    settings: FinetuneSettings,
    seed: int,
    episode: str,
) -> nn.Module:
    """A copy of `start` trained on the episode's labelled rows + the replay sample.

    Always from the episode's start model on all labels so far, so the result depends on the
    labels, not on how many requests delivered them.
    """
    replay = replay_indices(splits, settings.replay, seed, episode)
    x = np.concatenate([images.reshape(len(images), *dataset.image_shape), dataset.images[replay]])
    y = np.concatenate([labels, dataset.labels[replay]])
    model = copy.deepcopy(start)
    return train_model(model, x, y, epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                       seed=seed, purpose=f"finetune:{episode}:{len(labels)}")
