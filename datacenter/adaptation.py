"""Two ways to adapt to an episode's labels: fine-tune the weights (with a replay of source
data, against forgetting), and, when `finetune.input_adapter` is on, first fit the 8 numbers
of the model's input adapter in front of its frozen weights (a geometric or photometric shift
undone with few labels), with a router that sends only inputs of the episode's shift through
it (`fit_router`), or, where no router of the pixels tells them apart, routed by the model's
own confidence: the model learns the shift and keeps the source."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from mlcore.datasets import Dataset, Splits
from mlcore.models import has_fitted_adapter
from mlcore.seeding import rng_for
from mlcore.settings import FinetuneSettings
from mlcore.training import predict_proba, train_model


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
    # replayed source rows skip a fitted adapter: it undoes the episode's shift, which they do not carry
    bypass = np.arange(len(x)) >= len(images) if has_fitted_adapter(model) else None
    return train_model(model, x, y, epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                       seed=seed, purpose=f"finetune:{episode}:{len(labels)}", bypass=bypass)


#: Where the adapter's fit starts: rotations (degrees) x polarity (gain, bias). Gradient
#: descent alone cannot cross from gain 1 to -1 (at 0 the image is blank) nor far in angle.
ADAPTER_STARTS = tuple(itertools.product((-30.0, -15.0, 0.0, 15.0, 30.0), ((1.0, 0.0), (-1.0, 1.0))))
#: Adam steps for every start, then for the `ADAPTER_KEEP` best of them.
ADAPTER_SCOUT_STEPS, ADAPTER_STEPS, ADAPTER_KEEP = 40, 110, 2
ADAPTER_LR = 0.02


def fit_input_adapter(start: nn.Module, images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """A copy of `start` whose input adapter is fitted to the labelled rows; its weights frozen.

    Full-batch Adam on cross-entropy from each of `ADAPTER_STARTS` (and from the start's own
    adapter, when it has one fitted) for a few steps; the best few go on; the lowest training
    loss wins. Deterministic: no sampling anywhere.
    """
    if not hasattr(start, "adapter"):
        raise TypeError(f"{type(start).__name__} has no input adapter")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    runs = []
    for origin in ([None] if has_fitted_adapter(start) else []) + list(ADAPTER_STARTS):
        model = copy.deepcopy(start)
        model.adapter.unroute()  # fitted on the episode's rows, every one of them through the adapter
        if origin is not None:
            degrees, (gain, bias) = origin
            model.adapter.set(degrees, gain, bias)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        fitted = [model.adapter.theta, model.adapter.gain, model.adapter.bias]
        for parameter in fitted:
            parameter.requires_grad_(True)
        runs.append((model, torch.optim.Adam(fitted, lr=ADAPTER_LR)))
    scored = [(_descend(model, optimizer, x, y, ADAPTER_SCOUT_STEPS), k) for k, (model, optimizer) in enumerate(runs)]
    finalists = [k for _, k in sorted(scored)[:ADAPTER_KEEP]]
    _, best = min((_descend(*runs[k], x, y, ADAPTER_STEPS), k) for k in finalists)
    model = runs[best][0]
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _descend(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """`steps` full-batch steps; the training loss after them (NaN counts as infinite)."""
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    return loss if loss == loss else float("inf")


#: The router is used only if it tells the episode's rows from source rows this well, held out
#: (balanced accuracy); else the episode gets no adapter (a shift a linear score of the pixels
#: cannot tell from the source is one the adapter must not be asked to undo for some inputs only).
ROUTER_MIN_ACCURACY = 0.95
#: Source rows drawn per episode row, and their most.
ROUTER_SOURCE_RATIO, ROUTER_MAX_SOURCE = 3, 600


@dataclass(frozen=True)
class Router:
    """A linear score of the flattened pixels: > 0 for the episode's shift, <= 0 for the source."""

    weight: np.ndarray  # (features,) float32
    bias: float
    held_out_accuracy: float  # balanced, on a quarter of the rows held out of its fit


