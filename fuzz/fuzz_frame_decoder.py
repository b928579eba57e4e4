"""Coverage-guided fuzz target (atheris) for everything that reads peer bytes.

Invariant: bytes from a peer parse, or raise `protocol.ProtocolError` -- never anything
else (no RecursionError, ValueError, IndexError, MemoryError, pyarrow errors, ...).
Beyond that, feeding the same bytes whole or in pieces gives the same frames, and an
accepted DataFrame can be encoded again.

The first byte of an input picks what the rest is fed to (see `MODES`), so one corpus
covers the stream decoder, the metadata parser, the Arrow decoder and the authenticated
path (the harness signs the frame, so the fuzzer reaches what lies behind the MAC).

    python fuzz/fuzz_frame_decoder.py -max_total_time=600 fuzz/corpus     # long run
    python fuzz/fuzz_frame_decoder.py -runs=20000 fuzz/corpus             # bounded
    python fuzz/make_corpus.py fuzz/corpus                                # seed corpus

Runs without atheris too (`python fuzz/fuzz_frame_decoder.py FILE...` replays inputs),
which is how tests/reliability replays the regression inputs.
"""

from __future__ import annotations

import sys
import time

try:
    import atheris
except ImportError:  # replay-only mode
    atheris = None


def _imports():
    import pandas  # noqa: F401  (outside instrumentation: only our code is instrumented)
    import pyarrow  # noqa: F401

    if atheris is not None and "protocol" not in sys.modules:  # imported by a test: nothing to instrument
        with atheris.instrument_imports(include=["protocol"]):
            import protocol  # noqa: F401
            from protocol import codec, dataframes, frame, metadata  # noqa: F401
    import protocol

    return protocol


protocol = _imports()
from protocol import auth, codec, dataframes, frame  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402
from protocol.limits import Limits  # noqa: E402

#: Small limits: a header may announce 1 GiB, and allocating it per input would only
#: measure the allocator; the limit checks themselves are the same code either way.
LIMITS = Limits(max_metadata_bytes=1 << 16, max_body_bytes=1 << 20)
TOKEN = b"fuzzing-token-0123456789abcdef"


def _decode_frames(raw_frames, *, token=None, guard=None) -> None:
    for raw in raw_frames:
        for decode in (codec.decode_request, codec.decode_response):
            kwargs = {"token": token, "limits": LIMITS}
            if decode is codec.decode_request:
                kwargs["replay_guard"] = guard
            try:
                block = decode(raw, **kwargs)
            except ProtocolError:
                continue
            for name in ("query_data", "random_data"):
                df = getattr(block, name, None)
                if df is not None:
                    _reencode(df)


def _reencode(df) -> None:
    """What the decoder accepted, the encoder can send on (or refuses with UsageError)."""
    try:
        data = dataframes.encode_dataframe(df)
    except ProtocolError:
        return
    again = dataframes.decode_dataframe(data)
    if list(again.columns) != list(df.columns) or len(again) != len(df):
        raise AssertionError(f"round trip changed the frame: {list(df.columns)} x {len(df)} -> "
                             f"{list(again.columns)} x {len(again)}")


def _feed(data: bytes, chunk: int | None):
    """Frames (as header+payload bytes) and the error type, feeding whole or in chunks."""
    decoder = frame.FrameDecoder(LIMITS)
    frames, error = [], None
    try:
        if chunk is None:
            frames.extend(decoder.feed(data))
        else:
            for i in range(0, len(data), chunk):
                frames.extend(decoder.feed(data[i : i + chunk]))
    except ProtocolError:
        pass
    if decoder.error is not None:  # raised, or pending after the frames that preceded it
        error = (type(decoder.error), decoder.error.code)
    return frames, error


def mode_stream(data: bytes) -> None:
    frames, _ = _feed(data, None)
    _decode_frames(frames)


def mode_chunked(data: bytes) -> None:
    if not data:
        return
    chunk, data = data[0] % 13 + 1, data[1:]
    whole, whole_error = _feed(data, None)
    parts, parts_error = _feed(data, chunk)
    key = lambda fs: [(f.header_bytes, bytes(f.payload)) for f in fs]  # noqa: E731
    if key(whole) != key(parts) or whole_error != parts_error:
        raise AssertionError(f"whole vs chunks of {chunk}: {len(whole)} vs {len(parts)} frames, "
                             f"{whole_error} vs {parts_error}")
    _decode_frames(whole)


def mode_arrow(data: bytes) -> None:
    try:
        df = dataframes.decode_dataframe(bytearray(data))  # writable, like a receive buffer
    except ProtocolError:
        return
    _reencode(df)


def _wrap(meta: bytes, body: bytes, kind: int, token: bytes | None) -> bytes:
    meta += b" " * (-len(meta) % frame.ALIGN)
    body += bytes(-len(body) % frame.ALIGN)
    header = frame.Header(kind, frame.FLAG_MAC if token else 0, len(meta), len(body)).pack()
    parts = [header, meta, body]
    if token:
        parts.append(auth.compute_mac(token, parts))
    return b"".join(parts)


def _split(data: bytes) -> tuple[bytes, bytes, int]:
    """First byte: where metadata ends (in 1/256ths of the rest); next: frame kind."""
    if len(data) < 2:
        return data, b"", frame.KIND_REQUEST
    cut = (len(data) - 2) * data[0] // 255
    kind = frame.KIND_REQUEST if data[1] % 2 == 0 else frame.KIND_RESPONSE
    rest = data[2:]
    return rest[:cut], rest[cut:], kind


def mode_metadata(data: bytes) -> None:
    """The rest is metadata (+ a body) inside a well-formed header: reaches the JSON checks."""
    meta, body, kind = _split(data)
    mode_stream(_wrap(meta, body, kind, None))


def mode_signed(data: bytes) -> None:
    """As mode_metadata, but MAC-signed by the harness and decoded with the token and a replay guard."""
    meta, body, kind = _split(data)
    frames, _ = _feed(_wrap(meta, body, kind, TOKEN), None)
    guard = auth.ReplayGuard()
    _decode_frames(frames, token=TOKEN, guard=guard)


MODES = (mode_stream, mode_chunked, mode_arrow, mode_metadata, mode_signed)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    MODES[data[0] % len(MODES)](data[1:])


def replay(paths: list[str]) -> int:
    """Run saved inputs without atheris; a failing input raises."""
    import pathlib

    files = [p for path in paths for p in (sorted(pathlib.Path(path).iterdir()) if pathlib.Path(path).is_dir() else [pathlib.Path(path)])]
    start = time.perf_counter()
    for file in files:
        test_one_input(file.read_bytes())
    print(f"replayed {len(files)} inputs in {time.perf_counter() - start:.2f} s: invariant held")
    return 0


def main() -> None:
    if atheris is None:
        sys.exit(replay(sys.argv[1:]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
