"""Token and port files (review #13, issue 8 item m) and the replay guard (review #10, item j).

Each test names the defect of the old code it fails on. Real files in tmp_path, no mocks of
the file system; the replay guard runs on an injected clock.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from protocol import auth
from protocol.auth import ReplayGuard, new_nonce
from protocol.errors import AuthenticationError, UsageError
from protocol.files import create_token_file, read_port_file, read_token_file, write_atomic, write_port_file

OTHER_UID = 54321  # any uid but ours: the tests run as root, which may chown


def old_temp_name(path: Path) -> Path:
    """The temp name the old write_atomic used: predictable by anyone who can list the folder."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------ writing
def test_preexisting_world_readable_temp_file_never_holds_the_token(tmp_path: Path, monkeypatch) -> None:
    """Old code: O_TRUNC reused a planted 0644 temp file, so the token sat in a world-readable
    inode (and in an fd the planter held open) until the chmod."""
    path = tmp_path / "token"
    planted = old_temp_name(path)
    planted.write_bytes(b"")
    planted.chmod(0o644)
    watcher = os.open(planted, os.O_RDONLY)  # what another user could hold open
    modes_while_writing: list[int] = []
    real_write = os.write

    def spying_write(fd: int, data) -> int:
        modes_while_writing.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    try:
        token = create_token_file(path)
        monkeypatch.undo()
        assert os.read(watcher, 4096) == b"", "the planted file received the token"
    finally:
        os.close(watcher)
    assert modes_while_writing and set(modes_while_writing) == {0o600}, modes_while_writing
    assert mode_of(planted) == 0o644 and planted.read_bytes() == b""  # left alone
    assert os.stat(path).st_ino != os.stat(planted).st_ino
    assert mode_of(path) == 0o600 and read_token_file(path) == token


def test_symlink_at_the_temp_name_does_not_leak_the_token(tmp_path: Path) -> None:
    """Old code: the write followed a symlink planted at the temp name into `leak`, chmod-ed it,
    and then renamed the symlink over the token path."""
    path = tmp_path / "token"
    leak = tmp_path / "leak"
    old_temp_name(path).symlink_to(leak)
    token = create_token_file(path)
    assert not leak.exists()
    assert not path.is_symlink() and stat.S_ISREG(os.lstat(path).st_mode)
    assert mode_of(path) == 0o600 and read_token_file(path) == token


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    path = tmp_path / "token"
    path.symlink_to(elsewhere)
    token = create_token_file(path)
    assert elsewhere.read_text() == "keep\n"
    assert not path.is_symlink() and read_token_file(path) == token


