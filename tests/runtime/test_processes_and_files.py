"""runtime.processes and runtime.files, on real processes and files."""

from __future__ import annotations

import os
import stat
import subprocess
import time

from runtime_helpers import PYTHON, gone

from runtime.files import create_token_file, read_port, write_atomic
from runtime.processes import pid_alive, stop_process


def test_pid_alive_follows_a_real_process(reap):
    process = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(30)"])
    reap(process)
    assert pid_alive(process.pid)
    process.kill()
    process.wait()
    assert not pid_alive(process.pid)


def test_stop_process_lets_sigterm_work_first(reap):
    process = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(30)"])
    reap(process)
    assert stop_process(process, timeout=10) == -15


def test_stop_process_kills_what_ignores_sigterm(reap):
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    process = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    reap(process)
    assert process.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert stop_process(process, timeout=0.5) == -9
    assert time.monotonic() - started < 5 and gone(process.pid)


def test_token_file_is_private_and_read_by_the_protocol(tmp_path):
    from protocol import read_token_file

    token = create_token_file(tmp_path / "server/token")
    info = os.stat(tmp_path / "server/token")
    assert stat.S_IMODE(info.st_mode) == 0o600 and len(token) == 64
    assert read_token_file(tmp_path / "server/token") == token
    assert create_token_file(tmp_path / "server/token") != token  # a fresh token each run
    assert [p.name for p in (tmp_path / "server").iterdir()] == ["token"]  # no temporary left over


def test_read_port_sees_nothing_or_a_whole_port(tmp_path):
    port_file = tmp_path / "port"
    assert read_port(port_file) is None
    write_atomic(port_file, "8123\n")
    assert read_port(port_file) == 8123
    for bad in ("", "12ab", "0", "70000"):
        port_file.write_text(bad)
        assert read_port(port_file) is None
