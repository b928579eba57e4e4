"""Blocks <-> frames: the pure codec, no sockets.

`encode_request` / `encode_response` turn a block into the byte buffers of one frame
(ready for `writelines`), applying the very checks the decoder applies, so nothing is
sent that the peer would refuse. Decoding is split in two, as the frame arrives:
`check_request_head` / `check_response_head` authenticate and parse the head before any
body byte is kept; `decode_request` / `decode_response` then check the body's MAC and
decode its DataFrames. The MAC is always checked before the JSON it covers is parsed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pandas as pd

from . import metadata as md
from .auth import ReplayGuard, body_mac, head_mac, new_nonce, verify_mac
from .blocks import RESERVED_EXTRA_KEYS, RequestBlock, ResponseBlock, _checked_request
from .dataframes import decode_dataframe, encode_dataframe_parts, object_cells
from .errors import AuthenticationError, LimitExceeded, PeerError, ProtocolError, UsageError
from .frame import ALIGN, FLAG_MAC, HEADER, KIND_REQUEST, KIND_RESPONSE, MAGIC, VERSION, Head, Header, RawFrame, padded
from .limits import Limits

REQUEST_SECTIONS = ("query_data", "random_data")
#: A response may carry the bytes of the checkpoint it names, so a model travels with the
#: answer and the two systems need not share a filesystem.
RESPONSE_SECTIONS = ("checkpoint_data",)

_REQUEST_REQUIRED: dict[str, md.Checker] = {"request_type": md.string, "request_id": md.string, "sections": md.sections}
_REQUEST_OPTIONAL: dict[str, md.Checker] = {
    "edge_id": md.optional_string,
    "round": md.round_id,
    "extra": md.scalar_map,
    "sent_at": md.number,
    "nonce": md.string,
}
_RESPONSE_REQUIRED: dict[str, md.Checker] = {
    "retraining_flag": md.boolean,
    "checkpoint": md.optional_string,
    "error": md.error_info,
    "request_id": md.optional_string,
    "sections": md.sections,
}
_RESPONSE_OPTIONAL: dict[str, md.Checker] = {"info": md.scalar_map}
_REQUEST_FIELDS = md.Fields(_REQUEST_REQUIRED, _REQUEST_OPTIONAL)
_RESPONSE_FIELDS = md.Fields(_RESPONSE_REQUIRED, _RESPONSE_OPTIONAL)

_PAD = bytes(ALIGN)
_DEFAULT_LIMITS = Limits()

Buffers = list[Any]  # bytes-like objects, in wire order


# --------------------------------------------------------------------------- encoding
def _frame(kind: int, meta: dict[str, Any], sections: Sequence[tuple[str, Sequence[Any]]], token: bytes | None,
           limits: Limits) -> Buffers:
    """Header, metadata, MACs and body as buffers to send in order; a section's data is one or more
    bytes-like parts (a large DataFrame's are sent from its own memory)."""
    lengths = [sum(map(len, parts)) for _, parts in sections] if sections else []
    meta["sections"] = [{"name": name, "length": n} for (name, _), n in zip(sections, lengths)] if sections else []
    try:
        meta_bytes = md.dumps(meta)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise UsageError(f"metadata cannot be encoded: {exc}") from None
    _check_own(meta, meta_bytes, _REQUEST_FIELDS if kind == KIND_REQUEST else _RESPONSE_FIELDS, limits)
    if len(meta_bytes) > limits.max_metadata_bytes:
        raise UsageError(f"metadata of {len(meta_bytes)} bytes exceeds the limit of {limits.max_metadata_bytes}")
    body: Buffers = []
    body_len = 0
    if sections:
        for (_, parts), n in zip(sections, lengths):
            body.extend(map(memoryview, parts))  # asyncio transports want bytes-like types they know
            if n % ALIGN:
                body.append(_PAD[: -n % ALIGN])
        body_len = sum(map(padded, lengths))
        if body_len > limits.max_body_bytes:
            raise LimitExceeded("body", body_len, limits.max_body_bytes)
    header = HEADER.pack(MAGIC, VERSION, kind, FLAG_MAC if token else 0, len(meta_bytes), body_len, 0)
    if not token:
        return [header, meta_bytes, *body]
    first = head_mac(token, header, meta_bytes)
    if not body:
        return [header, meta_bytes, first]
    return [header, meta_bytes, first, *body, body_mac(token, first, body)]


def _check_own(meta: dict[str, Any], meta_bytes: bytes, fields: md.Fields, limits: Limits) -> None:
    """The decoder's field checks, applied before sending: our own peer would refuse the rest.

    The blocks' constructors have checked every type already, and encoding to UTF-8 has
    refused lone surrogates; what is left are lengths and map sizes. When the whole
    metadata is no longer than one string may be and its maps are small, no field can be
    past a limit, and the walk over the fields is skipped (the common, small case).
    """
    most = limits.max_map_items
    maps_small = len(meta.get("extra") or ()) <= most and len(meta.get("info") or ()) <= most
    if maps_small and len(meta_bytes) <= limits.max_string_chars and len(meta["sections"]) <= limits.max_sections:
        return
    try:
        md.check_fields(dict(meta), fields, limits)  # (a copy: check_fields rewrites values in place)
    except PeerError as exc:
        raise UsageError(f"cannot send: {exc.message}") from None


def encode_request(block: RequestBlock, *, token: bytes | None = None, limits: Limits | None = None,
                   clock: Callable[[], float] = time.time, nonce: Callable[[], str] = new_nonce) -> Buffers:
    """One request frame; with a token it is signed and stamped (send time, nonce) now."""
    limits = limits or _DEFAULT_LIMITS
    meta: dict[str, Any] = {"request_type": block.request_type, "request_id": block.request_id, "sent_at": clock()}
    if block.edge_id is not None:
        meta["edge_id"] = block.edge_id
    if block.round is not None:
        meta["round"] = block.round
    if block.extra:
        meta["extra"] = dict(block.extra)
    if token:
        meta["nonce"] = nonce()
    if len(block.request_type) > limits.max_request_type_chars:
        raise UsageError(f"request_type is longer than {limits.max_request_type_chars} characters")
    try:
        sections = [(name, encode_dataframe_parts(frame)) for name in REQUEST_SECTIONS
                    if (frame := getattr(block, name)) is not None]
    except ProtocolError:
        raise
    except Exception as exc:  # pyarrow raises its own types on data it cannot hold
        raise UsageError(f"a DataFrame cannot be encoded: {type(exc).__name__}: {exc}") from None
    return _frame(KIND_REQUEST, meta, sections, token, limits)


_KEEP = object()


def encode_response(block: ResponseBlock, *, token: bytes | None = None, limits: Limits | None = None,
                    request_id: Any = _KEEP) -> Buffers:
    """One response frame; raises `UsageError` if the peer would refuse any field of it.

    `request_id` (when given) replaces the block's: the server echoes the request's.
    """
    limits = limits or _DEFAULT_LIMITS
    meta: dict[str, Any] = {
        "retraining_flag": block.retraining_flag,
        "checkpoint": block.checkpoint,
        "error": None if block.error is None else {"code": block.error_code or "error", "message": block.error},
        "request_id": block.request_id if request_id is _KEEP else request_id,
    }
    if block.info:
        meta["info"] = dict(block.info)
    data = block.checkpoint_data
    return _frame(KIND_RESPONSE, meta, [] if data is None else [("checkpoint_data", [data])], token, limits)


def error_response(code: str, message: str, *, request_id: str | None = None, limits: Limits | None = None) -> ResponseBlock:
    """An error reply whose message always fits the limits (details belong in the log)."""
    limits = limits or _DEFAULT_LIMITS
    if request_id is not None and len(request_id) > limits.max_string_chars:
        request_id = None
    chars = min(limits.max_error_chars, limits.max_string_chars)
    return ResponseBlock.failure(code[:64], message[:chars], request_id=request_id)


# --------------------------------------------------------------------------- decoding
def _authenticate_head(head: Head, token: bytes | None) -> None:
    if token is not None:
        verify_mac(head_mac(token, head.header_bytes, head.metadata), head.mac, "frame head")


def _sections(meta: dict[str, Any], header: Header, allowed: Sequence[str]) -> None:
    sections = meta["sections"]
    if not sections:  # (the common case: no DataFrame)
        if header.body_len:
            raise PeerError("section lengths do not add up to the body length", code="bad_metadata")
        return
    for name, _ in sections:
        if name not in allowed:
            raise PeerError(f"unexpected section {name!r}", code="bad_metadata")
    if sum(padded(length) for _, length in meta["sections"]) != header.body_len:
        raise PeerError("section lengths do not add up to the body length", code="bad_metadata")


def check_request_head(head: Head, *, token: bytes | None = None, replay_guard: ReplayGuard | None = None,
                       limits: Limits | None = None) -> dict[str, Any]:
    """Authenticate and parse a request's head; return its checked metadata."""
    limits = limits or _DEFAULT_LIMITS
    if head.header.kind != KIND_REQUEST:
        raise PeerError("expected a request frame")
    _authenticate_head(head, token)
    meta = md.check_fields(md.loads(head.metadata, limits), _REQUEST_FIELDS, limits)
    if token is not None and replay_guard is not None:
        replay_guard.check(meta.get("nonce"), meta.get("sent_at"))
    if not meta["request_type"] or len(meta["request_type"]) > limits.max_request_type_chars:
        raise PeerError(f"request_type must be 1 to {limits.max_request_type_chars} characters", code="bad_metadata")
    extra = meta.get("extra")
    clash = RESERVED_EXTRA_KEYS.intersection(extra) if extra else None
    if clash:
        raise PeerError(f"extra may not hold {sorted(clash)}: they are fields of their own", code="bad_metadata")
    _sections(meta, head.header, REQUEST_SECTIONS)
    return meta


def check_response_head(head: Head, *, token: bytes | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """Authenticate (before parsing anything) and parse a response's head."""
    limits = limits or _DEFAULT_LIMITS
    if head.header.kind != KIND_RESPONSE:
        raise PeerError("expected a response frame")
    if token is not None and head.mac is None:
        raise AuthenticationError(
            "the server's reply is not signed: it refused our token, or is not the server we share it with"
        )
    _authenticate_head(head, token)
    meta = md.check_fields(md.loads(head.metadata, limits), _RESPONSE_FIELDS, limits)
    _sections(meta, head.header, RESPONSE_SECTIONS)
    return meta


def _authenticate_body(raw: RawFrame, token: bytes | None) -> None:
    if token is not None and raw.header.body_len:
        assert raw.head.mac is not None  # the head check required it
        verify_mac(body_mac(token, raw.head.mac, [raw.body]), raw.body_mac, "frame body")


def decode_request(raw: RawFrame, *, token: bytes | None = None, replay_guard: ReplayGuard | None = None,
                   limits: Limits | None = None) -> RequestBlock:
    """Decode a request frame; raises `PeerError` (with a code) on anything wrong.

    A frame whose head was already checked (`raw.checked`, from the decoder's head check)
    is not checked again. `raw` comes from a `FrameDecoder`, whose every body is a buffer of
    its own: the decoded DataFrames may keep it (`decode_dataframe(adopt=True)`).
    """
    meta = raw.checked if raw.checked is not None else check_request_head(
        raw.head, token=token, replay_guard=replay_guard, limits=limits)
    if token is not None:
        _authenticate_body(raw, token)
    frames: dict[str, pd.DataFrame] = {}
    offset = 0
    for name, length in meta["sections"]:
        # the body is this frame's own buffer (FrameDecoder): its largest numpy block need not be copied
        frames[name] = decode_dataframe(raw.body[offset : offset + length], adopt=True)
        offset += padded(length)
    return _checked_request(
        meta["request_type"],
        frames.get("query_data"),
        frames.get("random_data"),
        meta["request_id"],
        meta.get("edge_id"),
        meta.get("round"),
        dict(meta.get("extra") or {}),
    )


def decodes_quickly(raw: RawFrame, max_bytes: int, max_cells: int) -> bool:
    """Whether a request whose head was checked is cheap to decode: at most `max_bytes` of body
    whose DataFrames make at most `max_cells` Python objects in all, by schemas seen before
    (`dataframes.object_cells`); a schema not seen yet says no."""
    if raw.checked is None or raw.header.body_len > max_bytes:
        return False
    cells, offset = 0, 0
    for _, length in raw.checked["sections"]:
        found = object_cells(raw.body[offset : offset + length])
        if found is None:
            return False
        cells += found
        offset += padded(length)
    return cells <= max_cells


def decode_response(raw: RawFrame, *, token: bytes | None = None, limits: Limits | None = None) -> ResponseBlock:
    """Decode a response frame; raises `PeerError` on anything wrong (a bad or missing MAC included)."""
    meta = raw.checked if raw.checked is not None else check_response_head(raw.head, token=token, limits=limits)
    if token is not None:
        _authenticate_body(raw, token)
    data = None
    for name, length in meta["sections"]:  # only checkpoint_data is allowed (checked with the head)
        data = bytes(raw.body[:length])
    error = meta["error"]
    return ResponseBlock._checked(
        meta["retraining_flag"],
        meta["checkpoint"],
        None if error is None else error["message"],
        None if error is None else error["code"],
        dict(meta.get("info") or {}),
        meta["request_id"],
        data,
    )
