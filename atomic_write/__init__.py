"""Crash-safe file writes: a reader sees the old file or the whole new one, never half of it.

One implementation for protocol/ (port and token files), runtime/ (the workflow's files) and
mlcore/ (checkpoints, state, metrics). Standard library only, so that the workflow's light
processes import it without pandas or torch. The bytes go to a fresh temp file beside the
target: it is created exclusively (`O_EXCL`, never through a symlink), gets its final mode
before any byte is written, and is fsync-ed. It is then renamed over the target, which replaces
a symlink at the target itself, never the symlink's target. Last, the folder is fsync-ed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 mode: int | None = None) -> Path:
    """Write through `write(fileobj)`, then rename over `path`; `mode` None keeps mkstemp's 0600."""
    def emit(fd: int) -> None:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            write(handle)
    return _replace(path, emit, mode)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    def emit(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return _replace(path, emit, mode)


def _replace(path: str | os.PathLike[str], emit: Callable[[int], None], mode: int | None) -> Path:
    """`emit(fd)` into a fresh temp file beside `path` (with `mode` set first), fsync, rename, fsync the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # O_EXCL, 0600
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode` whatever the umask, before the bytes
            emit(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> Path:
    """UTF-8 `text`; the file has exactly `mode` (0644 unless told)."""
    return write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened or fsync-ed."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a folder
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
