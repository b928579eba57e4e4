"""Fuzz target for everything that reads peer bytes: coverage-guided with atheris, or a
pure-Python mutation loop where atheris is not installed.

Invariant: bytes from a peer parse, or raise `protocol.ProtocolError` -- never anything
else (no RecursionError, ValueError, IndexError, MemoryError, pyarrow errors, ...).
Beyond that: feeding the same bytes whole or in pieces gives the same frames; an accepted
DataFrame can be encoded again; a request the encoder accepts, the decoder accepts with
the same fields; a signed frame with one byte changed is never accepted.

The first byte of an input picks what the rest is fed to (see `MODES`), so one corpus
covers the stream decoder, the metadata parser, the Arrow decoder and the authenticated
path. The target goes through the package's public entry points only
(`FrameDecoder(limits).feed`, `decode_request`, `decode_response`, `decode_dataframe`,
`encode_request`, `encode_response`, `encode_dataframe`), so it survives changes of the
wire format: the seed corpus is made by the encoder (fuzz/make_corpus.py).

    python fuzz/fuzz_frame_decoder.py -max_total_time=600 fuzz/corpus     # long run
    python fuzz/fuzz_frame_decoder.py -runs=20000 fuzz/corpus             # bounded
    python fuzz/fuzz_frame_decoder.py --pure -max_total_time=60 -seed=1 fuzz/corpus   # no atheris
    python fuzz/fuzz_frame_decoder.py fuzz/regressions/*                  # replay (no atheris needed)
    python fuzz/make_corpus.py fuzz/corpus                                # seed corpus

Without atheris (or with `--pure`), `-max_total_time`/`-runs` start the mutation loop
(seeded RNG: bit flips, byte and integer overwrites, inserts, deletes, duplicated ranges,
splices of two inputs) and plain file arguments are replayed. Both print libFuzzer's
`stat::number_of_executed_units` line, and both write a failing input as
`<artifact_prefix>crash-<sha1>`.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback

if "--pure" in sys.argv:
    sys.argv.remove("--pure")
    atheris = None
else:
    try:
        import atheris
    except ImportError:  # replay and pure-Python mutation modes
        atheris = None


def _imports():
    import pandas  # noqa: F401  (outside instrumentation: only our code is instrumented)
    import pyarrow  # noqa: F401

    if atheris is not None and "protocol" not in sys.modules:  # imported by a test: nothing to instrument
        with atheris.instrument_imports(include=["protocol"]):
            import protocol  # noqa: F401
    import protocol

    return protocol


protocol = _imports()
from protocol import (  # noqa: E402
    FrameDecoder,
    Limits,
    ProtocolError,
    RequestBlock,
    ResponseBlock,
    decode_dataframe,
    decode_request,
    decode_response,
    encode_dataframe,
    encode_request,
    encode_response,
)

#: Small limits: a header may announce 1 GiB, and allocating it per input would only
#: measure the allocator; the limit checks themselves are the same code either way.
LIMITS = Limits(max_metadata_bytes=1 << 16, max_body_bytes=1 << 20)
TOKEN = b"fuzzing-token-0123456789abcdef"


def _join(buffers) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def _decode_all(raw, token: bytes | None) -> list:
    """What each decoder makes of one frame: a summary of the block, or (error type, code)."""
    out = []
    for decode in (decode_request, decode_response):
        try:
            block = decode(raw, token=token, limits=LIMITS)
        except ProtocolError as exc:
            out.append((type(exc).__name__, exc.code))
            continue
        summary = [type(block).__name__]
        for name in ("request_type", "request_id", "edge_id", "round", "extra", "retraining_flag", "checkpoint", "info"):
            summary.append(repr(getattr(block, name, None)))
        for name in ("query_data", "random_data"):
            df = getattr(block, name, None)
            if df is not None:
                summary.append((name, list(df.columns), len(df)))
                _reencode(df)
        out.append(tuple(summary))
    return out


def _reencode(df) -> None:
    """What the decoder accepted, the encoder can send on (or refuses with UsageError)."""
    try:
        data = encode_dataframe(df)
    except ProtocolError:
        return
    again = decode_dataframe(data)
    if list(again.columns) != list(df.columns) or len(again) != len(df):
        raise AssertionError(f"round trip changed the frame: {list(df.columns)} x {len(df)} -> "
                             f"{list(again.columns)} x {len(again)}")


def _feed(data: bytes, chunk: int | None):
    """The frames `data` yields, fed whole or in chunks, and the stream error (type, code)."""
    decoder = FrameDecoder(LIMITS)
    frames, error = [], None
    try:
        if chunk is None:
            frames.extend(decoder.feed(data))
        else:
            for i in range(0, len(data), chunk):
                frames.extend(decoder.feed(data[i : i + chunk]))
        frames.extend(decoder.feed(b""))
    except ProtocolError as exc:
        error = (type(exc).__name__, exc.code)
    pending = getattr(decoder, "error", None)  # an error found after frames it returned first
    if error is None and pending is not None:
        error = (type(pending).__name__, pending.code)
    return frames, error


def mode_stream(data: bytes) -> None:
    frames, _ = _feed(data, None)
    for raw in frames:
        _decode_all(raw, None)
        _decode_all(raw, TOKEN)


def mode_chunked(data: bytes) -> None:
    if not data:
        return
    chunk, data = data[0] % 13 + 1, data[1:]
    whole, whole_error = _feed(data, None)
    parts, parts_error = _feed(data, chunk)
    got_whole = [_decode_all(raw, None) for raw in whole]
    got_parts = [_decode_all(raw, None) for raw in parts]
    if got_whole != got_parts or whole_error != parts_error:
        raise AssertionError(f"whole vs chunks of {chunk}: {len(whole)} vs {len(parts)} frames, "
                             f"{whole_error} vs {parts_error}")


def mode_arrow(data: bytes) -> None:
    try:
        df = decode_dataframe(bytearray(data))  # writable, like a receive buffer
    except ProtocolError:
        return
    _reencode(df)


_TEMPLATE_CACHE: dict[tuple[int, int], tuple[bytes, int] | None] = {}


def _template(kind: int, pad: int) -> tuple[bytes, int] | None:
    """An unsigned, bodiless frame from the encoder, and where its metadata starts.

    Such a frame ends with its metadata (JSON, padded with spaces), so bytes written over
    its tail reach the metadata parser inside a well-formed envelope whatever the header
    looks like. About `pad` characters of filler strings make room for the fuzzer's bytes.
    """
    key = (kind, pad)
    if key not in _TEMPLATE_CACHE:
        filler = {f"p{i}": "x" * min(1000, pad - i * 1000) for i in range(0, (pad + 999) // 1000)}
        try:
            if kind == 0:
                frame = _join(encode_request(RequestBlock("normal", request_id="r", extra=filler), limits=LIMITS))
            else:
                frame = _join(encode_response(ResponseBlock(True, "c", info=filler, request_id="r"), limits=LIMITS))
            _TEMPLATE_CACHE[key] = (frame, frame.index(b"{"))
        except ProtocolError:
            _TEMPLATE_CACHE[key] = None
    return _TEMPLATE_CACHE[key]


def mode_metadata(data: bytes) -> None:
    """Byte 0: request or response template; byte 1: its size; the rest: metadata bytes."""
    if len(data) < 2:
        return
    template = _template(data[0] % 2, data[1] * 32)
    if template is None:
        return
    frame, start = template
    room = len(frame) - start
    meta = data[2 : 2 + room]
    mode_stream(frame[:start] + meta + b" " * (room - len(meta)))


class _Reader:
    """Structured values out of fuzzer bytes (a small FuzzedDataProvider)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self, limit: int = 64) -> bytes:
        n = min(self.byte(), limit)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self) -> str:
        return self.chunk().decode("utf-8", "replace")

    def scalar(self):
        kind = self.byte() % 5
        raw = self.chunk(8)
        if kind == 0:
            return None
        if kind == 1:
            return bool(raw and raw[0] & 1)
        if kind == 2:
            return int.from_bytes(raw[:6], "big", signed=True)
        if kind == 3:
            value = int.from_bytes(raw[:4], "big", signed=True) / 1024
            return value
        return raw.decode("utf-8", "replace")

    def rest(self) -> bytes:
        return self.data[self.pos :]


