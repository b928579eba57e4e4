"""Every random number comes from the configured seed, named by purpose, never from the clock."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed for one purpose (e.g. ("batch", "r03")): independent streams per purpose."""
    text = "\x1f".join([str(int(seed)), *(str(p) for p in purpose)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def rng_for(seed: int, *purpose: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *purpose))


def torch_generator(seed: int, *purpose: object) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *purpose))
    return generator


def make_deterministic(threads: int = 1) -> None:
    """Deterministic kernels and a fixed thread count: same inputs, same checkpoint bytes."""
    # The public torch.use_deterministic_algorithms(True) also imports torch._inductor (about
    # 2.5 s per process, paid by every edge round); we never compile, so set the flag itself.
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is not None:
        set_flag(True)
    else:  # pragma: no cover - other torch versions
        torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
