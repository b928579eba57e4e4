"""DataFrames <-> Arrow IPC (protocol/dataframes.py): hostile streams, dtype edge cases, copies.

Every test here failed on the implementation before commit 1b7f76e (see the review's
findings #1, #12 and #15), except the round-trip and interoperability tests, which
guard the rewrite.
"""

from __future__ import annotations

import datetime as dt
import struct
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlcore.frames import build_sample_frame
from protocol import PeerError, UsageError, decode_dataframe, encode_dataframe
from protocol.dataframes import encode_dataframe_parts

EOS = struct.pack("<Ii", -1 & 0xFFFFFFFF, 0)


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    return decode_dataframe(bytearray(bytes(encode_dataframe(frame))))


def tagged_schema(columns: dict[str, tuple[pa.DataType, str]], rows: int) -> pa.Schema:
    return pa.schema(
        [pa.field(name, t, metadata={b"driftloop.dtype": tag.encode()}) for name, (t, tag) in columns.items()],
        metadata={b"driftloop.rows": str(rows).encode()},
    )


def pyarrow_stream(schema: pa.Schema, batches: list[pa.RecordBatch], **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def messages(stream: bytes) -> list[bytes]:
    """The encapsulated messages of a stream (without the end-of-stream marker), split by pyarrow."""
    reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(stream))
    return [message.serialize().to_pybytes() for message in reader]


# ------------------------------------------------------------------ #1: compression bombs
@pytest.fixture(scope="module")
def int64_zeros():
    rows = 2_000_000  # 16 MB once decompressed
    schema = tagged_schema({"a": (pa.int64(), "int64")}, rows)
    return schema, pa.record_batch([pa.array(np.zeros(rows, np.int64))], schema=schema)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_record_batch_is_refused_before_decompression(int64_zeros, codec):
    schema, batch = int64_zeros
    bomb = pyarrow_stream(schema, [batch], compression=codec)
    assert len(bomb) < 100_000  # a few KB on the wire
    pool = pa.default_memory_pool()
    before, start = pool.total_bytes_allocated(), time.perf_counter()
    with pytest.raises(PeerError, match="compressed"):
        decode_dataframe(bomb)
    assert time.perf_counter() - start < 0.5
    assert pool.total_bytes_allocated() - before < 1 << 20  # nothing was inflated


def test_compressed_dictionary_batch_is_refused():
    schema = tagged_schema({"c": (pa.dictionary(pa.int32(), pa.large_string()), "category")}, 3)
    array = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["x" * 1000, "y"], pa.large_string()))
    with pytest.raises(PeerError, match="compressed"):
        decode_dataframe(pyarrow_stream(schema, [pa.record_batch([array], schema=schema)], compression="zstd"))


def test_two_record_batches_are_refused():
    schema = tagged_schema({"a": (pa.int64(), "int64")}, 4)
    batch = pa.record_batch([pa.array([1, 2], pa.int64())], schema=schema)
    with pytest.raises(PeerError, match="record batches"):
        decode_dataframe(pyarrow_stream(schema, [batch, batch]))


def test_dictionary_delta_is_refused():
    schema = tagged_schema({"c": (pa.dictionary(pa.int32(), pa.large_string()), "category")}, 2)
    first = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["a", "b"], pa.large_string()))
    second = pa.DictionaryArray.from_arrays(pa.array([2, 0], pa.int32()), pa.array(["a", "b", "c"], pa.large_string()))
    stream = pyarrow_stream(schema, [pa.record_batch([first], schema=schema), pa.record_batch([second], schema=schema)],
                            emit_dictionary_deltas=True)
    schema_msg, dictionary, _batch1, delta, batch2 = messages(stream)
    one_batch = schema_msg + dictionary + delta + batch2 + EOS  # one record batch, but a delta before it
    with pytest.raises(PeerError, match="delta"):
        decode_dataframe(one_batch)


def two_float_columns(buffers: list[int], body: bytes) -> bytes:
    """Columns a, b (float64, 4 rows) whose record batch's buffer descriptors are `buffers`
    (offset, length pairs), patched into a pyarrow-written message; the body is replaced
    by `body` (64 bytes, the size pyarrow wrote)."""
    schema = tagged_schema({"a": (pa.float64(), "float64"), "b": (pa.float64(), "float64")}, 4)
    stream = pyarrow_stream(schema, [pa.record_batch([pa.array([0.0] * 4), pa.array([0.0] * 4)], schema=schema)])
    schema_message, batch_message = messages(stream)
    written = struct.pack("<8q", 0, 0, 0, 32, 32, 0, 32, 32)
    assert batch_message.count(written) == 1 and len(body) == 64
    header = batch_message[: len(batch_message) - 64].replace(written, struct.pack("<8q", *buffers))
    return schema_message + header + body + EOS


