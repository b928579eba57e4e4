"""The two model families (a small CNN and an MLP) with a penultimate embedding.

The embedding (`features`) feeds LogME selection and the k-center / BADGE query strategies.
Both carry an `InputAdapter` in front: off (the identity, bit for bit) unless an episode
fitted it (datacenter/adaptation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    image_shape: tuple[int, int]
    n_classes: int

    def to_dict(self) -> dict:
        return {"arch": self.arch, "image_shape": list(self.image_shape), "n_classes": self.n_classes}


class InputAdapter(nn.Module):
    """An affine warp of the image plane and an affine map of intensities: 8 numbers.

    Much drift at a sensor is geometric or photometric (a tilted or shifted camera, another
    exposure, inverted polarity). Fitting these 8 numbers in front of a frozen model needs
    far fewer labels than fine-tuning its weights (benchmarks/results/learning.md). Off by
    default: an inactive adapter returns its input unchanged, so a model that never had one
    fitted computes exactly what it did before adapters existed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("active", torch.tensor(False))

    def set(self, degrees: float = 0.0, gain: float = 1.0, bias: float = 0.0) -> None:
        """Start from a rotation by `degrees` and intensities `gain * x + bias`, and switch on."""
        r = math.radians(degrees)
        with torch.no_grad():
            self.theta.copy_(torch.tensor([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0]]))
            self.gain.fill_(gain)
            self.bias.fill_(bias)
            self.active.fill_(True)

    def forward(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        """`x` as (n, 1, h, w); rows where `bypass` is True pass unchanged (replayed source rows)."""
        if not bool(self.active):
            return x
        grid = F.affine_grid(self.theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        out = self.gain * F.grid_sample(x, grid, align_corners=False, padding_mode="zeros") + self.bias
        if bypass is not None:
            out = torch.where(bypass.reshape(-1, 1, 1, 1), x, out)
        return out


def has_fitted_adapter(model: nn.Module) -> bool:
    """True for a specialist: a model whose input adapter was fitted (is on)."""
    adapter = getattr(model, "adapter", None)
    return adapter is not None and bool(adapter.active)


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
        self.adapter = InputAdapter()

    def features(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(self.adapter(x.reshape(-1, 1, *self.image_shape), bypass))

    def forward(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, bypass))


class MLP(nn.Module):
    """Two hidden layers on the flattened image."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        d = image_shape[0] * image_shape[1]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)
        self.adapter = InputAdapter()

    def features(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(self.adapter(x.reshape(len(x), 1, *self.image_shape), bypass))

    def forward(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, bypass))


ARCHITECTURES = {"cnn": SmallCNN, "mlp": MLP}
#: State keys of the adapter: not written while it is off (and absent from checkpoints written
#: before adapters existed); loading fills them in, off.
ADAPTER_KEYS = ("adapter.theta", "adapter.gain", "adapter.bias", "adapter.active")


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights."""
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown architecture {spec.arch!r}; known: {sorted(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[spec.arch](tuple(spec.image_shape), spec.n_classes)
