"""Admission control: a bounded number of searches run, a bounded number wait, the rest get 503.

Why: waitress queues every accepted request for its threads without limit, so under overload the
queue (and the memory of the bodies it holds) grows and every client's latency grows with it.
Here at most ``inflight`` requests compute at once (more would only fight over the cores) and at
most ``queue`` wait for a slot, first come first served, each for at most ``wait_s``; anything
beyond is refused at once with 503 and a ``Retry-After`` estimated from the queue length and the
recent service time. Waiting happens before the request body is parsed, so a queued request holds
no decoded images.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

# What a client refused during a drain should wait: about the time a restart takes (the index
# loads and is verified again), not the present queue's.
SHUTDOWN_RETRY_AFTER_S = 5


class Overloaded(Exception):
    """Refuse with 503: ``retry_after`` seconds is when a retry is likely to be admitted;
    ``code`` is ``overloaded`` or ``shutting_down``."""

    def __init__(self, message: str, retry_after: int, code: str = "overloaded"):
        super().__init__(message)
        self.message, self.retry_after, self.code = message, retry_after, code


class Admission:
    """A counting gate with a FIFO wait queue; ``queue=None`` means unbounded (the naive baseline)."""

    def __init__(self, inflight: int, queue: int | None, wait_s: float = 30.0):
        if inflight < 1 or (queue is not None and queue < 0) or wait_s <= 0:
            raise ValueError("inflight must be >= 1, queue >= 0 (or None) and wait_s > 0")
        self.inflight, self.queue, self.wait_s = int(inflight), queue, float(wait_s)
        self._cond = threading.Condition()
        self._waiters: deque[object] = deque()  # one ticket per queued request, oldest first
        self.active = 0
        self.admitted = 0
        self.rejected = 0
        self.draining = False
        self._open = 0  # requests (any route) that arrived before a drain and are not answered yet
        self._service_s = 0.5  # moving average of a request's time in its slot (seeds Retry-After)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds until the present queue has likely drained (at least 1)."""
        ahead = self.waiting + self.active
        return max(1, math.ceil(ahead / self.inflight * self._service_s))

    def _refuse(self, why: str) -> Overloaded:
        self.rejected += 1
        return Overloaded(why, self.retry_after())

    def shutting_down(self) -> Overloaded:
        """The refusal for any request that arrives, or is still queued, during a drain."""
        return Overloaded("the server is shutting down", SHUTDOWN_RETRY_AFTER_S, "shutting_down")

    def _admit(self) -> None:
        """Take a slot, or wait in line for one; called with the condition held."""
        if self.draining:
            raise self.shutting_down()
        if self.active < self.inflight and not self._waiters:
            self.active += 1
            return
        if self.queue is not None and self.waiting >= self.queue:
            raise self._refuse(
                f"server busy: {self.active} requests running and {self.waiting} waiting (limit {self.queue})"
            )
        ticket = object()
        self._waiters.append(ticket)
        deadline = time.monotonic() + self.wait_s
        try:
            while not (self._waiters[0] is ticket and self.active < self.inflight):
                left = deadline - time.monotonic()
                if self.draining:
                    raise self.shutting_down()
                if left <= 0:
                    raise self._refuse(f"server busy: no slot within {self.wait_s:g} s")
                self._cond.wait(left)
            self.active += 1  # the slot and its count in one step: a drain never misses it
        finally:
            self._waiters.remove(ticket)
            self._cond.notify_all()  # the next in line may now be first

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a compute slot for the body of the ``with``; raise :class:`Overloaded` when full
        (or when a drain starts while the request waits)."""
        with self._cond:
            self._admit()
            self.admitted += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._cond:
                self.active -= 1
                self._service_s = 0.8 * self._service_s + 0.2 * dt
                self._cond.notify_all()

    def request_started(self) -> bool:
        """Any request, any route (the WSGI wrapper calls this). Returns whether a drain must wait
        for it: requests that arrive during the drain are refused at once and are not waited for."""
        with self._cond:
            if self.draining:
                return False
            self._open += 1
            return True

    def request_finished(self, counted: bool) -> None:
        if counted:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new work and wait up to ``timeout`` s until every request that arrived before the
        drain has been answered (its response handed to the server); queued ones are refused."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.draining = True
            self._cond.notify_all()  # queued requests wake up and are refused
            while self._open or self.active or self._waiters:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def to_dict(self) -> dict:
        with self._cond:
            return {
                "inflight_limit": self.inflight,
                "queue_limit": self.queue,
                "active": self.active,
                "waiting": self.waiting,
                "admitted": self.admitted,
                "rejected": self.rejected,
                "draining": self.draining,
            }