def test_buffers_must_lie_inside_the_body_and_not_add_up_past_it():
    body = np.arange(8.0).tobytes()
    assert decode_dataframe(two_float_columns([0, 0, 0, 32, 32, 0, 32, 32], body))["b"].tolist() == [4, 5, 6, 7]
    with pytest.raises(PeerError, match="fit"):
        decode_dataframe(two_float_columns([0, 0, 0, 32, 32, 0, 48, 32], body))  # b ends past the body
    with pytest.raises(PeerError, match="fit"):
        decode_dataframe(two_float_columns([0, 0, 0, 64, 32, 0, 0, 32], body))  # 96 bytes of columns from 64


def test_bytes_after_the_end_of_stream_are_refused():
    good = bytes(encode_dataframe(pd.DataFrame({"a": [1, 2]})))
    with pytest.raises(PeerError, match="after"):
        decode_dataframe(good + b"\0" * 8)


# ------------------------------------------------------------------ #15: copies, no aliasing
def test_overlapping_buffers_do_not_alias_writable_columns():
    body = np.arange(8.0).tobytes()  # a = body[0:32], b = body[16:48]: they overlap
    frame = decode_dataframe(bytearray(two_float_columns([0, 0, 0, 32, 32, 0, 16, 32], body)))
    assert frame["a"].tolist() == [0.0, 1.0, 2.0, 3.0] and frame["b"].tolist() == [2.0, 3.0, 4.0, 5.0]
    frame.loc[2, "a"] = 99.0
    assert frame["b"].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_decoded_columns_share_no_memory_with_the_received_bytes():
    frame = pd.DataFrame({"i": np.arange(100), "f": np.linspace(0, 1, 100, dtype=np.float32),
                          "x": [np.full(4, i, np.float32) for i in range(100)],
                          "s": pd.array([f"s{i}" for i in range(100)], dtype="str")})
    received = bytearray(bytes(encode_dataframe(frame)))
    got = decode_dataframe(received)
    raw = np.frombuffer(received, np.uint8)
    for name in ("i", "f"):
        assert not np.shares_memory(got[name].to_numpy(), raw)
    assert not any(np.shares_memory(cell, raw) for cell in got["x"])
    start, end = raw.ctypes.data, raw.ctypes.data + len(raw)
    for chunk in got["s"].array._pa_array.chunks:
        assert all(b is None or not start <= b.address < end for b in chunk.buffers())
    received[:] = bytes(len(received))  # the receive buffer is reused: the frame must not change
    got.loc[0, "i"], got.loc[0, "f"], got["x"].iloc[0][0] = 0, 0.0, 0.0  # and its columns are writable
    pd.testing.assert_frame_equal(got, frame)


def test_adopting_the_buffer_views_only_the_block_filling_half_of_it():
    frame = benchmark_frame(5000)  # the 64 float32 columns are 1.28 of 1.5 MB
    received = bytearray(bytes(encode_dataframe(frame)))
    raw = np.frombuffer(received, np.uint8)
    got = decode_dataframe(received, adopt=True)
    features = [f"f{j}" for j in range(64)]
    assert np.shares_memory(got[features]._mgr.blocks[0].values, raw)  # no copy of the large block
    assert not np.shares_memory(got["id"].to_numpy(), raw) and not np.shares_memory(got["label"].array._data, raw)
    pd.testing.assert_frame_equal(got, frame)
    got.loc[0, "f0"] = -1.0  # writable; nothing else moves
    pd.testing.assert_frame_equal(got.drop(columns="f0"), frame.drop(columns="f0"))
    small = bytearray(bytes(encode_dataframe(frame.iloc[:, :4])))  # no block fills half: all copies
    assert not np.shares_memory(decode_dataframe(small, adopt=True)["id"].to_numpy(), np.frombuffer(small, np.uint8))
    readonly = bytes(received)  # not the frame's to keep writable: copies
    assert not np.shares_memory(decode_dataframe(readonly, adopt=True)[features]._mgr.blocks[0].values,
                                np.frombuffer(readonly, np.uint8))


# ------------------------------------------------------------------ #12: array columns
def test_array_element_type_change_after_row_1000_is_never_wrapped():
    rows = [np.array([i % 100, -(i % 100)], np.int8) for i in range(1001)] + [np.array([300, -200], np.int64)]
    got = roundtrip(pd.DataFrame({"x": rows}))
    assert got["x"].iloc[-1].tolist() == [300, -200]
    assert all(np.array_equal(a, b) for a, b in zip(got["x"], rows))


@pytest.mark.parametrize("dtypes", [(np.int64, np.float32), (np.int64, np.uint64), (np.int64, np.float64)])
def test_lossy_array_promotion_is_a_usage_error(dtypes):
    rows = [np.array([2**24 + 1, 1], dtypes[0]), np.array([1, 2], dtypes[1])]
    with pytest.raises(UsageError, match="without loss"):
        encode_dataframe(pd.DataFrame({"x": rows}))


