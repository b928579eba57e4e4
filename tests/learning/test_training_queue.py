"""The data center serves a fleet: a bounded, fair training queue, and checks that never wait behind it.

The queue alone, with threads and events (no torch); then a real TCP server on 127.0.0.1
with two edges running episodes at once and a third client sending drift checks.
Assertions are about order and overlap, never wall-clock thresholds (those are in
benchmarks/datacenter_load_bench.py).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import datacenter.adaptation
from datacenter.queue import TrainingQueue
from datacenter.server import make_server
from datacenter.service import DataCenter
from datacenter.state import StateStore
from edge.__main__ import protocol_exchange
from edge.round_runner import EdgeRound
from mlcore.contract import in_process
from mlcore.frames import build_sample_frame
from mlcore.rounds import parse_rounds
from protocol import AsyncClient
from serving import ServerThread

WAIT = 30  # seconds before a test gives up on an event that should have happened long before


# ---- the queue alone ---------------------------------------------------------------------
def start_waiter(queue: TrainingQueue, edge: str, name: str, order: list[str], hold: threading.Event | None = None
                 ) -> threading.Thread:
    """A thread that queues for a slot, records `name` when it gets one, holds it until `hold` is set."""
    before = queue.waiting

    def run() -> None:
        with queue.slot(edge):
            order.append(name)
            if hold is not None:
                assert hold.wait(WAIT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while queue.waiting == before and queue.running < queue.slots and time.monotonic() < deadline:
        time.sleep(0.001)  # until it is queued (or holds a slot): arrivals in a known order
    return thread


def hold_all_slots(queue: TrainingQueue) -> tuple[threading.Event, list[threading.Thread]]:
    release, order = threading.Event(), []
    threads = [start_waiter(queue, "holder", f"h{i}", order, release) for i in range(queue.slots)]
    deadline = time.monotonic() + WAIT
    while queue.running < queue.slots and time.monotonic() < deadline:
        time.sleep(0.001)
    assert queue.running == queue.slots and queue.waiting == 0
    return release, threads


def test_waiting_edges_are_served_round_robin_and_each_edge_in_order():
    queue, order = TrainingQueue(1), []
    release, holders = hold_all_slots(queue)
    arrivals = [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"), ("b", "b2")]
    threads = [start_waiter(queue, edge, name, order) for edge, name in arrivals]
    assert queue.waiting == 6 and order == []
    release.set()
    for thread in holders + threads:
        thread.join(WAIT)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]  # a's burst does not hold b and c back
    assert queue.running == 0 and queue.waiting == 0 and queue.peak == 1


def test_an_edge_just_served_goes_behind_the_others_waiting():
    queue, order = TrainingQueue(1), []
    release, holders = hold_all_slots(queue)
    threads = [start_waiter(queue, edge, name, order) for edge, name in [("a", "a1"), ("a", "a2"), ("b", "b1")]]
    release.set()
    for thread in holders + threads:
        thread.join(WAIT)
    assert order == ["a1", "b1", "a2"]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_never_more_than_slots_at_once(slots):
    queue, lock, active, peak = TrainingQueue(slots), threading.Lock(), [0], [0]

    def train(edge: str) -> None:
        for _ in range(5):
            with queue.slot(edge):
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                time.sleep(0.002)
                with lock:
                    active[0] -= 1

    threads = [threading.Thread(target=train, args=(f"e{i % 4}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert peak[0] == slots == queue.peak and queue.running == 0 and queue.waiting == 0


def test_the_wait_is_measured_from_arrival_to_slot():
    now = [0.0]
    queue = TrainingQueue(1, clock=lambda: now[0])
    first = queue.acquire("a")
    assert first.wait == 0.0
    now[0] = 1.0
    tickets = []
    thread = threading.Thread(target=lambda: tickets.append(queue.acquire("b")))
    thread.start()
    while queue.waiting == 0:
        time.sleep(0.001)
    now[0] = 5.0
    queue.release()
    thread.join(WAIT)
    assert tickets[0].edge == "b" and tickets[0].wait == 4.0
    queue.release()
    assert queue.running == 0


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        TrainingQueue(0)
    with pytest.raises(RuntimeError, match="without a slot"):
        TrainingQueue(1).release()
    queue = TrainingQueue(1)
    with pytest.raises(KeyError):
        with queue.slot(None):  # an error in the body gives the slot back
            raise KeyError("boom")
    assert queue.running == 0 and queue.acquire(None).wait >= 0


def test_the_setting_is_read_and_bounded():
    from mlcore.settings import SettingsError, settings_from_dict

    assert settings_from_dict({}).datacenter.trainings == 1
    assert settings_from_dict({"datacenter": {"trainings": 2}}).datacenter.trainings == 2
    with pytest.raises(SettingsError):
        settings_from_dict({"datacenter": {"trainings": 0}})


# ---- a real server, two edges training, a third client checking ----------------------------
EDGES = {"edge-a": {"id": "fq01", "shift": [{"name": "rotate", "degrees": 25}]},
         "edge-b": {"id": "fq02", "shift": [{"name": "invert"}]}}
CHECKS = 6


def check_frames(digits, splits):
    """Distinct unlabelled random samples (rows of the held-out split) for `normal` checks."""
    rows = splits.evaluation
    frames = []
    for i in range(CHECKS):
        take = rows[i * 40:(i + 1) * 40]
        frames.append(build_sample_frame(take.astype(np.int64), digits.images[take], None, f"chk{i}", "none"))
    return frames


def edge_round(settings, digits, splits, edge, previous, store, exchange):
    """Edge `edge`'s round (a coroutine) against `exchange`; it keeps checkpoints under `store`/edge."""
    spec = parse_rounds({"rounds": [EDGES[edge]]})[0]
    return EdgeRound(settings, digits, splits, spec, previous, exchange, store / edge, edge_id=edge).run()


