"""One exception family for the protocol.

`ProtocolError` is the base. `UsageError` means this side misused the API; `PeerError`
means the peer sent something wrong (the server answers it with an error response);
`RemoteError` is raised by the client when the server answered with an error. Every
error carries a short machine-readable `code` that travels on the wire.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error this package raises on purpose."""

    code = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UsageError(ProtocolError, ValueError):
    """This side called the API wrongly (bad argument, unsupported column, ...)."""

    code = "usage_error"


class PeerError(ProtocolError):
    """The peer sent bytes that break the protocol."""

    code = "bad_frame"


class LimitExceeded(PeerError):
    """A declared size is past its configured limit; nothing was allocated for it."""

    code = "too_large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
        self.what, self.size, self.limit = what, size, limit


class AuthenticationError(PeerError):
    """The frame's MAC is missing, wrong, stale or replayed."""

    code = "auth_failed"


class RemoteError(ProtocolError):
    """The server answered with an error response; `code` and `message` are its own."""

    code = "remote_error"


class ConnectionLost(ProtocolError, ConnectionError):
    """The connection closed or timed out before a whole response arrived."""

    code = "connection_lost"


#: Codes after which the server always closes the connection, wherever they arise.
CLOSING_CODES = frozenset({"auth_failed", "internal", "busy", "shutting_down", "timeout", "too_large"})


def closes_connection(code: str, *, whole_frame: bool) -> bool:
    """Whether the server closes after answering with `code` (the rule of docs/protocol.md §7).

    An error in the stream or a frame's head leaves the stream untrusted: closed. An error
    in the body or the answer to a whole, authenticated frame keeps the connection open,
    unless its code is one of `CLOSING_CODES`.
    """
    return not whole_frame or code in CLOSING_CODES


def describe(exc: BaseException) -> tuple[str, str]:
    """(code, message) to tell the peer: our own errors say what; anything else is `internal`."""
    if isinstance(exc, ProtocolError):
        return exc.code, exc.message
    return "internal", "internal error (details are in the server log)"