def test_lossless_array_promotion_round_trips():
    rows = [np.array([1, -2], np.int8), np.array([3.5, 4], np.float32), np.array([30000, 1], np.int16)]
    got = roundtrip(pd.DataFrame({"x": rows}))
    assert [r.dtype for r in got["x"]] == [np.dtype(np.float32)] * 3
    assert all(np.array_equal(a, b.astype(np.float32)) for a, b in zip(got["x"], rows))


def test_width_zero_array_rows_are_a_usage_error():
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"x": [np.zeros(0, np.float32), np.zeros(0, np.float32)]}))


def test_array_rows_of_lists_or_2d_arrays_are_usage_errors():
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"x": [np.zeros(2), [1.0, 2.0]]}))
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"x": [np.zeros((2, 2)), np.zeros((2, 2))]}))


# ------------------------------------------------------------------ #12: time zones
@pytest.mark.parametrize("tz", [dt.timezone(dt.timedelta(hours=1)), dt.timezone(dt.timedelta(hours=-5, minutes=-30)),
                                "UTC", "Europe/Berlin"])
def test_time_zones_round_trip(tz):
    frame = pd.DataFrame({"t": pd.date_range("2024-03-30", periods=5, freq="6h", tz=tz)})
    frame.loc[2, "t"] = pd.NaT
    pd.testing.assert_frame_equal(roundtrip(frame), frame)


# ------------------------------------------------------------------ #15: extension types
def extension_arrays() -> dict[str, tuple[pa.Array, str]]:
    bool8 = pa.ExtensionArray.from_storage(pa.bool8(), pa.array([1, 0], pa.int8()))
    json = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}']))
    return {
        "uuid": (pa.ExtensionArray.from_storage(pa.uuid(), pa.array([b"0" * 16], pa.binary(16))), "object:bytes"),
        "json": (json, "object:str"),
        "bool8": (bool8, "int8"),
        "list_of_bool8": (pa.FixedSizeListArray.from_arrays(bool8, 2), "array[int8]"),
        "dictionary_of_json": (pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), json), "category"),
    }


@pytest.mark.parametrize("name", list(extension_arrays()))
def test_canonical_extension_types_are_refused_as_extensions(name):
    array, tag = extension_arrays()[name]
    schema = tagged_schema({"a": (array.type, tag)}, 1)
    stream = pyarrow_stream(schema, [pa.record_batch([array], schema=schema)])
    with pytest.raises(PeerError, match="(?i)extension"):
        decode_dataframe(stream)


# ------------------------------------------------------------------ round trips and interoperability
def supported_frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 11  # odd: every buffer needs padding
    return {
        "numpy": pd.DataFrame({
            **{name: np.arange(n).astype(name) for name in
               ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]},
            "f32": rng.random(n, dtype=np.float32), "f64": np.r_[rng.random(n - 1), np.nan],
            "b": rng.random(n) > 0.5}),
        "masked": pd.DataFrame({t: pd.array([1, None, 3] + [4] * (n - 3), dtype=t) for t in
                                ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                                 "Float32", "Float64"]}
                               | {"boolean": pd.array([True, None, False] * 3 + [True, True], dtype="boolean")}),
        "strings": pd.DataFrame({"str": pd.array(["a", None, "é", ""] * 2 + ["x"] * 3, dtype="str"),
                                 "string": pd.array(["a", None, "b", ""] * 2 + ["y"] * 3, dtype="string"),
                                 "obj": pd.Series(["a", None, "b"] * 3 + ["c", "d"], dtype=object),
                                 "bytes": pd.Series([b"\0\1", None, b""] * 3 + [b"x", b"y"], dtype=object)}),
        "category": pd.DataFrame({"c": pd.Categorical(["b", "a", None] * 3 + ["b", "a"], categories=["c", "b", "a"],
                                                      ordered=True),
                                  "v": np.arange(n, dtype=np.float32)}),
        "datetime": pd.DataFrame({"naive": pd.date_range("2024-01-01", periods=n, freq="h"),
                                  "ms": pd.date_range("2024-01-01", periods=n, freq="D").as_unit("ms"),
                                  "tz": pd.date_range("2024-01-01", periods=n, freq="D", tz="Europe/Paris")}),
        "arrays": pd.DataFrame({"x": [rng.random(3).astype(np.float32) for _ in range(n)],
                                "y": [np.arange(5, dtype=np.uint8) for _ in range(n)]}),
        "zero_rows": pd.DataFrame({"a": np.array([], np.int64), "s": pd.array([], dtype="str"),
                                   "f": np.array([], np.float32)}),
        "no_columns": pd.DataFrame(index=pd.RangeIndex(7)),
        "empty": pd.DataFrame(),
        "from_2d_array": pd.DataFrame(rng.random((n, 5)), columns=list("abcde")),  # an F-ordered block
        "sliced": pd.DataFrame({"s": pd.array([f"v{i}" for i in range(30)], dtype="str"),
                                "i": np.arange(30), "m": pd.array(range(30), dtype="Int64")}).iloc[7:20],
        "interleaved": pd.DataFrame({"a": np.arange(n, dtype=np.float32), "s": ["x"] * n,
                                     "b": np.arange(n, dtype=np.int64), "c": np.arange(n, dtype=np.float32)}),
    }


