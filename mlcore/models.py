"""The two model families (a small CNN and an MLP) with a penultimate embedding.

The embedding (`features`) feeds LogME selection and the k-center / BADGE query strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    image_shape: tuple[int, int]
    n_classes: int

    def to_dict(self) -> dict:
        return {"arch": self.arch, "image_shape": list(self.image_shape), "n_classes": self.n_classes}


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, a pool, and a 64-unit embedding; works for 8x8 and 28x28 inputs."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d((4, 4)), nn.Flatten(),
            nn.Linear(32 * 16, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, *self.image_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Two hidden layers on the flattened image."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        d = image_shape[0] * image_shape[1]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(len(x), -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"cnn": SmallCNN, "mlp": MLP}


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights."""
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown architecture {spec.arch!r}; known: {sorted(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[spec.arch](tuple(spec.image_shape), spec.n_classes)
