"""runtime.warm: the warm starter and its launcher, on real processes (a toy command-line module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from runtime_helpers import PYTHON, gone

TOY = '''
import json, os, sys, time

def main(argv):
    if argv[:1] == ["sleep"]:
        print("sleeping", flush=True)
        time.sleep(60)
    print(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": os.environ.get("TOY_VALUE"), "pid": os.getpid(),
                      "stdin": sys.stdin.read()}))
    print("to stderr", file=sys.stderr)
    return int(argv[0]) if argv and argv[0].isdigit() else 0
'''


@pytest.fixture
def toy(tmp_path: Path) -> dict:
    package = tmp_path / "lib/toyjob"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(TOY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'lib'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return env


def launch(env: dict, args: list[str], *, cwd: Path, stdin: str = "", socket: Path | None = None,
           pid_file: Path | None = None) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "runtime.warm", "run"]
    if socket:
        command += ["--socket", str(socket)]
    if pid_file:
        command += ["--pid-file", str(pid_file)]
    return subprocess.run([*command, "toyjob", "--", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def read_pid(pid_file: Path, timeout: float = 10) -> int:
    """The launcher writes the pid file once the server names the child (the child may print first)."""
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        assert time.monotonic() < deadline, "no pid file"
        time.sleep(0.01)
    return int(pid_file.read_text())


@pytest.fixture
def server(tmp_path: Path, toy: dict, reap):
    socket = tmp_path / "run/warm.sock"
    process = subprocess.Popen([PYTHON, "-m", "runtime.warm", "serve", "--socket", str(socket), "--module", "toyjob",
                                "--preload", "json", "--exit-with-pid", str(os.getpid())],
                               env=toy, stderr=subprocess.PIPE, text=True)
    reap(process)
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the warm server did not start"
        time.sleep(0.02)
    assert oct(socket.stat().st_mode & 0o777) == "0o600"
    return socket, process


@pytest.mark.parametrize("socket", [None, "missing.sock"])
def test_without_a_server_the_launcher_runs_the_module_cold(tmp_path, toy, socket):
    pid_file = tmp_path / "pid"
    result = launch({**toy, "TOY_VALUE": "cold"}, ["7", "a b"], cwd=tmp_path, stdin="in",
                    socket=tmp_path / socket if socket else None, pid_file=pid_file)
    assert result.returncode == 7, result.stderr
    out = json.loads(result.stdout)
    assert out["argv"] == ["7", "a b"] and out["env"] == "cold" and out["stdin"] == "in"
    assert result.stderr.strip() == "to stderr"
    assert int(pid_file.read_text()) == out["pid"]  # the launcher itself ran it


def test_a_stale_socket_file_means_cold(tmp_path, toy):
    import socket as sockets

    stale = tmp_path / "stale.sock"
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens
    result = launch(toy, ["0"], cwd=tmp_path, socket=stale)
    assert result.returncode == 0 and json.loads(result.stdout)["argv"] == ["0"]


def test_a_warm_launch_behaves_like_the_process_it_replaces(tmp_path, toy, server):
    socket, process = server
    workdir = tmp_path / "job"
    workdir.mkdir()
    pid_file = tmp_path / "pid"
    result = launch({**toy, "TOY_VALUE": "warm"}, ["3", "x"], cwd=workdir, stdin="data", socket=socket,
                    pid_file=pid_file)
    assert result.returncode == 3, result.stderr
    out = json.loads(result.stdout)
    assert out == {"argv": ["3", "x"], "cwd": str(workdir), "env": "warm", "pid": out["pid"], "stdin": "data"}
    assert result.stderr.strip() == "to stderr"
    assert int(pid_file.read_text()) == out["pid"] != process.pid  # a forked child ran it
    assert gone(out["pid"])


def sleeping_job(tmp_path, toy, server, reap) -> tuple[subprocess.Popen, int]:
    """A launcher whose forked toy job is asleep: (launcher process, job pid); both reaped at teardown."""
    socket, _ = server
    pid_file = tmp_path / "pid"
    launcher = subprocess.Popen([PYTHON, "-m", "runtime.warm", "run", "--socket", str(socket), "--pid-file",
                                 str(pid_file), "toyjob", "--", "sleep"], env=toy, stdout=subprocess.PIPE, text=True)
    reap(launcher)
    assert launcher.stdout.readline().strip() == "sleeping"
    child = read_pid(pid_file)
    reap(child)
    return launcher, child


def test_sigterm_to_the_launcher_reaches_the_forked_job(tmp_path, toy, server, reap):
    launcher, child = sleeping_job(tmp_path, toy, server, reap)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=10) == 128 + signal.SIGTERM
    assert gone(child)


def test_a_killed_launcher_takes_its_job_along(tmp_path, toy, server, reap):
    launcher, child = sleeping_job(tmp_path, toy, server, reap)
    launcher.kill()
    launcher.wait()
    assert gone(child)


def test_a_module_not_served_is_refused(tmp_path, toy, server):
    socket, process = server
    result = subprocess.run([PYTHON, "-m", "runtime.warm", "run", "--socket", str(socket), "json.tool", "--"],
                            capture_output=True, text=True, env=toy, timeout=30)
    assert result.returncode == 1 and "closed the connection" in result.stderr
    assert process.poll() is None  # the server keeps serving


def test_the_server_stops_on_sigterm_and_when_its_owner_is_gone(tmp_path, toy, reap):
    owner = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    reap(owner)
    servers = []
    for name in ("a", "b"):
        socket = tmp_path / f"{name}.sock"
        process = subprocess.Popen([PYTHON, "-m", "runtime.warm", "serve", "--socket", str(socket), "--module", "toyjob",
                                    "--preload", "json", "--exit-with-pid", str(owner.pid)], env=toy)
        reap(process)
        servers.append((socket, process))
    for socket, _ in servers:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    servers[0][1].send_signal(signal.SIGTERM)
    assert servers[0][1].wait(timeout=10) == 0 and not servers[0][0].exists()
    owner.kill()
    owner.wait()
    assert servers[1][1].wait(timeout=10) == 0 and not servers[1][0].exists()
