"""Typed settings read from config.yaml, with defaults; a bad value names its field.

Only the sections listed here are read. Unknown keys *inside* these sections are refused
(a typo should not silently fall back to a default); other top-level keys belong to the
workflow and are ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .yamlfile import read_yaml


class SettingsError(ValueError):
    """The configuration is wrong; the message names the field."""


@dataclass(frozen=True)
class DatasetSettings:
    name: Literal["digits", "mnist", "table", "folder"] = "digits"
    path: str | None = None
    source_fraction: float = 0.5
    stream_fraction: float = 0.3
    reference_fraction: float = 0.2  # of the source split, held out of training for the KS reference


@dataclass(frozen=True)
class ModelSettings:
    arch: Literal["cnn", "mlp"] = "cnn"
    epochs: int = 30
    lr: float = 0.003
    batch_size: int = 64


@dataclass(frozen=True)
class ZooSettings:
    seed_shifts: list = field(default_factory=list)  # each item: a shift list, e.g. [{name: rotate, degrees: 30}]


@dataclass(frozen=True)
class EdgeSettings:
    batch_size: int = 200
    random_sample: int = 100
    strategy: Literal["entropy", "margin", "least_confidence", "uniform", "kcenter", "badge"] = "margin"
    query_size: int = 10
    max_iterations: int = 6
    label_budget: int = 60


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 20
    lr: float = 0.002
    replay: int = 200
    batch_size: int = 32


@dataclass(frozen=True)
class DatacenterSettings:
    detector: Literal["ks", "mmd", "ece", "entropy"] = "ks"
    alpha: float = 0.01
    selection: Literal["leep", "logme", "label_free"] = "logme"
    selection_labels: int = 10
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    target_accuracy: float | None = None
    leep_prior: float = 1.0  # pseudo-samples per class mapped to itself in LEEP (0 = the paper's LEEP)
    stop_agreement: float = 0.98  # stop an episode when two successive models agree this much
    mmd_permutations: int = 200
    entropy_threshold: float = 0.5
    ece_threshold: float = 0.15


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    zoo: ZooSettings = field(default_factory=ZooSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    datacenter: DatacenterSettings = field(default_factory=DatacenterSettings)
    device: Literal["cpu", "cuda"] = "cpu"


_RANGES: dict[str, tuple[float | None, float | None]] = {
    "dataset.source_fraction": (0.01, 0.98),
    "dataset.stream_fraction": (0.01, 0.98),
    "dataset.reference_fraction": (0.01, 0.9),
    "model.epochs": (1, None),
    "model.lr": (1e-9, 10.0),
    "model.batch_size": (1, None),
    "edge.batch_size": (1, None),
    "edge.random_sample": (2, None),
    "edge.query_size": (1, None),
    "edge.max_iterations": (0, 1000),
    "edge.label_budget": (0, None),
    "datacenter.alpha": (1e-12, 0.5),
    "datacenter.selection_labels": (0, None),
    "datacenter.finetune.epochs": (1, None),
    "datacenter.finetune.lr": (1e-9, 10.0),
    "datacenter.finetune.replay": (0, None),
    "datacenter.finetune.batch_size": (1, None),
    "datacenter.target_accuracy": (0.0, 1.0),
    "datacenter.stop_agreement": (0.0, 1.0),
    "datacenter.leep_prior": (0.0, 1000.0),
    "datacenter.mmd_permutations": (10, None),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise SettingsError(f"{where}: must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: must be a string, got {value!r}")
        return value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise SettingsError(f"{where}: must be a list, got {value!r}")
        return value
    raise SettingsError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover


def _build(cls: type, raw: Any, where: str, *, strict: bool = True) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{where or 'config'}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown and strict:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    values = {}
    for name in names & set(raw):
        path = f"{where}.{name}" if where else name
        value = _coerce(raw[name], hints[name], path)
        low, high = _RANGES.get(path, (None, None))
        if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                raise SettingsError(f"{path}: must be within [{low}, {high}], got {value!r}")
        values[name] = value
    return cls(**values)


def settings_from_dict(raw: Any) -> Settings:
    """Build settings from a parsed config mapping (top-level keys of other owners ignored)."""
    settings = _build(Settings, raw, "", strict=False)
    if settings.dataset.source_fraction + settings.dataset.stream_fraction >= 1.0:
        raise SettingsError("dataset.source_fraction + dataset.stream_fraction must leave room for the evaluation split (< 1)")
    if settings.dataset.name in ("table", "folder") and not settings.dataset.path:
        raise SettingsError(f"dataset.path: required for dataset.name={settings.dataset.name!r}")
    if settings.edge.random_sample > settings.edge.batch_size:
        raise SettingsError("edge.random_sample: must not exceed edge.batch_size")
    from .shifts import parse_shift_list  # local import: shifts pulls scipy

    for i, shift in enumerate(settings.zoo.seed_shifts):
        parse_shift_list(shift, where=f"zoo.seed_shifts[{i}]")
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config YAML file."""
    return settings_from_dict(read_yaml(path, SettingsError, "config") or {})
