"""Fixtures of the runtime tests: real processes, always stopped by their PIDs."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest


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
