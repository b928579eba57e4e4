"""Background services of one run: start, wait until ready, stop (last started first).

A service is a command plus a *ready file* that it creates (by atomic rename) once it
serves: a Unix socket, a port file. `Services.start` launches it with its output in a log
file; `wait_ready` polls for the ready file and fails fast, naming the log, if the process
exits first or the deadline passes; `stop` sends SIGTERM, lets each service flush, then
SIGKILLs. An `atexit` hook stops whatever is left when the owning process exits.
"""

from __future__ import annotations

import atexit
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import stop_process


class ServiceError(RuntimeError):
    """A service exited at start or did not get ready in time; the message names its log."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    ready: Path
    log: Path


class Services:
    def __init__(self, log_dir: str | Path = "logs", *, poll: float = 0.02) -> None:
        self.log_dir = Path(log_dir)
        self.poll = poll
        self._running: dict[str, Service] = {}
        self._hooked = False

    def start(self, name: str, command: list[str], ready: str | Path) -> Service:
        """Launch `command` in the background (stdin closed, output appended to <log_dir>/<name>.log)."""
        if not self._hooked:
            atexit.register(self.stop)
            self._hooked = True
        ready = Path(ready)
        ready.unlink(missing_ok=True)  # a stale file from an earlier run must not count as ready
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=handle, stdin=subprocess.DEVNULL)
        service = Service(name, process, ready, log)
        self._running[name] = service
        return service

    def wait_ready(self, name: str, deadline: float) -> None:
        """Return once `name`'s ready file exists; on failure stop every service and raise ServiceError."""
        service = self._running[name]
        while not service.ready.exists():
            if service.process.poll() is not None:
                self.stop()
                raise ServiceError(f"the {name} exited with code {service.process.returncode} at start; see {service.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"the {name} did not get ready in time; see {service.log}")
            time.sleep(self.poll)

    def pid(self, name: str) -> int:
        return self._running[name].process.pid

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """Stop the services, last started first, within `timeout` seconds in all; their exit codes."""
        deadline = time.monotonic() + timeout
        codes = {}
        for service in reversed(list(self._running.values())):
            codes[service.name] = stop_process(service.process, deadline - time.monotonic())
        self._running.clear()
        return codes