@pytest.mark.parametrize("name", list(supported_frames()))
def test_supported_frames_round_trip_exactly(name):
    frame = supported_frames()[name]
    got = roundtrip(frame)
    if name == "arrays":
        assert list(got.columns) == list(frame.columns)
        for column in frame.columns:
            assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got[column], frame[column]))
        return
    pd.testing.assert_frame_equal(got, frame.reset_index(drop=True))


def benchmark_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows, 64), dtype=np.float32)
    columns = {"id": np.arange(rows, dtype=np.int64), "label": pd.array(rng.integers(0, 10, rows), dtype="Int64"),
               "path": [f"/data/img_{i:06d}.png" for i in range(rows)]}
    columns.update({f"f{j}": features[:, j] for j in range(64)})
    return pd.DataFrame(columns)


@pytest.mark.parametrize("rows", [0, 1, 1000])
def test_wide_request_frame_round_trips(rows):
    frame = benchmark_frame(rows)
    pd.testing.assert_frame_equal(roundtrip(frame), frame)


@pytest.mark.parametrize("rows", [10, 5000])
def test_parts_are_the_stream_and_a_large_block_is_sent_from_the_frame(rows):
    frame = benchmark_frame(rows)
    parts = encode_dataframe_parts(frame)
    assert b"".join(bytes(p) for p in parts) == bytes(encode_dataframe(frame))
    assert all(isinstance(p, (memoryview, pa.Buffer)) for p in parts)
    features = frame[[f"f{j}" for j in range(64)]]._mgr.blocks[0].values  # the frame's float32 block
    shared = [p for p in parts if isinstance(p, memoryview) and np.shares_memory(np.asarray(p), features)]
    assert len(shared) == (1 if rows == 5000 else 0)  # above 1 MiB: no copy of the 1.3 MB block
    pd.testing.assert_frame_equal(decode_dataframe(bytearray(b"".join(bytes(p) for p in parts))), frame)


def test_edge_sample_frame_round_trips():
    rng = np.random.default_rng(0)
    frame = build_sample_frame(np.arange(100), rng.random((100, 28, 28), dtype=np.float32),
                               np.r_[rng.integers(0, 10, 90), [-1] * 10], "r3", "rotate")
    got = roundtrip(frame)
    pd.testing.assert_frame_equal(got.drop(columns="x"), frame.drop(columns="x"))
    assert all(a.dtype == np.float32 and np.array_equal(a, b) for a, b in zip(got["x"], frame["x"]))


def test_encoder_output_is_a_standard_arrow_stream():
    frame = supported_frames()["interleaved"].assign(m=pd.array([1, None] * 5 + [3], dtype="Int64"),
                                                    x=[np.ones(2, np.float64)] * 11)
    table = pa.ipc.open_stream(bytes(encode_dataframe(frame))).read_all()
    table.validate(full=True)
    assert table.column("a").to_pylist() == frame["a"].tolist()
    assert table.column("s").to_pylist() == ["x"] * 11
    assert table.column("m").to_pylist() == [1, None] * 5 + [3]
    assert table.column("x").type == pa.list_(pa.float64(), 2)
    assert [f.metadata[b"driftloop.dtype"] for f in table.schema] == [b"float32", b"str", b"int64", b"float32",
                                                                       b"Int64", b"array[float64]"]


def test_streams_from_pyarrow_writer_are_accepted():
    schema = tagged_schema({"a": (pa.float32(), "float32"), "s": (pa.string(), "str"),
                            "x": (pa.list_(pa.int16(), 2), "array[int16]"), "n": (pa.int64(), "Int64")}, 3)
    batch = pa.record_batch([pa.array([1.5, 2.5, 3.5], pa.float32()), pa.array(["a", None, "c"]),
                             pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int16(), 2)),
                             pa.array([7, None, 9], pa.int64())], schema=schema)
    got = decode_dataframe(pyarrow_stream(schema, [batch]))
    assert got["a"].tolist() == [1.5, 2.5, 3.5] and got["n"].tolist()[0] == 7 and got["n"].isna().tolist()[1]
    assert [r.tolist() for r in got["x"]] == [[1, 2], [3, 4], [5, 6]] and got["s"].iloc[2] == "c"


