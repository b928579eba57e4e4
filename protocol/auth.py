"""Authentication of frames with a shared token: HMAC-SHA256 and a replay guard.

With a token configured, every frame carries an HMAC-SHA256 of header, metadata and body
under the token. Requests also carry a random nonce and their send time; the server
refuses a request whose time is outside the allowed skew or whose nonce it has seen in
that window, so a captured request cannot be replayed. A response echoes the request id
under its own MAC, so a client also knows the answer came from a token holder and
belongs to its request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from typing import Iterable

from .errors import AuthenticationError, UsageError

#: Requests older or newer than this (seconds) are refused when a token is set.
DEFAULT_MAX_SKEW_SECONDS = 300.0
#: Nonces remembered to refuse replays; past it the oldest are dropped (and requests that
#: old are refused by the skew check anyway, as long as the rate stays below cap/skew).
DEFAULT_REPLAY_CACHE = 1 << 18
MIN_TOKEN_BYTES = 16


def normalize_token(token: str | bytes | None) -> bytes | None:
    if token is None:
        return None
    raw = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(raw) < MIN_TOKEN_BYTES:
        raise UsageError(f"a token must be at least {MIN_TOKEN_BYTES} bytes long")
    return raw


def new_token() -> str:
    """A fresh random token (256 bits, hex)."""
    return os.urandom(32).hex()


def new_nonce() -> str:
    return os.urandom(16).hex()


def compute_mac(token: bytes, parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    mac = hmac.new(token, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def verify_mac(token: bytes, parts: Iterable[bytes | bytearray | memoryview], received: bytes | None) -> None:
    if received is None:
        raise AuthenticationError("authentication required: the frame carries no MAC")
    if not hmac.compare_digest(compute_mac(token, parts), received):
        raise AuthenticationError("authentication failed: bad MAC (wrong token?)")


class ReplayGuard:
    """Refuses stale request times and nonces already seen within the skew window."""

    def __init__(self, max_skew: float = DEFAULT_MAX_SKEW_SECONDS, capacity: int = DEFAULT_REPLAY_CACHE) -> None:
        self.max_skew = max_skew
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, nonce: str | None, sent_at: float | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if nonce is None or sent_at is None:
            raise AuthenticationError("authenticated requests need a nonce and a send time")
        if abs(now - sent_at) > self.max_skew:
            raise AuthenticationError(f"request time is {now - sent_at:+.0f} s off (allowed ±{self.max_skew:.0f} s)")
        if nonce in self._seen:
            raise AuthenticationError("replayed request (nonce seen before)")
        self._seen[nonce] = sent_at
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
