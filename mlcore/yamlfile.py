"""Reading a YAML file with one clear error for a missing or malformed file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parsed content of `path`; raises `error` naming `what` and the file on failure."""
    file = Path(path)
    if not file.is_file():
        raise error(f"{what} file not found: {file}")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{file}: not valid YAML: {exc}") from exc
