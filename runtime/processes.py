"""Is a process still there, and stopping one politely (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess


def pid_alive(pid: int) -> bool:
    """True while `pid` exists (a zombie still counts: its parent has not reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM `process`, give it `timeout` seconds to flush and exit, then SIGKILL; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
