"""How the audit writes numbers for people and for JSON: one place for the report, the summary line
and the CSV, so the same figure reads the same everywhere."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers for people: None/NaN → '—', ints as ints, floats to ``digits`` significant places."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return esc(x)


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}%"


def ci(iv: list[float] | None, as_pct: bool = True) -> str:
    if not iv:
        return ""
    return f"[{pct(iv[0])} – {pct(iv[1])}]" if as_pct else f"[{fmt(iv[0])} – {fmt(iv[1])}]"


def json_safe(x: Any) -> Any:
    """NaN/inf → None and NumPy scalars → Python, so the embedded block is strict JSON."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    return x


def pval(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def decimal(x: Any, digits: int = 3) -> str:
    """A rate or q-value to ``digits`` decimals, in scientific notation when smaller than that."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    x = float(x)
    return f"{x:.{digits - 1}e}" if x != 0 and abs(x) < 10**-(digits) else f"{x:.{digits}f}"


def rounded(x: float, interval: list | None = None) -> str:
    """A support-like count rounded to what its interval supports: to the power of ten one below the
    interval's width (902 [654–1185] → 900), never finer than whole units, grouped by thousands."""
    unit = 1.0
    if interval and interval[0] is not None and interval[1] is not None and interval[1] > interval[0]:
        unit = max(1.0, 10 ** (math.floor(math.log10(interval[1] - interval[0])) - 1))
    return f"{round(x / unit) * unit:,.0f}"


def support_words(block: dict | None) -> str:
    """A support block in words, plain text: the estimate and interval rounded to what the interval
    supports, the one-sided bound, or why there is no number."""
    if not block:
        return "—"
    iv = block.get("interval")
    if block.get("estimate") is not None:
        est = rounded(block["estimate"], iv)
        return est + (f" [{rounded(iv[0], iv)} – {rounded(iv[1], iv)}]" if iv else " (upper end unbounded)")
    if iv:
        return f"[{rounded(iv[0], iv)} – {rounded(iv[1], iv)}]"
    if block.get("lower_bound") is not None:
        return f"≥ {rounded(block['lower_bound'])} (one-sided 95% bound)"
    if block.get("resolvable") is False:
        return "not resolvable in this domain"
    if block.get("chance_rate_source") == "training":
        cond = block.get("conditional_on_f") or {}
        bound = cond.get("lower_bound") or ((cond.get("interval") or [None])[0])
        return "no number without a same-domain reference" + (
            f" (≥ {rounded(bound)} if the training domain's chance rate held)" if bound else ""
        )
    return block.get("note") or "beyond what the threshold resolves"
