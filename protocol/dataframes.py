"""DataFrames <-> Arrow IPC stream bytes (docs/protocol.md §3), without `Table.from_pandas`.

Encoding. Going through `pa.Table.from_pandas` costs ~80 us a column, so the frame is read
block by block: every numpy int/float block of the frame (all its float32 columns, say)
is copied into the record batch body with one numpy copy, and the record batch's
flatbuffer header is written here (`_record_batch_message`, from a cached template).
Feature arrays (object columns of 1-D arrays) are concatenated into the body in one C
loop; Int64 & co go as their values and a bitmap packed from their mask; an object str
column holding one str object in every row (a round id, a tag) goes as that string's
bytes repeated. Other columns (bool, strings, bytes, nullable floats, datetime) become
pyarrow arrays whose buffers are laid into the same body. The schema message comes from
pyarrow (`Schema.serialize`) and is cached. Frames with a categorical column are written by pyarrow's own IPC writer
(they need a dictionary batch). Each column's pandas dtype travels as a tag in the Arrow
field metadata (`driftloop.dtype`).

Decoding trusts nothing. The stream is split into messages here and each message's
flatbuffer header is read *before* any body is touched: compressed bodies
(`BodyCompression`), dictionary deltas, more than one record batch, anything after the
end-of-stream marker, and buffers outside their body are refused, so the decoded size is
bounded by the bytes received (no column can be larger than the body it came in; the
only Python-object amplification is one object a row for object/array columns). Every
column's Arrow type must match an allow-listed tag; extension types are refused, however
deeply nested. Every non-fixed-width column is rebuilt as a pyarrow array and validated in
full (offsets, UTF-8, dictionary indices), except three kinds checked here in full instead:
feature arrays and nullable integers (lengths, null counts against the bitmap), and object
str columns whose offsets step evenly over one repeated value or whose text is ASCII
(offsets monotonic and inside the data, the value decoded as strict UTF-8). A stream from
a schema seen before whose record batch header has exactly this encoder's layout is read
with a few slices instead of a flatbuffer walk, then checked the same way; fixed-width
columns are bounds-checked.

Copies, not views: every decoded column is a fresh, writable copy that shares no memory
with the received bytes or with any other column, so the receive buffer is never pinned
and a hostile stream whose buffers overlap cannot alias two writable columns. The copy
is cheap: all columns of one numpy dtype land in one 2-D pandas block with one copy.
One exception, asked for with `adopt=True` by a caller whose buffer is the frame's alone
(the codec, for a body received into its own buffer): the first contiguous block that
fills at least half of the stream is a view of it. It is the only view, so no two
columns alias; it pins at most as many other bytes as it saves (at 1M rows x 64 float32
columns the copy was a quarter of a request's time).
The row index is not part of the wire format: frames arrive with a RangeIndex.
"""

from __future__ import annotations

import operator
import re
import struct
import sys
from array import array as _Int64Array
from itertools import repeat as _repeat
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import PeerError, UsageError

try:  # pandas >= 3: build the frame from ready-made blocks (no consolidation pass)
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pragma: no cover - older pandas
    _from_blocks = None
try:  # and, cheaper still (~15 us a frame), numpy blocks and the manager built directly
    from pandas._libs.internals import BlockPlacement as _Placement
    from pandas.core.internals.api import _make_block
    from pandas.core.internals.blocks import NumpyBlock as _NumpyBlock
    from pandas.core.internals.managers import BlockManager as _BlockManager
except ImportError:  # pragma: no cover - another pandas
    _NumpyBlock = None

DTYPE_KEY = b"driftloop.dtype"
ROWS_KEY = b"driftloop.rows"

_NUMPY_TAGS = frozenset(
    ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64", "bool"]
)
#: numpy dtypes whose columns are copied block-wise, without pyarrow, both ways
_FIXED_TAGS = _NUMPY_TAGS - {"bool"}
_FIXED_BY_DTYPE = {np.dtype(name): name for name in _FIXED_TAGS}  # native byte order only
_NUMPY_BY_DTYPE = {np.dtype(name): name for name in _NUMPY_TAGS}  # native byte order only
_MASKED_TAGS = frozenset(
    ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64", "boolean"]
)
_STRING_TAGS = frozenset(["str", "string"])
_TZ_PATTERN = r"[A-Za-z0-9_+\-/:]{1,64}"
_DATETIME_TAG = re.compile(rf"datetime64\[(s|ms|us|ns)(?:, ({_TZ_PATTERN}))?\]\Z")
_TZ = re.compile(rf"{_TZ_PATTERN}\Z")
_ARRAY_TAG = re.compile(r"array\[(float32|float64|int8|int16|int32|int64|uint8)\]\Z")
_LIST_VALUE_TYPES = {"float32", "float64", "int8", "int16", "int32", "int64", "uint8"}
_LIST_VALUE_DTYPES = {np.dtype(name): f"array[{name}]" for name in _LIST_VALUE_TYPES}  # native byte order only
_SHAPE, _DTYPE = operator.attrgetter("shape"), operator.attrgetter("dtype")
#: A fixed-size-list column holds one feature vector a row; 2^20 values a row is plenty.
MAX_LIST_SIZE = 1 << 20
#: A frame without columns carries its row count only in the metadata.
MAX_ROWS_WITHOUT_COLUMNS = 1 << 32

_BaseExtensionType = getattr(pa, "BaseExtensionType", pa.ExtensionType)
_ARROW_NAMES = {"float32": "float", "float64": "double", "bool": "bool"}

# Arrow IPC message header types (Message.fbs)
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
_CONTINUATION = 0xFFFFFFFF
_EOS = struct.pack("<Ii", _CONTINUATION, 0)
_METADATA_V5 = 4


def _pad(n: int) -> int:
    return (n + 7) & ~7


# ----------------------------------------------------------------------------- encoding
def _string_array(values: Any, from_pandas: bool = False) -> pa.Array:
    array = pa.array(values, type=pa.large_string(), from_pandas=from_pandas)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _encode_object_column(name: str, values: np.ndarray) -> tuple[pa.Array, str]:
    """Object columns hold str, bytes or equal-length 1-D numpy arrays (features)."""
    first = values[0] if len(values) else None
    if type(first) is not str and type(first) is not np.ndarray:  # (the common cases, without a scan)
        first = next((v for v in values if not _is_missing(v)), None)
    if isinstance(first, np.ndarray):
        return _encode_array_column(name, values)
    if first is None or isinstance(first, str):
        repeated = _repeated_string(values, first)
        if repeated is not None:
            return repeated, "object:str"
        try:  # from_pandas: None, NaN and pd.NA become nulls, in C (no per-row Python)
            return _string_array(values, from_pandas=True), "object:str"
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UsageError(f"column {name!r}: object column mixes str with other types ({exc})") from None
    if isinstance(first, (bytes, bytearray, memoryview)):
        try:
            return pa.array(values, type=pa.large_binary()), "object:bytes"
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UsageError(f"column {name!r}: object column mixes bytes with other types ({exc})") from None
    raise UsageError(
        f"column {name!r}: object values of type {type(first).__name__} cannot be sent "
        "(supported: str, bytes, equal-length 1-D numpy arrays)"
    )


def _repeated_string(values: np.ndarray, first: Any) -> "_RawColumn | None":
    """One str object in every row (a round id, a shift tag: `[tag] * n`): its UTF-8 bytes
    repeated, offsets in steps, no pyarrow. None for anything else (equal but distinct
    objects included), which the general path encodes."""
    rows = len(values)
    if type(first) is not str or not rows or not all(map(operator.is_, values.tolist(), _repeat(first))):
        return None
    try:
        data = first.encode("utf-8")
    except UnicodeEncodeError:
        return None  # the general path says why
    offsets = _steps(rows, len(data))
    return _RawColumn(_LARGE_STRING, "object:str", rows, 0, [(None, 0), (offsets, offsets.nbytes),
                                                            (data * rows, len(data) * rows)])


def _lossless(source: np.dtype, target: np.dtype) -> bool:
    """Whether every value of `source` survives a cast to `target` exactly."""
    if source == target:
        return True
    if not np.can_cast(source, target, "safe"):
        return False
    if source.kind in "iu" and target.kind == "f":  # the integer must fit the mantissa
        return source.itemsize * 2 <= target.itemsize
    return True


def _encode_array_column(name: str, values: np.ndarray) -> tuple[pa.Array, str]:
    """Equal-length 1-D numpy arrays a row -> one fixed_size_list column.

    The element type is the promotion over *every* row; a promotion that could change a
    value (int64 with float32, int64 with uint64, ...) is refused rather than wrapped.
    """
    rows = values.tolist() if isinstance(values, np.ndarray) else list(values)
    # per-row checks as C loops (map over a builtin), one set each: type, shape, dtype
    if set(map(type, rows)) != {np.ndarray}:
        raise UsageError(f"column {name!r}: every row of an array column must be a 1-D numpy array")
    shapes = set(map(_SHAPE, rows))
    if any(len(shape) != 1 for shape in shapes):
        raise UsageError(f"column {name!r}: every row of an array column must be a 1-D numpy array")
    dtypes = set(map(_DTYPE, rows))
    if len(dtypes) == 1:
        (dtype,) = dtypes
    else:
        try:
            dtype = np.result_type(*dtypes)
        except TypeError:
            raise UsageError(f"column {name!r}: array rows mix element types {sorted(map(str, dtypes))}") from None
    tag = _LIST_VALUE_DTYPES.get(dtype)
    if tag is None:
        raise UsageError(f"column {name!r}: array element type {dtype} is not supported")
    lossy = sorted(str(d) for d in dtypes if not _lossless(d, dtype)) if len(dtypes) > 1 else None
    if lossy:
        raise UsageError(f"column {name!r}: array rows of {lossy} cannot be widened to {dtype} without loss")
    if len(shapes) != 1:
        raise UsageError(f"column {name!r}: array rows differ in length")
    ((width,),) = shapes
    if not 0 < width <= MAX_LIST_SIZE:
        raise UsageError(f"column {name!r}: array rows must hold 1 to {MAX_LIST_SIZE} values, not {width}")
    return _FixedList(rows, dtype, width, uniform=len(dtypes) == 1), tag


