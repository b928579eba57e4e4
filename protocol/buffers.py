"""Receive buffers for large bodies, reused once nothing refers to them any more.

A fresh buffer of a few hundred MB is cheap to map but not to touch: on a virtual machine
whose freed memory goes back to the host (free page reporting), faulting 300 MB in again
took 280-410 ms against 45 ms for pages still resident (benchmarks/results/protocol.md).
So a buffer of at least `MIN_POOLED_BYTES` stays in the pool after its frame is done, up to
`POOLED_BYTES` in all, and the next large body lands in it.

A pooled buffer is handed out again only when the pool's own reference is the last one: a
decoded DataFrame whose block is a view of it (`decode_dataframe(adopt=True)`), a memoryview
of it or a frame still being decoded all keep it out of reuse, so no byte that anyone can
still read is ever overwritten. The pool belongs to the process and is used from event loop
and worker threads alike, under one lock.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: Bodies smaller than this get a buffer of their own, as before (cheap to fault in).
MIN_POOLED_BYTES = 8 << 20
#: Bytes the pool may keep resident while idle.
POOLED_BYTES = 1 << 30

_pool: list[np.ndarray] = []
_lock = threading.Lock()


def _unused(index: int) -> bool:
    """No reference to `_pool[index]` but the pool's (and getrefcount's own argument)."""
    return sys.getrefcount(_pool[index]) == 2


def receive_buffer(size: int) -> memoryview:
    """Uninitialised memory for a body of `size` bytes (every byte is written before it is read)."""
    if size < MIN_POOLED_BYTES:
        return memoryview(np.empty(size, dtype=np.uint8))
    with _lock:
        fits = [i for i in range(len(_pool)) if _pool[i].nbytes >= size and _unused(i)]
        if fits:
            array = _pool[min(fits, key=lambda i: _pool[i].nbytes)]
        else:
            array = np.empty(size, dtype=np.uint8)
            _admit(array)
    return memoryview(array)[:size]


def _admit(array: np.ndarray) -> None:
    """Keep `array` for reuse if it fits in the pool, dropping unused buffers (smallest first) to make room."""
    total = sum(a.nbytes for a in _pool) + array.nbytes
    while total > POOLED_BYTES:
        free = [i for i in range(len(_pool)) if _unused(i)]
        if not free:
            return  # the pool is full of buffers in use: this one is not kept
        total -= _pool.pop(min(free, key=lambda i: _pool[i].nbytes)).nbytes
    _pool.append(array)


def pooled_bytes() -> int:
    """Bytes the pool holds (in use or not)."""
    with _lock:
        return sum(a.nbytes for a in _pool)
