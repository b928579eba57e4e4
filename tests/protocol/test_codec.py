"""The pure codec, without sockets: DataFrames, frames, limits, metadata, hostile bytes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.pandas import column, data_frames, range_indexes

from protocol import (
    FrameDecoder, LimitExceeded, Limits, PeerError, ProtocolError, RequestBlock, ResponseBlock, UsageError,
    decode_dataframe, decode_request, decode_response, encode_dataframe, encode_request, encode_response,
)
from protocol import metadata
from protocol.frame import HEADER, KIND_REQUEST, MAGIC, VERSION

ROWS = 5


def frames_for_dtypes() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    return {
        "int64": pd.DataFrame({"a": np.arange(ROWS, dtype=np.int64)}),
        "int8": pd.DataFrame({"a": np.arange(ROWS, dtype=np.int8)}),
        "uint32": pd.DataFrame({"a": np.arange(ROWS, dtype=np.uint32)}),
        "float64": pd.DataFrame({"a": rng.random(ROWS)}),
        "float32": pd.DataFrame({"a": rng.random(ROWS).astype(np.float32)}),
        "bool": pd.DataFrame({"a": [True, False, True, True, False]}),
        "str": pd.DataFrame({"a": ["x", "yy", None, "é", ""]}),
        "string": pd.DataFrame({"a": pd.array(["x", None, "z", "", "w"], dtype="string")}),
        "object_str": pd.DataFrame({"a": pd.Series(["x", "y", None, "z", "w"], dtype=object)}),
        "Int64": pd.DataFrame({"a": pd.array([1, None, 3, 4, None], dtype="Int64")}),
        "boolean": pd.DataFrame({"a": pd.array([True, None, False, True, None], dtype="boolean")}),
        "Float32": pd.DataFrame({"a": pd.array([1.5, None, 3, 4, 5], dtype="Float32")}),
        "category": pd.DataFrame({"a": pd.Categorical(["b", "a", None, "b", "c"], categories=["c", "b", "a"])}),
        "category_ordered_int": pd.DataFrame({"a": pd.Categorical([3, 1, 2, 3, 1], ordered=True)}),
        "datetime": pd.DataFrame({"a": pd.date_range("2024-01-01", periods=ROWS, freq="h")}),
        "datetime_nat": pd.DataFrame({"a": pd.to_datetime(["2024-01-01", None, "2024-03-01", None, "2025-01-01"])}),
        "datetime_tz": pd.DataFrame({"a": pd.date_range("2024-01-01", periods=ROWS, freq="D", tz="Europe/Paris")}),
        "bytes": pd.DataFrame({"a": pd.Series([b"\x00\x01", b"", b"xyz", b"\xff" * 9, b"q"], dtype=object)}),
        "features": pd.DataFrame({"a": [rng.random(8).astype(np.float32) for _ in range(ROWS)]}),
        "empty": pd.DataFrame({"a": np.array([], dtype=np.int64), "b": pd.Series([], dtype="string")}),
        "no_columns_rows": pd.DataFrame(index=pd.RangeIndex(7)),
        "no_columns_no_rows": pd.DataFrame(),
        "mixed_order": pd.DataFrame({"z": [1, 2], "a": ["p", "q"], "m": [0.5, 1.5]}),
    }


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes.astype(str)) == list(want.dtypes.astype(str))
    assert got.shape == want.shape
    for name in want.columns:
        g, w = got[name], want[name]
        if len(w) and isinstance(w.iloc[0], np.ndarray):
            assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(g, w))
        else:
            pd.testing.assert_series_equal(g.reset_index(drop=True), w.reset_index(drop=True), check_index_type=False)


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    """Through the wire as a bytearray (what the receiver owns) — the zero-copy path."""
    return decode_dataframe(bytearray(bytes(encode_dataframe(frame))))


KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS else n
    for n in frames_for_dtypes()
])
def test_dataframe_round_trip_keeps_names_order_dtypes(name):
    frame = frames_for_dtypes()[name]
    got = roundtrip(frame)
    assert_same_frame(got, frame)
    assert len(got) == len(frame)


@pytest.mark.parametrize("name", ["int64", "float32", "str", "Int64", "features", "datetime_tz", "category"])
def test_decoded_frames_are_writable(name):
    frame = frames_for_dtypes()[name]
    got = roundtrip(frame)
    got.iloc[0, 0] = got.iloc[1, 0]  # pandas 3 refuses assignment into read-only columns
    got["new"] = 1
    assert got.iloc[0, 0] is not None


def test_decoded_numeric_column_is_writable_numpy():
    got = decode_dataframe(bytes(encode_dataframe(pd.DataFrame({"a": np.arange(4.0)}))))  # read-only bytes input
    got.loc[0, "a"] = 42.0
    assert got["a"].iloc[0] == 42.0


def test_100k_rows_with_features():
    rng = np.random.default_rng(1)
    n = 100_000
    feats = rng.random((n, 16), dtype=np.float32)
    frame = pd.DataFrame({"id": np.arange(n), "label": rng.integers(0, 10, n), "path": [f"/p/{i}.png" for i in range(n)],
                          "features": list(feats)})
    got = roundtrip(frame)
    assert list(got.columns) == ["id", "label", "path", "features"]
    assert np.array_equal(got["id"].to_numpy(), frame["id"].to_numpy())
    assert got["path"].iloc[-1] == f"/p/{n - 1}.png"
    assert np.array_equal(np.stack(got["features"].to_numpy()), feats)


def test_none_and_empty_dataframe_stay_distinct():
    for query, rnd in [(None, pd.DataFrame()), (pd.DataFrame(), None), (None, None)]:
        block = decode_request(decode_frames(encode_request(RequestBlock("normal", query, rnd)))[0])
        assert (block.query_data is None) == (query is None)
        assert (block.random_data is None) == (rnd is None)
        if query is not None:
            assert isinstance(block.query_data, pd.DataFrame) and block.query_data.empty


def test_unsupported_columns_are_usage_errors():
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"a": [object(), object()]}))
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({1: [1]}))
    with pytest.raises(UsageError):
        encode_dataframe(pd.DataFrame({"a": [np.zeros(2), np.zeros(3)]}))


# ------------------------------------------------------------------ hypothesis property tests
generated_frames = data_frames(
    columns=[
        column("i", dtype=np.int64),
        column("f", dtype=np.float64),
        column("g", dtype=np.float32),
        column("b", dtype=bool),
        column("s", elements=st.text(max_size=8), dtype=object),
    ],
    index=range_indexes(max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_frames)
def test_property_round_trip(frame):
    frame["s"] = frame["s"].astype("str")
    got = roundtrip(frame)
    assert list(got.columns) == list(frame.columns)
    assert list(got.dtypes) == list(frame.dtypes)
    for name in ("i", "b", "s"):
        assert got[name].tolist() == frame[name].tolist()
    for name in ("f", "g"):
        np.testing.assert_array_equal(got[name].to_numpy(), frame[name].to_numpy())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=20))
def test_property_nullable_int_round_trip(values):
    frame = pd.DataFrame({"a": pd.array(values, dtype="Int64")})
    assert roundtrip(frame)["a"].tolist() == frame["a"].tolist()


# ------------------------------------------------------------------ frames
def decode_frames(parts, limits=None, *, byte_by_byte=False, decoder=None):
    decoder = decoder or FrameDecoder(limits)
    data = b"".join(bytes(p) for p in parts)
    if not byte_by_byte:
        return decoder.feed(data)
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    return out


def sample_request(**kwargs):
    frame = pd.DataFrame({"x": np.arange(10, dtype=np.float32), "s": ["a"] * 10})
    return RequestBlock("prep_retraining", frame, frame.iloc[:3], edge_id="edge-1", round=3, extra={"k": 1.5}, **kwargs)


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte_by_byte"])
def test_frame_decoder_whole_and_byte_by_byte(byte_by_byte):
    block = sample_request()
    frames = decode_frames(encode_request(block), byte_by_byte=byte_by_byte)
    assert len(frames) == 1
    got = decode_request(frames[0])
    assert (got.request_type, got.edge_id, got.round, got.extra, got.request_id) == (
        "prep_retraining", "edge-1", 3, {"k": 1.5}, block.request_id)
    assert_same_frame(got.query_data, block.query_data)


def test_frame_decoder_two_frames_back_to_back_and_trailing_data():
    first, second = sample_request(), RequestBlock("normal")
    data = b"".join(bytes(p) for p in encode_request(first) + encode_request(second))
    decoder = FrameDecoder()
    frames = decoder.feed(data + data[:10])  # trailing partial header stays buffered
    assert [decode_request(f).request_id for f in frames] == [first.request_id, second.request_id]
    assert decoder.in_frame
    assert decode_request(decoder.feed(data[10:])[0]).request_id == first.request_id


def test_response_round_trip_and_unpacking():
    response = ResponseBlock(True, "/ckpt/1.pt", info={"sha256": "ab", "n": 2}, request_id="r1")
    got = decode_response(decode_frames(encode_response(response))[0])
    flag, checkpoint = got
    assert (flag, checkpoint, got.info, got.request_id, got.error) == (True, "/ckpt/1.pt", {"sha256": "ab", "n": 2}, "r1", None)
    failure = decode_response(decode_frames(encode_response(ResponseBlock.failure("x", "boom")))[0])
    assert (failure.error_code, failure.error, failure.ok) == ("x", "boom", False)


def header(meta_len=8, body_len=0, *, magic=MAGIC, version=VERSION, kind=KIND_REQUEST, flags=0, reserved=0) -> bytes:
    return HEADER.pack(magic, version, kind, flags, meta_len, body_len, reserved)


@pytest.mark.parametrize(
    "data, code",
    [
        (header(magic=b"PKL\x80"), "bad_magic"),
        (header(version=VERSION + 1), "bad_version"),
        (header(kind=9), "bad_frame"),
        (header(flags=0x80), "bad_frame"),
        (header(reserved=1), "bad_frame"),
        (header(meta_len=7), "bad_frame"),
        (header(body_len=1 << 40), "too_large"),
    ],
    ids=["magic", "version", "kind", "flags", "reserved", "unaligned", "2^40"],
)
def test_bad_headers_raise_peer_errors(data, code):
    with pytest.raises(PeerError) as info:
        FrameDecoder().feed(data)
    assert info.value.code == code


def test_header_of_2_to_the_40_allocates_nothing():
    decoder = FrameDecoder()
    with pytest.raises(LimitExceeded) as info:
        decoder.feed(header(body_len=1 << 40))
    assert info.value.size == 1 << 40
    assert decoder.error is info.value
    with pytest.raises(LimitExceeded):  # broken for good
        decoder.feed(b"x")


# ------------------------------------------------------------------ every limit: at it, past it
def test_limit_max_metadata_bytes():
    block = RequestBlock("normal", pd.DataFrame({"a": [1]}))
    parts = encode_request(block)
    meta_len = len(bytes(parts[1]))
    assert decode_frames(parts, Limits(max_metadata_bytes=meta_len))
    with pytest.raises(LimitExceeded):
        decode_frames(parts, Limits(max_metadata_bytes=meta_len - 1))
    with pytest.raises(UsageError):  # the encoder fails early too
        encode_request(block, limits=Limits(max_metadata_bytes=meta_len - 1))


def test_limit_max_body_bytes():
    block = RequestBlock("normal", pd.DataFrame({"a": np.arange(100)}))
    parts = encode_request(block)
    body_len = struct.unpack_from(">Q", bytes(parts[0]), 12)[0]
    assert decode_frames(parts, Limits(max_body_bytes=body_len))
    with pytest.raises(LimitExceeded):
        decode_frames(parts, Limits(max_body_bytes=body_len - 1))
    with pytest.raises(LimitExceeded):
        encode_request(block, limits=Limits(max_body_bytes=body_len - 1))


def frame_with_meta(meta: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(meta).encode()
    raw += b" " * (-len(raw) % 8)
    return header(len(raw), len(body)) + raw + body


def base_meta(**overrides) -> dict:
    meta = {"request_type": "normal", "request_id": "r", "sections": []}
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not ...}


def decode_meta(meta: dict, limits: Limits | None = None, body: bytes = b"") -> RequestBlock:
    return decode_request(FrameDecoder(limits).feed(frame_with_meta(meta, body))[0], limits=limits)


@pytest.mark.parametrize(
    "field, at_limit, past_limit, meta_for",
    [
        ("max_string_chars", 10, 11, lambda n: base_meta(edge_id="e" * n)),
        ("max_map_items", 3, 4, lambda n: base_meta(extra={f"k{i}": i for i in range(n)})),
        ("max_sections", 2, 3, lambda n: base_meta(sections=[{"name": f"s{i}", "length": 0} for i in range(n)])),
    ],
)
def test_metadata_limits_at_and_past(field, at_limit, past_limit, meta_for):
    limits = Limits(**{field: at_limit})
    if field == "max_sections":  # at the limit the count passes; the names are then refused as unexpected
        with pytest.raises(PeerError, match="unexpected section"):
            decode_meta(meta_for(at_limit), limits)
    else:
        decode_meta(meta_for(at_limit), limits)
    with pytest.raises(PeerError, match="at most"):
        decode_meta(meta_for(past_limit), limits)


def test_limits_reject_nonsense():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            Limits(max_sections=bad)


# ------------------------------------------------------------------ hostile metadata
@pytest.mark.parametrize(
    "raw",
    [
        b'{"request_type":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"request_type":"normal","request_id":"r","sections":[],"round":' + b"9" * 5000 + b"}",
        b'{"request_type":"normal","request_id":"r","sections":[],"sent_at":NaN}',
        b'{"request_type":"normal","request_id":"r","sections":[],"sent_at":Infinity}',
        b'{"request_type":"normal","request_id":"r","sections":[],"bogus":1}',
        b'{"request_type":5,"request_id":"r","sections":[]}',
        b'{"request_type":"normal","request_id":"r","sections":{}}',
        b'{"request_type":"normal","request_id":"r","sections":[],"round":true}',
        b'{"request_type":"normal","request_id":"r","sections":[],"extra":{"a":[1]}}',
        b'{"request_type":"normal","request_id":"r","sections":[{"name":"query_data","length":-8}]}',
        b'{"request_type":"normal","sections":[]}',
        b'{"request_type":"","request_id":"r","sections":[]}',
        b'["not", "an", "object"]',
        b"\xff\xfe not utf-8",
    ],
    ids=["deep_nesting", "5000_digits", "nan", "infinity", "unknown_field", "wrong_type", "sections_type",
         "round_bool", "extra_nested", "negative_length", "missing_field", "empty_type", "not_object", "not_utf8"],
)
def test_hostile_metadata_raises_peer_error(raw):
    raw += b" " * (-len(raw) % 8)
    limits = Limits(max_metadata_bytes=1 << 20)
    frame = FrameDecoder(limits).feed(header(len(raw)) + raw)[0]
    with pytest.raises(PeerError) as info:
        decode_request(frame, limits=limits)
    assert info.value.code in ("bad_metadata", "bad_frame")


@pytest.mark.parametrize("raw", [
    b'{"a":1}', b'  {"a":1}', b'{"a":1} \t\n\r', b'\n{"a":[1,{"b":null}]}\r', b"", b"   ", b'{"a":1} x',
    b'{"a":1}{"b":2}', b'{"a":1}\x0c', b'\x0c{"a":1}', b'{"a":1', b"[1]", b'"x"', b"1", b'{"a":"\\ud800"}',
    b'{"a":NaN}', b'{"a":' + b"1" * 30 + b"}", b'\xef\xbb\xbf{"a":1}',
])
def test_metadata_grammar_is_json_decoders(raw):
    """metadata.loads calls the JSON scanner directly: it accepts exactly what JSONDecoder.decode does."""
    try:
        value = metadata._DECODER.decode(raw.decode("utf-8"))
        expected = value if isinstance(value, dict) else PeerError
    except ValueError:
        expected = PeerError
    if expected is PeerError:
        with pytest.raises(PeerError) as info:
            metadata.loads(raw, Limits())
        assert info.value.code == "bad_metadata"
    else:
        assert metadata.loads(raw, Limits()) == expected


# ------------------------------------------------------------------ hostile Arrow
def request_with_section(payload: bytes) -> bytes:
    padded = payload + b"\0" * (-len(payload) % 8)
    return frame_with_meta(base_meta(sections=[{"name": "query_data", "length": len(payload)}]), padded)


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def tagged_table(array: pa.Array, tag: bytes, rows: int | None = None, nullable: bool = True) -> pa.Table:
    field = pa.field("a", array.type, nullable=nullable, metadata={b"driftloop.dtype": tag})
    schema = pa.schema([field], metadata={b"driftloop.rows": str(len(array) if rows is None else rows).encode()})
    return pa.Table.from_arrays([array], schema=schema)


class Uuidish(pa.ExtensionType):
    def __init__(self):
        super().__init__(pa.binary(4), "test.uuidish")

    def __arrow_ext_serialize__(self):
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()


def hostile_arrow_payloads() -> dict[str, bytes]:
    good = bytes(encode_dataframe(pd.DataFrame({"a": np.arange(50, dtype=np.int64)})))
    ext_array = pa.ExtensionArray.from_storage(Uuidish(), pa.array([b"abcd"], pa.binary(4)))
    return {
        "garbage": b"\x00garbage\xff" * 10,
        "truncated": good[: len(good) // 2],
        "tag_mismatch": arrow_stream(tagged_table(pa.array([1.5, 2.5]), b"int64")),
        "unknown_tag": arrow_stream(tagged_table(pa.array([1, 2]), b"pickle")),
        "missing_tag": arrow_stream(pa.table({"a": [1, 2]}).replace_schema_metadata({b"driftloop.rows": b"2"})),
        "extension_type": arrow_stream(tagged_table(ext_array, b"object:bytes")),
        "nulls_in_int64": arrow_stream(tagged_table(pa.array([1, None], pa.int64()), b"int64", nullable=False)),
        "nulls_in_features": arrow_stream(tagged_table(
            pa.array([[1.0, 2.0], None], pa.list_(pa.float32(), 2)), b"array[float32]")),
        "row_count_lies": arrow_stream(tagged_table(pa.array([1, 2], pa.int64()), b"int64", rows=3)),
        "no_row_count": arrow_stream(pa.table({"a": pa.array([1], pa.int64())}).cast(
            pa.schema([pa.field("a", pa.int64(), metadata={b"driftloop.dtype": b"int64"})]))),
        "duplicate_categories": arrow_stream(tagged_table(
            pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["x", "x"])), b"category")),
    }


@pytest.mark.parametrize("name", list(hostile_arrow_payloads()))
def test_hostile_arrow_raises_peer_error(name):
    payload = hostile_arrow_payloads()[name]
    with pytest.raises(PeerError):
        decode_dataframe(payload)
    frame = FrameDecoder().feed(request_with_section(payload))[0]
    with pytest.raises(PeerError):
        decode_request(frame)


# ------------------------------------------------------------------ fuzz: PeerError or a result, nothing else
def decode_all(data: bytes) -> None:
    for frame in FrameDecoder(Limits(max_body_bytes=1 << 20)).feed(data):
        decode_request(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    try:
        decode_all(data)
    except PeerError:
        pass


VALID = b"".join(bytes(p) for p in encode_request(sample_request()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_valid_frame(mutations):
    data = bytearray(VALID)
    for position, value in mutations:
        data[position] = value
    try:
        decode_all(bytes(data))
    except PeerError:
        pass
    except ProtocolError as exc:  # pragma: no cover - shown on failure
        pytest.fail(f"non-peer ProtocolError {exc!r}")


def test_a_released_scratch_buffer_serves_the_next_decoder_without_stale_bytes():
    """Decoders of closed connections hand their scratch buffer to new ones (zeroing 64 KiB
    a connection was measurable): what a new decoder parses is only what it was fed."""
    first, second = sample_request(), RequestBlock("normal")
    data = b"".join(bytes(p) for p in encode_request(first))
    old = FrameDecoder()
    old.feed(data + data[:200])  # a whole frame and the start of another, left behind
    old.release()
    assert old.next_frame() is None and not old.in_frame  # nothing is read from it afterwards
    new = FrameDecoder()
    frames = new.feed(b"".join(bytes(p) for p in encode_request(second)))
    assert [decode_request(f).request_id for f in frames] == [second.request_id] and not new.in_frame


def test_closed_conversations_are_freed_without_the_garbage_collector():
    """A conversation and its decoder (whose head check is the conversation's method) were a
    reference cycle: every connection left them for the collector, whose collections took
    ~5% of a request on a new connection. Released, they go as soon as nothing refers to them."""
    import gc
    import weakref

    from protocol.conversation import ClientConversation, ServerConversation

    enabled = gc.isenabled()
    gc.disable()
    try:
        for make in (ServerConversation, ClientConversation):
            conversation = make(now=0.0)
            conversation.receive_data(b"".join(bytes(p) for p in encode_request(RequestBlock("normal")))[:10], 0.0)
            gone = weakref.ref(conversation)
            conversation.connection_lost()
            del conversation
            assert gone() is None
    finally:
        if enabled:
            gc.enable()


def test_a_released_decoder_checks_no_head_but_refuses_it():
    decoder = FrameDecoder(head_check=lambda head: {"checked": True})
    decoder.release()
    with pytest.raises(PeerError):
        decoder.head_check(None)


def test_large_frames_are_written_in_slices_that_carry_the_head_with_the_body():
    import asyncio

    from protocol.connection import SLICE_BYTES, ConversationProtocol

    class Transport:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(bytes(data))

        def is_closing(self):
            return False

    parts = [b"h" * 32, b"m" * 16, memoryview(bytes(range(256)) * (SLICE_BYTES // 256 + 1)), b"\0" * 4]

    async def main():
        protocol = ConversationProtocol()
        protocol.transport = Transport()
        await protocol.write_sliced(parts)
        return protocol.transport.writes

    writes = asyncio.run(main())
    assert [len(w) for w in writes] == [SLICE_BYTES, sum(len(p) for p in parts) - SLICE_BYTES]
    assert b"".join(writes) == b"".join(bytes(p) for p in parts)
