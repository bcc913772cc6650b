"""Admission control: a bounded number of searches run, a bounded number wait, the rest get 503.

Why: waitress queues every accepted request for its threads without limit, so under overload the
queue (and the memory of the bodies it holds) grows and every client's latency grows with it.
Here at most ``inflight`` requests compute at once (more would only fight over the cores) and at
most ``queue`` wait for a slot, each for at most ``wait_s``; anything beyond is refused at once
with 503 and a ``Retry-After`` estimated from the queue length and the recent service time.
Waiting happens before the request body is parsed, so a queued request holds no decoded images.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class Overloaded(Exception):
    """Refuse with 503: ``retry_after`` seconds is when a retry is likely to be admitted;
    ``code`` is ``overloaded`` or ``shutting_down``."""

    def __init__(self, message: str, retry_after: int, code: str = "overloaded"):
        super().__init__(message)
        self.message, self.retry_after, self.code = message, retry_after, code


class Admission:
    """A counting gate with a bounded wait queue; ``queue=None`` means unbounded (the naive baseline)."""

    def __init__(self, inflight: int, queue: int | None, wait_s: float = 30.0):
        if inflight < 1 or (queue is not None and queue < 0) or wait_s <= 0:
            raise ValueError("inflight must be >= 1, queue >= 0 (or None) and wait_s > 0")
        self.inflight, self.queue, self.wait_s = int(inflight), queue, float(wait_s)
        self._slots = threading.BoundedSemaphore(self.inflight)
        self._lock = threading.Lock()
        self.active = 0
        self.waiting = 0
        self.admitted = 0
        self.rejected = 0
        self.draining = False
        self.open_requests = 0  # all routes, until the response body is closed
        self._service_s = 0.5  # moving average of a request's time in its slot (seeds Retry-After)

    def retry_after(self) -> int:
        """Seconds until the present queue has likely drained (at least 1)."""
        ahead = self.waiting + self.active
        return max(1, math.ceil(ahead / self.inflight * self._service_s))

    def _refuse(self, why: str, code: str = "overloaded") -> Overloaded:
        self.rejected += 1
        return Overloaded(why, self.retry_after(), code)

    def shutting_down(self) -> Overloaded:
        """The refusal for any request that arrives, or is still queued, during a drain."""
        return Overloaded("the server is shutting down", self.retry_after(), "shutting_down")

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a compute slot for the body of the ``with``; raise :class:`Overloaded` when full.

        A queued request re-checks every 0.1 s, so a drain turns it into a 503 at once instead of
        letting it wait past the drain's deadline.
        """
        with self._lock:
            if self.draining:
                raise self.shutting_down()
            got = self._slots.acquire(blocking=False)
            if got:
                self.active += 1  # counted in the same step as the slot: a drain never misses it
            else:
                if self.queue is not None and self.waiting >= self.queue:
                    raise self._refuse(f"server busy: {self.active} requests running and {self.waiting} "
                                       f"waiting (limit {self.queue})")
                self.waiting += 1
        if not got:
            deadline = time.monotonic() + self.wait_s
            try:
                while not got and time.monotonic() < deadline and not self.draining:
                    got = self._slots.acquire(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            finally:
                with self._lock:
                    self.waiting -= 1
                    if got:
                        self.active += 1
            if not got:
                if self.draining:
                    raise self.shutting_down()
                with self._lock:
                    raise self._refuse(f"server busy: no slot within {self.wait_s:g} s")
        with self._lock:
            self.admitted += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self.active -= 1
                self._service_s = 0.8 * self._service_s + 0.2 * dt
            self._slots.release()

    def request_started(self) -> None:
        """Any request, any route (the WSGI wrapper calls this): what a drain waits for."""
        with self._lock:
            self.open_requests += 1

    def request_finished(self) -> None:
        with self._lock:
            self.open_requests -= 1

    def drain(self, timeout: float) -> bool:
        """Refuse new work and wait up to ``timeout`` s until no request is open (its response
        handed to the server) and none is queued."""
        with self._lock:
            self.draining = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.open_requests == 0 and self.active == 0 and self.waiting == 0:
                    return True
            time.sleep(0.02)
        return False

    def to_dict(self) -> dict:
        with self._lock:
            return {"inflight_limit": self.inflight, "queue_limit": self.queue, "active": self.active,
                    "waiting": self.waiting, "admitted": self.admitted, "rejected": self.rejected,
                    "draining": self.draining}