def mode_signed(data: bytes) -> None:
    """A request built from the input is encoded with the token and must decode the same;
    the same frame with one byte changed must be refused."""
    reader = _Reader(data)
    flags = reader.byte()
    fields = dict(
        request_id=reader.text(),
        edge_id=reader.text() if flags & 1 else None,
        round=(reader.text() if flags & 4 else reader.byte()) if flags & 2 else None,
        extra={reader.text(): reader.scalar() for _ in range(reader.byte() % 6)},
    )
    request_type = reader.text() or "normal"
    where = reader.byte() * 256 + reader.byte()
    xor = reader.byte() or 1
    sections = {}
    if flags & 8:
        try:
            sections["query_data" if flags & 16 else "random_data"] = decode_dataframe(bytearray(reader.rest()))
        except ProtocolError:
            pass
    try:
        block = RequestBlock(request_type, **sections, **fields)
    except ProtocolError:
        return
    try:
        frame = _join(encode_request(block, token=TOKEN, limits=LIMITS))
    except ProtocolError:
        return
    frames, error = _feed(frame, None)
    if error is not None or len(frames) != 1:
        raise AssertionError(f"a signed frame from the encoder does not frame: {error}, {len(frames)} frames")
    got = decode_request(frames[0], token=TOKEN, limits=LIMITS)
    sent = (block.request_type, block.request_id or got.request_id, block.edge_id, block.round, dict(block.extra or {}))
    back = (got.request_type, got.request_id, got.edge_id, got.round, dict(got.extra or {}))
    if sent != back:
        raise AssertionError(f"the decoder changed the request: {sent!r} -> {back!r}")
    for name in ("query_data", "random_data"):
        a, b = getattr(block, name), getattr(got, name)
        if (a is None) != (b is None) or (a is not None and (list(a.columns) != list(b.columns) or len(a) != len(b))):
            raise AssertionError(f"{name} changed on the way")
    damaged = bytearray(frame)
    damaged[where % len(damaged)] ^= xor
    for raw in _feed(bytes(damaged), None)[0]:
        try:
            decode_request(raw, token=TOKEN, limits=LIMITS)
        except ProtocolError:
            continue
        raise AssertionError(f"a signed frame with byte {where % len(damaged)} changed was accepted")


