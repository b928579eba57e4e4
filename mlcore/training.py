"""Train, predict and embed: the plain loop of pytorch/examples, seeded end to end."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .seeding import torch_generator

log = logging.getLogger("training")


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def train_model(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    purpose: str = "train",
    bypass: np.ndarray | None = None,
) -> nn.Module:
    """Adam on cross-entropy; shuffling comes from a generator seeded by (seed, purpose).

    `bypass` marks rows (replayed source data) that skip the model's input adapter: they
    teach the weights behind it, not how to undo a shift they do not carry."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"training needs as many labels as images (> 0), got {len(images)} and {len(labels)}")
    x, y = _tensor(images), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    skip = None if bypass is None else torch.from_numpy(np.asarray(bypass, dtype=bool))
    generator = torch_generator(seed, purpose)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[rows]) if skip is None else model(x[rows], skip[rows]), y[rows])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        log.info("%s: epoch %d/%d, training loss %.4f (%d samples)", purpose, epoch, epochs, total / len(x), len(x))
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Softmax outputs (n, classes) float32, in row order (never shuffled)."""
    model.eval()
    x = _tensor(images)
    parts = [torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy().astype(np.float32) if parts else np.zeros((0, 0), np.float32)


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Penultimate-layer features (n, d) float32, in row order."""
    model.eval()
    x = _tensor(images)
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy().astype(np.float32)


def accuracy_of(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose most probable class is the label (NaN for no rows)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Evaluation only: never feeds a decision."""
    return accuracy_of(predict_proba(model, images), labels) if len(labels) else float("nan")
