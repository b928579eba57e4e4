"""Bounded fuzzing inside the suite, and the regression inputs fuzzing and hand-written cases found.

Invariant everywhere: peer bytes parse, or raise `ProtocolError` -- never anything else.
`test_bounded_fuzz_run` fuzzes for about a minute (atheris when installed, else the target's
pure-Python mutation loop). The long run is `python fuzz/fuzz_frame_decoder.py
-max_total_time=600 fuzz/corpus` (see fuzz/README.md and docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import AsyncClient, PeerError, RemoteError, RequestBlock, UsageError, decode_request, encode_request
from protocol.frame import ALIGN, KIND_REQUEST, FrameDecoder, Header
from protocol.limits import Limits
from serving import ServerThread
from reliability_harness import echo_request, make_server, payload, raw_exchange

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"


def _load_target():
    spec = importlib.util.spec_from_file_location("fuzz_frame_decoder", FUZZ / "fuzz_frame_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGET = _load_target()


def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def frame_bytes(meta: bytes, body: bytes = b"", kind: int = KIND_REQUEST) -> bytes:
    meta += b" " * (-len(meta) % ALIGN)
    return Header(kind, 0, len(meta), len(body)).pack() + meta + body


def decode_one(data: bytes):
    frames = FrameDecoder().feed(data)
    assert len(frames) == 1
    return decode_request(frames[0])


# ------------------------------------------------------------------ hypothesis (~10 s)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["request_type", "request_id", "sections", "edge_id", "round", "extra", "sent_at",
                               "nonce", "unknown"])


@bounded(200)
@given(st.dictionaries(field_names, json_values, max_size=8))
@example({"request_type": "normal", "request_id": "", "sections": []})
def test_metadata_of_any_shape_parses_or_is_bad_metadata(meta: dict) -> None:
    data = frame_bytes(json.dumps(meta).encode())
    try:
        block = decode_one(data)
    except PeerError as exc:
        assert exc.code in {"bad_metadata", "too_large"}, exc.code
        return
    assert block.request_type == meta["request_type"] and block.request_id == meta["request_id"]  # (an empty id comes back empty: defect n)


@st.composite
def mutated_requests(draw) -> bytes:
    """A valid request frame (payload sizes and fields drawn), then damaged by flips, cuts and inserts."""
    rows = draw(st.integers(0, 5))
    block = RequestBlock(draw(st.sampled_from(["normal", "retraining", "handshake", "x" * 64])),
                         payload(draw(st.integers(0, 50)), rows) if draw(st.booleans()) else None,
                         payload(1, rows) if draw(st.booleans()) else None,
                         round=draw(st.none() | st.integers(0, 2**63) | st.text(max_size=5)),
                         extra=draw(st.dictionaries(st.text(max_size=5), st.integers() | st.booleans(), max_size=3)),
                         request_id="fuzz")
    data = bytearray(b"".join(bytes(p) for p in encode_request(block)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, 1 << 16)) % max(1, len(data))  # the length varies with the send time
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@bounded(150)
@given(mutated_requests(), st.integers(1, 13))
def test_damaged_frames_parse_or_raise_protocol_error(data: bytes, chunk: int) -> None:
    # mode 1 of the fuzz target: whole vs chunked feeding must agree, decoding raises only ProtocolError
    TARGET.test_one_input(bytes([1, chunk - 1]) + data)


@bounded(300)
@given(st.integers(0, 4), st.binary(max_size=2048))
def test_random_bytes_in_every_fuzz_mode(mode: int, data: bytes) -> None:
    TARGET.test_one_input(bytes([mode]) + data)


# ------------------------------------------------------------------ bounded fuzz run (~65 s)
#: Seconds of fuzzing in the suite (libFuzzer's -max_total_time); DRIFTLOOP_FUZZ_SECONDS overrides.
FUZZ_SECONDS = int(os.environ.get("DRIFTLOOP_FUZZ_SECONDS", "62"))


def _have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def test_bounded_fuzz_run(tmp_path: Path) -> None:
    """Coverage-guided (atheris) where it is installed -- the `test` extra brings it on Linux
    x86_64 -- else the target's pure-Python mutation loop; FUZZ_SECONDS either way."""
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(corpus)], check=True, capture_output=True, timeout=120)
    for file in (FUZZ / "regressions").iterdir():
        shutil.copy(file, corpus / file.name)
    engine = [] if _have_atheris() else ["--pure"]
    command = [sys.executable, str(FUZZ / "fuzz_frame_decoder.py"), *engine, f"-max_total_time={FUZZ_SECONDS}",
               "-seed=1", "-max_len=8192", "-timeout=60", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
               str(corpus)]
    log_path = tmp_path / "fuzz.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        try:
            returncode = proc.wait(timeout=FUZZ_SECONDS + 90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the fuzzer and nothing else
            proc.wait()
            returncode = None
    elapsed = time.monotonic() - started
    output = log_path.read_text(errors="replace")
    tail = "\n".join(line for line in output.splitlines() if "Instrumenting" not in line)[-4000:]
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert returncode == 0 and not crashes, f"fuzzer rc={returncode}, crash inputs {crashes} (add them to fuzz/regressions " \
                                            f"once fixed):\n{tail}"
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", output).group(1))
    print(f"fuzzing ({'atheris' if not engine else 'pure Python'}): {runs} inputs in {elapsed:.0f} s wall, "
          f"{FUZZ_SECONDS} s of fuzzing")
    assert runs >= 20 * FUZZ_SECONDS, f"only {runs} inputs in {FUZZ_SECONDS} s:\n{tail}"


# ------------------------------------------------------------------ regressions
def test_replay_of_every_saved_regression_input() -> None:
    files = sorted((FUZZ / "regressions").iterdir())
    assert files
    for file in files:
        TARGET.test_one_input(file.read_bytes())


NESTED = [b"[" * 30000 + b"]" * 30000, b'{"a":' * 10000 + b"1" + b"}" * 10000]  # both under 64 KiB
HUGE_NUMBERS = [
    b'{"request_type":"normal","request_id":"x","sections":[],"round":' + b"9" * 5000 + b"}",
    b'{"request_type":"normal","request_id":"x","sections":[],"extra":{"k":-' + b"1" * 5000 + b"}}",
    b'{"request_type":"normal","request_id":"x","sections":[],"sent_at":1e999}',
]


@pytest.mark.parametrize("meta", NESTED + HUGE_NUMBERS, ids=["nested-list", "nested-dict", "int-round", "int-extra",
                                                            "float-overflow"])
def test_decoder_bugs_of_the_prototype_give_bad_metadata(meta: bytes) -> None:
    """RecursionError on deep nesting and ValueError on a 5000-digit int were crashes in a prototype."""
    with pytest.raises(PeerError) as caught:
        decode_one(frame_bytes(meta))
    assert caught.value.code == "bad_metadata"


def test_the_server_answers_them_with_bad_metadata_and_keeps_serving() -> None:
    async def main(port: int) -> None:
        for meta in NESTED + HUGE_NUMBERS:
            response = await raw_exchange(port, frame_bytes(meta))
            assert response.error_code == "bad_metadata", response.error
        await echo_request(port, 7)

    with ServerThread(make_server()) as running:
        asyncio.run(main(running.port))


def test_a_frame_followed_by_garbage_in_one_read_is_still_delivered() -> None:
    """Found by the fuzzer: the decoder dropped a whole frame when bad bytes followed it in the same read,
    so whether a request was served depended on how TCP split the bytes."""
    good = b"".join(bytes(p) for p in encode_request(RequestBlock("normal", payload(1, 3), request_id="r1")))
    data = good + b"GARBAGE!" * 4
    whole = FrameDecoder()
    frames = whole.feed(data)
    assert [decode_request(f).request_id for f in frames] == ["r1"]
    assert whole.error is not None and whole.error.code == "bad_magic"
    with pytest.raises(PeerError):
        whole.feed(b"more")
    for chunk in (1, 7, len(good)):
        split = FrameDecoder()
        got = []
        with pytest.raises(PeerError):
            for i in range(0, len(data), chunk):
                got += split.feed(data[i : i + chunk])
        assert [decode_request(f).request_id for f in got] == ["r1"]


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_a_header_announcing_1gib_costs_no_memory_before_the_bytes_come() -> None:
    """Found while fuzzing: 24 unauthenticated bytes made the server zero a 1 GiB buffer (3 headers:
    3 GB of RAM and a 21 s stall of its event loop). Receive buffers are now committed as bytes arrive."""
    header = Header(KIND_REQUEST, 0, 0, Limits().max_body_bytes).pack()
    with ServerThread(make_server(token="t" * 32, frame_timeout=30.0)) as running:
        before = _rss_mb()
        socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
        try:
            for sock in socks:
                sock.sendall(header)
            started = time.perf_counter()
            asyncio.run(echo_request(running.port, 3, token="t" * 32, timeout=10))
            latency = time.perf_counter() - started
            grown = _rss_mb() - before
        finally:
            for sock in socks:
                sock.close()
    assert latency < 3.0, f"a concurrent request took {latency:.1f} s"
    assert grown < 300, f"server memory grew by {grown:.0f} MB for three 24-byte headers"


def test_wrong_limits_header_is_refused_before_allocation() -> None:
    header = Header(KIND_REQUEST, 0, 0, Limits().max_body_bytes + ALIGN).pack()
    with pytest.raises(PeerError) as caught:
        FrameDecoder().feed(header)
    assert caught.value.code == "too_large"


def test_client_reports_remote_error_for_bad_metadata_sent_by_a_buggy_edge() -> None:
    """Metadata past the limits never hangs a real client: an encoder that applies the
    decoder's limits refuses it locally (UsageError, nothing sent); one that does not gets
    RemoteError(code=bad_metadata) from the server."""

    async def main(port: int) -> None:
        client = AsyncClient(port, timeout=5)
        block = RequestBlock("normal", extra={"note": "x" * 5000})  # a string past max_string_chars
        with pytest.raises((RemoteError, UsageError)) as caught:
            await client.request(block)
        if isinstance(caught.value, RemoteError):
            assert caught.value.code == "bad_metadata"
        await echo_request(port, 3)  # and the server still serves

    with ServerThread(make_server()) as running:
        asyncio.run(main(running.port))
