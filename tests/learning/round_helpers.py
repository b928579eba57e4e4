"""Helpers for tests that run edge rounds against a data center in process (no sockets)."""

import asyncio

from datacenter.service import DataCenter
from datacenter.state import StateStore
from edge.round_runner import EdgeRound
from mlcore.contract import in_process
from mlcore.rounds import parse_round


def center_over(state_dir, settings, digits, splits):
    """A fresh data center on the files only (as after a restart)."""
    return DataCenter(settings, digits, splits, StateStore(state_dir))


def run_round(center, settings, digits, splits, round_spec, previous):
    """One edge round against `center` in process; the edge keeps its checkpoints in a store of its own."""
    spec = parse_round(round_spec)
    store = center.store.root.parent / f"{center.store.root.name}-edge"
    return asyncio.run(EdgeRound(settings, digits, splits, spec, previous, in_process(center.handle), store).run())
