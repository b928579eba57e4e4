"""The two messages of the protocol, with the names and call shapes of the original design.

`RequestBlock(request_type, query_data=None, random_data=None)` goes from the edge to the
data center; `ResponseBlock(retraining_flag, checkpoint)` comes back and unpacks as
`flag, checkpoint = response`, so code written for the original `Tuple[bool, str]` works.
Both are validated when built, so a block that exists can always be encoded.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pandas as pd

from .errors import UsageError

Scalar = str | int | float | bool | None


class MessageType(str, enum.Enum):
    """What the edge asks of the data center."""

    HANDSHAKE = "handshake"
    NORMAL = "normal"
    PREP_RETRAINING = "prep_retraining"
    RETRAINING = "retraining"


MESSAGE_TYPES = frozenset(m.value for m in MessageType)


def check_scalar_map(name: str, mapping: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """Copy a str -> JSON-scalar map, refusing anything that would not survive the wire."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise UsageError(f"{name} must be a mapping of str to scalars, got {type(mapping).__name__}")
    out: dict[str, Scalar] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise UsageError(f"{name} keys must be str, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise UsageError(f"{name}[{key!r}] must be str, int, float, bool or None, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{name}[{key!r}] must be a finite float, got {value!r}")
        out[key] = value
    return out


def _check_frame(name: str, frame: Any) -> pd.DataFrame | None:
    if frame is not None and not isinstance(frame, pd.DataFrame):
        raise UsageError(f"{name} must be a pandas DataFrame or None, got {type(frame).__name__}")
    return frame


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False, slots=True)
class RequestBlock:
    """A request from the edge: what it asks, and up to two DataFrames of samples."""

    request_type: str
    query_data: pd.DataFrame | None = None
    random_data: pd.DataFrame | None = None
    request_id: str = field(default_factory=new_request_id, kw_only=True)
    edge_id: str | None = field(default=None, kw_only=True)
    round: str | int | None = field(default=None, kw_only=True)
    extra: Mapping[str, Scalar] = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.request_type, MessageType):
            self.request_type = self.request_type.value
        if not isinstance(self.request_type, str) or not self.request_type:
            raise UsageError(f"request_type must be a non-empty str, got {self.request_type!r}")
        _check_frame("query_data", self.query_data)
        _check_frame("random_data", self.random_data)
        if not isinstance(self.request_id, str) or not self.request_id:
            raise UsageError("request_id must be a non-empty str")
        if self.edge_id is not None and not isinstance(self.edge_id, str):
            raise UsageError(f"edge_id must be a str or None, got {self.edge_id!r}")
        if self.round is not None and (isinstance(self.round, bool) or not isinstance(self.round, (str, int))):
            raise UsageError(f"round must be a str, an int or None, got {self.round!r}")
        self.extra = check_scalar_map("extra", self.extra)


@dataclass(eq=False, slots=True)
class ResponseBlock:
    """The data center's answer; unpacks as `flag, checkpoint = response`.

    `error` is None on success; otherwise `error_code` says what kind of error. `info`
    carries small facts (protocol and model information for a handshake, sha256 of the
    checkpoint, a state key, ...).
    """

    retraining_flag: bool = False
    checkpoint: str | None = None
    error: str | None = field(default=None, kw_only=True)
    error_code: str | None = field(default=None, kw_only=True)
    info: Mapping[str, Scalar] = field(default_factory=dict, kw_only=True)
    request_id: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.retraining_flag, bool):
            # numpy.bool_ and friends are accepted and normalised; anything else is a bug.
            if type(self.retraining_flag).__name__ in ("bool_", "bool"):
                self.retraining_flag = bool(self.retraining_flag)
            else:
                raise UsageError(f"retraining_flag must be a bool, got {self.retraining_flag!r}")
        for name in ("checkpoint", "error", "error_code", "request_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{name} must be a str or None, got {value!r}")
        if self.error is not None and self.error_code is None:
            self.error_code = "error"
        self.info = check_scalar_map("info", self.info)

    def __iter__(self) -> Iterator[Any]:
        yield self.retraining_flag
        yield self.checkpoint

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, code: str, message: str, *, request_id: str | None = None) -> "ResponseBlock":
        return cls(False, None, error=message, error_code=code, request_id=request_id)
