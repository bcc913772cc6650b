#!/usr/bin/env python
"""Load test for ``POST /neighbors``: N concurrent clients post real face images to a live server.

Why: admission control is only trustworthy if, under overload, the server refuses cleanly (503 +
Retry-After), never errors, never answers wrongly and keeps its memory bounded. So each payload of
a fixed pool is first sent once, sequentially, to record its reference answer; during the load
every 200 answer is compared with it (files exactly, distances to 1e-4 relative), and the RSS of
the server (and of its worker processes) is polled every 50 ms.

Examples:
    .venv/bin/python scripts/loadtest.py --index build/idx-load --clients 8 --requests 10
    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:8000 --server-pid 1234
    .venv/bin/python scripts/loadtest.py --index build/idx-load --server-arg="--max-inflight 1 --max-queue 2"
    .venv/bin/python scripts/loadtest.py --index build/idx-load --compare-queue --json build/load.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from service.loadgen import RETRY_AFTER_CAP_S, default_data, make_payloads, run_load, serve


def format_table(rows: list[dict]) -> str:
    """One line per run (counts, throughput, latency of ok requests, peak RSS), then errors and 503s."""
    head = (
        "run",
        "sent",
        "ok",
        "503",
        "err",
        "wrong",
        "wall s",
        "ok/s",
        "img/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "RSS MiB",
        "+kids MiB",
    )
    f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    cells, notes = [], []
    for r in rows:
        if "error" in r:
            cells.append([r["label"]] + ["-"] * (len(head) - 1))
            notes.append(f"{r['label']}: FAILED: {r['error']}")
            continue
        lat, rss = r["latency_ms"], r["peak_rss_mib"] or {}
        cells.append(
            [
                r["label"],
                *map(str, (r["sent"], r["ok"], r["rejected"], r["error_count"], r["wrong"])),
                f(r["wall_s"], 1),
                f(r["ok_per_s"], 1),
                f(r["images_per_s"], 1),
                *(f(lat[q]) for q in ("p50", "p95", "p99", "max")),
                f(rss.get("server")),
                f(rss.get("server+children")),
            ]
        )
        if r["errors"] or r["retry_after"] or r["messages"]:
            notes.append(f"{r['label']}: errors {r['errors']}; 503 Retry-After values {r['retry_after']}")
            notes += [f"    {m}" for m in r["messages"]]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(cs: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cs, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, cells), *notes])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--index", type=Path, help="start `python -m service --index INDEX --port 0` and stop it (SIGTERM) at the end"
    )
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for peak RSS")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="with --index: passed to "
        "the server, split like a shell; repeatable (e.g. --server-arg='--max-inflight 2')",
    )
    p.add_argument(
        "--compare-queue",
        action="store_true",
        help="with --index: two servers in turn, default "
        "admission control and --max-queue none (the unbounded baseline); one row each",
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=25, help="requests per client (default 25)")
    p.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--pool", type=int, default=32, help="distinct payloads (default 32)")
    p.add_argument(
        "--data", type=Path, default=default_data(), help="data root (default $FACEMEM_DATA or ../shared/data)"
    )
    p.add_argument(
        "--mix",
        type=float,
        default=0.25,
        help="fraction of PGGAN payloads, sent with detector=hog; "
        "the rest are celeba10k crops, sent with detector=aligned (default 0.25)",
    )
    p.add_argument("--seed", type=int, default=0, help="payload choice and request order (default 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds (default 120)")
    p.add_argument(
        "--honor-retry-after",
        action="store_true",
        help=f"after a 503, sleep Retry-After (at most {RETRY_AFTER_CAP_S:g} s) before the next request",
    )
    p.add_argument("--json", type=Path, help="write all results (a list of rows) here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    a = p.parse_args(argv)
    if (a.server_arg or a.compare_queue) and not a.index:
        p.error("--server-arg and --compare-queue need --index")
    if min(a.clients, a.requests, a.batch, a.pool) < 1 or not 0 <= a.mix <= 1:
        p.error("--clients, --requests, --batch and --pool must be >= 1, and --mix in [0, 1]")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(name)s: %(message)s")
    payloads = make_payloads(a.data, a.pool, a.batch, a.mix, a.seed)
    kw = dict(
        batch=a.batch,
        mix=a.mix,
        seed=a.seed,
        timeout=a.timeout,
        honor_retry_after=a.honor_retry_after,
        payloads=payloads,
    )
    rows = []
    if a.url:
        rows.append({"label": a.url, **run_load(a.url, a.clients, a.requests, server_pid=a.server_pid, **kw)})
    else:
        extra = [x for s in a.server_arg for x in shlex.split(s)]
        runs = (
            [("admission control", extra), ("unbounded queue", [*extra, "--max-queue", "none"])]
            if a.compare_queue
            else [("server", extra)]
        )
        for label, args in runs:
            label += f" ({shlex.join(args)})" if args else " (defaults)"
            try:
                with serve(a.index, *args) as (url, proc):
                    row = run_load(url, a.clients, a.requests, server_pid=proc.pid, **kw)
                    rows.append({"label": label, "server_args": args, **row})
            except RuntimeError as e:
                rows.append({"label": label, "server_args": args, "error": str(e)})
    print(
        f"{a.clients} clients x {a.requests} requests, batch {a.batch}, {len(payloads)} payloads "
        f"({a.mix:.0%} PGGAN/hog, {1 - a.mix:.0%} celeba/aligned); latency of ok requests; RSS = polled peak"
    )
    print(format_table(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in r or r["wrong"] or r["error_count"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