def test_null_in_a_numpy_column_is_refused_even_when_the_bitmap_is_present():
    schema = tagged_schema({"a": (pa.int64(), "int64"), "b": (pa.float32(), "float32")}, 2)
    batch = pa.record_batch([pa.array([1, None], pa.int64()), pa.array([1, 2], pa.float32())], schema=schema)
    with pytest.raises(PeerError, match="null"):
        decode_dataframe(pyarrow_stream(schema, [batch]))


def test_pyarrow_errors_while_encoding_are_usage_errors():
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"x": [np.zeros(2, np.float32), np.zeros(3, np.float32)]}))
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"s": pd.Series(["a", 1], dtype=object)}))


def test_encoded_padding_is_zero():
    """The encoder does not zero its output as a whole: every padding byte must still be 0."""
    import numpy as np
    import pandas as pd

    from protocol import dataframes as D

    for _ in range(3):
        np.empty(1 << 16, np.uint8).fill(0xAB)  # leave stale bytes where the next allocation may land
        frame = pd.DataFrame({
            "i8": np.arange(3, dtype=np.int8), "i16": np.arange(3, dtype=np.int16),
            "s": pd.Series(["a", None, "ccc"], dtype=object), "n": pd.array([1, None, 3], dtype="Int64"),
            "x": pd.Series([np.arange(3, dtype=np.float32)] * 3, dtype=object),
        })
        data = np.frombuffer(D.encode_dataframe(frame), np.uint8)
        (_, batch) = D._split_messages(memoryview(data))
        covered = np.zeros(batch.body_len, dtype=bool)
        for offset, length in batch.buffers.tolist():
            covered[offset : offset + length] = True
        body = data[batch.body_start : batch.body_start + batch.body_len]
        assert not body[~covered].any()
        assert D.decode_dataframe(data).equals(D.decode_dataframe(data.copy()))


# ------------------------------------------------------------------ small-frame fast paths (issue 8 §3)
def split_both_ways(stream: bytes):
    """(fast reading, general reading) of a stream whose schema the decoder has seen."""
    from protocol import dataframes as D

    decode_dataframe(stream)  # caches the schema's plan
    view = memoryview(bytes(stream))
    fast = D._split_fast(view)
    schema, _, batch = D._check_sequence(D._split_messages(view))
    return fast, batch


@pytest.mark.parametrize("frame", [
    build_sample_frame(np.arange(7), np.ones((7, 2, 3)), np.array([1, -1, 2, 3, -1, 0, 9]), "r1", "none"),
    benchmark_frame(13),
    pd.DataFrame({"a": np.arange(3), "s": ["x", None, "zz"], "m": pd.array([1, None, 3], dtype="Int64")}),
])
def test_fast_header_reading_equals_the_flatbuffer_walk(frame):
    fast, batch = split_both_ways(bytes(encode_dataframe(frame)))
    assert fast is not None
    plan, fast_batch = fast
    assert (fast_batch.rows, fast_batch.body_start, fast_batch.body_len) == (batch.rows, batch.body_start, batch.body_len)
    assert fast_batch.lists() == (batch.nodes.ravel().tolist(), batch.buffers.ravel().tolist())


def test_record_batch_header_template_equals_the_hand_written_layout():
    from protocol import dataframes as D

    rng = np.random.default_rng(1)
    for nn, nb in [(0, 0), (1, 2), (4, 9), (70, 140)]:
        nodes, buffers = rng.integers(0, 1 << 40, 2 * nn).tolist(), rng.integers(0, 1 << 40, 2 * nb).tolist()
        rows, body = int(rng.integers(0, 1 << 40)), int(rng.integers(0, 1 << 40))
        assert D._record_batch_message(rows, nodes, buffers, body) == D._record_batch_layout(rows, nodes, buffers, body)


def test_a_header_that_differs_from_the_template_takes_the_checked_walk():
    from protocol import dataframes as D

    frame = pd.DataFrame({"a": np.arange(4, dtype=np.float64), "b": np.arange(4, dtype=np.float64)})
    stream = bytearray(encode_dataframe(frame))
    decode_dataframe(bytes(stream))
    schema_len = 8 + struct.unpack_from("<i", stream, 4)[0]
    stream[schema_len + 8 + 36] ^= 1  # the MetadataVersion field of the batch header: no longer ours
    assert D._split_fast(memoryview(bytes(stream))) is None
    pd.testing.assert_frame_equal(decode_dataframe(bytes(stream)), frame)  # read by the walk (which ignores it)
    stream[schema_len + 8 + 24 : schema_len + 8 + 32] = struct.pack("<q", 1 << 30)  # and a body length past the end
    with pytest.raises(PeerError, match="body"):
        decode_dataframe(bytes(stream))


