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
