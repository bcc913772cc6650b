"""A training-loop hook: audit the generator every N steps, one JSON line per audit, one trend.

Why a log and not one series call: during training the checkpoints do not exist yet. Every call of
:func:`track` audits the sampler as it is now (in this process against ``index=``, or against a
running service with ``server=``: the same audit, :func:`service.audit.audit`) and appends one line
to a JSONL file: the same per-checkpoint record as a series' ``data["trend"]["checkpoints"]``
(:func:`service.audit.trend.record`) plus ``timestamp``. :func:`read_trend` turns the log back into
the trend block, deciding every checkpoint again with the fixed-sequence procedure over all lines
(:mod:`service.stats.trend`); a line's own ``detected`` is the decision as of when it was written.

    from service.audit.hook import read_trend, track

    for step in range(0, 100_000, 1_000):
        train(G, steps=1_000)  # your training loop; G.sample(n, seed) returns n images
        track(G.sample, step, log="runs/trend.jsonl", server="http://127.0.0.1:8000", n=200, trials=4)
    print(read_trend("runs/trend.jsonl")["first_detected"])  # decided again over every line

The report: ``python scripts/audit.py --trend-log runs/trend.jsonl --out trend.html`` (or
:func:`render_trend`). Each call with ``index=`` loads the index again; for a large index, run the
service once and pass ``server=``. The birthday trials are most of an audit's samples: reduce
``trials=`` / ``batch_sizes=`` in a loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .formats import json_safe
from .trend import block, record

logger = logging.getLogger(__name__)  # not `log`: that is track()'s parameter

DEFAULT_LOG = "facemem-trend.jsonl"


def track(
    sampler: Callable[[int, int], Any],
    step: int,
    *,
    log: str | Path = DEFAULT_LOG,
    index: str | Path | None = None,
    server: str | None = None,
    token: str | None = None,
    n: int | None = None,
    report: str | Path | None = None,
    name: str | None = None,
    **options: Any,
) -> dict:
    """Audit ``sampler(n, seed)`` at training ``step`` and append its record to ``log``; returns the
    record. ``report``: also write this checkpoint's full HTML report there. ``name``: the record's
    ``generator`` label (default the sampler's name). Other ``options`` are the audit's
    (:data:`service.audit.defaults.OPTIONS`); the progress bar is off unless asked for."""
    from . import audit

    options.setdefault("progress", False)
    res = audit(generator=sampler, index=index, server=server, token=token, n=n, **options)
    rec = record(res.data, int(step), name or getattr(sampler, "__name__", repr(sampler)))
    rec["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = Path(log)
    prior = read_records(path) if path.exists() else []
    trend = block(prior + [rec], rec["alpha"])  # sorted stably by step: rec comes after equal steps
    decided = trend["checkpoints"][sum(r["step"] <= rec["step"] for r in prior)]
    rec["detected"], rec["p_adjusted"] = decided["detected"], decided["p_adjusted"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(json_safe(rec), allow_nan=False) + "\n")
    if report is not None:
        res.to_html(report)
    first = trend["first_detected"]
    logger.info(
        "step %d: same person p %s; memorization %s",
        rec["step"],
        rec["same_person"]["p"],
        f"detected since step {first['step']}" if first is not None else "not detected",
    )
    return rec


def read_records(path: str | Path) -> list[dict]:
    """The records of a trend log, in file order; a line that does not parse (a write cut short) is
    skipped with a warning."""
    out = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            logger.warning("%s line %d: not JSON (%s); skipped", path, no, e)
    return out


def read_trend(path: str | Path, alpha: float | None = None) -> dict:
    """The trend block of a log (the same shape as a series' ``data["trend"]``), every checkpoint
    decided again by the fixed sequence over all lines, at ``alpha`` (default: the lines' own)."""
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no trend records")
    if alpha is None:
        alphas = {r.get("alpha") for r in records}
        alpha = records[-1].get("alpha") or 0.05
        if len(alphas) > 1:
            logger.warning("%s: lines with different alphas %s; deciding at %g", path, sorted(map(str, alphas)), alpha)
    return block(records, float(alpha))


def render_trend(path: str | Path, out: str | Path, alpha: float | None = None) -> Path:
    """The "Memorization across training" page of a log, as one self-contained HTML file."""
    from . import _write_atomic
    from .report.trend import render_page

    return _write_atomic(out, render_page(read_trend(path, alpha)))
