"""Drift simulator: image shifts and label-prior shifts, parsed from explicit specs.

A spec is a list of steps applied in order, e.g. `[{name: rotate, degrees: 15}, {name: thicker}]`;
`[]` means no shift. Images are float32 arrays (n, height, width) with values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage


class ShiftError(ValueError):
    """A shift spec is wrong; the message names the field."""


@dataclass(frozen=True)
class Shift:
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str) -> Any:
        return dict(self.params)[key]

    def tag(self) -> str:
        values = "".join(f"{v:g}" if isinstance(v, (int, float)) else "" for _, v in self.params)
        return f"{self.name}{values}"


def _rotate(images: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    return ndimage.rotate(images, degrees, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)


def _thicker(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.grey_dilation(images, size=(1, 2, 2))


def _thinner(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.grey_erosion(images, size=(1, 2, 2))


def _noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return images + rng.normal(0.0, sigma, size=images.shape)


def _blur(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma))


def _contrast(images: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    return images * factor


def _invert(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - images


def _translate(images: np.ndarray, rng: np.random.Generator, dx: float, dy: float) -> np.ndarray:
    order = 0 if float(dx).is_integer() and float(dy).is_integer() else 1
    return ndimage.shift(images, (0, dy, dx), order=order, mode="constant", cval=0.0)


# name -> (function, {param: (default or None if required, low, high)})
_IMAGE_SHIFTS: dict[str, tuple[Callable[..., np.ndarray], dict[str, tuple[float | None, float, float]]]] = {
    "rotate": (_rotate, {"degrees": (None, -360.0, 360.0)}),
    "thicker": (_thicker, {}),
    "thinner": (_thinner, {}),
    "noise": (_noise, {"sigma": (None, 0.0, 10.0)}),
    "blur": (_blur, {"sigma": (None, 0.0, 10.0)}),
    "contrast": (_contrast, {"factor": (None, 0.0, 10.0)}),
    "invert": (_invert, {}),
    "translate": (_translate, {"dx": (0.0, -100.0, 100.0), "dy": (0.0, -100.0, 100.0)}),
}
SHIFT_NAMES = (*_IMAGE_SHIFTS, "label_prior")


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ShiftError(f"{where}: must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ShiftError(f"{where}: must be within [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _parse_label_prior(raw: dict, where: str) -> Shift:
    extra = sorted(set(raw) - {"name", "weights", "classes"})
    if extra:
        raise ShiftError(f"{where}: unknown parameter(s) {extra} for label_prior (use weights or classes)")
    if ("weights" in raw) == ("classes" in raw):
        raise ShiftError(f"{where}: label_prior needs exactly one of weights (a list per class) or classes (kept classes)")
    if "weights" in raw:
        weights = raw["weights"]
        if not isinstance(weights, list) or not weights:
            raise ShiftError(f"{where}.weights: must be a non-empty list of numbers")
        values = tuple(_number(w, f"{where}.weights[{i}]", 0.0, 1e9) for i, w in enumerate(weights))
        if sum(values) <= 0:
            raise ShiftError(f"{where}.weights: must not all be zero")
        return Shift("label_prior", (("weights", values),))
    classes = raw["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise ShiftError(f"{where}.classes: must be a non-empty list of class indices")
    return Shift("label_prior", (("classes", tuple(sorted(set(classes)))),))


def parse_shift(raw: Any, where: str = "shift") -> Shift:
    """One step: a mapping with `name` and its parameters; a bad one raises ShiftError naming it."""
    if not isinstance(raw, dict) or "name" not in raw:
        raise ShiftError(f"{where}: must be a mapping with a 'name' (one of {list(SHIFT_NAMES)}), got {raw!r}")
    name = raw["name"]
    if name == "label_prior":
        return _parse_label_prior(raw, where)
    if name not in _IMAGE_SHIFTS:
        raise ShiftError(f"{where}.name: unknown shift {name!r}; known: {list(SHIFT_NAMES)}")
    spec = _IMAGE_SHIFTS[name][1]
    extra = sorted(set(raw) - {"name"} - set(spec))
    if extra:
        raise ShiftError(f"{where}: unknown parameter(s) {extra} for {name}; known: {sorted(spec)}")
    params = []
    for key, (default, low, high) in spec.items():
        if key not in raw:
            if default is None:
                raise ShiftError(f"{where}.{key}: required for {name}")
            params.append((key, default))
        else:
            params.append((key, _number(raw[key], f"{where}.{key}", low, high)))
    return Shift(name, tuple(params))


def parse_shift_list(raw: Any, where: str = "shift") -> tuple[Shift, ...]:
    """A composition: a list of steps (or None / [] for none)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ShiftError(f"{where}: must be a list of shift steps, got {type(raw).__name__}")
    return tuple(parse_shift(item, f"{where}[{i}]") for i, item in enumerate(raw))


def shift_tag(shifts: tuple[Shift, ...]) -> str:
    """A short readable tag: 'none', 'rotate15', 'rotate15+thicker'."""
    return "+".join(s.tag() for s in shifts) if shifts else "none"


def apply_image_shifts(images: np.ndarray, shifts: tuple[Shift, ...], rng: np.random.Generator) -> np.ndarray:
    """Apply the image steps in order (label_prior steps act on sampling, not pixels); clip to [0, 1]."""
    if images.ndim != 3:
        raise ShiftError(f"images must have shape (n, height, width), got {images.shape}")
    out = images.astype(np.float64, copy=True)
    for shift in shifts:
        if shift.name == "label_prior":
            continue
        function, _ = _IMAGE_SHIFTS[shift.name]
        out = function(out, rng, **dict(shift.params))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def class_weights(shifts: tuple[Shift, ...], n_classes: int) -> np.ndarray | None:
    """Sampling weight per class from label_prior steps (multiplied if several); None if none."""
    weights = None
    for shift in shifts:
        if shift.name != "label_prior":
            continue
        params = dict(shift.params)
        if "weights" in params:
            if len(params["weights"]) != n_classes:
                raise ShiftError(f"label_prior.weights: needs {n_classes} values (one per class), got {len(params['weights'])}")
            step = np.asarray(params["weights"], dtype=np.float64)
        else:
            if max(params["classes"]) >= n_classes:
                raise ShiftError(f"label_prior.classes: class {max(params['classes'])} out of range 0..{n_classes - 1}")
            step = np.zeros(n_classes)
            step[list(params["classes"])] = 1.0
        weights = step if weights is None else weights * step
    if weights is not None and weights.sum() <= 0:
        raise ShiftError("label_prior: the composed weights are all zero")
    return weights
