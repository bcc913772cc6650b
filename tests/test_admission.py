"""Admission control on its own (service/admission.py): the queue is served first come first served,
a newcomer never jumps it, a drain refuses the queue and waits only for requests older than itself.
Real threads against the real gate; the HTTP side is covered in tests/test_load.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from service.http.admission import SHUTDOWN_RETRY_AFTER_S, Admission, Overloaded


def _wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _queued_request(adm: Admission, name: str, order: list[str], results: dict, hold: threading.Event | None = None):
    def run():
        try:
            with adm.slot():
                order.append(name)
                if hold is not None:
                    hold.wait(10)
            results[name] = "ok"
        except Overloaded as e:
            results[name] = e.code

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_waiters_are_admitted_in_arrival_order_and_newcomers_queue_behind_them():
    adm = Admission(inflight=1, queue=8, wait_s=30)
    order: list[str] = []
    results: dict = {}
    release = threading.Event()
    first = _queued_request(adm, "running", order, results, hold=release)
    _wait_for(lambda: adm.active == 1)
    threads = []
    for i in range(5):  # five waiters, each queued before the next arrives
        threads.append(_queued_request(adm, f"w{i}", order, results))
        _wait_for(lambda i=i: adm.waiting == i + 1)
    release.set()
    # A newcomer arriving while the queue is non-empty must not take the slot freed for w0.
    threads.append(_queued_request(adm, "late", order, results))
    for t in [first, *threads]:
        t.join(10)
    assert order == ["running", "w0", "w1", "w2", "w3", "w4", "late"]
    assert set(results.values()) == {"ok"}
    assert adm.to_dict() == {
        "inflight_limit": 1,
        "queue_limit": 8,
        "active": 0,
        "waiting": 0,
        "admitted": 7,
        "rejected": 0,
        "draining": False,
    }


def test_full_queue_and_expired_wait_are_refused_with_retry_after():
    adm = Admission(inflight=1, queue=1, wait_s=0.3)
    order, results, release = [], {}, threading.Event()
    running = _queued_request(adm, "running", order, results, hold=release)
    _wait_for(lambda: adm.active == 1)
    waiter = _queued_request(adm, "waiter", order, results)
    _wait_for(lambda: adm.waiting == 1)
    with pytest.raises(Overloaded) as full:  # the queue of one is taken
        with adm.slot():
            pass
    assert full.value.code == "overloaded" and full.value.retry_after >= 1
    waiter.join(5)  # its 0.3 s wait runs out while the slot is held
    assert results["waiter"] == "overloaded"
    release.set()
    running.join(5)
    assert adm.rejected == 2 and adm.waiting == 0 and adm.active == 0


def test_drain_refuses_the_queue_and_waits_only_for_older_requests():
    adm = Admission(inflight=1, queue=4, wait_s=30)
    order, results, release = [], {}, threading.Event()
    assert adm.request_started() is True  # a request in flight before the drain (any route)
    running = _queued_request(adm, "running", order, results, hold=release)
    _wait_for(lambda: adm.active == 1)
    queued = _queued_request(adm, "queued", order, results)
    _wait_for(lambda: adm.waiting == 1)
    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(adm.drain(10)), daemon=True)
    drainer.start()
    queued.join(5)
    assert results["queued"] == "shutting_down"  # refused at once, not left to wait out the drain
    with pytest.raises(Overloaded) as late:
        with adm.slot():
            pass
    assert late.value.code == "shutting_down" and late.value.retry_after == SHUTDOWN_RETRY_AFTER_S
    assert adm.request_started() is False  # arrived during the drain: not waited for
    release.set()
    running.join(5)
    time.sleep(0.1)
    assert not drained, "the drain ended while an older request was still open"
    adm.request_finished(True)
    drainer.join(5)
    assert drained == [True] and results["running"] == "ok"


def test_drain_times_out_when_a_request_does_not_finish():
    adm = Admission(inflight=2, queue=0)
    adm.request_started()
    t0 = time.monotonic()
    assert adm.drain(0.3) is False
    assert 0.25 < time.monotonic() - t0 < 5
