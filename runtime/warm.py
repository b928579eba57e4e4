"""Warm starts for the workflow's jobs: one process keeps torch & co. imported and forks each job.

Importing torch, pandas and pyarrow costs ~3-6 s on a 2-core machine: more than an edge
round's own compute. `serve` imports them (and the command-line modules it is told to)
once, then for every `run` forks a child that runs the module's `main(argv)` with the
launcher's stdin, stdout and stderr (passed over the Unix socket), working directory,
environment and exit code, so Snakemake sees one ordinary process per job. Without a warm
server (no `--socket`, or nothing listening there), `run` runs the module in its own
process: a cold start, with the same result (benchmarks/results/pipeline.md: identical
checkpoints either way).

Not the same as a cold process in three ways: modules and environment variables read at
import time (OMP_*, torch's thread pools) come from the server, frozen when it started;
editing the served code mid-run has no effect until the next run; and the parent must
never run a torch operation (thread pools and fork do not mix). Children are killed when
their launcher goes away; the server exits when the process it watches (Snakemake) is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from .files import write_atomic
from .processes import pid_alive

#: Modules the jobs need, imported once before any fork. torch._dynamo (with parts of
#: torch._inductor and sympy: ~2.5 s on a quiet 2-core machine, measured) is not imported by
#: `import torch` but by the first `torch.optim` optimizer a process builds (its
#: `torch._disable_dynamo` wrappers import it on first call): train-base and the data center's
#: fine-tuning. (mlcore.seeding no longer imports it: it sets the deterministic flag itself.)
#: "module:function" also calls the function: mlcore.yamlfile.prepare builds the schema
#: validators (~0.1 s a job otherwise).
PRELOAD = ("torch", "torch._dynamo", "pandas", "pyarrow", "scipy.ndimage", "sklearn.datasets", "jsonschema",
           "protocol", "mlcore.cli", "mlcore.yamlfile:prepare")
MAX_MESSAGE = 1 << 20  # argv + environment of one launch


def _main_of(module: str):
    """The `main(argv)` of a command-line module (`edge` -> edge.__main__.main)."""
    import importlib

    target = importlib.import_module(module if module.endswith("__main__") else f"{module}.__main__")
    return target.main


# ------------------------------------------------------------------------- the launcher
def _connect(socket_path: str | None) -> socket.socket | None:
    """A connection to the warm server, or None when there is none to reach (no path, no socket, stale socket)."""
    if not socket_path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _write_pid(pid_file: str | None, pid: int) -> None:
    if pid_file:
        write_atomic(pid_file, f"{pid}\n")


def run(socket_path: str | None, module: str, argv: list[str], pid_file: str | None = None) -> int:
    """Run `python -m <module> <argv>` in a child of the warm server, or here when there is none.

    `pid_file` receives the pid of the process that really runs the module (the child).
    """
    conn = _connect(socket_path)
    if conn is None:  # cold start
        _write_pid(pid_file, os.getpid())
        return _main_of(module)(argv)
    request = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [request], [0, 1, 2])
    reader = conn.makefile("r", encoding="utf-8")
    first = reader.readline()
    if not first:
        print(f"{module}: the warm server closed the connection before starting", file=sys.stderr)
        return 1
    child = json.loads(first)["pid"]

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    _write_pid(pid_file, child)  # only now: whoever reads it may signal us, and the signal must reach the job
    last = reader.readline()
    if not last:
        print(f"{module}: the warm server went away while running", file=sys.stderr)
        return 1
    return int(json.loads(last)["exit"])


# ------------------------------------------------------------------------- the server
def _child(conn: socket.socket, listener: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the requested `python -m <module>` process, then exit."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        listener.close()
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [f"python -m {request['module']}", *request["argv"]]
        code = _main_of(request["module"])(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the child must never fall back into the server's loop
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(socket_path: str, modules: list[str], exit_with_pid: int | None = None,
          preload: tuple[str, ...] | list[str] = PRELOAD) -> int:
    """Preload, listen on `socket_path` (0600), fork a child per launch until SIGTERM/SIGINT."""
    import importlib

    for entry in preload:
        module, _, function = entry.partition(":")
        imported = importlib.import_module(module)
        if function:
            getattr(imported, function)()
    allowed = {module: _main_of(module) for module in modules}
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(staging))
    os.chmod(staging, 0o600)
    listener.listen(16)
    os.replace(staging, path)  # launchers see the socket only once it accepts
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print(f"warm server ready on {path} for {sorted(allowed)} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        while not stopping and (exit_with_pid is None or pid_alive(exit_with_pid)):
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj is listener:
                    _accept(listener, selector, children, allowed)
                else:
                    _launcher_gone(key.fileobj, selector, children)
            _reap(selector, children)
    finally:
        for pid in list(children):
            _kill(pid)
        deadline = time.monotonic() + 5
        while children and time.monotonic() < deadline:
            _reap(selector, children)
            time.sleep(0.05)
        listener.close()
        if path.exists() and path.is_socket():
            path.unlink()
    return 0


def _accept(
    listener: socket.socket, selector: selectors.BaseSelector, children: dict[int, socket.socket], allowed: dict
) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        message, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(message)
        if len(fds) != 3 or not isinstance(request.get("argv"), list):
            raise ValueError("a launch needs argv and three file descriptors")
        if request.get("module") not in allowed:
            raise ValueError(f"module {request.get('module')!r} is not served here (serving {sorted(allowed)})")
    except (OSError, ValueError) as exc:
        print(f"warm server: bad launch request: {exc}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        _child(conn, listener, fds, request)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    selector.register(conn, selectors.EVENT_READ, pid)


def _launcher_gone(conn: socket.socket, selector: selectors.BaseSelector, children: dict[int, socket.socket]) -> None:
    """The launcher sends nothing after its request: readable means it closed (was killed)."""
    pid = selector.get_key(conn).data
    selector.unregister(conn)
    if pid in children:
        _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _reap(selector: selectors.BaseSelector, children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.warm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve", help="preload the modules and fork a child per launch")
    server.add_argument("--socket", required=True)
    server.add_argument("--module", action="append", required=True, help="a command-line module to serve (repeat)")
    server.add_argument("--exit-with-pid", type=int)
    server.add_argument("--preload", action="append", help=f"a module to import before forking (repeat; default {PRELOAD})")
    launch = sub.add_parser("run", help="run `python -m MODULE ARGS` warm (or cold when no server listens)")
    launch.add_argument("--socket")
    launch.add_argument("--pid-file", help="write the pid of the process running the module here")
    launch.add_argument("module")
    launch.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.socket, args.module, args.exit_with_pid, PRELOAD if args.preload is None else args.preload)
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return run(args.socket, args.module, rest, args.pid_file)


def exit_now(code: int | None) -> None:
    """Flush and leave without the interpreter's teardown.

    Tearing down an interpreter that imported torch and torch._dynamo takes 1.2-2.4 s (module
    and object finalisation, measured on 2 cores); the warm server pays it when it stops, at the
    end of every run, and a cold job after its work is done. Nothing here needs it: outputs are
    written atomically and closed, the Unix socket is unlinked, and no atexit hook is ours
    (this module's processes never start a `runtime.services.Services`).
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code or 0))


if __name__ == "__main__":
    exit_now(main())
