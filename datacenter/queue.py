"""The training queue: at most `slots` fine-tunes at once, fair across edges, waits measured.

A fine-tune takes seconds of CPU; several edges' trainings at once would only share the
cores and all finish late, and starve the drift checks of the core they need. So a
`retraining` request holds a slot of this queue around its fine-tune, and nothing else
does (checks and prepares never enter it).

Fairness: waiting requests are served round-robin by edge id, first come first served
within one edge. An edge that just got a slot goes behind every other edge that is waiting,
so one edge sending many requests cannot hold the others back.

Plain threading, no torch: the queue is tested with threads and events alone.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass(eq=False)
class Ticket:
    """One request's place in the queue; `wait` is the seconds from arrival to its slot."""

    edge: str
    arrived: float
    granted: float | None = field(default=None)

    @property
    def wait(self) -> float:
        return 0.0 if self.granted is None else self.granted - self.arrived


class TrainingQueue:
    """At most `slots` holders at once; waiting requests served round-robin by edge."""

    def __init__(self, slots: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")
        self.slots = slots
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()  # edge -> its tickets; order = whose turn
        self._running = 0
        self.peak = 0  # the most holders seen at once (never above `slots`)

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(len(tickets) for tickets in self._waiting.values())

    @contextmanager
    def slot(self, edge: str | None) -> Iterator[Ticket]:
        """Wait for a slot (fairly), hold it for the `with` body, and give it back."""
        ticket = self.acquire(edge)
        try:
            yield ticket
        finally:
            self.release()

    def acquire(self, edge: str | None) -> Ticket:
        """Block until this request holds a slot; the ticket says how long it waited."""
        ticket = Ticket(str(edge or ""), self._clock())
        with self._cond:
            self._waiting.setdefault(ticket.edge, deque()).append(ticket)
            self._grant()
            try:
                while ticket.granted is None:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue (or the slot) cleanly
                if ticket.granted is None:
                    self._remove(ticket)
                else:
                    self._running -= 1
                    self._grant()
                raise
        return ticket

    def release(self) -> None:
        with self._cond:
            if self._running < 1:
                raise RuntimeError("release() without a slot held")
            self._running -= 1
            self._grant()

    def _grant(self) -> None:
        """Hand free slots to the edges whose turn it is (the lock is held)."""
        granted = False
        while self._running < self.slots and self._waiting:
            edge, tickets = next(iter(self._waiting.items()))
            ticket = tickets.popleft()
            if tickets:
                self._waiting.move_to_end(edge)  # its next request waits for every other edge's turn
            else:
                del self._waiting[edge]
            ticket.granted = self._clock()
            self._running += 1
            self.peak = max(self.peak, self._running)
            granted = True
        if granted:
            self._cond.notify_all()

    def _remove(self, ticket: Ticket) -> None:
        tickets = self._waiting.get(ticket.edge)
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            if not tickets:
                del self._waiting[ticket.edge]
