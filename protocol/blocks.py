"""The two messages of the protocol, with the names and call shapes of the original design.

`RequestBlock(request_type, query_data=None, random_data=None)` goes from the edge to the
data center; `ResponseBlock(retraining_flag, checkpoint)` comes back and unpacks as
`flag, checkpoint = response`, so code written for the original `Tuple[bool, str]` works.
Both are validated when built, so a block that exists can always be encoded.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from .auth import random_hex16
from .errors import UsageError

Scalar = str | int | float | bool | None


class MessageType(str, enum.Enum):
    """What the edge asks of the data center."""

    HANDSHAKE = "handshake"
    NORMAL = "normal"
    PREP_RETRAINING = "prep_retraining"
    RETRAINING = "retraining"


MESSAGE_TYPES = frozenset(m.value for m in MessageType)
#: Fields of a request that `extra` may not shadow (the callback's metadata holds both).
RESERVED_EXTRA_KEYS = frozenset({"request_id", "edge_id", "round"})


def check_scalar_map(name: str, mapping: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """Copy a str -> JSON-scalar map, refusing anything that would not survive the wire."""
    if mapping is None or (type(mapping) is dict and not mapping):  # (the common case, no ABC check)
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
    return random_hex16()  # 32 hex digits of os.urandom, as uuid4().hex, at a fraction of the cost


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
        if (type(self.request_type) is str and self.request_type and self.query_data is None
                and self.random_data is None and type(self.request_id) is str and self.edge_id is None
                and self.round is None and type(self.extra) is dict and not self.extra):
            self.extra = {}  # (a copy, as below: the caller's dict is not kept)
            return  # a request with no data and no options: every check below passes (the common tiny case)
        if isinstance(self.request_type, MessageType):
            self.request_type = self.request_type.value
        if not isinstance(self.request_type, str) or not self.request_type:
            raise UsageError(f"request_type must be a non-empty str, got {self.request_type!r}")
        _check_frame("query_data", self.query_data)
        _check_frame("random_data", self.random_data)
        if not isinstance(self.request_id, str):
            raise UsageError("request_id must be a str")
        if self.edge_id is not None and not isinstance(self.edge_id, str):
            raise UsageError(f"edge_id must be a str or None, got {self.edge_id!r}")
        if self.round is not None and (isinstance(self.round, bool) or not isinstance(self.round, (str, int))):
            raise UsageError(f"round must be a str, an int or None, got {self.round!r}")
        self.extra = check_scalar_map("extra", self.extra)
        clash = RESERVED_EXTRA_KEYS.intersection(self.extra) if self.extra else None
        if clash:
            raise UsageError(f"extra may not hold {sorted(clash)}: pass them as fields of their own")


def _checked_request(request_type: str, query_data: pd.DataFrame | None, random_data: pd.DataFrame | None,
                     request_id: str, edge_id: str | None, round: str | int | None,
                     extra: dict[str, Scalar]) -> "RequestBlock":
    """A request from fields the decoder has checked already (every metadata field by
    metadata.check_fields, the frames just decoded): built without checking them twice."""
    block = object.__new__(RequestBlock)
    block.request_type, block.query_data, block.random_data = request_type, query_data, random_data
    block.request_id, block.edge_id, block.round, block.extra = request_id, edge_id, round, extra
    return block


class ResponseBlock(tuple):
    """The data center's answer: a real `(retraining_flag, checkpoint)` tuple, as in the original.

    `flag, checkpoint = response`, `response[0]` and `response == (flag, checkpoint)` all
    work, and equality is the tuple's. `error` is None on success; otherwise `error_code`
    says what kind of error. `info` carries small facts (protocol and model information
    for a handshake, sha256 of the checkpoint, a state key, ...). `checkpoint_data` carries
    the checkpoint's bytes when the server sends the model itself.
    """

    error: str | None
    error_code: str | None
    info: dict[str, Scalar]
    request_id: str | None
    checkpoint_data: bytes | None

    def __new__(
        cls,
        retraining_flag: Any = False,
        checkpoint: str | None = None,
        *,
        error: str | None = None,
        error_code: str | None = None,
        info: Mapping[str, Scalar] | None = None,
        request_id: str | None = None,
        checkpoint_data: bytes | bytearray | memoryview | None = None,
    ) -> "ResponseBlock":
        if (checkpoint_data is None and info is None and request_id is None and error is None
                and error_code is None and retraining_flag.__class__ is bool
                and (checkpoint is None or checkpoint.__class__ is str)):
            # the common reply, `ResponseBlock(flag, checkpoint)`: every check below passes
            self = tuple.__new__(cls, (retraining_flag, checkpoint))
            self.__dict__ = {"error": None, "error_code": None, "info": {}, "request_id": None, "checkpoint_data": None}
            return self
        if not isinstance(retraining_flag, bool):
            # numpy.bool_ and friends are accepted and normalised; anything else is a bug.
            if type(retraining_flag).__name__ in ("bool_", "bool"):
                retraining_flag = bool(retraining_flag)
            else:
                raise UsageError(f"retraining_flag must be a bool, got {retraining_flag!r}")
        for name, value in (("checkpoint", checkpoint), ("error", error), ("error_code", error_code),
                            ("request_id", request_id)):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{name} must be a str or None, got {value!r}")
        self = super().__new__(cls, (retraining_flag, checkpoint))
        self.error = error
        self.error_code = error_code if error_code is not None or error is None else "error"
        self.info = check_scalar_map("info", info)
        self.request_id = request_id
        if checkpoint_data is not None and not isinstance(checkpoint_data, (bytes, bytearray, memoryview)):
            raise UsageError(f"checkpoint_data must be bytes or None, got {type(checkpoint_data).__name__}")
        self.checkpoint_data = None if checkpoint_data is None else bytes(checkpoint_data)
        return self

    @classmethod
    def _checked(cls, retraining_flag: bool, checkpoint: str | None, error: str | None, error_code: str | None,
                 info: dict[str, Scalar], request_id: str | None, checkpoint_data: bytes | None) -> "ResponseBlock":
        """A block from fields the decoder has checked already (metadata.check_fields checks
        every one of them, to the same types): built without checking them twice."""
        self = tuple.__new__(cls, (retraining_flag, checkpoint))
        self.__dict__ = {"error": error, "error_code": error_code, "info": info, "request_id": request_id,
                         "checkpoint_data": checkpoint_data}  # (one dict, not five attribute sets)
        return self

    @property
    def retraining_flag(self) -> bool:
        return self[0]

    @property
    def checkpoint(self) -> str | None:
        return self[1]

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        extra = f", error_code={self.error_code!r}, error={self.error!r}" if self.error is not None else ""
        return f"ResponseBlock(retraining_flag={self[0]!r}, checkpoint={self[1]!r}{extra}, info={self.info!r})"

    def __reduce__(self) -> Any:  # never sent by pickle, but copy/deepcopy should keep the fields
        return (_rebuild_response, (self[0], self[1], self.error, self.error_code, dict(self.info), self.request_id,
                                    self.checkpoint_data))

    @classmethod
    def failure(cls, code: str, message: str, *, request_id: str | None = None) -> "ResponseBlock":
        return cls(False, None, error=message, error_code=code, request_id=request_id)


def _rebuild_response(flag: bool, checkpoint: str | None, error: str | None, error_code: str | None,
                      info: dict[str, Scalar], request_id: str | None, data: bytes | None) -> ResponseBlock:
    return ResponseBlock(flag, checkpoint, error=error, error_code=error_code, info=info, request_id=request_id,
                         checkpoint_data=data)