def test_fast_reading_still_refuses_buffers_outside_the_body():
    frame = pd.DataFrame({"a": np.arange(4, dtype=np.float64), "b": np.arange(4, dtype=np.float64)})
    stream = bytearray(encode_dataframe(frame))
    decode_dataframe(bytes(stream))
    schema_len = 8 + struct.unpack_from("<i", stream, 4)[0]
    nodes_at = schema_len + 88
    buffers_at = nodes_at + 16 * 2 + 8
    struct.pack_into("<q", stream, buffers_at + 16 * 3, 1 << 20)  # b's values at 1 MiB into a 64-byte body
    with pytest.raises(PeerError, match="inside the body|fit"):
        decode_dataframe(bytes(stream))
    stream2 = bytearray(encode_dataframe(frame))
    struct.pack_into("<q", stream2, nodes_at + 8, 5)  # a null count above the length
    with pytest.raises(PeerError, match="inconsistent"):
        decode_dataframe(bytes(stream2))


def str_column_stream(offsets: list[int], data: bytes, rows: int) -> bytes:
    """A large_string column `s` tagged object:str with the given offsets and data buffers."""
    schema = tagged_schema({"s": (pa.large_string(), "object:str")}, rows)
    array = pa.Array.from_buffers(pa.large_string(), rows, [None, pa.py_buffer(np.array(offsets, np.int64).tobytes()),
                                                            pa.py_buffer(data)])
    return pyarrow_stream(schema, [pa.record_batch([array], schema=schema)])


def test_repeated_string_offsets_with_different_data_decode_as_sent():
    got = decode_dataframe(str_column_stream([0, 2, 4, 6], b"abcdef", 3))
    assert got["s"].tolist() == ["ab", "cd", "ef"] and got["s"].dtype == object


def test_repeated_invalid_utf8_is_refused():
    with pytest.raises(PeerError):
        decode_dataframe(str_column_stream([0, 2, 4], b"\xff\xfe\xff\xfe", 2))


def test_decreasing_string_offsets_are_refused():
    with pytest.raises(PeerError):
        decode_dataframe(str_column_stream([0, 3, 1, 4], b"abcd", 3))


@pytest.mark.parametrize("values", [["a", "bb", "", "ccc"], ["é", "é", "é"], ["x", "x", "y"], [""] * 5, ["ü", "a"]])
def test_object_str_columns_round_trip(values):
    frame = pd.DataFrame({"s": pd.Series(values, dtype=object)})
    got = roundtrip(frame)
    assert got["s"].dtype == object and got["s"].tolist() == values


def test_one_repeated_str_object_and_equal_copies_encode_alike():
    tag = "round-" + "7"
    same = pd.DataFrame({"s": pd.Series([tag] * 4, dtype=object)})
    copies = pd.DataFrame({"s": pd.Series([str(tag + " ")[:-1] for _ in range(4)], dtype=object)})
    assert copies["s"].iloc[0] is not copies["s"].iloc[1]
    assert bytes(encode_dataframe(same)) == bytes(encode_dataframe(copies))


def test_repeated_lone_surrogate_is_a_usage_error():
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"s": pd.Series(["\ud800"] * 3, dtype=object)}))


@pytest.mark.parametrize("mask", [[False] * 9, [True] * 9, [True, False, False, True, False, False, False, False, True]])
def test_masked_integers_round_trip(mask):
    frame = pd.DataFrame({t: pd.arrays.IntegerArray(np.arange(9).astype(t.lower()), np.array(mask))
                          for t in ["Int8", "Int64", "UInt32"]})
    pd.testing.assert_frame_equal(roundtrip(frame), frame)


def views_of_one_matrix(n: int = 6, width: int = 4) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.arange(n * width, dtype=np.float32).reshape(n, width)
    cells = np.empty(n, dtype=object)
    cells[:] = list(matrix)
    return matrix, cells


@pytest.mark.parametrize("change", ["foreign", "strided", "reordered", "float64", "slice_of_a_longer_matrix"])
def test_array_cells_that_are_almost_rows_of_one_matrix_encode_their_own_values(change):
    matrix, cells = views_of_one_matrix()
    if change == "foreign":
        cells[2] = np.full(4, -1.0, np.float32)
    elif change == "strided":
        cells[3] = np.arange(8, dtype=np.float32)[::2]
    elif change == "reordered":
        cells[1], cells[4] = cells[4], cells[1]
    elif change == "float64":
        cells[0] = matrix[0].astype(np.float64)
    else:
        longer = np.arange(40, dtype=np.float32).reshape(10, 4)
        cells[:] = list(longer[3:9])
    expected = [np.array(c, np.float64 if change == "float64" else np.float32) for c in cells]
    got = roundtrip(pd.DataFrame({"x": pd.Series(cells, dtype=object)}))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got["x"], expected))


