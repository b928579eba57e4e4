"""The two model families (a small CNN and an MLP) with a penultimate embedding.

The embedding (`features`) feeds LogME selection and the k-center / BADGE query strategies.
Both carry an `InputAdapter` in front: off (the identity, bit for bit) unless an episode
fitted it (datacenter/adaptation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
    """An affine warp of the image plane and an affine map of intensities: 8 numbers, and a
    router that says which inputs they are for.

    Much drift at a sensor is geometric or photometric (a tilted or shifted camera, another
    exposure, inverted polarity). Fitting these 8 numbers in front of a frozen model needs
    far fewer labels than fine-tuning its weights (benchmarks/results/learning.md). Off by
    default: an inactive adapter returns its input unchanged, so a model that never had one
    fitted computes exactly what it did before adapters existed.

    The router is a linear score of the pixels (episode data > 0 >= source data): a routed
    adapter warps only inputs that look like its episode's shift and lets the rest pass, so
    the model stays right on the source instead of undoing a shift that is not there. Where no
    linear score of the pixels tells the shift apart (rotations of MNIST digits, whose natural
    slant varies as much), the adapter can route by confidence instead (`confident`): the model
    reads each input both ways and keeps the more confident reading (`AdaptedNet`).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("active", torch.tensor(False))
        self.register_buffer("route_weight", torch.zeros(features))
        self.register_buffer("route_bias", torch.tensor(0.0))
        self.register_buffer("routed", torch.tensor(False))
        self.register_buffer("confident", torch.tensor(False))

    def set(self, degrees: float = 0.0, gain: float = 1.0, bias: float = 0.0) -> None:
        """Start from a rotation by `degrees` and intensities `gain * x + bias`, and switch on
        (for every input: no router)."""
        r = math.radians(degrees)
        with torch.no_grad():
            self.theta.copy_(torch.tensor([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0]]))
            self.gain.fill_(gain)
            self.bias.fill_(bias)
            self.active.fill_(True)
        self.unroute()

    def route(self, weight: Any, bias: float) -> None:
        """Warp only inputs whose flattened pixels score `x @ weight + bias > 0` (`weight`: a tensor or array)."""
        with torch.no_grad():
            self.route_weight.copy_(torch.as_tensor(weight, dtype=self.route_weight.dtype))
            self.route_bias.fill_(float(bias))
            self.routed.fill_(True)
            self.confident.fill_(False)

    def route_by_confidence(self) -> None:
        """Warp an input only where the model is more confident on the warped one (see `AdaptedNet`)."""
        self.unroute()
        with torch.no_grad():
            self.confident.fill_(True)

    def unroute(self) -> None:
        with torch.no_grad():
            self.route_weight.zero_()
            self.route_bias.zero_()
            self.routed.fill_(False)
            self.confident.fill_(False)

    def forward(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        """`x` as (n, 1, h, w); rows where `bypass` is True pass unchanged (replayed source rows),
        and so do rows the router does not send to the adapter."""
        if not bool(self.active):
            return x
        grid = F.affine_grid(self.theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        out = self.gain * F.grid_sample(x, grid, align_corners=False, padding_mode="zeros") + self.bias
        if bool(self.routed):
            source_like = x.flatten(1) @ self.route_weight + self.route_bias <= 0
            bypass = source_like if bypass is None else bypass | source_like
        if bypass is not None:
            out = torch.where(bypass.reshape(-1, 1, 1, 1), x, out)
        return out


def has_fitted_adapter(model: nn.Module) -> bool:
    """True for a model whose input adapter was fitted (is on), routed or not."""
    adapter = getattr(model, "adapter", None)
    return adapter is not None and bool(adapter.active)


def is_specialist(model: nn.Module) -> bool:
    """True for a model whose fitted adapter warps source inputs too: every input (no router;
    right only on its episode's shift, wrong on the source), or those it reads more surely warped
    (routed by confidence: MNIST's rotate-30 model reads upright digits 0.84 right, the base 0.93)."""
    return has_fitted_adapter(model) and not bool(model.adapter.routed)


class AdaptedNet(nn.Module):
    """A body and a head behind an `InputAdapter`; the embedding and the logits go through it.

    An adapter routed by confidence has each input read twice, warped and as it is, and keeps
    per input the reading whose top class probability is higher: an input of the episode's shift
    is read right once the warp undoes it, a source input as it was. It costs a second forward
    pass, and only such a model pays it. With an explicit `bypass` (training: the episode's rows
    through the adapter, replayed source rows past it) there is no choice to make.
    """

    def embed(self, x: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def read(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, logits) of `x`."""
        if bypass is not None or not bool(self.adapter.active) or not bool(self.adapter.confident):
            embedding = self.embed(x, bypass)
            return embedding, self.head(embedding)
        through = self.embed(x, torch.zeros(len(x), dtype=torch.bool, device=x.device))
        past = self.embed(x, torch.ones(len(x), dtype=torch.bool, device=x.device))
        logits_through, logits_past = self.head(through), self.head(past)
        warp = (logits_through.softmax(1).amax(1) > logits_past.softmax(1).amax(1)).unsqueeze(1)
        return torch.where(warp, through, past), torch.where(warp, logits_through, logits_past)

    def features(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.read(x, bypass)[0]

    def forward(self, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        return self.read(x, bypass)[1]


class SmallCNN(AdaptedNet):
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
        self.adapter = InputAdapter(image_shape[0] * image_shape[1])

    def embed(self, x: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        return self.body(self.adapter(x.reshape(-1, 1, *self.image_shape), bypass))


class MLP(AdaptedNet):
    """Two hidden layers on the flattened image."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        d = image_shape[0] * image_shape[1]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)
        self.adapter = InputAdapter(image_shape[0] * image_shape[1])

    def embed(self, x: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        return self.body(self.adapter(x.reshape(len(x), 1, *self.image_shape), bypass))


ARCHITECTURES = {"cnn": SmallCNN, "mlp": MLP}
#: State keys of the adapter: not written while it is off (and absent from checkpoints written
#: before adapters existed); loading fills them in, off.
ADAPTER_KEYS = ("adapter.theta", "adapter.gain", "adapter.bias", "adapter.active",
                "adapter.route_weight", "adapter.route_bias", "adapter.routed", "adapter.confident")
#: The router's keys: absent from adapters written before routers existed (those load unrouted).
ROUTER_KEYS = ADAPTER_KEYS[4:7]
#: Absent from adapters written before routing by confidence existed (those load without it).
CONFIDENCE_KEY = ADAPTER_KEYS[7]


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights."""
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown architecture {spec.arch!r}; known: {sorted(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[spec.arch](tuple(spec.image_shape), spec.n_classes)
