"""The conversation over one connection, without I/O — after h11's `Connection`.

A `ServerConversation` or `ClientConversation` takes bytes (`get_buffer` +
`buffer_updated`, or `receive_data`), end of stream and the passing of time, and says
what to send (`data_to_send`), what happened (`next_event`), whether to read on
(`wants_read`), when it next needs the clock (`deadline`) and whether to close or abort.
Framing, authentication before the body, request-id matching, one reply per request,
error-then-close and every timeout live here; the asyncio shells only move bytes.

Time is whatever monotonic clock the caller passes as `now` (the shells use the loop's).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .auth import ReplayGuard
from .blocks import RequestBlock, ResponseBlock
from .codec import check_request_head, check_response_head, decode_response, encode_request, encode_response, error_response
from .errors import ConnectionLost, PeerError, ProtocolError, RemoteError, UsageError, closes_connection, describe
from .frame import FrameDecoder, Head, RawFrame
from .limits import (
    DEFAULT_AUTH_TIMEOUT, DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_WRITE_TIMEOUT, Limits,
)


# ----------------------------------------------------------------------------- events
# Not frozen (as frame.Header): one event a frame, and a frozen dataclass is ~1.5 us slower to build.
@dataclass(slots=True)
class RequestReceived:
    """A whole request frame whose head is authenticated and checked; decode its body next."""

    frame: RawFrame

    @property
    def request_id(self) -> str:
        return self.frame.checked["request_id"]


@dataclass(slots=True)
class ResponseReceived:
    response: ResponseBlock


@dataclass(slots=True)
class ConnectionClosed:
    """The conversation is over; `error` says why when it did not end cleanly."""

    error: ProtocolError | None


Event = RequestReceived | ResponseReceived | ConnectionClosed


class BodyBudget:
    """Bytes of frame bodies a server holds at once, across all its connections.

    A body is reserved when its head has been authenticated and checked (so a peer
    without the token never gets here), and released once its request is answered.
    """

    def __init__(self, limit: int = DEFAULT_MAX_BUFFERED_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> None:
        if size and self.used + size > self.limit:
            raise PeerError(f"server busy: {self.used} of {self.limit} buffer bytes in use", code="busy")
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size


# ----------------------------------------------------------------------------- common part
class _Conversation:
    def __init__(self, *, limits: Limits | None, token: bytes | None, now: float, write_timeout: float) -> None:
        self.limits = limits or Limits()
        self.token = token
        self.decoder = FrameDecoder(self.limits, self._check_head)
        self.write_timeout = write_timeout
        self.closed = False  # no more reading or events; close once what is queued is sent
        self.aborted = False  # drop the connection without sending what is queued
        self.eof = False
        self.bytes_received = 0
        self._out: list[Any] = []
        self._events: deque[Event] = deque()
        self._write_blocked_since: float | None = None

    # -- input
    def get_buffer(self) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int, now: float) -> None:
        self.bytes_received += nbytes
        self.decoder.buffer_updated(nbytes)
        self._pump(now)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Take bytes the caller already holds (tests, in-memory wiring)."""
        view = memoryview(data).cast("B")
        while view.nbytes and not self.closed:
            target = self.get_buffer()
            n = min(target.nbytes, view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n, now)

    def receive_eof(self, now: float) -> None:
        self.eof = True
        self._pump(now)

    def write_blocked(self, blocked: bool, now: float) -> None:
        """The transport's buffer is over (or back under) its high-water mark."""
        self._write_blocked_since = now if blocked else None

    def connection_lost(self) -> None:
        """The transport is gone: nothing more will be sent or received."""
        self.closed = True
        self.decoder.release()

    # -- output
    def data_to_send(self) -> list[Any]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def wants_read(self) -> bool:
        return not self.closed

    @property
    def deadline(self) -> float | None:
        """When `on_timeout` must be called (None: no timer)."""
        if self._write_blocked_since is not None:
            return self._write_blocked_since + self.write_timeout
        return None if self.closed else self._read_deadline()

    def on_timeout(self, now: float) -> None:
        """Call at (or after) `deadline`; acts on whichever timer has expired."""
        if self._write_blocked_since is not None and now >= self._write_blocked_since + self.write_timeout:
            self._abort(ConnectionLost(f"the peer read nothing for {self.write_timeout:.0f} s", code="timeout"))
            return
        if not self.closed:
            self._read_timeout(now)

    # -- for subclasses
    def _check_head(self, head: Head) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pump(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_deadline(self) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_timeout(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _abort(self, error: ProtocolError) -> None:
        self.closed = self.aborted = True
        self._out.clear()
        self._events.append(ConnectionClosed(error))

    def _next_frame(self) -> RawFrame | None:
        """The next frame, or None; a broken stream raises `ProtocolError` (bugs become `internal`)."""
        try:
            return self.decoder.next_frame()
        except ProtocolError:
            raise
        except Exception as exc:  # a bug in a check must not take the connection's owner down
            raise ProtocolError(f"internal error: {type(exc).__name__}", code="internal") from exc


# ----------------------------------------------------------------------------- server
class ServerConversation(_Conversation):
    """The server's side: one request at a time, reading paused while it is answered."""

    def __init__(
        self,
        *,
        now: float,
        limits: Limits | None = None,
        token: bytes | None = None,
        replay_guard: ReplayGuard | None = None,
        budget: BodyBudget | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        super().__init__(limits=limits, token=token, now=now, write_timeout=write_timeout)
        self.replay_guard = replay_guard
        self.budget = budget
        self.idle_timeout, self.frame_timeout, self.auth_timeout = idle_timeout, frame_timeout, auth_timeout
        self.authenticated = False  # a frame head has passed its check (its MAC, with a token)
        self.accepted_at = now
        self._in_flight: RequestReceived | None = None
        self._reserved = 0
        self._idle_since = now
        self._frame_started: float | None = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    @property
    def wants_read(self) -> bool:
        """Reading stops once bytes arrive while a request is answered: at most one read
        past the request is held, and a peer that pipelines is held back by TCP. (Reading
        is not stopped before then: a peer that waits for its answer costs no syscalls.)"""
        return not self.closed and (self._in_flight is None or not self.decoder.in_frame)

    def _check_head(self, head: Head) -> dict[str, Any]:
        meta = check_request_head(head, token=self.token, replay_guard=self.replay_guard, limits=self.limits)
        self.authenticated = True
        tail_len = head.header.tail_len
        if tail_len and self.budget is not None:  # (reserving nothing always succeeds)
            self.budget.reserve(tail_len)
            self._reserved = tail_len
        return meta

    # -- answers
    def send_response(self, response: ResponseBlock, now: float) -> None:
        """Answer the request in flight; a reply that cannot be encoded becomes `internal`."""
        request = self._require_in_flight()
        try:
            parts = encode_response(response, token=self.token, limits=self.limits, request_id=request.request_id)
        except Exception as exc:
            message = exc.message if isinstance(exc, ProtocolError) else type(exc).__name__
            self.send_error("internal", f"the reply could not be sent: {message}", now)
            return
        self._finish_request(parts, close=False, now=now)

    def send_error(self, code: str, message: str, now: float) -> None:
        """Answer the request in flight with an error; close if §7 says so."""
        request = self._require_in_flight()
        reply = error_response(code, message, request_id=request.request_id, limits=self.limits)
        parts = encode_response(reply, token=self.token, limits=self.limits)
        self._finish_request(parts, close=closes_connection(code, whole_frame=True), now=now)

    def refuse(self, code: str, message: str) -> None:
        """Answer without a request (busy, shutting down, evicted) and close."""
        self._fail(PeerError(message, code=code))

    def close(self) -> None:
        """Close once what is queued is sent (idle connections at shutdown)."""
        if not self.closed:
            self.closed = True
            self._events.append(ConnectionClosed(None))

    def connection_lost(self) -> None:
        super().connection_lost()
        self._release()

    def _require_in_flight(self) -> RequestReceived:
        if self._in_flight is None:
            raise UsageError("no request is waiting for an answer")
        return self._in_flight

    def _finish_request(self, parts: list[Any], *, close: bool, now: float) -> None:
        self._in_flight = None
        self._release()
        if self.closed:  # the connection went away while the request was served
            return
        self._out.extend(parts)
        self._idle_since = now
        self._frame_started = now if self.decoder.in_frame else None
        if close:
            self.close()
        else:
            self._pump(now)

    def _release(self) -> None:
        if self.budget is not None and self._reserved:
            self.budget.release(self._reserved)
        self._reserved = 0

    # -- frames
    def _pump(self, now: float) -> None:
        if self.closed or self._in_flight is not None:
            return
        try:
            frame = self._next_frame()
        except ProtocolError as exc:
            self._fail(exc)
            return
        if frame is not None:
            self._in_flight = RequestReceived(frame)
            self._frame_started = None
            self._events.append(self._in_flight)
            return
        if self.decoder.in_frame:
            if self._frame_started is None:
                self._frame_started = now
            if self.eof:
                self._fail(PeerError("the connection was closed in the middle of a frame"))
        else:
            self._frame_started = None
            if self.eof:
                self.close()

    def _fail(self, exc: ProtocolError) -> None:
        """An error in the stream: answer it (no request id: the frame was not read) and close."""
        if self.closed:
            return
        code, message = describe(exc)
        token = None if code == "auth_failed" else self.token  # a refused peer may not hold our token
        self._out.extend(encode_response(error_response(code, message, limits=self.limits), token=token,
                                         limits=self.limits))
        self.closed = True
        self._release()
        self._events.append(ConnectionClosed(exc))

    # -- timers
    def _read_deadline(self) -> float | None:
        if self._in_flight is not None:
            return None  # a callback may take minutes; the write timeout bounds the reply
        if self._frame_started is not None:
            deadline = self._frame_started + self.frame_timeout
        else:
            deadline = self._idle_since + self.idle_timeout
        if not self.authenticated:
            deadline = min(deadline, self.accepted_at + self.auth_timeout)
        return deadline

    def _read_timeout(self, now: float) -> None:
        if self._in_flight is not None:
            return
        if not self.authenticated and now >= self.accepted_at + self.auth_timeout:
            self._fail(PeerError(f"no authenticated request within {self.auth_timeout:.0f} s", code="timeout"))
        elif self._frame_started is not None and now >= self._frame_started + self.frame_timeout:
            self._fail(PeerError(f"frame not complete within {self.frame_timeout:.0f} s", code="timeout"))
        elif self._frame_started is None and now >= self._idle_since + self.idle_timeout:
            self.close()


# ----------------------------------------------------------------------------- client
class ClientConversation(_Conversation):
    """The client's side: send a request, get exactly its reply; an early error is kept."""

    def __init__(self, *, now: float, limits: Limits | None = None, token: bytes | None = None,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        super().__init__(limits=limits, token=token, now=now, write_timeout=write_timeout)
        self._awaiting: RequestBlock | None = None
        self._response_deadline: float | None = None
        self._timeout = 0.0
        self.early_error: ResponseBlock | None = None  # e.g. `busy`, sent before we asked

    def _check_head(self, head: Head) -> dict[str, Any]:
        return check_response_head(head, token=self.token, limits=self.limits)

    def send_request(self, request: RequestBlock, now: float, timeout: float) -> None:
        """Queue `request`, signed and stamped now; its reply (or the reason there is none)
        arrives as an event. Raises at once when the server has already said no."""
        if self.early_error is not None:
            raise _remote_error(self.early_error)
        if self.closed:
            raise ConnectionLost("the server closed the connection")
        if self._awaiting is not None:
            raise UsageError("a request is already waiting for its reply on this connection")
        self._out.extend(encode_request(request, token=self.token, limits=self.limits))
        self._awaiting = request
        self._timeout = timeout
        self._response_deadline = now + timeout

    def _pump(self, now: float) -> None:
        while not self.closed:
            try:
                frame = self._next_frame()
            except ProtocolError as exc:
                self._abort(exc)
                return
            if frame is None:
                break
            response = decode_response(frame, token=self.token, limits=self.limits)
            if self._awaiting is None:
                if response.error is not None and response.request_id is None:
                    self.early_error = response  # the server refused us before we asked
                    continue
                self._abort(PeerError("unsolicited frame from the server"))
                return
            expected = self._awaiting.request_id
            unread = response.error is not None and response.request_id is None  # the server could not read it
            if response.request_id != expected and not unread:
                self._abort(PeerError(
                    f"response is for request {response.request_id!r}, not {self._awaiting.request_id!r}"))
                return
            self._awaiting = self._response_deadline = None
            self._events.append(ResponseReceived(response))
        if self.eof and not self.closed:
            self.closed = True
            error = None
            if self._awaiting is not None:
                error = (_remote_error(self.early_error) if self.early_error is not None
                         else ConnectionLost("the server closed the connection before answering"))
            self._awaiting = None
            self._events.append(ConnectionClosed(error))

    def _abort(self, error: ProtocolError) -> None:
        self._awaiting = self._response_deadline = None
        super()._abort(error)

    def _read_deadline(self) -> float | None:
        return self._response_deadline

    def _read_timeout(self, now: float) -> None:
        if self._response_deadline is not None and now >= self._response_deadline:
            self._abort(ConnectionLost(f"no response within {self._timeout:.0f} s", code="timeout"))


def _remote_error(response: ResponseBlock) -> RemoteError:
    return RemoteError(f"server error ({response.error_code}): {response.error}", code=response.error_code)