MODES = (mode_stream, mode_chunked, mode_arrow, mode_metadata, mode_signed)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    MODES[data[0] % len(MODES)](data[1:])


# ---------------------------------------------------------------- without atheris
def _files(paths: list[str]):
    import pathlib

    for path in map(pathlib.Path, paths):
        yield from (sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])


def replay(paths: list[str]) -> int:
    """Run saved inputs; a failing input raises."""
    files = list(_files(paths))
    start = time.perf_counter()
    for file in files:
        test_one_input(file.read_bytes())
    print(f"replayed {len(files)} inputs in {time.perf_counter() - start:.2f} s: invariant held")
    return 0


_INTERESTING = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def mutate(data: bytes, rng, corpus: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip a bit
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # overwrite a byte
            out[at % len(out)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 2 and len(out) >= 4:  # overwrite a 4- or 8-byte integer, either byte order
            size = 8 if len(out) >= 8 and rng.random() < 0.3 else 4
            at = min(at, len(out) - size)
            value = rng.choice(_INTERESTING + [len(out), len(out) - at, rng.getrandbits(32)])
            out[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, rng.choice(["big", "little"]))
        elif op == 3:  # insert random bytes
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and out:  # delete a range
            del out[at : at + rng.randint(1, 64)]
        elif op == 5 and out:  # duplicate a range
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 64)]
        elif op == 6 and corpus:  # splice with another input
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[:at] + other[cut:]
        elif op == 7 and out:  # another mode
            out[0] = rng.randrange(256)
    return bytes(out[:max_len])


def pure_fuzz(args: list[str]) -> int:
    """Random mutations of the corpus for -max_total_time seconds or -runs inputs."""
    import os
    import random

    options = {"max_total_time": 0.0, "runs": -1, "seed": 0, "max_len": 8192, "artifact_prefix": "./"}
    paths = []
    for arg in args:
        if arg.startswith("-") and "=" in arg:
            name, value = arg[1:].split("=", 1)
            if name in options:
                options[name] = type(options[name])(value)
        elif not arg.startswith("-"):
            paths.append(arg)
    corpus = [file.read_bytes() for file in _files(paths)]
    corpus = [c for c in corpus if c] or [b"\x00"]
    seed = options["seed"] or int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"pure-Python fuzzing: seed {seed}, {len(corpus)} inputs, max_total_time={options['max_total_time']}, "
          f"runs={options['runs']}", flush=True)
    start = time.monotonic()
    deadline = start + options["max_total_time"] if options["max_total_time"] > 0 else float("inf")
    runs = 0
    for data in corpus:  # every seed once as it is
        test_one_input(data)
        runs += 1
    while runs != options["runs"] and time.monotonic() < deadline:
        data = mutate(rng.choice(corpus), rng, corpus, options["max_len"])
        try:
            test_one_input(data)
        except Exception:
            path = f"{options['artifact_prefix']}crash-{hashlib.sha1(data).hexdigest()}"
            with open(path, "wb") as handle:
                handle.write(data)
            traceback.print_exc()
            print(f"== invariant broken after {runs} inputs; input written to {path}", flush=True)
            return 1
        runs += 1
    elapsed = time.monotonic() - start
    print(f"Done {runs} runs in {elapsed:.0f} second(s)")
    print(f"stat::number_of_executed_units: {runs}")
    print(f"stat::average_exec_per_sec:     {runs / max(elapsed, 1e-9):.0f}")
    return 0


def main() -> None:
    if atheris is None:
        args = sys.argv[1:]
        if any(a.startswith(("-max_total_time=", "-runs=")) for a in args):
            sys.exit(pure_fuzz(args))
        sys.exit(replay([a for a in args if not a.startswith("-")]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