def fit_router(target: np.ndarray, dataset: Dataset, splits: Splits, seed: int, episode: str) -> Router:
    """A logistic regression of the episode's rows (`target`, flattened images) against source rows.

    Deterministic: the source rows and the held-out quarter are drawn from the seed and the
    episode; lbfgs. The features are standardised for the fit and the scaling folded into the
    weights, so the model needs only the raw pixels."""
    target = target.reshape(len(target), -1).astype(np.float64)
    pool = splits.source_train
    count = min(len(pool), ROUTER_MAX_SOURCE, ROUTER_SOURCE_RATIO * len(target))
    rng = rng_for(seed, "router", episode)
    source = dataset.images[np.sort(rng.choice(pool, size=count, replace=False))].reshape(count, -1).astype(np.float64)
    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(len(source), dtype=np.int64), np.ones(len(target), dtype=np.int64)])
    held = np.zeros(len(x), dtype=bool)
    for label in (0, 1):  # a quarter of each class held out
        rows = np.flatnonzero(y == label)
        held[rng.choice(rows, size=max(1, len(rows) // 4), replace=False)] = True
    probe = _logistic(x[~held], y[~held])
    predicted = (x[held] @ probe[0] + probe[1]) > 0
    accuracy = float(np.mean([np.mean(predicted[y[held] == label] == label) for label in (0, 1)]))
    weight, bias = _logistic(x, y)
    return Router(weight.astype(np.float32), float(bias), accuracy)


def _logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(weight, bias) of a class-balanced logistic regression, on the raw features."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-6] = 1.0
    fit = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    weight = fit.coef_[0] / scale
    return weight, float(fit.intercept_[0] - weight @ mean)


@dataclass(frozen=True)
class Adapted:
    """An episode iteration's model and what went into it (for the registry)."""

    model: nn.Module
    router: Router | None  # None: the input adapter is off
    pseudo_labels: int  # unlabelled rows self-training added


def adapt(start: nn.Module, train_x: np.ndarray, train_y: np.ndarray, sample_x: np.ndarray, unlabelled_x: np.ndarray,
          dataset: Dataset, splits: Splits, settings: FinetuneSettings, seed: int, episode: str) -> Adapted:
    """The model an episode iteration trains from its start, on its labelled rows so far.

    With `settings.input_adapter`, a router is fitted on the episode's rows (`sample_x`, the
    random sample, and `train_x`) against source rows; if it tells them apart, the start's
    input adapter is fitted to the labels first, and routed by that router; if not, with
    `settings.route_by_confidence`, fitted all the same and routed by the model's confidence.
    Then a fine-tune (`finetune`), and with `settings.pseudo_confidence` > 0 a second one from
    the same origin with the rows of `unlabelled_x` (never labelled, never held back) that the
    first predicts that confidently.
    Rows are flat features; a pure function of its inputs (the data center's `retrain` and
    benchmarks/finetune_bench.py both call it).
    """
    shape = dataset.image_shape
    origin, router = start, None
    if settings.input_adapter:  # undo what of the shift an affine map of the input can, then fine-tune
        router = fit_router(np.concatenate([sample_x, train_x]), dataset, splits, seed, episode)
        by_router = router.held_out_accuracy >= ROUTER_MIN_ACCURACY  # only for inputs that carry the shift
        if by_router or settings.route_by_confidence:  # else no linear score tells them apart: the confidence does
            origin = fit_input_adapter(start, train_x.reshape(len(train_x), *shape), train_y)
            if by_router:
                origin.adapter.route(router.weight, router.bias)
            else:
                origin.adapter.route_by_confidence()
    model = finetune(origin, train_x, train_y, dataset, splits, settings, seed, episode)
    pseudo = confident_rows(model, unlabelled_x, shape, settings.pseudo_confidence)
    if pseudo is not None:  # self-training: once more from the origin, the confident predictions added
        model = finetune(origin, np.concatenate([train_x, pseudo[0]]), np.concatenate([train_y, pseudo[1]]),
                         dataset, splits, settings, seed, episode)
    return Adapted(model, router, 0 if pseudo is None else len(pseudo[1]))


def confident_rows(model: nn.Module, x: np.ndarray, shape: tuple[int, ...],
                   confidence: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of `x` that `model` predicts at least `confidence` sure, with that prediction as
    their label (None: off, no rows, or none so sure)."""
    if confidence <= 0.0 or not len(x):
        return None
    probabilities = predict_proba(model, x.reshape(len(x), *shape))
    sure = probabilities.max(1) >= confidence
    if not sure.any():
        return None
    return x[sure], probabilities.argmax(1)[sure].astype(np.int64)
