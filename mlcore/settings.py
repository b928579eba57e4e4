"""Typed settings read from config.yaml, with defaults; a bad value names its field.

What is allowed (types, ranges, the names of datasets, strategies, detectors, ...) is
stated once, in workflow/schemas/config.schema.yaml; these classes trust a mapping that
passed it. Only the sections listed here are read; unknown keys *inside* them are refused
by the schema (a typo should not silently fall back to a default); other top-level keys
belong to the workflow and are ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .yamlfile import check_schema, read_yaml


class SettingsError(ValueError):
    """The configuration is wrong; the message names the field."""


@dataclass(frozen=True)
class DatasetSettings:
    name: str = "digits"  # schema: dataset.name
    path: str | None = None
    source_fraction: float = 0.5
    stream_fraction: float = 0.3
    reference_fraction: float = 0.2  # of the source split, held out of training for the KS reference
    subset: int | None = None  # keep this many rows (class-stratified, by seed) before splitting; MNIST in CI


@dataclass(frozen=True)
class ModelSettings:
    arch: str = "cnn"  # schema: model.arch
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
    strategy: str = "margin"  # schema: edge.strategy
    query_size: int = 10
    max_iterations: int = 6
    label_budget: int = 60
    evaluation_size: int = 500  # held-out rows per round, with the round's shift: the reported accuracy
    train_before_query: bool = True  # an episode's first fine-tune uses the check's uniform labels alone


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 30  # as config/config.yaml
    lr: float = 0.005
    replay: int = 800  # source rows replayed: 800 rather than 200 is +1 point under the shift and on clean data (benchmarks/results/finetune.md)
    batch_size: int = 32
    pseudo_confidence: float = 0.95  # 0: off; else also train on confident predictions for the unlabelled random sample
    input_adapter: bool = True  # fit the model's input adapter (an affine warp and intensity map, routed) before fine-tuning
    route_by_confidence: bool = True  # where the router cannot tell the episode from the source, route the adapter by confidence


@dataclass(frozen=True)
class HarmCheckSettings:
    """The second stage after a flag: a truncated SPRT on uniformly random labels.

    H0 (benign): accuracy >= reference - tolerance; H1 (harmful): accuracy <= reference - harm.
    """

    enabled: bool = True
    batch: int = 5  # labels asked per step
    max_labels: int = 40  # truncation: decide by the estimate when reached
    tolerance: float = 0.02
    harm: float = 0.10
    alpha: float = 0.05  # P(call a benign shift harmful)
    beta: float = 0.01  # P(call a harmful shift benign)
    label_free_drop: float = 0.04  # a benign call is disputed when the DoC estimate is this far below the reference, unrefuted by the labels (1: off)
    disputed_labels: int = 80  # a disputed benign call: the test runs on to this many labels (at most the random sample), which decide
    confirm: bool = True  # a benign call is tested once more, on fresh labels, when its shift is seen again and the model's own window still flags it


@dataclass(frozen=True)
class DatacenterSettings:
    detector: str = "ks"  # schema: datacenter.detector
    alpha: float = 0.01
    selection: str = "likelihood"  # schema: datacenter.selection
    selection_labels: int = 10  # uniform labels at least, for selection and validation
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    harm_check: HarmCheckSettings = field(default_factory=HarmCheckSettings)
    label_shift: bool = True  # on a flag, test whether a label-prior shift explains it (BBSE) and re-weight
    leep_prior: float = 0.0  # pseudo-samples per class mapped to itself in LEEP (0 = the paper's LEEP)
    stop_agreement: float = 0.98  # stop an episode when two successive models agree this much
    stop_query_accuracy: float | None = 0.9  # stop an episode when the model got this share of a query batch right before training on it (None: off)
    recognise_zoo: bool = True  # on a flag, adopt a zoo model whose own window the sample matches (no labels)
    stop_on_stall: bool = False  # stop an episode when a model of its 2nd iteration or later still does not beat its start
    mmd_permutations: int = 200
    entropy_threshold: float = 0.5
    ece_threshold: float = 0.15
    trainings: int = 1  # fine-tunes run at once (the rest queue, fair across edges); 1 on 2 cores leaves one to checks


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    zoo: ZooSettings = field(default_factory=ZooSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    datacenter: DatacenterSettings = field(default_factory=DatacenterSettings)


def _build(cls: type, raw: dict | None) -> Any:
    """The dataclass `cls` from an already validated mapping (nested sections built likewise)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in (raw or {}):
            continue
        value, hint = raw[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif float in (hint, *typing.get_args(hint)) and isinstance(value, int):
            value = float(value)  # YAML/JSON `1` for a float setting
        values[f.name] = value
    return cls(**values)


def settings_from_dict(raw: Any) -> Settings:
    """Build settings from a parsed config mapping (top-level keys of other owners ignored).

    Checked against workflow/schemas/config.schema.yaml first (the one validator of
    config.yaml), then the rules a schema cannot state.
    """
    check_schema(raw, "config.schema.yaml", SettingsError, open_top=True)
    settings = _build(Settings, raw)
    if settings.dataset.source_fraction + settings.dataset.stream_fraction >= 1.0:
        raise SettingsError("dataset.source_fraction + dataset.stream_fraction must leave room for the evaluation split (< 1)")
    if settings.edge.random_sample > settings.edge.batch_size:
        raise SettingsError("edge.random_sample: must not exceed edge.batch_size")
    datacenter = settings.datacenter
    harm = datacenter.harm_check
    if max(harm.max_labels, datacenter.selection_labels) > settings.edge.random_sample:
        raise SettingsError("datacenter.harm_check.max_labels and datacenter.selection_labels: uniform labels come "
                            f"from the random sample, so neither may exceed edge.random_sample ({settings.edge.random_sample})")
    if harm.disputed_labels < harm.max_labels:
        raise SettingsError("datacenter.harm_check.disputed_labels: a disputed call runs on past max_labels "
                            f"({harm.max_labels}), so it may not be smaller")
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config YAML file."""
    return settings_from_dict(read_yaml(path, SettingsError, "config") or {})
