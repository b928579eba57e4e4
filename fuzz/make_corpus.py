"""Write the seed corpus of fuzz_frame_decoder.py: valid frames, one file each, per mode.

    python fuzz/make_corpus.py fuzz/corpus

Seeds are real encoder output (requests with DataFrames of every supported dtype, responses,
errors, signed frames), prefixed with the mode byte the target dispatches on.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import RequestBlock, ResponseBlock, encode_request, encode_response  # noqa: E402
from protocol.dataframes import encode_dataframe  # noqa: E402
from protocol.frame import HEADER_SIZE  # noqa: E402

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
        plain = b"".join(bytes(p) for p in encode_request(block))
        signed = b"".join(bytes(p) for p in encode_request(block, token=TOKEN))
        out[f"request-{i}"] = bytes([STREAM]) + plain
        out[f"request-{i}-chunked"] = bytes([CHUNKED, i]) + plain + plain
        out[f"request-{i}-signed-stream"] = bytes([STREAM]) + signed
        meta_len = int.from_bytes(plain[8:12], "big")
        meta, body = plain[HEADER_SIZE : HEADER_SIZE + meta_len], plain[HEADER_SIZE + meta_len :]
        cut = round(255 * len(meta) / max(1, len(meta) + len(body)))
        out[f"request-{i}-metadata"] = bytes([METADATA, cut, 0]) + meta + body
        out[f"request-{i}-signed"] = bytes([SIGNED, cut, 0]) + meta + body
    for i, block in enumerate(responses):
        plain = b"".join(bytes(p) for p in encode_response(block))
        out[f"response-{i}"] = bytes([STREAM]) + plain
        meta_len = int.from_bytes(plain[8:12], "big")
        out[f"response-{i}-metadata"] = bytes([METADATA, 255, 1]) + plain[HEADER_SIZE : HEADER_SIZE + meta_len]
    for i, df in enumerate(frames):
        out[f"arrow-{i}"] = bytes([ARROW]) + encode_dataframe(df).to_pybytes()
    # The two decoder bugs hand-written inputs found in a prototype: as seeds, too.
    out["nested-metadata"] = bytes([METADATA, 255, 0]) + b"[" * 5000 + b"]" * 5000
    out["huge-int-metadata"] = bytes([METADATA, 255, 0]) + b'{"request_type":"normal","request_id":"x","sections":[],"round":' + b"9" * 5000 + b"}"
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
