"""Load and a bad link: many edges against one server, and a proxy that delays, chunks, drops,
loses or flips bytes. Nothing may be lost or answered wrongly; a broken link must end in a
clear protocol error (`ConnectionLost`, `RemoteError`, a failed MAC) within a bound, never a
hang or a wrong answer, and the server keeps serving."""

from __future__ import annotations

import asyncio
import time

import pytest

from protocol import AsyncClient, ConnectionLost, PeerError, ProtocolError, RemoteError
from serving import ServerThread
from reliability_harness import Faults, FaultyProxy, echo_request, expected_echo, make_server, payload, run_load

TOKEN = "reliability-test-token-0123456789"


def test_64_clients_50_requests_each_nothing_lost_or_mismatched() -> None:
    with ServerThread(make_server(max_connections=128)) as running:
        result = asyncio.run(run_load(running.port, clients=64, requests=50, rows=16, deadline=120))
        served = running.server.requests_served
    summary = result.summary()
    assert result.errors == [], result.errors[:5]
    assert (result.ok, result.mismatched, result.lost) == (64 * 50, 0, 0), summary
    assert served >= 64 * 50
    print(summary)


@pytest.mark.parametrize("faults", [Faults(delay=0.05), Faults(chunk=1), Faults(chunk="random", seed=3),
                                    Faults(delay=0.01, chunk="random", seed=4)],
                         ids=["delay-50ms", "1-byte-writes", "random-writes", "delay-and-random"])
def test_slow_or_chunked_link_gives_correct_answers(faults: Faults) -> None:
    rows = 2 if faults.chunk == 1 else 64

    async def main(port: int) -> None:
        async with AsyncClient(port, token=TOKEN, timeout=20, retry_for=1) as client:  # several frames, one stream
            for seed in range(3):
                query, random_ = payload(seed, rows), payload(seed + 100, rows)
                response = await client.send_data("normal", query, random_)
                assert response.checkpoint == expected_echo("normal", query, random_)
        await echo_request(port, 9, rows=rows, token=TOKEN, timeout=20)  # and a connection of its own

    with ServerThread(make_server(token=TOKEN)) as running, FaultyProxy(running.port, faults) as proxy:
        asyncio.run(asyncio.wait_for(main(proxy.port), 60))
        assert proxy.connections == 2 and proxy.requests_seen == ["normal"] * 4


BROKEN = {
    # the request is cut midway, then both sides closed
    "drop-request-midway": (Faults(drop_after=("up", 900)), (ConnectionLost,), None),
    # the reply is cut after 30 bytes (inside its metadata)
    "drop-reply-midway": (Faults(drop_after=("down", 30)), (ConnectionLost,), None),
    # 200 bytes of the request vanish, the connection stays open: the server's frame timeout answers
    "lose-bytes-keep-open": (Faults(skip=("up", 600, 200)), (RemoteError,), "timeout"),
    # one byte of the request body flipped: the MAC refuses it (without a token TCP's checksum is all there is)
    "flip-request-byte": (Faults(flip=("up", 1200)), (RemoteError,), "auth_failed"),
    # one byte of the reply flipped: the client refuses it (the head MAC is checked before the metadata is
    # parsed, the body MAC before the body is decoded: a PeerError either way)
    "flip-reply-byte": (Faults(flip=("down", 40)), (PeerError,), None),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_link_gives_a_clear_error_fast_and_the_server_keeps_serving(name: str) -> None:
    faults, expected, code = BROKEN[name]

    async def main(proxy_port: int, direct_port: int) -> None:
        started = time.perf_counter()
        with pytest.raises(ProtocolError) as caught:
            await echo_request(proxy_port, 5, rows=64, token=TOKEN, timeout=8)
        assert isinstance(caught.value, expected), repr(caught.value)
        if code is not None:
            assert caught.value.code == code, repr(caught.value)
        assert time.perf_counter() - started < 8
        await echo_request(direct_port, 6, rows=64, token=TOKEN)  # the server still answers correctly

    with ServerThread(make_server(token=TOKEN, frame_timeout=1.5)) as running, FaultyProxy(running.port, faults) as proxy:
        asyncio.run(asyncio.wait_for(main(proxy.port, running.port), 30))
