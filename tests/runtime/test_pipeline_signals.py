"""runtime.pipeline.defer_sigterm_handler: a SIGTERM while the main thread holds the lock its
handler needs (snakemake 9.27.1's scheduler) no longer deadlocks."""

from __future__ import annotations

import subprocess

from runtime_helpers import PYTHON

PROGRAM = """
import os, signal, threading, time
from runtime.pipeline import defer_sigterm_handler

lock = threading.Lock()
done = threading.Event()

def handler(signum, frame):  # like JobScheduler.exit_gracefully
    with lock:
        done.set()

signal.signal(signal.SIGTERM, handler)
defer_sigterm_handler()
defer_sigterm_handler()  # idempotent
with lock:  # like run_selector while the ILP solver runs
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
print("handled" if done.wait(5) else "lost", flush=True)
"""


def test_a_sigterm_while_the_lock_is_held_is_handled_after_it_is_released():
    result = subprocess.run([PYTHON, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "handled", result.stderr