def test_modes_are_exact_whatever_the_umask_and_no_temp_file_is_left(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_port_file(tmp_path / "port", 8123)
        create_token_file(tmp_path / "token")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "port") == 0o644 and read_port_file(tmp_path / "port") == 8123
    assert mode_of(tmp_path / "token") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["port", "token"]


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "x").write_text("")  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        write_atomic(target, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


# ------------------------------------------------------------------ reading
def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    """Old code: stat() and read_text() followed the link."""
    real = tmp_path / "real"
    create_token_file(real)
    link = tmp_path / "token"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        read_token_file(link)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_token_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Old code: no owner check, so a file planted by another user was trusted."""
    path = tmp_path / "token"
    create_token_file(path)
    os.chown(path, OTHER_UID, OTHER_UID)
    assert mode_of(path) == 0o600
    with pytest.raises(UsageError, match="owned by uid 54321"):
        read_token_file(path)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640, 0o620, 0o602])
def test_group_or_other_bits_are_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    create_token_file(path)
    path.chmod(mode)
    with pytest.raises(UsageError, match="readable by others"):
        read_token_file(path)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"  \n", "empty"), (b"short-token\n", "at least 16"),
                                              (b"\xff" * 20, "UTF-8"), (b"a" * 5000, "far shorter")])
def test_empty_short_and_junk_tokens_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    """Old code accepted an 11-byte token from a file (only empty ones were refused)."""
    path = tmp_path / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(UsageError, match=message):
        read_token_file(path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "token"
    os.mkfifo(path, 0o600)
    with pytest.raises(UsageError, match="not a regular file"):
        read_token_file(path)


def test_a_minimal_token_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_atomic(path, "x" * auth.MIN_TOKEN_BYTES + "\n", mode=0o600)
    assert read_token_file(path) == "x" * auth.MIN_TOKEN_BYTES


# ------------------------------------------------------------------ replay guard
class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def nonce(i: int) -> str:
    return f"n{i:015d}"


def test_a_replay_after_many_newer_nonces_is_still_refused_in_the_window() -> None:
    """Old code: after `capacity` newer nonces the oldest was evicted and its replay accepted."""
    clock = Clock()
    guard = ReplayGuard(max_skew=300, capacity=100, clock=clock)
    guard.check("captured-request", clock.now - 10)
    refused = 0
    for i in range(250):
        clock.now += 0.01
        try:
            guard.check(nonce(i), clock.now)
        except AuthenticationError as exc:
            assert "replay cache full" in str(exc)
            refused += 1
    assert refused == 250 - 99 and len(guard) == 100
    with pytest.raises(AuthenticationError, match="replayed"):
        guard.check("captured-request", clock.now - 10 - 2.5)  # its sent_at as captured


def test_nonces_expire_by_time_and_free_the_cache() -> None:
    clock = Clock()
    guard = ReplayGuard(max_skew=60, capacity=2, clock=clock)
    sent = clock.now
    guard.check(nonce(1), sent)
    guard.check(nonce(2), sent + 1)
    with pytest.raises(AuthenticationError, match="replay cache full"):
        guard.check(nonce(3), sent + 2)
    clock.now = sent + 60  # still inside the window of nonce 1: remembered
    with pytest.raises(AuthenticationError, match="replayed"):
        guard.check(nonce(1), sent)
    clock.now = sent + 60.5  # nonce 1 is past the window: forgotten, and its replay is stale
    with pytest.raises(AuthenticationError, match="off"):
        guard.check(nonce(1), sent)
    guard.check(nonce(3), clock.now)
    assert len(guard) == 2
    clock.now = sent + 1000
    guard.check(nonce(4), clock.now)
    assert len(guard) == 1


def test_a_clock_stepped_back_does_not_reopen_forgotten_nonces() -> None:
    clock = Clock()
    guard = ReplayGuard(max_skew=300, clock=clock)
    sent = clock.now
    guard.check(nonce(1), sent)
    clock.now = sent + 400
    guard.check(nonce(2), clock.now)  # forgets nonce 1
    clock.now = sent + 100  # NTP steps the clock back: nonce 1 would pass the skew check
    with pytest.raises(AuthenticationError, match="older than the replay window"):
        guard.check(nonce(1), sent)


@pytest.mark.parametrize("bad", ["a" * 65, "a" * 4096, "a" * 7, "", "has space", "ünïcode-nonce", "a/b.c:d;", 12345678,
                                 b"bytes-nonce"])
def test_malformed_and_long_nonces_are_refused(bad) -> None:
    """Old code kept 4 KB nonces (1 GiB for a full cache)."""
    guard = ReplayGuard(clock=Clock())
    with pytest.raises(AuthenticationError, match="nonce"):
        guard.check(bad, guard.clock())
    assert len(guard) == 0


@pytest.mark.parametrize("good", ["a" * 8, "Z" * 64, "abc-DEF_0123", new_nonce()])
def test_well_formed_nonces_are_accepted(good: str) -> None:
    ReplayGuard(clock=Clock()).check(good, 1_000_000.0)


@pytest.mark.parametrize("sent_at", [float("nan"), float("inf"), True, "1000000"])
def test_bad_send_times_are_refused(sent_at) -> None:
    with pytest.raises(AuthenticationError):
        ReplayGuard(clock=Clock()).check(new_nonce(), sent_at)


def test_not_before_refuses_requests_from_before_a_restart() -> None:
    clock = Clock()
    started = clock.now
    clock.now += 5
    guard = ReplayGuard(max_skew=300, clock=clock, not_before=started)
    with pytest.raises(AuthenticationError, match="before this server started"):
        guard.check(nonce(1), started - 10)  # captured before the restart, inside the skew window
    guard.check(nonce(2), started + 1)
    guard.check(nonce(3), started - auth.NOT_BEFORE_TOLERANCE / 2)  # rounding slack only
    ReplayGuard(max_skew=300, clock=clock).check(nonce(1), started - 10)  # the default: no such check


def test_check_is_thread_safe() -> None:
    """Several threads checking the same nonces: each is accepted exactly once, and a full
    cache admits exactly `capacity` of many distinct ones."""
    clock = Clock()
    guard = ReplayGuard(max_skew=300, capacity=3000, clock=clock)
    threads, per_thread = 6, 1000
    shared = [nonce(i) for i in range(per_thread)]
    accepted = [0] * threads
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        barrier.wait()
        for n in shared + [f"t{k}-{i:08d}" for i in range(per_thread)]:
            try:
                guard.check(n, clock.now)
                accepted[k] += 1
            except AuthenticationError:
                pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert sum(accepted) == 3000 and len(guard) == 3000
    assert len(guard._seen) == len(guard._expiry)


def test_memory_of_a_full_cache_is_within_the_documented_bound() -> None:
    capacity = 20_000
    clock = Clock()
    guard = ReplayGuard(max_skew=300, capacity=capacity, clock=clock)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(capacity + 10):
            try:
                guard.check(f"{i:064d}", clock.now - (i % 100) / 10)  # 64-char nonces, floats made here
            except AuthenticationError:
                pass
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(guard) == capacity
    assert used < 256 * capacity, f"{used / capacity:.0f} B per entry"


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(UsageError):
        ReplayGuard(max_skew=0)
    with pytest.raises(UsageError):
        ReplayGuard(capacity=0)
