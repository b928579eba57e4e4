"""Small files the server publishes: its port (written atomically) and a token (0600).

Writes go to a fresh temp file in the same folder, created exclusively (`O_EXCL`, never
through a symlink) with its final mode set before any byte is written, then fsync-ed and
renamed over the target, and the folder is fsync-ed. Readers of the token refuse a
symlink, anything but a regular file, a file another user owns, one that group or others
can read, and a token shorter than `auth.MIN_TOKEN_BYTES`; the checks are made on the
descriptor that is read, so the file cannot be swapped between check and read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from atomic_write import write_text_atomic as write_atomic

from .auth import MIN_TOKEN_BYTES, new_token
from .errors import UsageError

#: A token file larger than this is refused unread (tokens are 64 hex digits).
MAX_TOKEN_FILE_BYTES = 4096
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    write_atomic(path, f"{port}\n")


def read_port_file(path: str | os.PathLike[str]) -> int:
    text = Path(path).read_text(encoding="utf-8").strip()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{path}: not a port number: {text[:20]!r}")
    return int(text)


def create_token_file(path: str | os.PathLike[str]) -> str:
    """Write a fresh random token readable by its owner only (0600); return it."""
    token = new_token()
    write_atomic(path, token + "\n", mode=0o600)
    return token


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in `path`, after checking that only this user could have written or read it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path}: token file is a symbolic link; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path}: token file is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise UsageError(f"{path}: token file is owned by uid {info.st_uid}, not by this user ({os.geteuid()})")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise UsageError(f"{path}: token file is readable by others (mode {mode:o}: group/other bits set); chmod 600 it")
        if info.st_size > MAX_TOKEN_FILE_BYTES:
            raise UsageError(f"{path}: token file is {info.st_size} bytes; a token is far shorter")
        data = b""
        while len(data) <= MAX_TOKEN_FILE_BYTES and (chunk := os.read(fd, MAX_TOKEN_FILE_BYTES + 1 - len(data))):
            data += chunk
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise UsageError(f"{path}: token file is over {MAX_TOKEN_FILE_BYTES} bytes; a token is far shorter")
    finally:
        os.close(fd)
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: token file is not UTF-8 text") from None
    if not token:
        raise UsageError(f"{path}: token file is empty")
    if len(token.encode("utf-8")) < MIN_TOKEN_BYTES:
        raise UsageError(f"{path}: token is {len(token.encode('utf-8'))} bytes; at least {MIN_TOKEN_BYTES} are needed")
    return token
