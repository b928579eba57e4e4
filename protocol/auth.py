"""Authentication of frames with a shared token: HMAC-SHA256 and a replay guard.

With a token configured, every frame carries an HMAC-SHA256 of its header and metadata
(the head MAC, checked before the body is accepted) and one of that MAC and its body
(docs/protocol.md §2.4). Requests also carry a random nonce and their send time; the server
refuses a request whose time is outside the allowed skew or whose nonce it has seen in
that window, so a captured request cannot be replayed. A response echoes the request id
under its own MAC, so a client also knows the answer came from a token holder and
belongs to its request.
"""

from __future__ import annotations

import heapq
import hmac
import math
import os
import re
import threading
import time
from typing import Any, Callable, Iterable

from .errors import AuthenticationError, UsageError

#: Requests older or newer than this (seconds) are refused when a token is set.
DEFAULT_MAX_SKEW_SECONDS = 300.0
#: Live nonces remembered to refuse replays; when that many are live, new requests are
#: refused (never a live nonce dropped). See `ReplayGuard` for the memory and rate it bounds.
DEFAULT_REPLAY_CACHE = 1 << 18
MIN_TOKEN_BYTES = 16
#: A nonce is 8 to 64 characters of [0-9A-Za-z_-] (`new_nonce` makes 32 hex digits).
MIN_NONCE_CHARS, MAX_NONCE_CHARS = 8, 64
_NONCE = re.compile(r"[0-9A-Za-z_-]{%d,%d}" % (MIN_NONCE_CHARS, MAX_NONCE_CHARS))
#: Slack (seconds) for `ReplayGuard(not_before=...)`: rounding only, not clock differences.
NOT_BEFORE_TOLERANCE = 1e-3


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


#: Bytes of `os.urandom` fetched at once for ids and nonces: a getrandom() call costs
#: ~0.7 us, about as much as the rest of making a request id. Same source, same bits.
_RANDOM_BATCH = 4096
_random = b""
_random_at = _RANDOM_BATCH
_random_lock = threading.Lock()


def _forget_random() -> None:  # a forked child must not hand out its parent's ids and nonces
    global _random, _random_at, _random_lock
    _random, _random_at, _random_lock = b"", _RANDOM_BATCH, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random)


def random_hex16() -> str:
    """16 bytes from `os.urandom`, as 32 hex digits (taken from a batch read at once)."""
    global _random, _random_at
    with _random_lock:
        at = _random_at
        if at >= _RANDOM_BATCH:
            _random, at = os.urandom(_RANDOM_BATCH), 0
        _random_at = at + 16
        return _random[at : at + 16].hex()


def new_nonce() -> str:
    return random_hex16()


#: One HMAC-SHA256 object keyed with each token seen, copied for every MAC: the key's
#: padding and first two blocks are hashed once, not per frame (bounded: few tokens exist).
_KEYED: dict[bytes, Any] = {}


def _keyed(token: bytes) -> Any:
    keyed = _KEYED.get(token)
    if keyed is None:
        if len(_KEYED) >= 16:
            _KEYED.clear()
        keyed = hmac.new(token, digestmod="sha256")
        # The OpenSSL HMAC object itself when hmac wraps one (copy, update and digest then
        # run in C, not through hmac.HMAC's Python methods); the same interface either way.
        keyed = _KEYED[token] = getattr(keyed, "_hmac", None) or keyed
    return keyed.copy()


