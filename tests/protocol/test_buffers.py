"""protocol/buffers.py: large receive buffers are reused, never while anyone can still read them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from protocol import FrameDecoder, RequestBlock, decode_request, encode_request
from protocol import buffers


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
