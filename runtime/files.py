"""The files the workflow and the data center share: a port file and a token file.

The data center publishes its port by atomic rename once listening (protocol/files.py
writes it), so a reader sees no file or a whole one. The token file is created here,
before the data center starts, readable by its owner only; protocol/files.py reads it
with owner and mode checks. Same format: one line, 64 hex digits.
"""

from __future__ import annotations

import os
from pathlib import Path

from atomic_write import write_text_atomic as write_atomic

TOKEN_BYTES = 32  # 256 bits, as protocol.auth.new_token


def create_token_file(path: str | os.PathLike[str]) -> str:
    """A fresh random token in `path` (mode 0600); returns it."""
    token = os.urandom(TOKEN_BYTES).hex()
    write_atomic(path, token + "\n", mode=0o600)
    return token


def read_port(path: str | os.PathLike[str]) -> int | None:
    """The port in a port file, or None when there is none (yet) or it is not a port."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None
