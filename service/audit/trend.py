"""Memorization across training: a series of checkpoints audited in one call, and its ``trend`` block.

``audit(generator=[...])`` (or ``--generator 'dcgan32:runs/mem/step-*.pth'``) audits every checkpoint
of a training run against one index or server; the index, the training side and the real reference
faces are loaded and processed once (:class:`service.audit.run.Shared`). Each checkpoint gets a full
audit's statistics; the result is the last checkpoint's full report plus ``data["trend"]``:

* ``checkpoints``: one record per checkpoint (:func:`record`), sorted by training step;
* ``first_detected``: ``{"step", "index"}`` of the earliest checkpoint at which memorization is
  detected, or None;
* ``multiplicity``: how the decisions across checkpoints keep the family-wise error at alpha (a
  fixed sequence from the last checkpoint backwards, :mod:`service.stats.trend`).

The training step of a checkpoint: an explicit ``(step, spec)`` pair, else the last integer in its
file or folder name (``step-000400.pth`` → 400), else its position in the series.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stats.trend import MULTIPLICITY, fixed_sequence
from .sources import SourceError

log = logging.getLogger(__name__)

GLOB_CHARS = re.compile(r"[*?\[]")
CHANNELS = ("semantic", "pixel")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series: its training step, the generator spec (or sampler) and a label."""

    step: int
    spec: Any
    label: str


def _last_int(text: str) -> int | None:
    found = re.findall(r"\d+", text)
    return int(found[-1]) if found else None


def _split_spec(spec: str) -> tuple[str, str]:
    """(prefix, path) of ``ADAPTER:PATH`` or ``module:callable:PATH``: a built-in adapter's path is
    everything after its name (it may hold a colon); otherwise the part after the last colon."""
    from .sources import ADAPTERS

    head, sep, rest = spec.partition(":")
    if not sep:
        return "", spec
    if head in ADAPTERS:
        return head, rest
    prefix, _, path = spec.rpartition(":")
    return prefix, path


def _glob_step(pattern: str, match: str) -> int | None:
    """The last integer in the components of ``match`` from the pattern's first wildcard on (so a
    folder such as ``/tmp/run-3/`` above the wildcards never becomes the step)."""
    pat_parts, parts = Path(pattern).parts, Path(match).parts
    first = next((i for i, p in enumerate(pat_parts) if GLOB_CHARS.search(p)), len(pat_parts) - 1)
    for part in reversed(parts[first:] if len(parts) == len(pat_parts) else parts[-1:]):
        step = _last_int(part)
        if step is not None:
            return step
    return None


def expand(spec: str) -> list[tuple[int | None, str]]:
    """A series spec → (step or None, single spec) pairs, unsorted: a comma list of specs (an item
    without an adapter takes the previous item's), each item's path globbed."""
    out: list[tuple[int | None, str]] = []
    prefix = ""
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        head, path = _split_spec(item)
        if head:
            prefix = head
        elif prefix:
            head = prefix
        else:
            raise SourceError(f"--generator {spec!r}: {item!r} names no adapter (ADAPTER:PATH)")
        if GLOB_CHARS.search(path):
            matches = sorted(glob.glob(str(Path(path).expanduser())))
            if not matches:
                raise SourceError(f"--generator {item!r}: the pattern {path!r} matches nothing")
            out += [(_glob_step(path, m), f"{head}:{m}") for m in matches]
        else:
            out.append((_last_int(Path(path).name), f"{head}:{path}"))
    if not out:
        raise SourceError(f"--generator {spec!r}: no checkpoints")
    return out


def is_series(generator: Any) -> bool:
    """A list or tuple of generators, or a spec string with a comma or a wildcard in its path."""
    if isinstance(generator, (list, tuple)):
        return True
    if isinstance(generator, str):
        return "," in generator or bool(GLOB_CHARS.search(_split_spec(generator)[1]))
    return False


def _label(spec: Any) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def checkpoints(generator: str | Sequence) -> list[Checkpoint]:
    """The checkpoints of a series, sorted by training step (see the module docstring). Steps come
    from ``(step, spec)`` pairs, else from the names when every other item has an integer in its name,
    else every other item's step is its position in the series."""
    items: list[tuple[int | None, bool, Any]] = []  # (step, explicit, spec)
    for it in [generator] if isinstance(generator, str) else list(generator):
        if isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], int):
            items.append((int(it[0]), True, it[1]))
        elif isinstance(it, str):
            items += [(step, False, s) for step, s in expand(it)]
        elif callable(it):
            items.append((None, False, it))
        else:
            raise SourceError(f"generator series: {it!r} is not a spec, a sampler or a (step, spec) pair")
    if not items:
        raise SourceError("generator series: empty")
    implicit = [i for i, (_, explicit, _) in enumerate(items) if not explicit]
    if any(items[i][0] is None for i in implicit):
        log.warning("not every checkpoint name holds a training step: ordering them by position")
        items = [(i if not explicit else step, explicit, s) for i, (step, explicit, s) in enumerate(items)]
    out = [Checkpoint(int(step), spec, _label(spec)) for step, _, spec in items]  # type: ignore[arg-type]
    out.sort(key=lambda c: c.step)  # stable: equal steps keep their order
    return out