def test_decoded_array_cells_are_writable_rows_that_do_not_overlap():
    _, cells = views_of_one_matrix()
    received = bytearray(bytes(encode_dataframe(pd.DataFrame({"x": pd.Series(cells, dtype=object)}))))
    got = decode_dataframe(received)["x"].tolist()
    raw = np.frombuffer(received, np.uint8)
    assert all(c.ndim == 1 and len(c) == 4 and c.flags.writeable and not np.shares_memory(c, raw) for c in got)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(got) for b in got[i + 1 :])
    got[2][:] = 99.0  # a cell written in place leaves its neighbours as they were
    assert got[1].tolist() == [4, 5, 6, 7] and got[3].tolist() == [12, 13, 14, 15]


def test_sample_frame_cells_are_rows_of_one_fresh_block():
    from mlcore.frames import frame_features

    images = np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2)
    frame = build_sample_frame(np.arange(5), images, None, "r1", "none")
    cells = frame["x"].tolist()
    block = cells[0].base
    assert block.shape == (5, 4) and block.flags.c_contiguous and not np.shares_memory(block, images)
    assert all(c.base is block and c.flags.writeable for c in cells)
    images[:] = -1  # the frame copied the images
    assert np.array_equal(frame_features(frame), np.arange(20, dtype=np.float32).reshape(5, 4))
    features = frame_features(frame)
    features[:] = 0  # a fresh array: the frame is untouched
    assert cells[4].tolist() == [16, 17, 18, 19]
    frame.at[1, "x"] = np.full(4, 7, np.float64)  # one foreign cell: still the cells' values, in float32
    assert frame_features(frame)[1].tolist() == [7] * 4 and frame_features(frame).dtype == np.float32


# ------------------------------------------------------------------ wide headers read as int64 arrays
def wide_stream(rows: int, frame: pd.DataFrame | None = None) -> tuple[bytearray, int, int]:
    """An encoded benchmark frame (67 columns: a header read as arrays), its schema decoded once
    (so that the fast reading applies), and where its nodes and buffers start."""
    stream = bytearray(encode_dataframe(benchmark_frame(rows) if frame is None else frame))
    decode_dataframe(bytes(stream))
    nodes_at = 8 + struct.unpack_from("<i", stream, 4)[0] + 88
    return stream, nodes_at, nodes_at + 16 * 67 + 8


# benchmark_frame: id (node 0, buffers 0-1), label Int64 (node 1, buffers 2-3), path (node 2, buffers 4-6),
# then f<j>: node 3 + j, validity buffer 7 + 2 j, values buffer 8 + 2 j
def f_node(j: int) -> int:
    return 3 + j


def f_values(j: int) -> int:
    return 8 + 2 * j


@pytest.mark.parametrize("order", ["two_swapped", "reversed"])
def test_float_columns_out_of_stride_decode_as_sent(order):
    from protocol import dataframes as D

    frame = benchmark_frame(50)
    stream, _, buffers_at = wide_stream(50, frame)
    offsets = [struct.unpack_from("<q", stream, buffers_at + 16 * f_values(j))[0] for j in range(64)]
    moved = list(range(64))
    if order == "two_swapped":
        moved[0], moved[1] = 1, 0
    else:
        moved.reverse()  # a constant stride, but negative
    for j in range(64):
        struct.pack_into("<q", stream, buffers_at + 16 * f_values(j), offsets[moved[j]])
    fast = D._split_fast(memoryview(bytes(stream)))
    assert fast is not None and fast[1].node_list is None  # read fast, as arrays
    expected = frame.copy()
    for j in range(64):
        expected[f"f{j}"] = frame[f"f{moved[j]}"].to_numpy()
    pd.testing.assert_frame_equal(decode_dataframe(bytes(stream)), expected)


def test_a_float_column_with_an_all_valid_bitmap_decodes_as_sent():
    frame = benchmark_frame(7)  # (28 bytes a float column, padded to 32: room for one more byte)
    frame.loc[0, "id"] = -1  # eight 0xff bytes in the body: a bitmap of 7 valid rows
    stream, _, buffers_at = wide_stream(7, frame)
    id_values = struct.unpack_from("<q", stream, buffers_at + 16 * 1)[0]
    struct.pack_into("<qq", stream, buffers_at + 16 * (f_values(5) - 1), id_values, 1)  # f5's validity buffer
    pd.testing.assert_frame_equal(decode_dataframe(bytes(stream)), frame)


def test_a_validity_bitmap_that_disagrees_with_its_null_count_is_refused():
    """pyarrow believes the declared null count over the bitmap: row 2 marked null under a null
    count of 0 was read as its value."""
    frame = benchmark_frame(7)
    frame.loc[0, "id"] = -5  # 0xfb then 0xff...: a bitmap with row 2 null
    stream, _, buffers_at = wide_stream(7, frame)
    id_values = struct.unpack_from("<q", stream, buffers_at + 16 * 1)[0]
    struct.pack_into("<qq", stream, buffers_at + 16 * (f_values(5) - 1), id_values, 1)  # f5's validity buffer
    with pytest.raises(PeerError, match="null count does not match the validity bitmap"):
        decode_dataframe(bytes(stream))


