"""runtime.services: start, readiness through a ready file, failures that name the log, stop."""

from __future__ import annotations

import time

import pytest
from runtime_helpers import PYTHON, gone

from runtime.services import ServiceError, Services

#: A service that creates its ready file (by rename) after `delay` seconds, then serves until SIGTERM.
SERVE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('flushed', flush=True), sys.exit(0)))\n"
    "time.sleep(float(sys.argv[2])); open(sys.argv[1] + '.tmp', 'w').close(); os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)


def test_start_waits_for_the_ready_file_and_stop_lets_it_flush(tmp_path, reap):
    services = Services(tmp_path / "logs")
    ready = tmp_path / "ready"
    ready.write_text("stale")  # from an earlier run: must not count
    service = services.start("toy", [PYTHON, "-c", SERVE, str(ready), "0.3"], ready)
    reap(service.process)
    assert not ready.exists()
    started = time.monotonic()
    services.wait_ready("toy", time.monotonic() + 30)
    assert ready.exists() and time.monotonic() - started >= 0.25
    assert services.stop(timeout=10) == {"toy": 0}
    assert gone(service.process.pid)
    assert (tmp_path / "logs/toy.log").read_text().split() == ["ready", "flushed"]


def test_a_service_that_dies_at_start_is_reported_with_its_log(tmp_path, reap):
    services = Services(tmp_path / "logs")
    other = services.start("other", [PYTHON, "-c", SERVE, str(tmp_path / "other"), "0"], tmp_path / "other")
    reap(other.process)
    broken = services.start("broken", [PYTHON, "-c", "import sys; print('no config'); sys.exit(3)"], tmp_path / "never")
    reap(broken.process)
    with pytest.raises(ServiceError, match=r"broken exited with code 3 at start; see .*broken\.log"):
        services.wait_ready("broken", time.monotonic() + 30)
    assert gone(other.process.pid), "a failed start stops the services already running"


def test_a_service_that_never_gets_ready_is_stopped_at_the_deadline(tmp_path, reap):
    services = Services(tmp_path / "logs")
    slow = services.start("slow", [PYTHON, "-c", SERVE, str(tmp_path / "ready"), "60"], tmp_path / "ready")
    reap(slow.process)
    with pytest.raises(ServiceError, match="did not get ready in time"):
        services.wait_ready("slow", time.monotonic() + 0.5)
    assert gone(slow.process.pid)


def test_stop_goes_last_started_first(tmp_path, reap):
    services = Services(tmp_path / "logs")
    order = tmp_path / "order"
    record = ("import signal, sys, time\n"
              "def bye(*_):\n    open(sys.argv[2], 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, bye)\n"
              "open(sys.argv[3], 'w').close()\n"
              "while True: time.sleep(0.05)\n")
    for name in ("first", "second"):
        service = services.start(name, [PYTHON, "-c", record, name, str(order), str(tmp_path / name)], tmp_path / name)
        reap(service.process)
        services.wait_ready(name, time.monotonic() + 30)
    services.stop(timeout=10)
    assert order.read_text().split() == ["second", "first"]
