"""Deadlines on one loop timer (protocol/deadlines.py), and the timeouts that use them over real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from protocol import AsyncClient, ConnectionLost
from protocol.deadlines import DeadlineQueue

from conftest import request_bytes
from test_defects import error_code, read_until_closed, split_frames, wait_for


def run(coro):
    return asyncio.run(coro)


def with_queue(test):
    """The test coroutine `test(loop, queue, ran)` as a plain test: run on a fresh loop with a
    fresh DeadlineQueue and an empty list for the calls to record what ran."""
    def plain():
        async def main():
            loop = asyncio.get_running_loop()
            await test(loop, DeadlineQueue(loop), [])
        run(main())
    plain.__name__, plain.__doc__ = test.__name__, test.__doc__  # (not functools.wraps: pytest would ask for fixtures)
    return plain


# --------------------------------------------------------------------------- the queue
@with_queue
async def test_queued_calls_run_in_order_at_their_deadlines(loop, queue, ran):
    start = loop.time()
    for i, delay in enumerate((0.05, 0.05, 0.1)):
        queue.call_at(start + delay, lambda i=i: ran.append((i, loop.time() - start)))
    await asyncio.sleep(0.03)
    assert ran == []
    await asyncio.sleep(0.12)
    assert [i for i, _ in ran] == [0, 1, 2]
    assert all(at >= delay for (_, at), delay in zip(ran, (0.05, 0.05, 0.1)))
    assert len(queue) == 0 and queue._timer is None  # nothing left: no loop timer either


@with_queue
async def test_a_cancelled_call_never_runs_and_the_rest_still_do(loop, queue, ran):
    now = loop.time()
    first = queue.call_at(now + 0.02, lambda: ran.append("first"))
    queue.call_at(now + 0.04, lambda: ran.append("second"))
    first.cancel()
    first.cancel()  # twice is harmless, as with a TimerHandle
    await asyncio.sleep(0.08)
    assert ran == ["second"]


@with_queue
async def test_a_call_cancelled_by_one_due_in_the_same_batch_does_not_run(loop, queue, ran):
    now = loop.time()
    calls = {}
    calls["a"] = queue.call_at(now + 0.02, lambda: (ran.append("a"), calls["b"].cancel()))
    calls["b"] = queue.call_at(now + 0.02, lambda: ran.append("b"))
    await asyncio.sleep(0.06)
    assert ran == ["a"]


@with_queue
async def test_a_deadline_out_of_order_gets_a_loop_timer_of_its_own(loop, queue, ran):
    now = loop.time()
    queue.call_at(now + 0.2, lambda: ran.append("late"))
    early = queue.call_at(now + 0.02, lambda: ran.append("early"))
    assert isinstance(early, asyncio.TimerHandle) and len(queue) == 1
    await asyncio.sleep(0.06)
    assert ran == ["early"]
    await asyncio.sleep(0.2)
    assert ran == ["early", "late"]


def test_an_exception_in_a_callback_is_reported_and_later_calls_still_run():
    async def main():
        loop = asyncio.get_running_loop()
        reported, ran = [], []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        queue = DeadlineQueue(loop)
        now = loop.time()
        queue.call_at(now + 0.02, lambda: 1 / 0)
        queue.call_at(now + 0.02, lambda: ran.append("same batch"))
        queue.call_at(now + 0.05, lambda: ran.append("next batch"))
        await asyncio.sleep(0.1)
        assert [type(e) for e in reported] == [ZeroDivisionError]
        assert ran == ["same batch", "next batch"]

    run(main())


@with_queue
async def test_close_drops_every_call(loop, queue, ran):
    queue.call_at(loop.time() + 0.02, lambda: ran.append(1))
    queue.close()
    await asyncio.sleep(0.05)
    assert ran == [] and queue._timer is None


# --------------------------------------------------------------------------- Timeout (asyncio.timeout's contract)
def test_timeout_expires_with_timeout_error():
    async def main():
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)
        started = loop.time()
        with pytest.raises(TimeoutError):
            with queue.timeout_at(started + 0.05):
                await asyncio.sleep(10)
        assert 0.04 <= loop.time() - started < 1
        assert asyncio.current_task().cancelling() == 0  # its cancellation was taken back

    run(main())


def test_timeout_not_reached_changes_nothing():
    async def main():
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)
        with queue.timeout_at(loop.time() + 10):
            await asyncio.sleep(0.01)
        assert len(queue) == 0  # its deadline was dropped on the way out

    run(main())


def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)

        async def waits():
            with queue.timeout_at(loop.time() + 10):
                await asyncio.sleep(10)

        task = asyncio.create_task(waits())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


# --------------------------------------------------------------------------- over real sockets
def test_client_connect_timeout_still_bounds_a_hanging_connect(monkeypatch):
    async def hang(*args, **kwargs):
        await asyncio.sleep(30)

    async def main():
        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", hang)
        client = AsyncClient(9, connect_timeout=0.2, retry_for=0)
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await client.send_data("handshake")
        return time.monotonic() - started

    assert 0.15 <= run(main()) < 5


def test_client_reply_timeout_still_fires(start_server):
    def slow(message_type, query_dataframe, random_dataframe):
        time.sleep(0.6)
        return False, "late"

    running = start_server(callback=slow)

    async def main():
        client = running.client(timeout=0.2)
        waited = []
        for _ in range(2):  # the second request's reply deadline is queued behind the first's
            started = time.monotonic()
            with pytest.raises(ConnectionLost, match="no response within"):
                await client.send_data("handshake")
            waited.append(time.monotonic() - started)
        return waited

    assert all(0.15 <= waited < 0.55 for waited in run(main()))


def test_silent_connections_are_closed_at_the_auth_deadline_one_after_another(start_server):
    running = start_server(auth_timeout=0.3)
    socks = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            socks.append((sock, time.monotonic()))
            time.sleep(0.1)
        for sock, opened in socks:
            data, closed = read_until_closed(sock, 3)
            assert closed and [error_code(f) for f in split_frames(data)] == ["timeout"]
            assert 0.25 <= time.monotonic() - opened < 2.5
    finally:
        for sock, _ in socks:
            sock.close()
    assert wait_for(lambda: not running.server._connections, 2)
    running.assert_serving()


def test_an_answered_connection_is_closed_at_its_idle_deadline(start_server):
    """Its first deadline (the auth deadline, queued) passes once it is authenticated; the idle
    deadline after its answer, armed then on a timer of its own, still closes it."""
    running = start_server(auth_timeout=0.2, idle_timeout=0.6)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(request_bytes("normal", request_id="i1"))
        answered = time.monotonic()
        data, closed = read_until_closed(sock, 3)
        assert closed, "not closed when idle"
        assert 0.5 <= time.monotonic() - answered < 2.5
        assert [f["request_id"] for f in split_frames(data)] == ["i1"]
    assert wait_for(lambda: not running.server._connections, 2)
