"""protocol/buffers.py: large receive buffers are reused, never while anyone can still read them."""

from __future__ import annotations

import asyncio
import weakref

import numpy as np
import pandas as pd

from protocol import FrameDecoder, RequestBlock, decode_request, encode_request
from protocol import buffers
from protocol.workers import DaemonWorkers

from test_defects import wait_for


def address(view: memoryview) -> int:
    return np.asarray(view).ctypes.data


def test_a_released_buffer_is_reused_and_one_in_use_is_not():
    size = buffers.MIN_POOLED_BYTES + 64
    first, second = buffers.receive_buffer(size), buffers.receive_buffer(size)
    assert address(first) != address(second) and len(first) == size
    kept = address(first)
    del first
    again = buffers.receive_buffer(size - 64)
    assert address(again) == kept and len(again) == size - 64  # a free one that fits
    view = np.frombuffer(again, np.uint8)
    del again
    assert address(buffers.receive_buffer(size)) != kept  # a numpy view still reads it
    del view, second


def test_small_bodies_get_their_own_buffer():
    before = buffers.pooled_bytes()
    small = buffers.receive_buffer(1024)
    assert len(small) == 1024 and buffers.pooled_bytes() == before


def test_a_decoded_frame_that_views_its_body_is_never_overwritten_by_the_next():
    rows = buffers.MIN_POOLED_BYTES // (64 * 4) + 1000  # the body is large enough to be pooled
    rng = np.random.default_rng(3)
    frames = [pd.DataFrame({f"f{j}": rng.random(rows, dtype=np.float32) for j in range(64)}) for _ in range(2)]
    decoder = FrameDecoder()
    wire = [b"".join(bytes(p) for p in encode_request(RequestBlock("normal", f))) for f in frames]
    first = decode_request(decoder.feed(wire[0])[0]).query_data
    expected = first.copy()
    second = decode_request(decoder.feed(wire[1])[0]).query_data  # while `first` still views its buffer
    pd.testing.assert_frame_equal(first, expected)
    pd.testing.assert_frame_equal(second, frames[1])
    del first, expected
    third = decode_request(decoder.feed(wire[0])[0]).query_data  # may take the first's buffer now
    pd.testing.assert_frame_equal(second, frames[1])
    pd.testing.assert_frame_equal(third, frames[0])


def test_an_idle_worker_keeps_nothing_of_its_last_job():
    class Thing:
        pass

    workers = DaemonWorkers(2, name="test-worker")

    async def one_job():
        argument = Thing()
        result = await workers.run(lambda arg: (arg, Thing()), argument)
        return weakref.ref(argument), weakref.ref(result[1])

    try:
        refs = asyncio.run(one_job())
        # No gc.collect(): nothing but the idle worker could still hold them, and it must not.
        assert wait_for(lambda: refs[0]() is None and refs[1]() is None, 10.0)  # the worker lets go just after delivering
    finally:
        workers.shutdown()


def _pool_free() -> bool:
    """No pooled buffer is referred to by anyone but the pool."""
    with buffers._lock:
        return all(buffers._unused(i) for i in range(len(buffers._pool)))


def test_a_large_request_decoded_in_a_worker_leaves_its_buffer_free_for_the_next(start_server):
    rows = buffers.MIN_POOLED_BYTES // (64 * 4) + 1000  # pooled, and decoded in a worker thread
    frame = pd.DataFrame({f"f{j}": np.full(rows, j, dtype=np.float32) for j in range(64)})
    server = start_server()
    assert server.ask("normal", query_data=frame).checkpoint == f"normal:{rows}"
    pooled = buffers.pooled_bytes()
    for _ in range(4):  # more requests than worker threads: each lands in the first one's buffer
        assert wait_for(_pool_free, 10.0)  # the request is over: neither the worker that decoded it nor anyone else holds it
        assert server.ask("normal", query_data=frame).checkpoint == f"normal:{rows}"
    assert buffers.pooled_bytes() == pooled
