"""Load on a live server (service/loadgen.py, the library of scripts/loadtest.py): concurrent clients
get right answers, overload turns into quick 503s with Retry-After instead of a growing queue, and a
restart under load costs clients connection errors or 503s, never a wrong answer. Real images, real index, real HTTP.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from indexer.watchdog import alive
from service.loadgen import descendants, make_payloads, reference_answers, run_load, serve


@pytest.fixture(scope="module")
def payloads():
    return make_payloads(n=16, mix=0.25, seed=1)


def test_eight_clients_twenty_five_requests_no_errors(small_index_dir, payloads):
    with serve(small_index_dir, "--log-level", "WARNING") as (url, proc):
        refs = reference_answers(url, payloads)
        out = run_load(url, clients=8, requests_per_client=25, payloads=payloads, references=refs, server_pid=proc.pid)
        health = requests.get(url + "/healthz", timeout=10).json()
    print(
        f"\n8 clients x 25: {out['ok']} ok in {out['wall_s']:.1f} s ({out['ok_per_s']:.1f} req/s), latency "
        f"{ {k: round(v) for k, v in out['latency_ms'].items()} } ms, peak RSS {out['peak_rss_mib']}"
    )
    assert out["sent"] == 200 and out["ok"] == 200
    assert out["error_count"] == 0 and out["wrong"] == 0 and out["rejected"] == 0, out["messages"]
    assert health["internal_errors"] == 0 and health["admission"]["admitted"] >= 200 + len(payloads)


def test_overload_is_refused_with_503_and_retry_after(small_index_dir, payloads):
    """One compute slot and a queue of two against 16 clients: most requests are refused at once."""
    with serve(small_index_dir, "--max-inflight", "1", "--max-queue", "2", "--log-level", "WARNING") as (url, proc):
        refs = reference_answers(url, payloads)
        out = run_load(url, clients=16, requests_per_client=8, payloads=payloads, references=refs, server_pid=proc.pid)
        adm = requests.get(url + "/healthz", timeout=10).json()["admission"]
    print(
        f"\noverload 16 clients, inflight 1, queue 2: {out['ok']} ok, {out['rejected']} refused (Retry-After "
        f"{out['retry_after']}), p99 {out['latency_ms']['p99']:.0f} ms, peak RSS {out['peak_rss_mib']}"
    )
    assert out["error_count"] == 0 and out["wrong"] == 0, out["messages"]
    assert out["rejected"] > 0 and out["ok"] > 0 and out["ok"] + out["rejected"] == out["sent"]
    assert "missing" not in out["retry_after"] and all(int(v) >= 1 for v in out["retry_after"])
    assert adm["rejected"] == out["rejected"] and adm["waiting"] == 0 and adm["active"] == 0
    # Admitted requests waited behind at most 1 running + 2 queued ones: no request sat in a long queue.
    assert out["latency_ms"]["max"] < 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restart_under_load_never_gives_a_wrong_answer(small_index_dir, payloads):
    """Clients keep posting while the server is stopped (SIGTERM: drain; then SIGKILL) and started
    again on the same port; every 200 must equal the answer recorded before the load."""
    port = _free_port()
    fast = [p for p in payloads if p.detector == "aligned"]  # quick requests: more of them cross restarts
    args = ("--port", str(port), "--log-level", "WARNING")
    with serve(small_index_dir, *args) as (url, proc):
        refs = reference_answers(url, fast)
        result: dict = {}
        stop = threading.Event()
        load = threading.Thread(
            target=lambda: result.update(
                run_load(
                    url, clients=6, requests_per_client=10**6, payloads=fast, references=refs, timeout=60, stop=stop
                )
            )
        )
        load.start()
        time.sleep(3)
        t_term = time.monotonic()
        proc.terminate()  # graceful: drain (503 + Retry-After), finish what runs, exit
        proc.wait(60)
        assert proc.returncode == 0
    stops = ["SIGTERM"]
    with serve(small_index_dir, *args) as (url2, proc2):
        assert url2 == url
        time.sleep(3)
        workers = descendants(proc2.pid)  # its face-detection processes
        t_kill = time.monotonic()
        proc2.kill()  # abrupt: connections drop mid-request
        proc2.wait(60)
        stops.append("SIGKILL")
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(w) for w in workers):
            time.sleep(0.1)
        assert workers and not any(alive(w) for w in workers), "detection workers outlived a killed server"
    with serve(small_index_dir, *args) as (url3, proc3):
        time.sleep(3)  # the clients find the third server
        stop.set()
        load.join(120)
        served_after = requests.get(url3 + "/healthz", timeout=10).json()["admission"]["admitted"]
    out = result
    cut = [(kind, round(t - t_term, 2), round(t - t_kill, 2)) for t, kind in out["error_at"] if kind != "connection"]
    print(
        f"\nrestart under load ({', '.join(stops)}): {out['sent']} sent, {out['ok']} ok, {out['rejected']} 503, "
        f"errors {out['errors']}, wrong {out['wrong']}; the last server answered {served_after}"
    )
    print("errors other than connection errors (kind, s after SIGTERM, s after SIGKILL):", cut)
    assert out["wrong"] == 0, out["messages"]
    # Refused or reset connections only. The SIGKILL may also cut a response off mid-body, which
    # requests reports as ChunkedEncodingError (a short body, never parsed): accepted only right at
    # the kill. One at any other time (e.g. during the SIGTERM drain) fails the test.
    assert all(kind == "ChunkedEncodingError" and 0 <= after_kill < 2 for kind, _, after_kill in cut), (
        cut,
        out["messages"],
    )
    assert out["errors"].get("connection", 0) > 0  # the restarts really happened under load
    assert served_after > 0 and out["ok"] > 0


def test_sigterm_finishes_running_requests_and_refuses_new_ones(small_index_dir):
    """A slow request (8 PGGAN faces, HOG) in flight when SIGTERM arrives still gets its full,
    correct answer; a request sent during the drain gets 503 + Retry-After; the server exits 0."""
    slow = make_payloads(n=1, batch=8, mix=1.0, seed=3)
    with serve(small_index_dir, "--log-level", "WARNING", "--detect-processes", "1") as (url, proc):
        ref = reference_answers(url, slow)
        got: dict = {}
        t = threading.Thread(
            target=lambda: got.update(run_load(url, clients=1, requests_per_client=1, payloads=slow, references=ref))
        )
        t.start()
        time.sleep(0.3)  # the request is being processed
        proc.terminate()
        time.sleep(0.1)
        r = requests.get(url + "/v1/index", timeout=10)
        t.join(120)
        proc.wait(60)
    assert r.status_code == 503 and r.json()["error"] == "shutting_down" and int(r.headers["Retry-After"]) >= 1
    assert got["ok"] == 1 and got["wrong"] == 0 and got["error_count"] == 0, got["messages"]
    assert proc.returncode == 0