_LIST_TYPES: dict[tuple[np.dtype, int], pa.DataType] = {}


class _FixedList:
    """A fixed_size_list column without nulls, kept as its rows (1-D arrays of one length):
    the encoder concatenates them into the body in one C loop when it lays the body out
    (two nodes, three empty-or-value buffers), without stacking them anywhere first."""

    __slots__ = ("rows", "dtype", "width", "uniform", "type", "key")

    def __init__(self, rows: list[np.ndarray], dtype: np.dtype, width: int, *, uniform: bool) -> None:
        self.rows, self.dtype, self.width, self.uniform = rows, dtype, width, uniform  # uniform: every row is of dtype
        key = (dtype, width)
        arrow_type = _LIST_TYPES.get(key)
        if arrow_type is None:
            if len(_LIST_TYPES) >= _CACHE_SIZE:
                _LIST_TYPES.clear()
            arrow_type = _LIST_TYPES[key] = pa.list_(pa.from_numpy_dtype(dtype), width)
        self.type = arrow_type
        self.key = key

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.width * self.dtype.itemsize

    def flat(self) -> np.ndarray:
        """The rows as one flat array of the column's dtype (one C loop, casts included)."""
        if self.uniform:
            return np.concatenate(self.rows)
        return np.concatenate(self.rows, dtype=self.dtype, casting="safe")

    def to_arrow(self) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(self.flat()), self.width)


_LARGE_STRING = pa.large_string()


class _RawColumn:
    """A column already in Arrow's layout, as numpy arrays or bytes: one node (rows, null
    count) and its buffers as (source or None, byte length), laid into the body as they are."""

    __slots__ = ("type", "key", "rows", "nulls", "buffers")

    def __init__(self, arrow_type: pa.DataType, key: Any, rows: int, nulls: int, buffers: list[tuple[Any, int]]) -> None:
        self.type, self.key, self.rows, self.nulls, self.buffers = arrow_type, key, rows, nulls, buffers

    def __len__(self) -> int:
        return self.rows

    def to_arrow(self) -> pa.Array:
        return pa.Array.from_buffers(self.type, self.rows, [None if source is None else pa.py_buffer(source)
                                                            for source, _ in self.buffers], null_count=self.nulls)


def _masked_integers(values: Any, tag: str) -> _RawColumn | None:
    """Int64 & co from their values and mask: the values as they are, a validity bitmap
    packed from the mask when there are nulls."""
    data, mask = getattr(values, "_data", None), getattr(values, "_mask", None)
    if not isinstance(data, np.ndarray) or not isinstance(mask, np.ndarray) or data.dtype != _MASKED_INTEGERS[tag]:
        return None  # pragma: no cover - another pandas
    rows = len(data)
    data = np.ascontiguousarray(data)
    nulls = int(np.count_nonzero(mask))
    validity = (None, 0)
    if nulls:
        bits = np.packbits(~mask, bitorder="little")
        validity = (bits, len(bits))
    return _RawColumn(_FIXED_ARROW_TYPES[tag.lower()], tag, rows, nulls, [validity, (data, data.nbytes)])


def _encode_values(name: str, values: Any) -> tuple[pa.Array, str]:
    """One column's values (1-D numpy array or pandas ExtensionArray) -> (Arrow array, tag)."""
    if isinstance(values, np.ndarray):
        dtype = values.dtype
        tag = _NUMPY_BY_DTYPE.get(dtype) or (dtype.name if dtype.kind in "biuf" and dtype.name in _NUMPY_TAGS else None)
        if tag is not None:  # (numpy's dtype.name is a slow Python property: looked up only off the native types)
            return pa.array(values, from_pandas=False), tag
        if dtype == object:
            return _encode_object_column(name, values)
        if dtype.kind == "M":
            values = pd.array(values)
        else:
            raise UsageError(f"column {name!r}: dtype {dtype} cannot be sent")
    dtype = values.dtype
    if isinstance(values, pd.arrays.DatetimeArray):
        array = pa.array(values)
        tz = array.type.tz
        if tz is None:
            return array, f"datetime64[{array.type.unit}]"
        if not _TZ.match(tz):
            raise UsageError(f"column {name!r}: time zone {tz!r} cannot be sent")
        return array, f"datetime64[{array.type.unit}, {tz}]"
    if isinstance(dtype, pd.StringDtype):
        tag = "str" if dtype.na_value is not pd.NA else "string"
        return _string_array(values), tag
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        if not (categories.dtype.kind in "iu" or pd.api.types.is_string_dtype(categories.dtype)):
            raise UsageError(f"column {name!r}: categories must be str or int, got {categories.dtype}")
        codes = np.asarray(values.codes).astype(np.int32)
        cats = (_string_array(categories.to_numpy()) if categories.dtype.kind not in "iu"
                else pa.array(categories.to_numpy().astype(np.int64)))
        arr = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), cats, ordered=bool(dtype.ordered))
        return arr, "category"
    if str(dtype) in _MASKED_TAGS:
        if str(dtype) in _MASKED_INTEGERS:
            column = _masked_integers(values, str(dtype))
            if column is not None:
                return column, str(dtype)
        data, mask = getattr(values, "_data", None), getattr(values, "_mask", None)
        if isinstance(data, np.ndarray) and isinstance(mask, np.ndarray):  # what __arrow_array__ does, minus its overhead
            return pa.array(data, mask=mask if mask.any() else None), str(dtype)
        return pa.array(values), str(dtype)  # pragma: no cover - another pandas
    raise UsageError(f"column {name!r}: dtype {dtype} cannot be sent")


def _position(pos: int) -> np.ndarray:
    """np.array([pos]) (read-only, shared for the first 256 positions)."""
    return _POSITIONS[pos] if pos < len(_POSITIONS) else np.array([pos], dtype=np.intp)


def _column_values(frame: pd.DataFrame) -> list[tuple[np.ndarray, Any]]:
    """The frame's data as (positions, values) groups: a 2-D (columns, rows) numpy block
    per fixed-width dtype block, one 1-D array a column otherwise.

    Reads the BlockManager (`frame._mgr.blocks`, stable from pandas 1 to 3) to save the
    per-column Series (~25 us each); falls back to public per-column access."""
    try:
        manager = frame._mgr
        groups = []
        count = 0
        for block in manager.blocks:
            values, positions = block.values, block.mgr_locs.as_array
            count += len(positions)
            if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype in _FIXED_BY_DTYPE:
                groups.append((positions, values))
            elif getattr(values, "ndim", 1) == 2:
                groups.extend(zip(map(_position, positions.tolist()), values))  # one row of the block a column
            else:
                groups.append((positions, values))
        if count != len(manager.items):
            raise AttributeError("unexpected block layout")
        return groups
    except AttributeError:  # pragma: no cover - another pandas
        out = []
        for i in range(frame.shape[1]):
            array = frame.iloc[:, i].array
            if isinstance(array, pd.arrays.NumpyExtensionArray):
                array = array.to_numpy()
            out.append((np.array([i]), array))
        return out