@pytest.mark.parametrize("change", ["short", "nulls", "small_buffer"])
def test_a_bad_float_column_among_many_is_refused_by_name(change):
    rows = 40
    stream, nodes_at, buffers_at = wide_stream(rows)
    if change == "short":
        struct.pack_into("<q", stream, nodes_at + 16 * f_node(5), rows - 1)
    elif change == "nulls":
        struct.pack_into("<q", stream, nodes_at + 16 * f_node(5) + 8, 1)
    else:
        struct.pack_into("<q", stream, buffers_at + 16 * f_values(5) + 8, 4 * rows - 4)
    with pytest.raises(PeerError, match="column 'f5'"):
        decode_dataframe(bytes(stream))


@pytest.mark.parametrize("change, message", [
    ("offset_past_the_body", "inside the body"), ("negative_offset", "inside the body"),
    ("misaligned_offset", "aligned"), ("negative_length", "inside the body"), ("overflowing_end", "inside the body"),
    ("end_past_the_body", "fit"), ("overlapping_buffers", "fit"), ("null_count_above_length", "inconsistent"),
    ("negative_null_count", "inconsistent"), ("negative_length_and_null_count", "inconsistent"),
])
def test_wide_headers_are_checked_like_small_ones(change, message):
    from protocol import dataframes as D

    stream, nodes_at, buffers_at = wide_stream(16)
    body_len = struct.unpack_from("<q", stream, nodes_at - 88 + 8 + 24)[0]
    at = buffers_at + 16 * f_values(9)
    if change == "offset_past_the_body":
        struct.pack_into("<q", stream, at, body_len + 8)
    elif change == "negative_offset":
        struct.pack_into("<q", stream, at, -8)
    elif change == "misaligned_offset":
        struct.pack_into("<q", stream, at, struct.unpack_from("<q", stream, at)[0] + 4)
    elif change == "negative_length":
        struct.pack_into("<q", stream, at + 8, -64)
    elif change == "overflowing_end":
        struct.pack_into("<qq", stream, at, 1 << 62, 1 << 62)
    elif change == "end_past_the_body":
        struct.pack_into("<qq", stream, at, body_len - 8, 64)
    elif change == "overlapping_buffers":  # each inside the body, together larger than it
        struct.pack_into("<qq", stream, at, 0, body_len)
    elif change == "null_count_above_length":
        struct.pack_into("<q", stream, nodes_at + 16 * f_node(9) + 8, 17)
    elif change == "negative_null_count":
        struct.pack_into("<q", stream, nodes_at + 16 * f_node(9) + 8, -1)
    else:
        struct.pack_into("<qq", stream, nodes_at + 16 * f_node(9), -5, -3)
    with pytest.raises(PeerError, match=message):  # read fast
        D._split_fast(memoryview(bytes(stream)))
    with pytest.raises(PeerError, match=message):  # the flatbuffer walk
        D._split_messages(memoryview(bytes(stream)))
    with pytest.raises(PeerError, match=message):
        decode_dataframe(bytes(stream))


def test_header_checks_on_arrays_agree_with_the_checks_on_lists():
    from protocol import dataframes as D

    rng = np.random.default_rng(3)
    body_len = 4096
    odd = [-1, -8, -(1 << 63), (1 << 63) - 1, 1 << 62, body_len, body_len + 8, body_len - 8, 4, 3, 0]
    agreed = refused = 0
    for trial in range(3000):
        nn, nb = int(rng.integers(1, 80)), int(rng.integers(1, 160))
        lengths = rng.integers(0, 100, nn)
        nodes = np.stack([lengths, rng.integers(0, lengths + 1)], axis=1).ravel()
        sizes = rng.integers(0, 4, nb) * 8
        buffers = np.stack([8 * rng.integers(0, (body_len - 32) // 8, nb), sizes], axis=1).ravel()
        for _ in range(int(rng.integers(0, 3))):  # a few odd values in either
            target = nodes if rng.random() < 0.4 else buffers
            target[rng.integers(0, len(target))] = odd[rng.integers(0, len(odd))]
        if trial % 7 == 0:  # sizes each inside the body, summing past it
            buffers[1::2] = body_len // 8
            buffers[0::2] = 0
        rows = -1 if trial % 101 == 0 else 16
        try:
            D._check_batch_values(rows, nodes.tolist(), buffers.tolist(), body_len)
            expected = True
        except PeerError:
            expected = False
        assert D._batch_arrays_ok(rows, nodes, buffers, body_len) is expected, (nodes.tolist(), buffers.tolist())
        agreed += expected
        refused += not expected
    assert agreed > 300 and refused > 300  # both outcomes well covered
