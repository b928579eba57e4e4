"""Checkpoint files: content-addressed, written atomically, sha256-verified before loading.

A checkpoint is `torch.save` of a plain dict (format tag, model spec, state_dict), so it
loads with `torch.load(weights_only=True)`; weights load with `strict=True`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from .atomic import write_bytes_atomic
from .models import ADAPTER_KEYS, CONFIDENCE_KEY, ROUTER_KEYS, ModelSpec, build_model, has_fitted_adapter

FORMAT = "driftloop-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, altered, or not one of ours."""


def checkpoint_bytes(model: nn.Module, spec: ModelSpec) -> bytes:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not has_fitted_adapter(model):
        # an adapter never fitted is not written: the file (and its sha256) is what it was before adapters
        state = {k: v for k, v in state.items() if k not in ADAPTER_KEYS}
    torch.save({"format": FORMAT, "spec": spec.to_dict(), "state_dict": state}, buffer)
    return buffer.getvalue()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: nn.Module, spec: ModelSpec, directory: str | Path) -> tuple[Path, str]:
    """Write `<directory>/<sha256>.pt` (atomically, once) and return (path, sha256)."""
    data = checkpoint_bytes(model, spec)
    sha = hashlib.sha256(data).hexdigest()
    path = Path(directory) / f"{sha}.pt"
    if not (path.is_file() and sha256_file(path) == sha):
        write_bytes_atomic(path, data)
    return path, sha


def store_checkpoint(directory: str | Path, data: bytes, sha256: str) -> Path:
    """Keep checkpoint bytes that arrived from elsewhere as `<directory>/<sha256>.pt`.

    The bytes must hash to the sha256 they were announced with; the file is written
    atomically, once (an intact copy already there is kept).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointError(f"received checkpoint bytes hash to {actual}, not the announced {sha256}")
    path = Path(directory) / f"{sha256}.pt"
    if not (path.is_file() and sha256_file(path) == sha256):
        write_bytes_atomic(path, data)
    return path


def load_checkpoint(path: str | Path, sha256: str) -> tuple[nn.Module, ModelSpec]:
    """Verify the file's sha256 first, then load weights only, strictly."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}")
    data = file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointError(f"checkpoint {file}: sha256 {actual} does not match the expected {sha256}")
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for malformed archives
        raise CheckpointError(f"checkpoint {file}: cannot be read as a weights-only torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {file}: not a {FORMAT} file")
    raw = payload["spec"]
    spec = ModelSpec(str(raw["arch"]), (int(raw["image_shape"][0]), int(raw["image_shape"][1])), int(raw["n_classes"]))
    model = build_model(spec, seed=0)
    state = payload["state_dict"]
    if isinstance(state, dict) and not any(key in state for key in ROUTER_KEYS):
        # written before models carried an input adapter (theirs is off: the identity), or an
        # adapter without a router (it warps every input)
        missing = ADAPTER_KEYS if not any(key in state for key in ADAPTER_KEYS) else ROUTER_KEYS + (CONFIDENCE_KEY,)
        state = {**state, **{key: value for key, value in model.state_dict().items() if key in missing}}
    elif isinstance(state, dict) and CONFIDENCE_KEY not in state:  # a router from before routing by confidence
        state = {**state, CONFIDENCE_KEY: model.state_dict()[CONFIDENCE_KEY]}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {file}: weights do not fit a {spec.arch} model: {exc}") from exc
    model.eval()
    return model, spec
