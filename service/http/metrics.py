"""``GET /metrics``: the service's counters in the Prometheus text format (prometheus-client).

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (not the library's global one):
several apps live in one process in the tests, and a global registry would refuse the second app's
metrics as duplicates and mix the apps' numbers.

What is exported (README, "Metrics", has the scrape config):

* ``facemem_http_requests_total{route, method, status}`` and
  ``facemem_http_request_duration_seconds{route, method}``: every request the app answers. ``route``
  is the URL rule (``/images/<path:file>``), ``unmatched`` for unknown paths, so a client cannot
  create label values; ``method`` is one of the HTTP methods or ``other``.
* ``facemem_images_processed_total{status}`` (ok / no_face / unreadable) and
  ``facemem_neighbors_stage_seconds{stage}`` (detect, embed, search, stats) of ``POST /neighbors``.
* ``facemem_admission_*``: searches in flight, waiting, their limits, admitted and refused
  (:mod:`service.http.admission`), read at scrape time.
* ``facemem_index_rows{status}``, ``facemem_index_faces``, ``facemem_internal_errors_total``,
  ``facemem_info{version}`` and the standard ``process_*`` metrics.

Requests that waitress refuses before the app sees them (malformed, over its body cap, timed out
while arriving) are not counted here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGES = {"detect_s": "detect", "embed_s": "embed", "search_s": "search", "stats_s": "stats"}


class _StateCollector:
    """Gauges and counters read from the service state at scrape time (nothing to keep in sync)."""

    def __init__(self, state: Any, version: str):
        self.state, self.version = state, version

    def collect(self) -> Iterator[Metric]:
        st = self.state
        adm = st.admission.to_dict()
        yield _gauge("facemem_admission_inflight", "POST /neighbors requests computing now", adm["active"])
        yield _gauge("facemem_admission_inflight_limit", "most requests computing at once", adm["inflight_limit"])
        yield _gauge("facemem_admission_queue_depth", "requests waiting for a compute slot", adm["waiting"])
        if adm["queue_limit"] is not None:  # absent when the queue is unbounded (--max-queue none)
            yield _gauge("facemem_admission_queue_limit", "most requests waiting before 503", adm["queue_limit"])
        yield _gauge("facemem_admission_draining", "1 while a SIGTERM drain runs", int(adm["draining"]))
        c = CounterMetricFamily("facemem_admission_admitted", "requests that got a compute slot")
        c.add_metric([], adm["admitted"])
        yield c
        c = CounterMetricFamily(
            "facemem_admission_refusals", "requests refused with 503 overloaded (queue full or wait too long)"
        )
        c.add_metric([], adm["rejected"])
        yield c
        c = CounterMetricFamily("facemem_internal_errors", "500 responses (bad input never causes one)")
        c.add_metric([], st.internal_errors)
        yield c
        rows = GaugeMetricFamily("facemem_index_rows", "rows of the loaded index by status", labels=["status"])
        for status, n in sorted((st.index.manifest.get("counts") or {}).items()):
            if isinstance(n, int):
                rows.add_metric([status], n)
        yield rows
        yield _gauge("facemem_index_faces", "faces searchable in the loaded index", st.index.n_faces)
        info = GaugeMetricFamily("facemem_info", "facemem version", labels=["version"])
        info.add_metric([self.version], 1)
        yield info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """One app's registry and the instruments the request hooks update."""

    def __init__(self, state: Any, version: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "facemem_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "facemem_http_request_duration_seconds",
            "time from the app receiving a request to its response",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "facemem_images_processed", "images of POST /neighbors requests by status", ["status"], registry=r
        )
        self.stages = Histogram(
            "facemem_neighbors_stage_seconds",
            "POST /neighbors time per stage (detect, embed, search, stats)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(state, version))
        ProcessCollector(registry=r)

    def observe_neighbors(self, body: dict) -> None:
        """Count a finished ``POST /neighbors`` body's images by status and its stage times."""
        for status, n in body.get("counts", {}).items():
            if n:
                self.images.labels(status).inc(n)
        for key, stage in STAGES.items():
            t = body.get("timing", {}).get(key)
            if isinstance(t, (int, float)):
                self.stages.labels(stage).observe(t)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _labels() -> tuple[str, str]:
    rule = request.url_rule
    method = request.method if request.method in METHODS else "other"
    return (rule.rule if rule is not None else "unmatched"), method


def install(app: Flask, state: Any, no_params) -> Metrics:
    """Create the app's metrics, count every request, register ``GET /metrics``.

    Call before the other ``before_request`` hooks are registered: one that answers early (401)
    skips the hooks after it, and this one must have started the clock.
    """
    from .. import __version__

    m = Metrics(state, __version__)

    @app.before_request
    def _start_clock() -> None:
        g.metrics_t0 = time.perf_counter()

    @app.after_request
    def _count(resp: Response) -> Response:
        route, method = _labels()
        m.requests.labels(route, method, str(resp.status_code)).inc()
        t0 = g.get("metrics_t0")
        if t0 is not None:
            m.latency.labels(route, method).observe(time.perf_counter() - t0)
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        no_params()
        return Response(m.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    return m
