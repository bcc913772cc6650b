"""GET /metrics in-process: Prometheus text that counts what the app did, per app, behind the token.

Two apps in one process (as the test suite has) must not share or refuse each other's metrics. The
live-server side (admission under real overload) is in tests/test_web.py.
"""

from __future__ import annotations

import io

import pytest
from conftest import CELEBA10K
from prometheus_client.parser import text_string_to_metric_families

from service import create_app

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMG = CELEBA10K / "img_align_celeba"


def scrape(client, headers=AUTH) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.mimetype == "text/plain", (r.status_code, r.data[:200])
    assert "version=0.0.4" in r.headers["Content-Type"]
    out = {}
    for fam in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def apps(small_index_dir):
    a = create_app(small_index_dir, {"detect_processes": 0, "device": "cpu", "token": TOKEN})
    b = create_app(small_index_dir, {"detect_processes": 0, "device": "cpu", "max_queue": None})
    return a.test_client(), b.test_client()


def test_metrics_count_requests_images_and_latency_per_app(apps, small_index):
    a, b = apps
    before = scrape(a)
    good = (IMG / "000001.jpg").read_bytes()
    files = [(io.BytesIO(good), "a.jpg"), (io.BytesIO(b"not an image"), "b.jpg"), (io.BytesIO(good), "c.jpg")]
    r = a.post("/neighbors?detector=aligned&k=2", data={"images": files}, headers=AUTH)
    assert r.status_code == 200
    counts = r.get_json()["counts"]
    assert counts == {"ok": 2, "no_face": 0, "unreadable": 1}
    assert a.post("/neighbors?k=0", data={"images": [(io.BytesIO(good), "x.jpg")]}, headers=AUTH).status_code == 400
    assert a.get("/no/such/route", headers=AUTH).status_code == 404
    assert a.get("/v1/index").status_code == 401  # no token
    assert a.get("/images/000002.jpg?size=32", headers=AUTH).status_code == 200
    m = scrape(a)

    def delta(name, **labels):
        return value(m, name, **labels) - value(before, name, **labels)

    req = "facemem_http_requests_total"
    assert delta(req, route="/neighbors", method="POST", status="200") == 1
    assert delta(req, route="/neighbors", method="POST", status="400") == 1
    assert delta(req, route="unmatched", method="GET", status="404") == 1  # no label per unknown path
    assert delta(req, route="/v1/index", method="GET", status="401") == 1
    assert delta(req, route="/images/<path:file>", method="GET", status="200") == 1
    assert not any(n == req and ("route", "/no/such/route") in lbl for n, lbl in m)
    for status, n in counts.items():
        assert delta("facemem_images_processed_total", status=status) == n
    lat = "facemem_http_request_duration_seconds"
    assert delta(f"{lat}_count", route="/neighbors", method="POST") == 2
    assert 0 < delta(f"{lat}_sum", route="/neighbors", method="POST") < 120
    inf = delta(f"{lat}_bucket", route="/neighbors", method="POST", le="+Inf")
    assert inf == 2 and delta(f"{lat}_bucket", route="/neighbors", method="POST", le="0.005") <= inf
    assert delta("facemem_neighbors_stage_seconds_count", stage="embed") == 1
    # state read at scrape time
    assert value(m, "facemem_index_faces") == small_index.n_faces
    for status, n in small_index.manifest["counts"].items():
        if isinstance(n, int):
            assert value(m, "facemem_index_rows", status=status) == n
    st = a.application.extensions["facemem"]
    assert value(m, "facemem_admission_inflight_limit") == st.admission.inflight
    assert value(m, "facemem_admission_queue_limit") == 16
    assert value(m, "facemem_admission_inflight") == 0 and value(m, "facemem_admission_queue_depth") == 0
    assert delta("facemem_admission_admitted_total") == 1  # the bad k was refused before taking a slot
    assert value(m, "facemem_admission_refusals_total") == 0
    assert value(m, "facemem_internal_errors_total") == 0
    assert ("process_resident_memory_bytes", ()) in m
    # the other app counted none of this, and has no queue limit (unbounded)
    other = scrape(b, headers={})
    assert value(other, req, route="/neighbors", method="POST", status="200") == 0
    assert ("facemem_admission_queue_limit", ()) not in other


def test_metrics_follow_the_token_rule_and_take_no_parameters(apps):
    a, b = apps
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = a.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert b.get("/metrics").status_code == 200  # no token configured: open, like every route
    r = a.get("/metrics?x=1", headers=AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "unknown_parameter"
