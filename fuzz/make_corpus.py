"""Write the seed corpus of fuzz_frame_decoder.py: valid frames, one file each, per mode.

    python fuzz/make_corpus.py fuzz/corpus

Seeds are real encoder output (requests with DataFrames of every supported dtype, responses,
errors, signed frames), prefixed with the mode byte the target dispatches on.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import RequestBlock, ResponseBlock, encode_dataframe, encode_request, encode_response  # noqa: E402

TOKEN = b"fuzzing-token-0123456789abcdef"
STREAM, CHUNKED, ARROW, METADATA, SIGNED = range(5)


def sample_frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 3
    return [
        pd.DataFrame({"id": np.arange(n, dtype=np.int64), "x": rng.random(n).astype(np.float32)}),
        pd.DataFrame({"b": [True, False, True], "f64": [1.5, np.nan, 2.0], "u8": np.array([1, 2, 3], np.uint8)}),
        pd.DataFrame({"s": pd.array(["a", None, "c"], dtype="string"), "o": ["p", "q", None]}),
        pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64"), "c": pd.Categorical(["x", "y", "x"])}),
        pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02", None]).as_unit("us"),
                      "tz": pd.to_datetime(["2024-01-01"] * 3).tz_localize("UTC")}),
        pd.DataFrame({"bytes": [b"a", b"", b"\x00"], "features": [rng.random(4).astype(np.float32) for _ in range(n)],
                      "label": pd.array([1, None, 2], dtype="Int64")}),
        pd.DataFrame(),
        pd.DataFrame(index=range(5)),
        pd.DataFrame({"id": np.array([], dtype=np.int64)}),
    ]


def _join(buffers) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def _metadata_of(frame: bytes) -> bytes:
    """The JSON metadata inside an encoded frame (found by parsing, not by the header layout)."""
    start = frame.index(b"{")
    _, end = json.JSONDecoder().raw_decode(frame[start:].decode("latin-1"))
    return frame[start : start + end]


def _chunk(data: bytes) -> bytes:
    assert len(data) < 256
    return bytes([len(data)]) + data


def _text(value: str) -> bytes:
    return _chunk(value.encode("utf-8"))


def _scalar(value) -> bytes:
    """Inverse of the target's `_Reader.scalar`."""
    if value is None:
        return b"\x00\x00"
    if isinstance(value, bool):
        return b"\x01" + _chunk(bytes([value]))
    if isinstance(value, int):
        return b"\x02" + _chunk(value.to_bytes(6, "big", signed=True))
    if isinstance(value, float):
        return b"\x03" + _chunk(round(value * 1024).to_bytes(4, "big", signed=True))
    return b"\x04" + _chunk(value.encode("utf-8"))


def signed_seed(request_type: str, request_id: str, *, edge_id=None, round_=None, extra=None, df=None,
                query=True, where=0, xor=1) -> bytes:
    """Input for the target's `mode_signed` (see `_Reader` there for the layout)."""
    extra = extra or {}
    flags = (1 if edge_id is not None else 0) | (2 if round_ is not None else 0) | (4 if isinstance(round_, str) else 0)
    flags |= (8 if df is not None else 0) | (16 if query else 0)
    out = bytes([SIGNED, flags]) + _text(request_id)
    if edge_id is not None:
        out += _text(edge_id)
    if round_ is not None:
        out += _text(round_) if isinstance(round_, str) else bytes([round_])
    out += bytes([len(extra)]) + b"".join(_text(k) + _scalar(v) for k, v in extra.items())
    out += _text(request_type) + where.to_bytes(2, "big") + bytes([xor])
    if df is not None:
        out += encode_dataframe(df).to_pybytes()
    return out


def seeds() -> dict[str, bytes]:
    frames = sample_frames()
    out: dict[str, bytes] = {}
    requests = [RequestBlock("handshake", request_id="h1")]
    for i, df in enumerate(frames):
        requests.append(RequestBlock("normal", None, df, request_id=f"n{i}", edge_id="e", round=i, extra={"k": 1.5}))
    requests.append(RequestBlock("retraining", frames[5], frames[0], request_id="r", round="r01", extra={"a": None, "b": True}))
    responses = [
        ResponseBlock(True, "/ckpt/abc.pt", info={"sha256": "0" * 64, "n": 3}, request_id="n1"),
        ResponseBlock.failure("bad_metadata", "nope", request_id="x"),
        ResponseBlock(False, None),
    ]
    for i, block in enumerate(requests):
        plain = _join(encode_request(block))
        signed = _join(encode_request(block, token=TOKEN))
        out[f"request-{i}"] = bytes([STREAM]) + plain
        out[f"request-{i}-chunked"] = bytes([CHUNKED, i]) + plain + plain
        out[f"request-{i}-signed-stream"] = bytes([STREAM]) + signed
        meta = _metadata_of(plain)
        out[f"request-{i}-metadata"] = bytes([METADATA, 0, len(meta) // 32 + 1]) + meta
    for i, block in enumerate(responses):
        plain = _join(encode_response(block))
        out[f"response-{i}"] = bytes([STREAM]) + plain
        out[f"response-{i}-signed-stream"] = bytes([STREAM]) + _join(encode_response(block, token=TOKEN))
        meta = _metadata_of(plain)
        out[f"response-{i}-metadata"] = bytes([METADATA, 1, len(meta) // 32 + 1]) + meta
    for i, df in enumerate(frames):
        out[f"arrow-{i}"] = bytes([ARROW]) + encode_dataframe(df).to_pybytes()
        out[f"signed-{i}"] = signed_seed("normal", f"s{i}", edge_id="edge-1", round_=i, extra={"k": 1.5, "s": "x"},
                                         df=df, query=bool(i % 2), where=7 * i + 3)
    out["signed-bare"] = signed_seed("handshake", "", where=30, xor=0x80)
    out["signed-round-str"] = signed_seed("retraining", "r1", round_="r01", extra={"n": None, "b": True, "i": -5})
    # The two decoder bugs hand-written inputs found in a prototype: as seeds, too.
    out["nested-metadata"] = bytes([METADATA, 0, 255]) + b"[" * 4000 + b"]" * 4000
    out["huge-int-metadata"] = bytes([METADATA, 0, 255]) + b'{"request_type":"normal","request_id":"x","sections":[],"round":' + b"9" * 5000 + b"}"
    return out


def main(directory: str) -> int:
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, data in seeds().items():
        digest = hashlib.sha1(data).hexdigest()[:12]
        path = target / f"seed-{name}-{digest}"
        if not path.exists():
            path.write_bytes(data)
            written += 1
    print(f"{written} new seeds in {target} ({len(list(target.iterdir()))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "corpus")))