# ----------------------------------------------------------------------------- the trend block


def _interval(block: dict | None) -> tuple[Any, Any]:
    iv = (block or {}).get("interval") or [None, None]
    return iv[0], iv[1]


def _support(block: dict | None) -> dict | None:
    """A support block's headline (None when the report prints no number) and, for a trend in the
    training domain's f, the conditional estimate beside it."""
    if not block:
        return None
    lo, hi = _interval(block)
    cond = block.get("conditional_on_f") or {}
    c_lo, c_hi = _interval(cond)
    return {
        "estimate": block.get("estimate"),
        "lo": lo,
        "hi": hi,
        "lower_bound": block.get("lower_bound"),
        "resolvable": block.get("resolvable"),
        "chance_rate_source": block.get("chance_rate_source"),
        "conditional_on_f": {"estimate": cond.get("estimate"), "lo": c_lo, "hi": c_hi},
    }


def record(data: dict, step: int, generator: str) -> dict:
    """One checkpoint's line of the trend, from its report data (``facemem-audit/3``): the headline
    numbers with their 95% intervals, the primary p-value the verdict uses, and the verdict.
    ``detected`` is filled in by :func:`block` (it depends on the later checkpoints)."""
    mem = data["memorization"]
    summary = data["summary"]
    decisions = summary["decisions"]
    same = mem.get("same_person") or {}
    lo, hi = _interval(same)
    null = same.get("reference_real") or same.get("baseline") or {}
    # The p-values that decided (the null's, or the held-out split's when there is one).
    decided = {d["name"]: d["p_value"] for d in [decisions["primary"], *decisions["secondary"]]}
    copies: dict[str, dict | None] = {}
    for ch in CHANNELS:
        block = (mem.get("likely_copies") or {}).get(ch)
        c_lo, c_hi = _interval(block)
        copies[ch] = (
            None
            if block is None
            else {
                "share": block.get("share"),
                "lo": c_lo,
                "hi": c_hi,
                "p": decided.get(f"copies_{ch}"),
            }
        )
    ct_block = data.get("ct_test") or {}
    return {
        "step": int(step),
        "generator": generator,
        "faces": summary.get("faces"),
        "same_person": {
            "share": same.get("share"),
            "lo": lo,
            "hi": hi,
            "p": decisions["primary"]["p_value"],
            "null_rate": null.get("null_rate"),
        },
        "copies": copies,
        "ct": {"statistic": ct_block.get("statistic"), "p": decided.get("ct_copying")},
        "support": {ch: _support((data.get("support") or {}).get(ch)) for ch in CHANNELS},
        "leaks": (data.get("leaks") or {}).get("count"),
        "verdict": summary["verdict"],
        "alpha": decisions["alpha"],
        "null": decisions["null"],
        "detected": None,
        "p_adjusted": None,
    }


def block(records: list[dict], alpha: float) -> dict:
    """The ``trend`` block: the records sorted by step, each ``detected`` by the fixed-sequence
    procedure (:func:`service.stats.trend.fixed_sequence`) at ``alpha``, and the first detection."""
    records = sorted(records, key=lambda r: r["step"])
    seq = fixed_sequence([r["same_person"]["p"] for r in records], alpha)
    out = []
    for r, detected, adjusted in zip(records, seq["detected"], seq["p_adjusted"]):
        out.append({**r, "detected": bool(detected), "p_adjusted": adjusted})
    first = seq["first_detected"]
    return {
        "checkpoints": out,
        "first_detected": None if first is None else {"step": out[first]["step"], "index": first},
        "alpha": alpha,
        "multiplicity": MULTIPLICITY,
    }


def run_series(
    series: list[Checkpoint],
    audit_one: Callable[[Any, bool], Any],
    alpha: float,
) -> Any:
    """Audit every checkpoint with ``audit_one(spec, last)`` (which returns an
    :class:`service.audit.AuditResult`; the last one with its thumbnails and plots), and return the
    last result with ``data["trend"]``. Only each checkpoint's record is kept between checkpoints."""
    records, res = [], None
    for i, ck in enumerate(series):
        last = i == len(series) - 1
        log.info("checkpoint %d of %d: step %d, %s", i + 1, len(series), ck.step, ck.label)
        res = audit_one(ck.spec, last)
        records.append(record(res.data, ck.step, ck.label))
    assert res is not None
    res.data["trend"] = block(records, alpha)
    return res