def head_mac(token: bytes, header: bytes, metadata: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over header and metadata: lets the receiver authenticate before the body."""
    mac = _keyed(token)
    mac.update(header)
    mac.update(metadata)
    return mac.digest()


def body_mac(token: bytes, first_mac: bytes, body: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """HMAC-SHA256 over the head MAC and the body: binds the body to its authenticated head."""
    mac = _keyed(token)
    mac.update(first_mac)
    for part in body:
        mac.update(part)
    return mac.digest()


def verify_mac(expected: bytes, received: bytes | None, what: str) -> None:
    """Constant-time comparison; a missing MAC is refused like a wrong one."""
    if received is None:
        raise AuthenticationError(f"authentication required: the {what} carries no MAC")
    if not hmac.compare_digest(expected, received):
        raise AuthenticationError(f"authentication failed: bad {what} MAC (wrong token?)")


class ReplayGuard:
    """Refuses stale request times and nonces already seen while a replay could still pass.

    A request is accepted once: its `sent_at` must be within `max_skew` seconds of `clock()`,
    and its nonce (8 to 64 characters of ``[0-9A-Za-z_-]``) must not have been seen. A nonce is
    remembered until its request is too old for the skew check (``clock() - sent_at >
    max_skew``), so expiry follows time, not the number of newer requests. Whatever the
    clock does later (NTP steps it back, say), a request whose `sent_at` is not newer than a
    forgotten one is refused as too old for the replay window, so forgetting never reopens a
    replay.

    Memory: at most `capacity` nonces are kept. When that many are still live, a new request
    is refused ("replay cache full") rather than a live nonce dropped; so `capacity` bounds
    the sustained rate of authenticated requests to about ``capacity / max_skew`` per second
    (the defaults: 2**18 / 300 s = 873/s). Each entry is a nonce of at most 64 ASCII
    characters (113 bytes as a str), its float send time, a dict slot and a heap tuple:
    about 250 bytes, so the defaults bound the cache by about 64 MiB (capacity x 256 B).

    Restarts: the cache lives in memory only. A server restarted with the same token would
    accept replays of requests sent during the last `max_skew` seconds before the restart.
    Pass ``not_before=<the server's start time>`` to refuse every request whose `sent_at` is
    earlier than that (less `NOT_BEFORE_TOLERANCE` seconds): no request from before the
    restart can then be replayed. The price: a client whose clock runs behind the server's
    by d seconds is refused for the first d seconds after the server starts. Rotating the
    token on restart closes the same hole.

    `check` is thread-safe: the server calls it from worker threads and its event loop.
    """

    def __init__(
        self,
        max_skew: float = DEFAULT_MAX_SKEW_SECONDS,
        capacity: int = DEFAULT_REPLAY_CACHE,
        *,
        clock: Callable[[], float] = time.time,
        not_before: float | None = None,
    ) -> None:
        if not max_skew > 0:
            raise UsageError("max_skew must be positive")
        if capacity < 1:
            raise UsageError("the replay cache capacity must be at least 1")
        self.max_skew = float(max_skew)
        self.capacity = int(capacity)
        self.clock = clock
        self.not_before = None if not_before is None else float(not_before)
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # nonce -> sent_at
        self._expiry: list[tuple[float, str]] = []  # heap of (sent_at, nonce): the oldest first
        self._forgotten_upto = -math.inf  # every nonce forgotten so far had sent_at <= this

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: str | None, sent_at: float | None, now: float | None = None) -> None:
        """Accept (and remember) this request's nonce, or raise `AuthenticationError`."""
        if nonce is None or sent_at is None:
            raise AuthenticationError("authenticated requests need a nonce and a send time")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise AuthenticationError(
                f"the nonce must be {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} characters of [0-9A-Za-z_-]"
            )
        if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
            raise AuthenticationError("the send time must be a finite number")
        with self._lock:
            now = self.clock() if now is None else now
            if self.not_before is not None and sent_at < self.not_before - NOT_BEFORE_TOLERANCE:
                raise AuthenticationError(
                    f"request sent {self.not_before - sent_at:.0f} s before this server started "
                    "(a replay from before a restart, or a client clock running behind)"
                )
            if abs(now - sent_at) > self.max_skew:
                raise AuthenticationError(
                    f"request time is {now - sent_at:+.0f} s off (allowed ±{self.max_skew:.0f} s)"
                )
            self._expire(now)
            if sent_at <= self._forgotten_upto:
                raise AuthenticationError("request is older than the replay window (its nonce may be forgotten)")
            if nonce in self._seen:
                raise AuthenticationError("replayed request (nonce seen before)")
            if len(self._seen) >= self.capacity:
                raise AuthenticationError(
                    f"replay cache full ({self.capacity} requests in the last {self.max_skew:.0f} s); try again later"
                )
            self._seen[nonce] = sent_at
            heapq.heappush(self._expiry, (sent_at, nonce))

    def _expire(self, now: float) -> None:
        """Forget the nonces whose requests the skew check refuses by now."""
        heap = self._expiry
        while heap and now - heap[0][0] > self.max_skew:
            sent_at, nonce = heapq.heappop(heap)
            del self._seen[nonce]
            if sent_at > self._forgotten_upto:
                self._forgotten_upto = sent_at
