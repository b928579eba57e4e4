"""Crash-safe file writes for checkpoints, state and metrics (the shared `atomic_write` package)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from atomic_write import write_atomic, write_bytes_atomic

__all__ = ["write_atomic", "write_bytes_atomic", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Sorted keys and a trailing newline, so equal payloads give equal bytes."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))
