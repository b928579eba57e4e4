"""Helpers of the runtime tests: real processes, always stopped by their PIDs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.fixture
def reap():
    """Register processes (Popen or pid) to SIGKILL at teardown if still there."""
    started: list = []
    yield started.append
    for item in started:
        pid = item.pid if isinstance(item, subprocess.Popen) else item
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if isinstance(item, subprocess.Popen):
            item.wait(timeout=10)
