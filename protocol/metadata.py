"""The JSON metadata section: strict parsing and a type check of every field.

Metadata is small and flat, so anything unexpected — unknown keys, wrong types, nesting,
NaN, huge integers — is the peer misbehaving and becomes a `PeerError`, never a crash
(`json` raises RecursionError on deep nesting and ValueError on a 5000-digit integer).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from .errors import PeerError
from .frame import ALIGN
from .limits import Limits

Checker = Callable[[str, Any, Limits], Any]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    if len(text) > 20:  # beyond 64 bits: no field of ours is that large
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: The decoder's C scanner, called directly: `JSONDecoder.decode` adds two regex matches
#: for the whitespace around the value, half the cost of parsing a small metadata section.
_SCAN = _DECODER.scan_once
_JSON_WHITESPACE = " \t\n\r"  # what json's WHITESPACE pattern skips, and nothing else


def loads(data: bytes | memoryview, limits: Limits) -> dict[str, Any]:
    """Parse metadata bytes into a dict, or raise `PeerError(code="bad_metadata")`.

    Exactly `JSONDecoder.decode`'s grammar: one value, JSON whitespace around it."""
    if len(data) > limits.max_metadata_bytes:
        raise PeerError(f"metadata of {len(data)} bytes exceeds {limits.max_metadata_bytes}", code="too_large")
    try:
        text = str(data, "utf-8").strip(_JSON_WHITESPACE)
        value, end = _SCAN(text, 0)
    except StopIteration as stop:  # the scanner's "no value here"
        raise PeerError(f"malformed metadata: expecting a value at char {stop.value}", code="bad_metadata") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PeerError(f"malformed metadata: {type(exc).__name__}: {str(exc)[:200]}", code="bad_metadata") from None
    if end != len(text):
        raise PeerError(f"malformed metadata: extra data at char {end}", code="bad_metadata")
    if not isinstance(value, dict):
        raise PeerError("metadata must be a JSON object", code="bad_metadata")
    return value


try:  # the C encoder, made once (JSONEncoder.encode makes one a call); no cycle check:
    # metadata is built here from checked blocks, whose maps hold scalars only
    from json.encoder import c_make_encoder as _c_make_encoder, encode_basestring as _encode_basestring

    _C_ENCODE = _c_make_encoder(None, _ENCODER.default, _encode_basestring, None, ":", ",", False, False, False)
except (ImportError, TypeError):  # pragma: no cover - a Python without the C accelerator
    _C_ENCODE = None


def dumps(meta: dict[str, Any]) -> bytes:
    """Serialize metadata compactly, padded with spaces to a multiple of 8 bytes."""
    raw = ("".join(_C_ENCODE(meta, 0)) if _C_ENCODE is not None else _ENCODER.encode(meta)).encode("utf-8")
    return raw + b" " * (-len(raw) % ALIGN)


# --------------------------------------------------------------------------- field checks
def _fail(field: str, expected: str, value: Any) -> PeerError:
    shown = repr(value)
    return PeerError(f"metadata field {field!r} must be {expected}, got {shown[:80]}", code="bad_metadata")


def string(field: str, value: Any, limits: Limits) -> str:
    if type(value) is str and value.isascii() and len(value) <= limits.max_string_chars:
        return value  # the common case, in one test
    if not isinstance(value, str) or len(value) > limits.max_string_chars:
        raise _fail(field, f"a string of at most {limits.max_string_chars} characters", value)
    if not value.isascii():
        try:  # JSON allows a lone surrogate ("\ud800"), which no UTF-8 encoder can write back
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(field, "valid Unicode text (no lone surrogates)", value) from None
    return value


def optional_string(field: str, value: Any, limits: Limits) -> str | None:
    return None if value is None else string(field, value, limits)


def boolean(field: str, value: Any, limits: Limits) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, "true or false", value)
    return value


def number(field: str, value: Any, limits: Limits) -> float:
    if value.__class__ is float and value - value == 0.0:  # a finite float (inf - inf and nan - nan are nan)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(field, "a finite number", value)
    return float(value)


def round_id(field: str, value: Any, limits: Limits) -> str | int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return string(field, value, limits)


def scalar_map(field: str, value: Any, limits: Limits) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > limits.max_map_items:
        raise _fail(field, f"an object of at most {limits.max_map_items} scalars", value)
    for key, item in value.items():
        string(f"{field} key", key, limits)
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            number(f"{field}.{key}", item, limits)
        else:
            string(f"{field}.{key}", item, limits)
    return value


def error_info(field: str, value: Any, limits: Limits) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"code", "message"}:
        raise _fail(field, 'null or {"code": str, "message": str}', value)
    return {"code": string(f"{field}.code", value["code"], limits), "message": string(f"{field}.message", value["message"], limits)}


_SECTION_KEYS = frozenset({"name", "length"})


def sections(field: str, value: Any, limits: Limits) -> list[tuple[str, int]]:
    if type(value) is not list or len(value) > limits.max_sections:
        raise _fail(field, f"a list of at most {limits.max_sections} sections", value)
    out: list[tuple[str, int]] = []
    for item in value:
        if type(item) is not dict or item.keys() != _SECTION_KEYS:
            raise _fail(field, 'a list of {"name": str, "length": int}', item)
        name = string(f"{field}.name", item["name"], limits)
        length = item["length"]
        if type(length) is not int or not 0 <= length <= limits.max_body_bytes:
            raise _fail(f"{field}.length", f"an int in [0, {limits.max_body_bytes}]", length)
        out.append((name, length))
    if len(out) > 1 and len({name for name, _ in out}) != len(out):
        raise PeerError("metadata lists a section twice", code="bad_metadata")
    return out


class Fields:
    """The fields one kind of metadata may hold: the checker of each, and which are required
    (the sets `check_fields` compares against are made once, not per frame)."""

    __slots__ = ("checkers", "allowed", "required")

    def __init__(self, required: dict[str, Checker], optional: dict[str, Checker]) -> None:
        self.checkers = {**optional, **required}
        self.allowed = frozenset(self.checkers)
        self.required = frozenset(required)


def check_fields(meta: dict[str, Any], fields: Fields, limits: Limits) -> dict[str, Any]:
    """Check every field of `meta`: required ones present, none unknown, each of its type.

    Returns `meta` itself, each value replaced by what its checker returned (sections as
    (name, length) tuples, numbers as floats): the caller hands over a dict just parsed."""
    if not meta.keys() <= fields.allowed:
        raise PeerError(f"unknown metadata fields: {sorted(meta.keys() - fields.allowed)[:5]}", code="bad_metadata")
    if not fields.required.issubset(meta):
        raise PeerError(f"missing metadata fields: {sorted(fields.required - meta.keys())}", code="bad_metadata")
    checkers = fields.checkers  # every field, required or optional, through its checker
    for name, value in meta.items():
        checked = checkers[name](name, value, limits)
        if checked is not value:
            meta[name] = checked  # (a value replaced, no key added or removed: iterating on is safe)
    return meta
