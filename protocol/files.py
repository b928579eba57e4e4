"""Small files the server publishes: its port (written atomically) and a token (0600)."""

from __future__ import annotations

import os
from pathlib import Path

from .auth import new_token
from .errors import UsageError


def write_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    write_atomic(path, f"{port}\n")


def read_port_file(path: str | os.PathLike[str]) -> int:
    text = Path(path).read_text(encoding="utf-8").strip()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{path}: not a port number: {text[:20]!r}")
    return int(text)


def create_token_file(path: str | os.PathLike[str]) -> str:
    """Write a fresh random token readable by its owner only (0600); return it."""
    token = new_token()
    write_atomic(path, token + "\n", mode=0o600)
    return token


def read_token_file(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UsageError(f"{path}: token file is readable by others (mode {mode:o}); chmod 600 it")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise UsageError(f"{path}: token file is empty")
    return token
