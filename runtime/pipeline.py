"""The workflow's services: the warm starter and the data center, from onstart to onsuccess/onerror.

`start` creates the token file, writes the settings the data center reads, starts the
warm starter (when asked) and the data center (forked from it, or a cold process), and
returns once the data center has published its port and `endpoint.json` (the address,
port and TLS CA the edges read) is written. `stop` ends them, last started
first. Both are called from the Snakefile's hooks; nothing here imports torch or another
package of this project. Paths are relative to the working directory (the workflow's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .files import create_token_file, read_port, write_atomic
from .services import ServiceError, Services

SERVER_DIR = Path("results/server")
PORT_FILE = SERVER_DIR / "port"
PID_FILE = SERVER_DIR / "pid"  # the data center's own pid (the forked child when warm)
TOKEN_FILE = SERVER_DIR / "token"
ENDPOINT_FILE = SERVER_DIR / "endpoint.json"  # how edges reach the data center (written once it listens)
SETTINGS_FILE = SERVER_DIR / "config.json"  # the settings as the data center reads them at start
WARM_SOCKET = SERVER_DIR / "warm.sock"
STATE_DIR = "results/datacenter"
#: Command-line modules the warm starter serves.
WARM_MODULES = ("edge", "datacenter")

_services = Services("logs")


def warm_command(python: str, module: str, args: list[str], *, warm: bool, pid_file: str | None = None) -> list[str]:
    """`python -m <module> <args>` through the warm launcher (forked when a warm starter listens)."""
    launcher = [python, "-m", "runtime.warm", "run"]
    if warm:
        launcher += ["--socket", str(WARM_SOCKET)]
    if pid_file:
        launcher += ["--pid-file", pid_file]
    return [*launcher, module, "--", *args]


def defer_sigterm_handler() -> None:
    """Run the current SIGTERM handler in a thread of its own rather than in the interrupted code.

    Works around a deadlock of snakemake 9.27.1: its handler (`JobScheduler.exit_gracefully`)
    takes the scheduler's lock, which the main thread holds while it selects jobs (the ILP
    selector waits there for a solver subprocess, a window of ~0.1-0.3 s); a SIGTERM landing
    then hangs Snakemake for good (seen in 2 of 3 runs of the SIGTERM test when the signal
    came just after onstart). In a thread, the handler simply waits for the lock.
    """
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler) or getattr(handler, "deferred", False):
        return

    def deferred(signum: int, _frame: object) -> None:
        threading.Thread(target=handler, args=(signum, None), name="sigterm", daemon=True).start()

    deferred.deferred = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, deferred)


def endpoint(server: dict, port: int) -> dict:
    """Where edges dial and what they trust: `server.advertise`, else the listening address
    (for a wildcard one, this host's name); the CA of `server.tls`, if any."""
    host = str(server.get("host", "127.0.0.1"))
    address = server.get("advertise") or (socket.getfqdn() if host in ("0.0.0.0", "::", "") else host)
    tls = server.get("tls") or {}
    return {"host": address, "port": port, "tls_ca": tls.get("ca"), "server_name": tls.get("server_name") or address}


def tls_args(server: dict) -> list[str]:
    tls = server.get("tls") or {}
    return ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])] if tls else []


def start(python: str, settings_json: str, server: dict, *, warm: bool, owner: int | None = None) -> int:
    """Start the services; return the data center's port. Raises ServiceError (services stopped)."""
    owner = os.getpid() if owner is None else owner
    if threading.current_thread() is threading.main_thread():
        defer_sigterm_handler()
    deadline = time.monotonic() + float(server.get("start_timeout", 60))
    SERVER_DIR.mkdir(parents=True, exist_ok=True)
    ENDPOINT_FILE.unlink(missing_ok=True)  # edges wait for this run's, never an old one
    create_token_file(TOKEN_FILE)
    write_atomic(SETTINGS_FILE, settings_json)
    if warm:
        modules = [arg for module in WARM_MODULES for arg in ("--module", module)]
        _services.start("warm-starter", [python, "-m", "runtime.warm", "serve", "--socket", str(WARM_SOCKET), *modules,
                                         "--exit-with-pid", str(owner)], WARM_SOCKET)
        _services.wait_ready("warm-starter", deadline)
    else:
        WARM_SOCKET.unlink(missing_ok=True)  # jobs find no warm starter and start cold (common.smk `launch`)
    _services.start("datacenter", warm_command(python, "datacenter", [
        "serve", "--config", str(SETTINGS_FILE), "--state-dir", STATE_DIR,
        "--host", str(server.get("host", "127.0.0.1")), "--port", str(server.get("port", 0)),
        "--port-file", str(PORT_FILE), "--token-file", str(TOKEN_FILE), "--exit-with-pid", str(owner),
        *tls_args(server),
    ], warm=warm, pid_file=str(PID_FILE)), PORT_FILE)
    _services.wait_ready("datacenter", deadline)
    port = read_port(PORT_FILE)
    if port is None:
        stop()
        raise ServiceError(f"the data center published no valid port in {PORT_FILE}")
    write_atomic(ENDPOINT_FILE, json.dumps(endpoint(server, port)) + "\n")
    print(f"data center listening on port {port} (pid {PID_FILE.read_text().strip()})", file=sys.stderr)
    return port


def stop(timeout: float = 30.0) -> None:
    _services.stop(timeout)
