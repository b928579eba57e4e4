"""Blocks <-> frames: the pure codec, no sockets.

`encode_request` / `encode_response` turn a block into the list of byte buffers of one
frame (ready for `writelines`); `decode_request` / `decode_response` turn a `RawFrame`
from `FrameDecoder` back into a block, checking MAC, metadata and every DataFrame.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import pandas as pd

from . import metadata as md
from .auth import ReplayGuard, compute_mac, new_nonce, verify_mac
from .blocks import RequestBlock, ResponseBlock
from .dataframes import decode_dataframe, encode_dataframe
from .errors import LimitExceeded, PeerError, UsageError
from .frame import ALIGN, FLAG_MAC, KIND_REQUEST, KIND_RESPONSE, Header, RawFrame, padded
from .limits import Limits

REQUEST_SECTIONS = ("query_data", "random_data")
_MAX_REQUEST_TYPE_CHARS = 64

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

_PAD = bytes(ALIGN)

Buffers = list[Any]  # bytes-like objects, in wire order


def _frame(kind: int, meta: dict[str, Any], sections: Sequence[tuple[str, Any]], token: bytes | None, limits: Limits) -> Buffers:
    meta["sections"] = [{"name": name, "length": len(data)} for name, data in sections]
    meta_bytes = md.dumps(meta)
    if len(meta_bytes) > limits.max_metadata_bytes:
        raise UsageError(f"metadata of {len(meta_bytes)} bytes exceeds the limit of {limits.max_metadata_bytes}")
    body: Buffers = []
    for _, data in sections:
        body.append(memoryview(data))  # asyncio transports want bytes-like types they know
        if len(data) % ALIGN:
            body.append(_PAD[: -len(data) % ALIGN])
    body_len = sum(padded(len(data)) for _, data in sections)
    if body_len > limits.max_body_bytes:
        raise LimitExceeded("body", body_len, limits.max_body_bytes)
    header = Header(kind, FLAG_MAC if token else 0, len(meta_bytes), body_len).pack()
    parts = [header, meta_bytes, *body]
    if token:
        parts.append(compute_mac(token, parts))
    return parts


def _sections(raw: RawFrame, listed: list[tuple[str, int]], allowed: Sequence[str]) -> dict[str, memoryview]:
    if sum(padded(length) for _, length in listed) != raw.header.body_len:
        raise PeerError("section lengths do not add up to the body length", code="bad_metadata")
    body, offset, out = raw.body, 0, {}
    for name, length in listed:
        if name not in allowed:
            raise PeerError(f"unexpected section {name!r}", code="bad_metadata")
        out[name] = body[offset : offset + length]
        offset += padded(length)
    return out


def _authenticate(raw: RawFrame, token: bytes | None) -> None:
    if token is not None:
        verify_mac(token, raw.signed, raw.mac)


def encode_request(block: RequestBlock, *, token: bytes | None = None, limits: Limits | None = None) -> Buffers:
    limits = limits or Limits()
    meta: dict[str, Any] = {"request_type": block.request_type, "request_id": block.request_id, "sent_at": time.time()}
    if block.edge_id is not None:
        meta["edge_id"] = block.edge_id
    if block.round is not None:
        meta["round"] = block.round
    if block.extra:
        meta["extra"] = dict(block.extra)
    if token:
        meta["nonce"] = new_nonce()
    sections = [(name, encode_dataframe(frame)) for name in REQUEST_SECTIONS if (frame := getattr(block, name)) is not None]
    return _frame(KIND_REQUEST, meta, sections, token, limits)


def decode_request(
    raw: RawFrame, *, token: bytes | None = None, replay_guard: ReplayGuard | None = None, limits: Limits | None = None
) -> RequestBlock:
    """Decode a request frame; raises `PeerError` (with a code) on anything wrong."""
    limits = limits or Limits()
    if raw.header.kind != KIND_REQUEST:
        raise PeerError("expected a request frame")
    _authenticate(raw, token)
    meta = md.check_fields(md.loads(raw.metadata, limits), _REQUEST_REQUIRED, _REQUEST_OPTIONAL, limits)
    if token is not None and replay_guard is not None:
        replay_guard.check(meta.get("nonce"), meta.get("sent_at"))
    request_type = meta["request_type"]
    if not request_type or len(request_type) > _MAX_REQUEST_TYPE_CHARS:
        raise PeerError("request_type must be 1 to 64 characters", code="bad_metadata")
    frames: dict[str, pd.DataFrame] = {
        name: decode_dataframe(data) for name, data in _sections(raw, meta["sections"], REQUEST_SECTIONS).items()
    }
    return RequestBlock(
        request_type,
        frames.get("query_data"),
        frames.get("random_data"),
        request_id=meta["request_id"] or "-",
        edge_id=meta.get("edge_id"),
        round=meta.get("round"),
        extra=meta.get("extra"),
    )


def encode_response(block: ResponseBlock, *, token: bytes | None = None, limits: Limits | None = None) -> Buffers:
    limits = limits or Limits()
    meta: dict[str, Any] = {
        "retraining_flag": block.retraining_flag,
        "checkpoint": block.checkpoint,
        "error": None if block.error is None else {"code": block.error_code or "error", "message": block.error},
        "request_id": block.request_id,
    }
    if block.info:
        meta["info"] = dict(block.info)
    return _frame(KIND_RESPONSE, meta, [], token, limits)


def decode_response(raw: RawFrame, *, token: bytes | None = None, limits: Limits | None = None) -> ResponseBlock:
    """Decode a response frame; raises `PeerError` on anything wrong (including a bad MAC)."""
    limits = limits or Limits()
    if raw.header.kind != KIND_RESPONSE:
        raise PeerError("expected a response frame")
    meta = md.check_fields(md.loads(raw.metadata, limits), _RESPONSE_REQUIRED, _RESPONSE_OPTIONAL, limits)
    if meta["error"] is None or meta["error"]["code"] != "auth_failed":
        # A server that refused our MAC cannot sign its refusal with a token it may not share.
        _authenticate(raw, token)
    _sections(raw, meta["sections"], ())
    error = meta["error"]
    return ResponseBlock(
        meta["retraining_flag"],
        meta["checkpoint"],
        error=None if error is None else error["message"],
        error_code=None if error is None else error["code"],
        info=meta.get("info"),
        request_id=meta["request_id"],
    )