class _Body:
    """Lays out a record batch body: (offset, length) of every buffer, and what fills it."""

    def __init__(self) -> None:
        self.size = 0
        self.fills: list[tuple[int, Any, int]] = []  # (body offset, bytes-like or _FixedList, byte length)

    def reserve(self, nbytes: int) -> int:
        offset = self.size
        self.size += _pad(nbytes)
        return offset

    def add(self, source: Any, nbytes: int) -> tuple[int, int]:
        """`nbytes` bytes of `source` (bytes-like, or a _FixedList) at the end of the body."""
        if nbytes == 0 or source is None:
            return (0, 0)
        offset = self.reserve(nbytes)
        self.fills.append((offset, source, nbytes))
        return (offset, nbytes)

    def add_buffer(self, source: pa.Buffer | None, nbytes: int) -> tuple[int, int]:
        """The first `nbytes` bytes of a pyarrow buffer (which may be longer)."""
        if source is not None and source.size != nbytes:
            source = source.slice(0, nbytes)
        return self.add(source, nbytes)

    # nodes and buffers are flat lists of int64: length, null count / offset, length

    def add_array(self, array: pa.Array, nodes: list, buffers: list) -> None:
        """Depth-first nodes and buffers of an Arrow array, as the IPC writer lays them out."""
        if array.offset or (pa.types.is_fixed_size_list(array.type) and array.values.offset):
            array = pa.concat_arrays([array])  # a sliced array: start its buffers at 0
        n, nulls, t, bufs = len(array), array.null_count, array.type, array.buffers()
        nodes += (n, nulls)
        buffers += self.add_buffer(bufs[0], (n + 7) // 8) if nulls else (0, 0)
        if pa.types.is_fixed_size_list(t):
            child = array.values
            if len(child) != n * t.list_size:
                child = child.slice(0, n * t.list_size)
            self.add_array(child, nodes, buffers)
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            offsets = np.frombuffer(bufs[1], np.int64, count=n + 1)
            start, end = int(offsets[0]), int(offsets[-1])
            if start:
                offsets = offsets - start
            buffers += self.add(offsets, 8 * (n + 1))
            data = bufs[2].slice(start, end - start) if bufs[2] is not None else None
            buffers += self.add(data, end - start)
        elif pa.types.is_boolean(t):
            buffers += self.add_buffer(bufs[1], (n + 7) // 8)
        else:  # fixed width: integers, floats, timestamps
            buffers += self.add_buffer(bufs[1], n * (t.bit_width // 8))


def _int64_bytes(values: list[int]) -> bytes:
    packed = _Int64Array("q", values)
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


_BATCH_HEADERS: dict[tuple[int, int], tuple[bytes, struct.Struct, struct.Struct]] = {}


def _record_batch_message(rows: int, nodes: list[int], buffers: list[int], body_len: int) -> bytes:
    """`_record_batch_layout`'s bytes, from a cached template of the same node and buffer
    counts with the value fields packed in (a test checks both agree)."""
    counts = (len(nodes) // 2, len(buffers) // 2)
    cached = _BATCH_HEADERS.get(counts)
    if cached is None:
        if len(_BATCH_HEADERS) >= _CACHE_SIZE:
            _BATCH_HEADERS.clear()
        template = _record_batch_layout(0, [0] * len(nodes), [0] * len(buffers), 0)
        cached = _BATCH_HEADERS[counts] = (template, struct.Struct(f"<{len(nodes)}q"), struct.Struct(f"<{len(buffers)}q"))
    template, nodes_struct, buffers_struct = cached
    out = bytearray(template)
    _INT64.pack_into(out, 32, body_len)
    _INT64.pack_into(out, 64, rows)
    nodes_struct.pack_into(out, 88, *nodes)
    buffers_struct.pack_into(out, 96 + 8 * len(nodes), *buffers)
    return bytes(out)


def _record_batch_layout(rows: int, nodes: list[int], buffers: list[int], body_len: int) -> bytes:
    """An encapsulated IPC message (continuation, length, flatbuffer) of a RecordBatch header.

    Hand-written flatbuffer, fixed layout: root offset, Message vtable + table (version,
    header type, header, bodyLength), RecordBatch vtable + table (length, nodes, buffers),
    then the two vectors of 16-byte structs. 8-byte fields sit at 8-byte offsets.
    `nodes` and `buffers` are flat lists: (length, null count) and (offset, length) pairs."""
    nn, nb = len(nodes) // 2, len(buffers) // 2
    msg_table, rb_vtable, rb_table = 20, 40, 52
    nodes_vec = 76
    buffers_vec = nodes_vec + 4 + 16 * nn + 4
    end = buffers_vec + 4 + 16 * nb
    size = _pad(8 + end) - 8
    out = bytearray(size)
    struct.pack_into("<I", out, 0, msg_table)
    # Message: vtable at 4 (4 fields), table at 20
    struct.pack_into("<HHHHHH", out, 4, 12, 20, 16, 18, 12, 4)
    struct.pack_into("<iqIhB", out, msg_table, msg_table - 4, body_len, rb_table - (msg_table + 12),
                     _METADATA_V5, _RECORD_BATCH)
    # RecordBatch: vtable at 40 (3 fields), table at 52
    struct.pack_into("<HHHHH", out, rb_vtable, 10, 20, 4, 12, 16)
    struct.pack_into("<iqII", out, rb_table, rb_table - rb_vtable, rows,
                     nodes_vec - (rb_table + 12), buffers_vec - (rb_table + 16))
    struct.pack_into("<I", out, nodes_vec, nn)
    if nn:
        out[nodes_vec + 4 : nodes_vec + 4 + 16 * nn] = _int64_bytes(nodes)
    struct.pack_into("<I", out, buffers_vec, nb)
    if nb:
        out[buffers_vec + 4 : buffers_vec + 4 + 16 * nb] = _int64_bytes(buffers)
    return struct.pack("<Ii", _CONTINUATION, size) + bytes(out)


_FIELDS: dict[tuple[str, str, Any], pa.Field] = {}
_SCHEMAS: dict[tuple, bytes] = {}
_CACHE_SIZE = 256


def _schema_message(names: list[str], tags: list[str], types: list[pa.DataType], rows: int,
                    generic: tuple = ()) -> tuple[pa.Schema | None, bytes]:
    """The serialized schema message, cached (building 67 fields costs ~400 us). The
    tag fixes the Arrow type except for the columns whose types are in `generic`."""
    key = (tuple(names), tuple(tags), generic, rows)
    cached = _SCHEMAS.get(key)
    if cached is not None:
        return None, cached
    fields = []
    for name, tag, arrow_type in zip(names, tags, types):
        field = _FIELDS.get((name, tag, arrow_type))
        if field is None:
            if len(_FIELDS) >= 16 * _CACHE_SIZE:
                _FIELDS.clear()
            field = _FIELDS[(name, tag, arrow_type)] = pa.field(
                name, arrow_type, nullable=True, metadata={DTYPE_KEY: tag.encode()})
        fields.append(field)
    schema = pa.schema(fields, metadata={ROWS_KEY: str(rows).encode()})
    message = schema.serialize().to_pybytes()
    if len(_SCHEMAS) >= _CACHE_SIZE:
        _SCHEMAS.clear()
    _SCHEMAS[key] = message
    return schema, message


_FIXED_ARROW_TYPES = {name: pa.from_numpy_dtype(np.dtype(name)) for name in _FIXED_TAGS}


_LAST_COLUMNS: tuple[Any, tuple[str, ...]] = (None, ())  # the last columns Index seen, its checked names


def _column_names(columns: pd.Index) -> list[str]:
    """The frame's column names, checked; remembered for the last Index object (pandas
    Indexes are immutable, and this reference keeps the object alive, so `is` is exact):
    a stream of frames sharing their columns skips `Index.tolist` (~10 us for str Indexes)."""
    global _LAST_COLUMNS
    last = _LAST_COLUMNS  # one read: threads may encode at once
    if columns is last[0]:
        return last[1]
    names = columns.tolist()
    for name in names:
        if not isinstance(name, str):
            raise UsageError(f"column names must be str, got {name!r}")
    if len(set(names)) != len(names):
        raise UsageError("column names must be unique")
    _LAST_COLUMNS = (columns, tuple(names))
    return _LAST_COLUMNS[1]


def encode_dataframe(frame: pd.DataFrame) -> pa.Buffer:
    """Encode a DataFrame as one Arrow IPC stream holding a single record batch."""
    encoded = _encode_checked(frame)
    return encoded if isinstance(encoded, pa.Buffer) else _joined(*encoded)


def encode_dataframe_parts(frame: pd.DataFrame) -> list[Any]:
    """The same stream as `encode_dataframe`, as bytes-like parts to send one after another.

    Above 1 MiB a contiguous numpy block of the frame is a part of its own, sent from the
    frame's memory instead of copied into one buffer first (at 1M rows the copy was a third
    of a request's time); the frame must therefore not change until the request is sent.
    """
    encoded = _encode_checked(frame)
    if isinstance(encoded, pa.Buffer):
        return [encoded]
    pieces, _ = encoded
    return [memoryview(_piece_buffer(p)).cast("B") for p in pieces]


def _encode_checked(frame: pd.DataFrame) -> pa.Buffer | tuple[list[Any], int]:
    if not isinstance(frame, pd.DataFrame):
        raise UsageError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    names = _column_names(frame.columns)
    try:
        return _encode(frame, names)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot encode the frame: {type(exc).__name__}: {exc}") from None


def _encode(frame: pd.DataFrame, names: list[str]) -> pa.Buffer | tuple[list[Any], int]:
    """The stream joined into one buffer when small, else its pieces and total size."""
    rows, ncols = frame.shape
    tags: list[Any] = [None] * ncols
    types: list[Any] = [None] * ncols
    columns: list[Any] = [None] * ncols  # (body offset, nbytes) of a fixed-width column, or the column
    blocks = []  # (body offset, slot bytes, 2-D values)
    body = _Body()
    generic = []  # (position, what fixes its Arrow type beyond the tag)
    dictionary = False
    for positions, values in _column_values(frame):
        if isinstance(values, np.ndarray) and values.ndim == 2:
            tag = _FIXED_BY_DTYPE[values.dtype]
            nbytes = rows * values.dtype.itemsize
            slot = _pad(nbytes)
            start = body.reserve(slot * len(positions))
            blocks.append((start, slot, values))
            arrow_type = _FIXED_ARROW_TYPES[tag]
            for j, pos in enumerate(positions.tolist()):
                tags[pos], types[pos] = tag, arrow_type
                columns[pos] = (start + j * slot, nbytes)
        else:
            pos = int(positions[0])
            array, tag = _encode_values(names[pos], values)
            if len(array) != rows:
                raise UsageError(f"column {names[pos]!r}: {len(array)} values for {rows} rows")
            tags[pos], types[pos], columns[pos] = tag, array.type, array
            kind = type(array)
            generic.append((pos, array.key if kind is _FixedList or kind is _RawColumn else array.type))
            dictionary = dictionary or tag == "category"
    if dictionary:
        return _encode_with_pyarrow(frame, names, tags, types, columns, blocks)

    nodes: list[int] = []
    buffers: list[int] = []
    for column in columns:
        kind = type(column)
        if kind is tuple:
            nodes += (rows, 0)
            buffers += (0, 0, *column)
        elif kind is _RawColumn:
            nodes += (column.rows, column.nulls)
            for source, nbytes in column.buffers:
                buffers += body.add(source, nbytes)
        elif kind is _FixedList:
            nodes += (rows, 0, rows * column.width, 0)
            buffers += (0, 0, 0, 0, *body.add(column, column.nbytes))
        else:
            body.add_array(column, nodes, buffers)
    _, schema_bytes = _schema_message(names, tags, types, rows, tuple(generic))
    batch_bytes = _record_batch_message(rows, nodes, buffers, body.size) if ncols else b""
    if not ncols:
        return pa.py_buffer(schema_bytes + _EOS)
    # The body in order: fixed-width blocks first (reserved first), then the other buffers.
    # Every padding byte is written explicitly (zeros); nothing is left uninitialised.
    pieces: list[Any] = [schema_bytes, batch_bytes]  # bytes-like, (2-D block, slot bytes) or _FixedList
    written = 0
    for offset, slot, values in blocks:
        if offset != written:  # pragma: no cover - a layout bug would send the wrong bytes
            raise AssertionError(f"record batch body out of order at {offset}")
        contiguous = slot == rows * values.dtype.itemsize and values.flags.c_contiguous
        pieces.append(values if contiguous else (values, slot))  # contiguous: the block is the body's bytes
        written += slot * values.shape[0]
    for offset, source, nbytes in body.fills:
        if offset != written:  # pragma: no cover
            raise AssertionError(f"record batch body out of order at {offset}")
        pieces.append(source)
        if nbytes % 8:
            pieces.append(_ZERO_PAD[8 - nbytes % 8])
        written += _pad(nbytes)
    if written != body.size:  # pragma: no cover - a layout bug would send the wrong bytes
        raise AssertionError(f"record batch body laid out {written} of {body.size} bytes")
    pieces.append(_EOS)
    total = len(schema_bytes) + len(batch_bytes) + body.size + len(_EOS)
    if total <= _JOIN_BELOW:
        return pa.py_buffer(b"".join([_piece_buffer(p) for p in pieces]))
    return pieces, total


def _joined(pieces: list[Any], total: int) -> pa.Buffer:
    """A large stream's pieces in one buffer."""
    # One numpy allocation (numpy asks for huge pages, bytes.join's malloc does not:
    # on a VM its 4 KiB page faults cost several times the copy) written piece by piece.
    out = np.empty(total, dtype=np.uint8)
    at = 0
    for piece in pieces:
        kind = type(piece)
        if kind is tuple:
            values, slot = piece
            (count, rows), itemsize = values.shape, values.dtype.itemsize
            region = out[at : at + slot * count].view(values.dtype).reshape(count, slot // itemsize)
            region[:, :rows] = values
            region[:, rows:] = 0
            at += slot * count
        elif kind is _FixedList:
            nbytes = piece.nbytes
            flat = out[at : at + nbytes].view(piece.dtype)
            np.concatenate(piece.rows, out=flat, casting="safe")
            at += nbytes
        else:
            chunk = np.frombuffer(piece, np.uint8)
            out[at : at + len(chunk)] = chunk
            at += len(chunk)
    if at != total:  # pragma: no cover
        raise AssertionError(f"frame laid out {at} of {total} bytes")
    return pa.py_buffer(out)


#: Frames up to this size are joined from their pieces (cheapest for small ones).
_JOIN_BELOW = 1 << 20


def _piece_buffer(piece: Any) -> Any:
    """A laid-out piece as bytes-like: a padded 2-D block or a fixed-size list made flat, else as it is."""
    kind = type(piece)
    return _padded_block(*piece) if kind is tuple else piece.flat() if kind is _FixedList else piece


def _padded_block(values: np.ndarray, slot: int) -> np.ndarray:
    """A 2-D block laid out as the body wants it: each column padded with zeros to `slot` bytes."""
    count, itemsize = values.shape[0], values.dtype.itemsize
    region = np.empty((count, slot // itemsize), values.dtype)
    rows = values.shape[1]
    region[:, :rows] = values
    region[:, rows:] = 0
    return region


_ZERO_PAD = [bytes(n) for n in range(8)]


def _encode_with_pyarrow(frame: pd.DataFrame, names: list, tags: list, types: list, columns: list, blocks: list) -> pa.Buffer:
    """Frames with a dictionary (categorical) column: pyarrow's own IPC writer."""
    rows = len(frame)
    arrays = [column.to_arrow() if type(column) in (_FixedList, _RawColumn) else column for column in columns]
    for positions, values in _column_values(frame):
        if isinstance(values, np.ndarray) and values.ndim == 2:
            for j, pos in enumerate(positions.tolist()):
                arrays[pos] = pa.array(values[j], from_pandas=False)
    fields = [pa.field(name, arrow_type, nullable=True, metadata={DTYPE_KEY: tag.encode()})
              for name, tag, arrow_type in zip(names, tags, types)]
    schema = pa.schema(fields, metadata={ROWS_KEY: str(rows).encode()})
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


# ----------------------------------------------------------------------------- decoding
_STRUCTS = {fmt: struct.Struct(fmt) for fmt in ("<I", "<i", "<H", "<q", "<B")}


class _Flatbuffer:
    """Bounds-checked reads of one flatbuffer (just what Message.fbs needs)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def _read(self, fmt: str, pos: int) -> Any:
        unpacker = _STRUCTS[fmt]
        if pos < 0 or pos + unpacker.size > self.size:
            raise PeerError("malformed Arrow message header")
        return unpacker.unpack_from(self.data, pos)[0]

    def root(self) -> int:
        return self._read("<I", 0)

    def table(self, table: int) -> tuple[int, tuple[int, ...]]:
        """A table's position and its vtable's field offsets (0 = absent)."""
        vtable = table - self._read("<i", table)
        vt_size = self._read("<H", vtable)
        count = max(0, (vt_size - 4) // 2)
        if vtable < 0 or vtable + 4 + 2 * count > self.size:
            raise PeerError("malformed Arrow message header")
        return table, struct.unpack_from(f"<{count}H", self.data, vtable + 4)

    @staticmethod
    def field(table: tuple[int, tuple[int, ...]], index: int) -> int | None:
        """Absolute position of a table's field, None when absent."""
        position, offsets = table
        offset = offsets[index] if index < len(offsets) else 0
        return position + offset if offset else None

    def scalar(self, table: tuple, index: int, fmt: str, default: Any = 0) -> Any:
        pos = self.field(table, index)
        return default if pos is None else self._read(fmt, pos)

    def indirect(self, table: tuple, index: int) -> int | None:
        pos = self.field(table, index)
        return None if pos is None else pos + self._read("<I", pos)

    def structs(self, table: tuple, index: int) -> np.ndarray:
        """A vector of {int64, int64} structs (FieldNode, Buffer) as an (n, 2) array."""
        pos = self.indirect(table, index)
        if pos is None:
            return np.empty((0, 2), np.int64)
        count = self._read("<I", pos)
        if pos + 4 + 16 * count > self.size:
            raise PeerError("malformed Arrow message header")
        return np.frombuffer(self.data, "<i8", count=2 * count, offset=pos + 4).reshape(count, 2)


class _Message:
    """One encapsulated message; a record batch's nodes and buffers also as flat int64
    arrays (`node_array`: length, null count, ...; `buffer_array`: offset, length, ...) and
    as the same flat lists of Python ints (`node_list`, `buffer_list`). A large header's
    lists are made only when asked for (`lists()`: ~3 us at 67 columns); a small header
    read fast has lists and no arrays."""

    __slots__ = ("kind", "start", "end", "body_start", "body_len", "rows", "nodes", "buffers", "dictionary_id",
                 "node_list", "buffer_list", "node_array", "buffer_array")

    def __init__(self, kind: int, start: int, end: int, body_start: int, body_len: int) -> None:
        self.kind, self.start, self.end, self.body_start, self.body_len = kind, start, end, body_start, body_len
        self.rows, self.nodes, self.buffers, self.dictionary_id = 0, None, None, None
        self.node_list: list[int] = []
        self.buffer_list: list[int] = []
        self.node_array: np.ndarray = _NO_VALUES
        self.buffer_array: np.ndarray = _NO_VALUES

    def lists(self) -> tuple[list[int], list[int]]:
        """`node_list` and `buffer_list`, made from the arrays if not yet there."""
        if self.node_list is None:
            self.node_list, self.buffer_list = self.node_array.tolist(), self.buffer_array.tolist()
        return self.node_list, self.buffer_list


_NO_VALUES = np.empty(0, np.int64)
_NO_VALUES.flags.writeable = False


def _record_batch_header(fb: _Flatbuffer, position: int | None, message: _Message) -> None:
    if position is None:
        raise PeerError("Arrow record batch without a header")
    table = fb.table(position)
    if fb.field(table, 3) is not None:
        raise PeerError("compressed Arrow buffers are not accepted")
    if fb.field(table, 4) is not None and len(fb.structs(table, 4)):
        raise PeerError("variadic Arrow buffers are not accepted")
    message.rows = fb.scalar(table, 0, "<q")
    message.nodes = fb.structs(table, 1)
    message.buffers = fb.structs(table, 2)
    message.node_array, message.buffer_array = message.nodes.ravel(), message.buffers.ravel()
    if len(message.node_array) + len(message.buffer_array) > _NUMPY_CHECK_ABOVE:
        message.node_list = message.buffer_list = None  # (made when asked for)
    else:
        message.node_list, message.buffer_list = message.node_array.tolist(), message.buffer_array.tolist()
    _check_batch(message)


#: Above this many int64 values in a header's nodes and buffers, numpy checks them (~1 us a
#: call, ~8 calls) faster than the Python loops over their lists, and the lists are made
#: only when asked for.
_NUMPY_CHECK_ABOVE = 96
_INT64_MAX = (1 << 63) - 1


def _check_batch(batch: _Message) -> None:
    """`_check_batch_values` on a small header's lists, or the same checks on a large one's
    int64 arrays; any doubt, and every refusal, goes to the lists' check (whose messages
    are the ones raised)."""
    if batch.node_list is not None and len(batch.node_list) + len(batch.buffer_list) <= _NUMPY_CHECK_ABOVE:
        _check_batch_values(batch.rows, batch.node_list, batch.buffer_list, batch.body_len)
    elif not _batch_arrays_ok(batch.rows, batch.node_array, batch.buffer_array, batch.body_len):
        _check_batch_values(batch.rows, *batch.lists(), batch.body_len)


def _batch_arrays_ok(rows: int, nodes: np.ndarray, buffers: np.ndarray, body_len: int) -> bool:
    """True only when `_check_batch_values` passes for these values (flat int64 arrays):
    0 <= null count <= length for every node; every buffer offset and length in
    [0, body_len], offsets 8-byte aligned, offset + length <= body_len, sum of lengths <= body_len."""
    if rows < 0:
        return False
    if len(nodes):
        lengths, nulls = nodes[0::2], nodes[1::2]
        if int(_MIN(nodes)) < 0 or int(_MAX(np.subtract(nulls, lengths))) > 0:  # (no overflow: all >= 0)
            return False
    if len(buffers):
        offsets, sizes = buffers[0::2], buffers[1::2]
        if int(_MAX(buffers.view(_UINT64))) > body_len:  # negative values are huge as uint64
            return False
        if int(_OR(offsets)) & 7 or int(_MAX(np.add(offsets, sizes))) > body_len:  # (no overflow: all <= body_len)
            return False
        if len(sizes) * body_len > _INT64_MAX:  # pragma: no cover - an int64 sum could overflow: exact one
            return sum(sizes.tolist()) <= body_len
        if int(_SUM(sizes)) > body_len:
            return False
    return True


_MIN, _MAX, _OR, _SUM = np.minimum.reduce, np.maximum.reduce, np.bitwise_or.reduce, np.add.reduce
_INT64S, _UINT64 = np.dtype("<i8"), np.dtype("<u8")


def _check_batch_values(rows: int, node_list: list[int], buffer_list: list[int], body_len: int) -> None:
    """A record batch's lengths and buffer descriptors, checked on Python ints (flat lists)."""
    lengths, nulls = node_list[0::2], node_list[1::2]
    if rows < 0 or any(map(operator.lt, nulls, _ZEROS)) or any(map(operator.gt, nulls, lengths)):
        raise PeerError("negative or inconsistent Arrow lengths")
    offsets, sizes = buffer_list[0::2], buffer_list[1::2]
    if (any(map(operator.lt, buffer_list, _ZEROS)) or (buffer_list and max(buffer_list) > body_len)
            or any(map(operator.and_, offsets, _SEVENS))):
        raise PeerError("Arrow buffers must start at 8-byte aligned offsets inside the body")
    if any(map(operator.gt, map(operator.add, offsets, sizes), _repeat(body_len))) or sum(sizes) > body_len:
        raise PeerError("Arrow buffers do not fit in the bytes received")


_ZEROS, _SEVENS = _repeat(0), _repeat(7)
_PREFIX = struct.Struct("<Ii")
_INT64 = struct.Struct("<q")


class _BatchTemplate:
    """The record batch header this encoder writes for a given count of nodes and buffers,
    with its value fields (body length, rows, nodes, buffers) zeroed: a header that equals
    it outside those fields is read with a few slices instead of a flatbuffer walk. Both
    readings give the same values (a test checks it), and anything else takes the walk."""

    __slots__ = ("size", "nodes", "buffers", "fixed", "nodes_struct", "buffers_struct", "node_values", "values",
                 "large")

    def __init__(self, node_count: int, buffer_count: int) -> None:
        template = _record_batch_layout(0, [0] * (2 * node_count), [0] * (2 * buffer_count), 0)
        self.size = len(template)
        self.nodes = 88  # prefix (8) + the nodes vector's data in the flatbuffer (80)
        self.buffers = self.nodes + 16 * node_count + 8
        end = self.buffers + 16 * buffer_count
        # (start, end, expected bytes) of every region outside the value fields
        regions = [(0, 32), (40, 64), (72, self.nodes), (self.nodes + 16 * node_count, self.buffers), (end, self.size)]
        self.fixed = [(a, b, template[a:b]) for a, b in regions]
        self.nodes_struct = struct.Struct(f"<{2 * node_count}q")
        self.buffers_struct = struct.Struct(f"<{2 * buffer_count}q")
        # nodes, the 8 bytes between the vectors (padding, the buffers' count) and buffers: one int64 array
        self.node_values, self.values = 2 * node_count, 2 * node_count + 1 + 2 * buffer_count
        self.large = 2 * (node_count + buffer_count) > _NUMPY_CHECK_ABOVE  # read as arrays, not lists

    def read(self, view: memoryview, pos: int) -> tuple[int, int, Any, Any, np.ndarray, np.ndarray] | None:
        """(body length, rows, nodes, buffers) of the header at `pos`, None if it is not ours:
        nodes and buffers as flat lists (then no arrays) for a small header, as flat int64
        arrays (then None for the lists) for a large one, as `_Message` holds them."""
        if len(view) - pos < self.size:
            return None
        header = bytes(view[pos : pos + self.size])
        for a, b, expected in self.fixed:
            if header[a:b] != expected:
                return None
        body_len, rows = _INT64.unpack_from(header, 32)[0], _INT64.unpack_from(header, 64)[0]
        if self.large:
            values = np.frombuffer(header, _INT64S, count=self.values, offset=self.nodes)
            return body_len, rows, None, None, values[: self.node_values], values[self.node_values + 1 :]
        return (body_len, rows, list(self.nodes_struct.unpack_from(header, self.nodes)),
                list(self.buffers_struct.unpack_from(header, self.buffers)), _NO_VALUES, _NO_VALUES)


def _known_plan(view: memoryview) -> tuple["_Plan", int] | None:
    """The plan of the stream's schema message and where the next message starts, if that
    schema was seen (and checked) before and its plan has a fast-read template; else None."""
    total = len(view)
    if total < 16:
        return None
    marker, length = _PREFIX.unpack_from(view, 0)
    if marker != _CONTINUATION or length <= 0 or 8 + length > total:
        return None
    global _LAST_PLAN
    key, last = bytes(view[: 8 + length]), _LAST_PLAN  # (one read: threads may decode at once)
    if key == last[0]:  # the last schema again: compared, not hashed (~1 us for 67 columns)
        return last[1], 8 + length
    plan = _PLANS.get(key)
    if plan is None or plan.template is None:
        return None
    _LAST_PLAN = (key, plan)
    return plan, 8 + length


def object_cells(data: Any) -> int | None:
    """An upper bound on the Python objects decoding this stream makes (rows times its columns
    that are not plain numpy ones: strings, arrays, nullable and categorical columns), read
    from its schema if that was decoded before; None when it is not known.

    Decoding costs one copy of the bytes plus ~0.1 us an object: a server may decode a small
    body on its event loop only when both are small (400 KB of width-1 array cells are 400k
    objects, 51 ms). Nothing is validated here; `decode_dataframe` does that."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    known = _known_plan(view)
    return None if known is None else known[0].rows * len(known[0].others)


def _split_fast(view: memoryview) -> tuple["_Plan", _Message] | None:
    """A schema seen (and checked) before, one record batch in this encoder's own layout and
    the end-of-stream marker: the common case, read without walking the flatbuffers. The
    same checks as `_split_messages` apply; None means: take the general path."""
    known = _known_plan(view)
    if known is None:
        return None
    plan, pos = known
    total = len(view)
    read = plan.template.read(view, pos)
    if read is None:
        return None
    body_len, rows, node_list, buffer_list, node_array, buffer_array = read
    body_start = pos + plan.template.size
    if body_len < 0 or body_len % 8 or body_start + body_len + 8 != total:
        return None
    if bytes(view[total - 8 :]) != _EOS:
        return None
    batch = _Message(_RECORD_BATCH, pos, body_start + body_len, body_start, body_len)
    batch.rows, batch.node_list, batch.buffer_list = rows, node_list, buffer_list
    batch.node_array, batch.buffer_array = node_array, buffer_array
    _check_batch(batch)
    return plan, batch


def _split_messages(view: memoryview) -> list[_Message]:
    """The stream's encapsulated messages; headers read and checked, no body touched."""
    total, pos, messages = len(view), 0, []
    while pos < total:
        if total - pos < 8:
            raise PeerError("truncated Arrow message")
        marker, length = struct.unpack_from("<Ii", view, pos)
        if marker != _CONTINUATION:
            raise PeerError("Arrow message without continuation marker")
        if length == 0:  # end-of-stream marker: nothing may follow
            if pos + 8 != total:
                raise PeerError("bytes after the Arrow end-of-stream marker")
            return messages
        if length < 0 or length % 8 or pos + 8 + length > total:
            raise PeerError("bad Arrow message length")
        fb = _Flatbuffer(bytes(view[pos + 8 : pos + 8 + length]))
        root = fb.table(fb.root())
        kind = fb.scalar(root, 1, "<B")
        body_len = fb.scalar(root, 3, "<q")
        body_start = pos + 8 + length
        if body_len < 0 or body_len % 8 or body_start + body_len > total:
            raise PeerError("Arrow message body does not fit in the bytes received")
        message = _Message(kind, pos, body_start + body_len, body_start, body_len)
        header = fb.indirect(root, 2)
        if kind == _SCHEMA:
            if body_len:
                raise PeerError("Arrow schema message with a body")
        elif kind == _RECORD_BATCH:
            _record_batch_header(fb, header, message)
        elif kind == _DICTIONARY_BATCH:
            if header is None:
                raise PeerError("Arrow dictionary batch without a header")
            dictionary = fb.table(header)
            if fb.scalar(dictionary, 2, "<B"):
                raise PeerError("Arrow dictionary deltas are not accepted")
            message.dictionary_id = fb.scalar(dictionary, 0, "<q")
            _record_batch_header(fb, fb.indirect(dictionary, 1), message)
        else:
            raise PeerError(f"unexpected Arrow message type {kind}")
        messages.append(message)
        pos = message.end
    return messages


def _check_sequence(messages: list[_Message]) -> tuple[_Message, list[_Message], _Message | None]:
    """Schema, then one dictionary batch per dictionary, then zero or one record batch."""
    if not messages or messages[0].kind != _SCHEMA:
        raise PeerError("Arrow stream does not start with a schema")
    dictionaries, batches, ids = [], [], set()
    for message in messages[1:]:
        if message.kind == _SCHEMA:
            raise PeerError("Arrow stream holds two schemas")
        if message.kind == _DICTIONARY_BATCH:
            if batches:
                raise PeerError("Arrow dictionary batch after the record batch")
            if message.dictionary_id in ids:
                raise PeerError("Arrow dictionary sent twice")
            ids.add(message.dictionary_id)
            dictionaries.append(message)
        else:
            batches.append(message)
    if len(batches) > 1:
        raise PeerError(f"Arrow stream holds {len(batches)} record batches (at most one is allowed)")
    return messages[0], dictionaries, batches[0] if batches else None


def _has_extension(arrow_type: pa.DataType) -> bool:
    if isinstance(arrow_type, _BaseExtensionType):
        return True
    if isinstance(arrow_type, pa.DictionaryType):
        return _has_extension(arrow_type.index_type) or _has_extension(arrow_type.value_type)
    return any(_has_extension(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _type_matches(tag: str, arrow_type: pa.DataType) -> bool:
    """Whether the Arrow type is exactly what the encoder produces for this tag."""
    if tag in _NUMPY_TAGS or tag in _MASKED_TAGS:
        expected = {"boolean": "bool", "Float32": "float", "Float64": "double", "float32": "float", "float64": "double"}
        name = expected.get(tag, tag.lower())
        return str(arrow_type) == name
    if tag in _STRING_TAGS or tag == "object:str":
        return pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type)
    if tag == "object:bytes":
        return pa.types.is_large_binary(arrow_type) or pa.types.is_binary(arrow_type)
    if tag == "category":
        return (
            pa.types.is_dictionary(arrow_type)
            and pa.types.is_integer(arrow_type.index_type)
            and (pa.types.is_large_string(arrow_type.value_type) or pa.types.is_string(arrow_type.value_type)
                 or pa.types.is_int64(arrow_type.value_type))
        )
    match = _DATETIME_TAG.match(tag)
    if match:
        return pa.types.is_timestamp(arrow_type) and arrow_type.unit == match[1] and arrow_type.tz == match[2]
    match = _ARRAY_TAG.match(tag)
    if match:
        return (
            pa.types.is_fixed_size_list(arrow_type)
            and str(arrow_type.value_type) == _ARROW_NAMES.get(match[1], match[1])
            and 0 < arrow_type.list_size <= MAX_LIST_SIZE
        )
    return False


def _check_field(field: pa.Field) -> str:
    meta = field.metadata or {}
    if _has_extension(field.type) or any(k.startswith(b"ARROW:extension") for k in meta):
        raise PeerError(f"column {field.name!r}: extension types are not accepted")
    tag = meta.get(DTYPE_KEY, b"").decode("ascii", "replace")
    try:
        matches = _type_matches(tag, field.type)
    except Exception as exc:  # pyarrow decodes some type parameters lazily (a tz of bad UTF-8 raises)
        raise PeerError(f"column {field.name!r}: malformed Arrow type ({type(exc).__name__})") from None
    if not matches:
        raise PeerError(f"column {field.name!r}: Arrow type {field.type} does not match dtype tag {tag!r}")
    return tag


def _decode_array(name: str, tag: str, array: pa.Array) -> Any:
    """A validated Arrow array -> a fresh 1-D numpy array or pandas ExtensionArray."""
    if tag in _NUMPY_TAGS:
        if array.null_count:
            raise PeerError(f"column {name!r} of dtype {tag} holds nulls")
        return np.array(array.to_numpy(zero_copy_only=False), copy=True)
    if tag in _STRING_TAGS:  # concat copies: the result pins no received bytes
        return _pandas_dtype(tag).__from_arrow__(pa.concat_arrays([array]))
    if tag in _MASKED_TAGS:
        return _pandas_dtype(tag).__from_arrow__(array)
    if tag == "object:str" or tag == "object:bytes":
        values = array.to_numpy(zero_copy_only=False)
        return values if values.dtype == object else values.astype(object)
    if tag == "category":
        cats = array.dictionary.to_numpy(zero_copy_only=False)
        if len(set(cats.tolist())) != len(cats):
            raise PeerError(f"column {name!r}: categories are not unique")
        codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return pd.Categorical.from_codes(codes, categories=cats, ordered=array.type.ordered)
    if _DATETIME_TAG.match(tag):
        return array.to_pandas().array.copy()
    if _ARRAY_TAG.match(tag):
        if array.null_count or array.values.null_count:
            raise PeerError(f"column {name!r}: array column holds nulls")
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return _array_cells(np.array(flat, copy=True).reshape(len(array), array.type.list_size))
    raise PeerError(f"column {name!r}: unsupported dtype tag {tag!r}")


_PANDAS_DTYPES: dict[str, Any] = {}
_MASKED_INTEGERS = {tag: np.dtype(tag.lower()) for tag in _MASKED_TAGS if tag[0] in "IU"}


def _pandas_dtype(tag: str) -> Any:
    dtype = _PANDAS_DTYPES.get(tag)
    if dtype is None:
        dtype = _PANDAS_DTYPES[tag] = pd.api.types.pandas_dtype(tag)
    return dtype


def _array_cells(matrix: np.ndarray) -> np.ndarray:
    cells = np.empty(len(matrix), dtype=object)
    cells[:] = list(matrix)
    return cells


def _layout(arrow_type: pa.DataType) -> list[int]:
    """Buffers per node, depth first, for the allow-listed (non-dictionary) types."""
    if pa.types.is_fixed_size_list(arrow_type):
        return [1, *_layout(arrow_type.value_type)]
    if (pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type)
            or pa.types.is_large_binary(arrow_type) or pa.types.is_binary(arrow_type)):
        return [3]
    return [2]


def _read_rows(schema: pa.Schema) -> int:
    raw = (schema.metadata or {}).get(ROWS_KEY)
    if raw is None or not raw.isdigit() or len(raw) > 18:
        raise PeerError("Arrow stream lacks a valid row count")
    rows = int(raw)
    if not schema.names and rows > MAX_ROWS_WITHOUT_COLUMNS:
        raise PeerError("a frame without columns declares too many rows")
    return rows


class _Plan:
    """What one schema message means; built once per distinct schema message (cached), so
    a stream of same-shaped frames skips the per-field pyarrow work (~7 us a column)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.names = schema.names
        if len(set(self.names)) != len(self.names):
            raise PeerError("duplicate column names")
        fields = list(schema)
        self.tags = [_check_field(field) for field in fields]
        self.types = [field.type for field in fields]
        self.rows = _read_rows(schema)
        self.columns = pd.Index(self.names)
        self.dictionary = any(pa.types.is_dictionary(t) for t in self.types)
        layouts = [_layout(t) for t in self.types]
        self.node_count = sum(len(lay) for lay in layouts)
        self.buffer_count = sum(sum(lay) for lay in layouts)
        # Null-free fixed-width columns, read together: for each numpy dtype, the positions
        # and the indices of node and first (validity) buffer of its columns, and for groups
        # of `_GATHER_FROM` columns or more (`_Decoder.fixed_at_stride`): where their nodes
        # and their (validity length, value offset, value length) sit in the flat int64
        # nodes and buffers, and their nodes' bytes when each is (rows, no nulls).
        self.fixed: dict[str, tuple[np.dtype, list[int], list[int], list[int], np.ndarray,
                                    tuple[np.ndarray, np.ndarray, bytes] | None]] = {}
        # The others, one at a time: (position, first node, first buffer, how to read it).
        self.others: list[tuple[int, int, int, str]] = []
        groups: dict[str, list[tuple[int, int, int]]] = {}
        node = buf = 0
        for pos, (tag, layout, arrow_type) in enumerate(zip(self.tags, layouts, self.types)):
            if tag in _FIXED_TAGS:
                groups.setdefault(tag, []).append((pos, node, buf))
            else:
                if _ARRAY_TAG.match(tag):
                    kind = "array"
                elif tag in _MASKED_INTEGERS:
                    kind = "masked"
                elif tag == "object:str" and pa.types.is_large_string(arrow_type):
                    kind = "object:str"
                else:
                    kind = "arrow"
                self.others.append((pos, node, buf, kind))
            node, buf = node + len(layout), buf + sum(layout)
        for tag, members in groups.items():
            positions, nodes, bufs = (list(m) for m in zip(*members))
            gather = None
            if len(members) >= _GATHER_FROM:
                node_take = (2 * np.array(nodes, dtype=np.intp)[:, None] + np.arange(2)).ravel()
                buffer_take = (2 * np.array(bufs, dtype=np.intp)[:, None] + np.arange(1, 4)).ravel()
                node_bytes = np.array([self.rows, 0] * len(members), dtype=_INT64S).tobytes()
                gather = (node_take, buffer_take, node_bytes)
            self.fixed[tag] = (np.dtype(tag), positions, nodes, bufs, np.array(positions, dtype=np.intp), gather)
        self.template = (_BatchTemplate(self.node_count, self.buffer_count)
                         if self.names and not self.dictionary else None)


_PLANS: dict[bytes, _Plan] = {}
_LAST_PLAN: tuple[bytes, Any] = (b"", None)  # the schema message last read fast, and its plan (which has a template)
_MAX_CACHED_SCHEMA_BYTES = 64 << 10  # 256 plans of at most 64 KiB of schema each


def _plan(buffer: pa.Buffer, message: _Message) -> _Plan:
    key = buffer.slice(message.start, message.end - message.start).to_pybytes()
    plan = _PLANS.get(key)
    if plan is None:
        plan = _Plan(pa.ipc.read_schema(pa.py_buffer(key)))
        if len(key) <= _MAX_CACHED_SCHEMA_BYTES:  # a peer cannot make the cache hold much
            if len(_PLANS) >= _CACHE_SIZE:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


class _Decoder:
    """Columns of one record batch, read straight from the checked buffer descriptors
    (`batch.node_list` / `batch.buffer_list`: flat lists of Python ints, or for a large
    header whose lists were not made, slices of `batch.node_array` / `batch.buffer_array`)."""

    def __init__(self, buffer: pa.Buffer, raw: np.ndarray, view: memoryview, batch: _Message, *,
                 adopt: bool = False, columns: int = 0) -> None:
        self.buffer, self.raw, self.view, self.batch = buffer, raw, view, batch
        self.adopt = adopt  # one large block may still become a view of `raw` (then False)
        self.start = batch.body_start
        if batch.node_list is None and columns > _SLICED_COLUMNS:  # cheaper than slicing the arrays
            batch.lists()
        self.nodes, self.buffers = batch.node_list, batch.buffer_list  # None: read slices of the arrays
        self.node, self.buf = 0, 0

    def _take(self, count: int) -> tuple[list[int], list[int]]:
        """The next node (length, null count) and its `count` buffers (offset, length, ...)."""
        nodes, buffers = self.nodes, self.buffers
        arrays = nodes is None  # a large header's arrays: the same slices, returned as lists
        if arrays:
            nodes, buffers = self.batch.node_array, self.batch.buffer_array
        if 2 * self.node >= len(nodes) or 2 * (self.buf + count) > len(buffers):
            raise PeerError("Arrow record batch has fewer nodes or buffers than its schema")
        node, bufs = nodes[2 * self.node : 2 * self.node + 2], buffers[2 * self.buf : 2 * (self.buf + count)]
        self.node, self.buf = self.node + 1, self.buf + count
        return (node.tolist(), bufs.tolist()) if arrays else (node, bufs)

    def _array(self, arrow_type: pa.DataType) -> pa.Array:
        counts = _layout(arrow_type)
        (length, nulls), bufs = self._take(counts[0])
        children = [self._array(arrow_type.value_type)] if pa.types.is_fixed_size_list(arrow_type) else None
        slices = [None if i == 0 and not bufs[1] else self.buffer.slice(self.start + bufs[2 * i], bufs[2 * i + 1])
                  for i in range(counts[0])]
        if slices and slices[0] is not None and len(slices[0]) >= (length + 7) // 8:  # (shorter: validate refuses)
            # pyarrow believes a declared null count over the bitmap (a float marked null under a
            # null count of 0 was read as its value): they must agree
            bits = np.frombuffer(slices[0], np.uint8, count=(length + 7) // 8)
            if length - int(np.count_nonzero(np.unpackbits(bits, count=length, bitorder="little"))) != nulls:
                raise PeerError("null count does not match the validity bitmap")
        return pa.Array.from_buffers(arrow_type, length, slices, null_count=nulls, children=children)

    def column(self, name: str, tag: str, arrow_type: pa.DataType, rows: int, node: int, buf: int, kind: str) -> Any:
        """A column that is not a plain fixed-width one (or one with a validity bitmap)."""
        self.node, self.buf = node, buf
        if kind == "array":
            values = self._array_column(name, tag, arrow_type, rows)
            if values is not None:
                return values
        elif kind == "masked":  # Int64 & co: values and validity bitmap read with numpy, checked here
            return self._masked_integers(name, tag, _MASKED_INTEGERS[tag], rows)
        elif kind == "object:str" and rows:
            values = self._object_strings(rows)
            if values is not None:
                return values
        self.node, self.buf = node, buf
        array = self._array(arrow_type)
        if len(array) != rows:
            raise PeerError(f"column {name!r}: {len(array)} rows where {rows} were expected")
        try:
            array.validate(full=True)
        except pa.ArrowException as exc:
            raise PeerError(f"column {name!r}: invalid Arrow data: {exc}") from None
        return _decode_array(name, tag, array)

    def _array_column(self, name: str, tag: str, arrow_type: pa.DataType, rows: int) -> np.ndarray | None:
        """A fixed_size_list column as one fresh (rows, width) matrix whose rows are the cells;
        None when the values carry a validity bitmap (then pyarrow reads and checks it)."""
        (length, nulls), (_, validity_length) = self._take(1)
        (child_length, child_nulls), (_, child_validity, offset, nbytes) = self._take(2)
        if nulls or validity_length or child_nulls:
            raise PeerError(f"column {name!r}: array column holds nulls")
        dtype, width = _ARRAY_DTYPES[tag], arrow_type.list_size
        if length != rows or child_length != rows * width or nbytes < rows * width * dtype.itemsize:
            raise PeerError(f"column {name!r}: array column has the wrong length")
        if child_validity:
            return None
        matrix = np.frombuffer(self.raw, dtype, count=rows * width, offset=self.start + offset)
        return _array_cells(matrix.reshape(rows, width).copy())

    def _object_strings(self, rows: int) -> np.ndarray | None:
        """An object column of str without nulls, read without pyarrow when every row holds
        the same value (a round id, a shift tag) or the text is ASCII and short; None for
        anything else, which pyarrow then reads and validates in full."""
        (length, nulls), (_, validity, offsets_at, offsets_len, data_at, data_len) = self._take(3)
        if nulls or validity or length != rows or offsets_len < 8 * (rows + 1):
            return None
        offsets_at += self.start
        raw_offsets = bytes(self.view[offsets_at : offsets_at + 8 * (rows + 1)])
        first, step = _TWO_INT64.unpack_from(raw_offsets, 0)
        last = _INT64.unpack_from(raw_offsets, 8 * rows)[0]
        if first != 0 or not 0 <= last <= data_len:
            return None
        data_at += self.start
        if last == rows * step and step >= 0 and raw_offsets == _step_bytes(rows, step):
            value = bytes(self.view[data_at : data_at + step])
            if bytes(self.view[data_at : data_at + last]) != value * rows:  # (memoryviews compare slowly)
                return None
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return None
            out = np.empty(rows, dtype=object)
            out.fill(text)
            return out
        if rows > _MAX_ASCII_ROWS:
            return None
        bounds = list(struct.unpack(f"<{rows + 1}q", raw_offsets))
        if any(map(operator.gt, bounds, bounds[1:])):
            return None
        data = bytes(self.view[data_at : data_at + last])
        if not data.isascii():
            return None
        text = data.decode("ascii")
        out = np.empty(rows, dtype=object)
        out[:] = list(map(text.__getitem__, map(slice, bounds, bounds[1:])))
        return out

    def _masked_integers(self, name: str, tag: str, dtype: np.dtype, rows: int) -> Any:
        """A nullable integer column: a fresh copy of its values and a mask from its
        validity bitmap, whose count of zero bits must equal the declared null count."""
        (length, nulls), (validity_at, validity_len, values_at, values_len) = self._take(2)
        if length != rows or values_len < rows * dtype.itemsize:
            raise PeerError(f"column {name!r}: {length} rows or a value buffer that does not match {rows} rows")
        start = self.start
        data = np.frombuffer(self.raw, dtype, count=rows, offset=start + values_at).copy()
        if validity_len:
            nbytes = (rows + 7) // 8
            if validity_len < nbytes:
                raise PeerError(f"column {name!r}: validity bitmap shorter than its rows")
            bits = np.frombuffer(self.raw, np.uint8, count=nbytes, offset=start + validity_at)
            mask = np.unpackbits(bits, count=rows, bitorder="little") == 0
            if int(np.count_nonzero(mask)) != nulls:
                raise PeerError(f"column {name!r}: null count does not match the validity bitmap")
        elif nulls:
            raise PeerError(f"column {name!r}: nulls without a validity bitmap")
        else:
            mask = np.zeros(rows, dtype=bool)
        return _masked_array(tag, data, mask)

    def fixed_block(self, plan: _Plan, tag: str, rows: int) -> list[tuple[Any, np.ndarray]]:
        """All null-free columns of one numpy dtype as one fresh (columns, rows) block, with
        a single strided copy when they sit at a constant stride in the body (as this
        encoder writes them). Columns with a validity bitmap go the slow, checked way."""
        dtype, positions, node_index, buffer_index, position_array, gather = plan.fixed[tag]
        if gather is not None and rows == plan.rows and len(self.batch.node_array):
            block = self.fixed_at_stride(dtype, rows, gather)
            if block is not None:
                return [(block, position_array)]
        if self.nodes is None:
            self.nodes, self.buffers = self.batch.lists()
        nodes, buffers, start = self.nodes, self.buffers, self.start
        itemsize = dtype.itemsize
        need = rows * itemsize
        out: list[tuple[Any, np.ndarray]] = []
        offsets: list[int] = []
        kept: list[int] = []
        for j, (pos, node, buf) in enumerate(zip(positions, node_index, buffer_index)):
            if nodes[2 * node] != rows or nodes[2 * node + 1] or buffers[2 * buf + 3] < need:
                raise PeerError(f"column {plan.names[pos]!r}: nulls in a numpy column, or a length or buffer "
                                "size that does not match")
            if buffers[2 * buf + 1]:  # a validity bitmap (without nulls): the checked way
                values = self.column(plan.names[pos], tag, plan.types[pos], rows, node, buf, "arrow")
                out.append((values, position_array[j : j + 1]))
                continue
            offsets.append(start + buffers[2 * buf + 2])
            kept.append(j)
        if not offsets:
            return out
        if len(kept) != len(positions):
            position_array = position_array[kept]
        count, first = len(offsets), offsets[0]
        step = offsets[1] - first if count > 1 else need
        if rows and step > 0 and offsets == list(range(first, first + count * step, step)):
            block = self._strided_block(dtype, rows, count, first, step)
        else:
            block = np.empty((count, rows), dtype)
            for j, offset in enumerate(offsets):
                block[j] = np.frombuffer(self.raw, dtype, count=rows, offset=offset)
        out.append((block, position_array))
        return out

    def fixed_at_stride(self, dtype: np.dtype, rows: int, gather: tuple[np.ndarray, np.ndarray, bytes]) -> np.ndarray | None:
        """`fixed_block`'s common case in a few numpy calls on the flat int64 nodes and buffers:
        every column of the group `rows` long without nulls, without a validity bitmap, its
        values exactly rows * itemsize bytes, at a constant stride > 0 in the body. None for
        anything else, which the per-column loop then reads or refuses (naming the column)."""
        node_take, buffer_take, node_bytes = gather
        if not rows or self.batch.node_array.take(node_take).tobytes() != node_bytes:
            return None
        found = self.batch.buffer_array.take(buffer_take)  # (validity length, value offset, value length) a column
        count, need = len(found) // 3, rows * dtype.itemsize
        first = int(found[1])
        step = int(found[4]) - first if count > 1 else need
        # (offsets past the body cannot match, and are not computed: no int64 overflow below)
        if step <= 0 or first + (count - 1) * step > self.batch.body_len:
            return None
        if found.tobytes() != _stride_bytes(count, first, step, need):
            return None
        return self._strided_block(dtype, rows, count, self.start + first, step)

    def _strided_block(self, dtype: np.dtype, rows: int, count: int, first: int, step: int) -> np.ndarray:
        """The (count, rows) block of the columns whose values start at `first` in `raw`,
        `step` bytes apart (> 0): one copy (or, when adopted, a view of `raw`)."""
        if step == rows * dtype.itemsize:  # one contiguous region
            block = np.frombuffer(self.raw, dtype, count=count * rows, offset=first).reshape(count, rows)
            if self.adopt and 2 * block.nbytes >= self.raw.nbytes:
                self.adopt = False  # a view of the frame's own buffer; every other column is a copy
                return block
            return block.copy()
        return np.ndarray((count, rows), dtype, buffer=self.raw, offset=first, strides=(step, dtype.itemsize)).copy()


#: A decoder reads up to this many columns (besides the fixed-width groups) from slices of
#: a large header's arrays, more from its lists (made once, ~3 us at 67 columns).
_SLICED_COLUMNS = 8
#: `fixed_block` gathers the descriptors of groups of at least this many columns with numpy.
_GATHER_FROM = 4
_STRIDE_BYTES: dict[tuple[int, int, int, int], bytes] = {}


def _stride_bytes(count: int, first: int, step: int, need: int) -> bytes:
    """(0, first + j * step, need) for j < count, as little-endian int64 bytes, cached for the
    last few layouts: what `fixed_at_stride` expects of its columns' buffers."""
    key = (count, first, step, need)
    data = _STRIDE_BYTES.get(key)
    if data is None:
        values = np.zeros((count, 3), dtype=_INT64S)
        values[:, 1] = first + step * np.arange(count, dtype=np.int64)
        values[:, 2] = need
        if len(_STRIDE_BYTES) >= 64:
            _STRIDE_BYTES.clear()
        data = _STRIDE_BYTES[key] = values.tobytes()
    return data


_MAX_ASCII_ROWS = 4096  # above this, pyarrow's C++ string conversion wins over slicing in Python
_ARRAY_DTYPES = {f"array[{name}]": np.dtype(name) for name in _LIST_VALUE_TYPES}
_STEPS: dict[tuple[int, int], np.ndarray] = {}


def _steps(rows: int, step: int) -> np.ndarray:
    """0, step, 2 step, ..., rows step (int64), cached for the last few shapes."""
    key = (rows, step)
    steps = _STEPS.get(key)
    if steps is None:
        if len(_STEPS) >= 64:
            _STEPS.clear()
        steps = _STEPS[key] = np.arange(rows + 1, dtype=np.int64) * step
        steps.flags.writeable = False
    return steps


_TWO_INT64 = struct.Struct("<qq")
_STEP_BYTES: dict[tuple[int, int], bytes] = {}


def _step_bytes(rows: int, step: int) -> bytes:
    """`_steps(rows, step)` as little-endian bytes, cached for the last few shapes."""
    key = (rows, step)
    data = _STEP_BYTES.get(key)
    if data is None:
        if len(_STEP_BYTES) >= 64:
            _STEP_BYTES.clear()
        data = _STEP_BYTES[key] = _steps(rows, step).astype("<i8").tobytes()
    return data


_MASKED_CLASSES: dict[str, Any] = {}


def _masked_array(tag: str, data: np.ndarray, mask: np.ndarray) -> Any:
    """A pandas masked array from checked, fresh values and mask (same length, bool mask)."""
    cls = _MASKED_CLASSES.get(tag)
    if cls is None:
        cls = _MASKED_CLASSES[tag] = _pandas_dtype(tag).construct_array_type()
    simple_new = getattr(cls, "_simple_new", None)
    if simple_new is not None and data.dtype == _pandas_dtype(tag).numpy_dtype:
        return simple_new(data, mask)  # the constructor's checks are the ones made above
    return cls(data, mask, copy=False)  # pragma: no cover - another pandas


_RANGE_INDEX: list[Any] = [None]


def _range_index(rows: int) -> pd.RangeIndex:
    """RangeIndex(rows): immutable, so frames of the same length share one."""
    index = _RANGE_INDEX[0]
    if index is None or len(index) != rows:
        index = _RANGE_INDEX[0] = pd.RangeIndex(rows)
    return index


def _assemble(columns: pd.Index, rows: int, blocks: list[tuple[Any, np.ndarray]]) -> pd.DataFrame:
    """A DataFrame from (2-D numpy block | 1-D numpy | ExtensionArray, positions) pieces."""
    pieces, objects = [], []
    for values, positions in blocks:
        if isinstance(values, np.ndarray) and values.ndim == 1:
            if values.dtype == object:  # object columns share one 2-D block, as pandas keeps them
                objects.append((values, positions))
                continue
            values = values.reshape(1, -1)
        pieces.append((values, positions))
    if len(objects) == 1:
        pieces.append((objects[0][0].reshape(1, -1), objects[0][1]))
    elif objects:
        block = np.empty((len(objects), rows), dtype=object)
        for j, (values, _) in enumerate(objects):
            block[j] = values
        pieces.append((block, np.concatenate([positions for _, positions in objects])))
    index = _range_index(rows)
    if _NumpyBlock is not None:
        # Every piece has `rows` values and the positions cover each column once (the
        # plan's layout), which is what BlockManager's integrity check would verify.
        blocks = [_NumpyBlock(values, ndim=2, placement=_Placement(positions))
                  if type(values) is np.ndarray else _make_block(values, positions) for values, positions in pieces]
        manager = _BlockManager(blocks, [columns, index], verify_integrity=False)
        return pd.DataFrame._from_mgr(manager, manager.axes)
    if _from_blocks is not None:  # pragma: no cover - another pandas
        return _from_blocks(pieces, index=index, columns=columns)
    names, out = columns.tolist(), {}  # pragma: no cover - older pandas
    for values, positions in pieces:
        for j, pos in enumerate(positions.tolist()):
            column = values[j] if isinstance(values, np.ndarray) else values
            out[names[pos]] = pd.Series(column, dtype=object, copy=False) if column.dtype == object else column
    return pd.DataFrame({name: out[name] for name in names}, copy=False)


def decode_dataframe(data: Any, *, adopt: bool = False) -> pd.DataFrame:
    """Decode and fully validate one Arrow IPC stream; raise `PeerError` on anything odd.

    `adopt=True` says the (writable) buffer is the frame's alone: one block of numpy columns
    that fills at least half of it is then a view of it instead of a copy (see the module
    docstring); the codec passes it for a body it received into a buffer of its own.
    """
    try:
        return _decode(data, adopt)
    except PeerError:
        raise
    except Exception as exc:  # pyarrow raises a zoo of types for malformed input
        raise PeerError(f"malformed Arrow stream: {type(exc).__name__}: {exc}") from None


def _decode(data: Any, adopt: bool = False) -> pd.DataFrame:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:  # bytes compare as bytes only in format "B"
        view = view.cast("B")
    raw = np.frombuffer(view, np.uint8)
    buffer = pa.py_buffer(raw)
    if buffer.address % 8:  # pyarrow wants aligned buffers: realign (one copy)
        raw = raw.copy()
        view = memoryview(raw)
        buffer = pa.py_buffer(raw)
    fast = _split_fast(view)
    if fast is not None:
        plan, batch = fast
        rows = plan.rows
        if batch.rows != rows:
            raise PeerError(f"Arrow stream declares {rows} rows but holds {batch.rows}")
    else:
        messages = _split_messages(view)
        schema_message, dictionaries, batch = _check_sequence(messages)
        plan = _plan(buffer, schema_message)
        rows = plan.rows
        if not plan.names:
            if batch is not None and (len(batch.nodes) or batch.rows):
                raise PeerError("a frame without columns holds a record batch with data")
            return pd.DataFrame(index=pd.RangeIndex(rows))
        if batch is None:
            raise PeerError("Arrow stream with columns but no record batch")
        if batch.rows != rows:
            raise PeerError(f"Arrow stream declares {rows} rows but holds {batch.rows}")
        if dictionaries or plan.dictionary:
            return _decode_with_pyarrow(buffer, plan)
    if batch.node_list is None:  # (a large header: its arrays)
        counts = len(batch.node_array), len(batch.buffer_array)
    else:
        counts = len(batch.node_list), len(batch.buffer_list)
    if counts != (2 * plan.node_count, 2 * plan.buffer_count):
        raise PeerError("Arrow record batch has the wrong number of nodes or buffers for its schema")
    decoder = _Decoder(buffer, raw, view, batch, adopt=adopt and raw.flags.writeable, columns=len(plan.others))
    pieces: list[tuple[Any, np.ndarray]] = []
    names, tags, types = plan.names, plan.tags, plan.types
    for pos, node, buf, kind in plan.others:
        values = decoder.column(names[pos], tags[pos], types[pos], rows, node, buf, kind)
        pieces.append((values, _position(pos)))
    for tag in plan.fixed:
        pieces.extend(decoder.fixed_block(plan, tag, rows))
    return _assemble(plan.columns, rows, pieces)


_POSITIONS = [np.array([pos], dtype=np.intp) for pos in range(256)]
for _array in _POSITIONS:
    _array.flags.writeable = False
del _array


def _decode_with_pyarrow(buffer: pa.Buffer, plan: _Plan) -> pd.DataFrame:
    """Streams with dictionaries, after `_split_messages` has refused compression,
    deltas and extra batches: pyarrow's reader, then a full validation."""
    table = pa.ipc.open_stream(buffer).read_all()
    if not table.schema.equals(plan.schema, check_metadata=True):
        raise PeerError("Arrow schema changed while reading")
    if table.num_rows != plan.rows:
        raise PeerError(f"Arrow stream declares {plan.rows} rows but holds {table.num_rows}")
    table.validate(full=True)
    pieces = []
    for pos, (name, tag, chunked) in enumerate(zip(plan.names, plan.tags, table.columns)):
        array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        pieces.append((_decode_array(name, tag, array), np.array([pos], dtype=np.intp)))
    return _assemble(plan.columns, plan.rows, pieces)