def test_two_edges_train_in_turn_while_checks_are_answered(trained, settings, digits, splits, tmp_path, monkeypatch):
    state_dir, base = trained
    previous = {"sha256": base["sha256"], "state": base["state"], "checkpoint": base["checkpoint"]}
    frames = check_frames(digits, splits)

    # what each request gets when nothing else runs: the reference for "no mix-ups"
    alone = DataCenter(settings, digits, splits, StateStore(state_dir))
    expected_checks = [dict(alone.handle("normal", None, frame, {"state": base["state"], "round": f"chk{i}"}).info)
                       for i, frame in enumerate(frames)]
    expected = {edge: asyncio.run(edge_round(settings, digits, splits, edge, previous, tmp_path / "alone",
                                             in_process(alone.handle))) for edge in EDGES}
    assert all(outcome.metrics["retrained"] for outcome in expected.values())

    center = DataCenter(settings, digits, splits, StateStore(state_dir))
    real_finetune, lock = datacenter.adaptation.finetune, threading.Lock()
    active, peak, calls = [0], [0], []
    training, checks_done = threading.Event(), threading.Event()
    gate: dict[str, bool] = {}

    def finetune(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            calls.append(args[-1])
            first = len(calls) == 1
        try:
            if first:  # the first training holds its slot until checks were answered and another edge queued
                training.set()
                deadline = time.monotonic() + WAIT
                while not (checks_done.is_set() and center.training_queue.waiting >= 1) and time.monotonic() < deadline:
                    time.sleep(0.005)
                gate["checks_answered_during_training"] = checks_done.is_set()
                gate["other_edge_queued"] = center.training_queue.waiting >= 1
            return real_finetune(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(datacenter.adaptation, "finetune", finetune)

    async def run_edge(edge):
        async with AsyncClient(port, edge_id=edge) as client:
            return await edge_round(settings, digits, splits, edge, previous, tmp_path / "served",
                                    protocol_exchange(client))

    async def run_checks():
        while not training.is_set():
            await asyncio.sleep(0.005)
        replies = []
        async with AsyncClient(port, edge_id="checker") as client:
            for i, frame in enumerate(frames):
                reply = await client.send_data("normal", None, frame, round=f"chk{i}", extra={"state": base["state"]})
                replies.append((reply, center.training_queue.running))
        checks_done.set()
        return replies

    async def fleet():
        return await asyncio.gather(run_edge("edge-a"), run_edge("edge-b"), run_checks())

    server, lanes = make_server(center)
    with ServerThread(server) as running:
        port = running.port
        first, second, checks = asyncio.run(fleet())
    lanes.close()

    # checks were answered while the first training held its slot (it waited for them)
    assert gate == {"checks_answered_during_training": True, "other_edge_queued": True}
    assert all(busy == 1 for _, busy in checks)
    # trainings never overlapped beyond `datacenter.trainings` (= 1), and both edges trained
    assert settings.datacenter.trainings == 1 and peak[0] == 1 == center.training_queue.peak
    assert len(calls) >= 2
    # every reply is the one its request gets when served alone: nothing lost, nothing mixed up
    assert [dict(reply.info) for reply, _ in checks] == expected_checks
    for edge, outcome in zip(EDGES, (first, second)):
        want = expected[edge]
        assert {k: outcome.checkpoint[k] for k in ("sha256", "state", "labels_used", "decision")} == \
            {k: want.checkpoint[k] for k in ("sha256", "state", "labels_used", "decision")}
        assert outcome.metrics["iterations"] == want.metrics["iterations"]
    # the edge that queued behind the held training says how long it waited
    waits = sorted(outcome.metrics["queue_wait"] for outcome in (first, second))
    assert waits[0] >= 0 and waits[1] > 0
