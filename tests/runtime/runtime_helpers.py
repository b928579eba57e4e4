"""Helpers of the runtime tests (a module of its own name: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PYTHON = sys.executable


def gone(pid: int, timeout: float = 10) -> bool:
    """True once `pid` has exited (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
            if state == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.02)
    return False
