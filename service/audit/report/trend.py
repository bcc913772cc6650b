"""The report's "Memorization across training" section: each headline figure against the training
step with its 95% interval, a table, and the first checkpoint at which memorization is detected.

Shown only when the data has a ``trend`` block (a series of checkpoints, :mod:`service.audit.trend`,
or a training-loop log, :mod:`service.audit.hook`). :func:`render_page` makes a self-contained page of
this section alone, for a JSONL log (``python scripts/audit.py --trend-log FILE --out trend.html``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..formats import esc, fmt, json_safe, pct, pval
from . import plots as plotting
from .style import CSS, badge_reject, img_tag

SECTION_ID = "trend"
TITLE = "Memorization across training"


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _series(cks: list[dict], get) -> tuple[list[float], list[float], list[float], list[float]]:
    """(steps, values, lower, upper) of one figure, NaN where a checkpoint has none."""
    steps, val, lo, hi = [], [], [], []
    for c in cks:
        v = get(c) or {}
        steps.append(float(c["step"]))
        val.append(_num(v.get("share", v.get("estimate"))))
        lo.append(_num(v.get("lo")))
        hi.append(_num(v.get("hi")))
    return steps, val, lo, hi


def _support_view(c: dict, ch: str) -> dict:
    """The headline support where the report prints one, else the estimate conditional on f."""
    s = (c.get("support") or {}).get(ch) or {}
    if s.get("estimate") is not None or s.get("lo") is not None:
        return s
    return s.get("conditional_on_f") or {}


def trend_figures(trend: dict) -> dict[str, str]:
    """One PNG (``plots["trend"]``): the shares with their 95% intervals, the support, C_T and the
    primary p-values against the training step, the first detection marked on each panel."""
    cks = trend.get("checkpoints") or []
    if not cks:
        return {}
    plt = plotting.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 6.6))
    first = (trend.get("first_detected") or {}).get("step")

    def errbar(ax, get, color, label, marker="o"):
        x, y, lo, hi = _series(cks, get)
        lower = [v - a if math.isfinite(a) and math.isfinite(v) else 0.0 for v, a in zip(y, lo)]
        upper = [b - v if math.isfinite(b) and math.isfinite(v) else 0.0 for v, b in zip(y, hi)]
        ax.errorbar(x, y, yerr=[lower, upper], fmt=marker + "-", color=color, capsize=3, lw=1.3, label=label)

    ax = axes[0][0]
    errbar(ax, lambda c: c.get("same_person"), "#c0392b", "same person (95% CI)")
    for ch, color, m in (("semantic", "#8e44ad", "s"), ("pixel", "#2e86c1", "^")):
        errbar(ax, lambda c, ch=ch: (c.get("copies") or {}).get(ch), color, f"{ch} copies (95% CI)", m)
    x = [float(c["step"]) for c in cks]
    null = [_num((c.get("same_person") or {}).get("null_rate")) for c in cks]
    ax.plot(x, null, ":", color="#6b7885", label="same person: strangers' rate")
    ax.set_ylabel("share of generated faces")
    ax.set_title("Same person and copies", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[0][1]
    for ch, color in (("semantic", "#c0392b"), ("pixel", "#2e86c1")):
        errbar(ax, lambda c, ch=ch: _support_view(c, ch), color, f"support, {ch} (95% CI)")
    if ax.has_data():
        ax.set_yscale("log")
    ax.set_ylabel("effective support M")
    ax.set_title("Support (birthday paradox)", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[1][0]
    ax.plot(x, [_num((c.get("ct") or {}).get("statistic")) for c in cks], "o-", color="#1f3b57", label="C_T")
    ax.axhline(0, color="#6b7885", lw=1)
    ax.axhline(-1.645, color="#6b7885", ls="--", lw=1, label="one-sided 5% (z = −1.645)")
    leaks = [c.get("leaks") for c in cks]
    if any(v is not None for v in leaks):
        twin = ax.twinx()
        twin.plot(x, [_num(v) for v in leaks], "d:", color="#d08700", label="leaks")
        twin.set_ylabel("leaks")
        twin.legend(fontsize=7, loc="lower right")
    ax.set_ylabel("C_T (z)")
    ax.set_xlabel("training step")
    ax.set_title("Data-copying test C_T", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")

    ax = axes[1][1]
    p = [_num((c.get("same_person") or {}).get("p")) for c in cks]
    ax.plot(x, [max(v, 1e-300) if math.isfinite(v) else math.nan for v in p], "o-", color="#c0392b", label="p")
    det = [c for c in cks if c.get("detected")]
    if det:
        ax.plot(
            [float(c["step"]) for c in det],
            [max(_num(c["same_person"]["p"]), 1e-300) for c in det],
            "o",
            ms=10,
            mfc="none",
            color="#a3120b",
            label="detected (fixed sequence)",
        )
    ax.axhline(trend.get("alpha", 0.05), color="#1f3b57", ls="--", lw=1, label=f"alpha = {trend.get('alpha', 0.05):g}")
    ax.set_yscale("log")
    ax.set_ylabel("primary p (same person vs strangers)")
    ax.set_xlabel("training step")
    ax.set_title("Primary test per checkpoint", fontsize=10)
    ax.legend(fontsize=7)

    log_steps = min(x) > 0 and max(x) >= 10 * min(x)  # log-spaced checkpoints read best on a log axis
    for a in (ax for row in axes for ax in row):
        if log_steps:
            a.set_xscale("log")
        if first is not None:
            a.axvline(first, color="#a3120b", ls=":", lw=1.2)
        a.tick_params(labelsize=8)
    fig.suptitle("Memorization across training" + (f" (first detected at step {first})" if first is not None else ""))
    fig.tight_layout()
    return {"trend": plotting.png(fig)}


def _support_cell(s: dict | None) -> str:
    if not s:
        return "—"
    if s.get("estimate") is not None or s.get("lo") is not None:
        iv = f" [{fmt(s.get('lo'))} – {fmt(s.get('hi'))}]" if s.get("lo") is not None else ""
        return f"{fmt(s.get('estimate'))}{iv}"
    if s.get("lower_bound") is not None:
        return f"≥ {fmt(s['lower_bound'])}"
    c = s.get("conditional_on_f") or {}
    if c.get("estimate") is not None:
        iv = f" [{fmt(c.get('lo'))} – {fmt(c.get('hi'))}]" if c.get("lo") is not None else ""
        return f"({fmt(c['estimate'])}{iv} given f)"
    return "—"


def _share(b: dict | None) -> str:
    if not b or b.get("share") is None:
        return "—"
    return f"{pct(b['share'])} [{pct(b.get('lo'))} – {pct(b.get('hi'))}]"


def section(trend: dict | None, plots: dict[str, str]) -> str:
    """The section's HTML ('' without a trend)."""
    if not trend or not trend.get("checkpoints"):
        return ""

    cks = trend["checkpoints"]
    first = trend.get("first_detected")
    head = (
        f"memorization detected from step {first['step']} (checkpoint {first['index'] + 1} of {len(cks)}) onwards"
        if first
        else f"memorization not detected at any of the {len(cks)} checkpoints"
    )
    out = [
        f'<section id="{SECTION_ID}" data-section="{SECTION_ID}"><h2>{TITLE}</h2>',
        f'<p class="big" data-first-detected="{esc(first["step"] if first else "")}">{esc(head)}</p>',
        f'<p class="note" data-multiplicity>{esc(trend.get("multiplicity", ""))}.</p>',
    ]
    if plots.get("trend"):
        out.append(img_tag(plots["trend"], "memorization across training", cls="plot"))
    rows = []
    for c in cks:
        sp, copies, ctb, sup = c.get("same_person") or {}, c.get("copies") or {}, c.get("ct") or {}, c.get("support")
        sup = sup or {}
        rows.append(
            f'<tr data-step="{c["step"]}"><td class=num>{fmt(c["step"])}</td><td>{esc(c.get("generator"))}</td>'
            f"<td>{_share(sp)}</td><td class=num>{pval(sp.get('p'))}</td>"
            f"<td class=num>{pval(c.get('p_adjusted'))}</td><td>{badge_reject(c.get('detected'))}</td>"
            f"<td>{_share(copies.get('semantic'))}</td><td>{_share(copies.get('pixel'))}</td>"
            f"<td class=num>{fmt(ctb.get('statistic'))}</td><td>{_support_cell(sup.get('semantic'))}</td>"
            f"<td>{_support_cell(sup.get('pixel'))}</td><td class=num>{fmt(c.get('leaks'))}</td>"
            f"<td>{esc(c.get('verdict'))}</td></tr>"
        )
    out.append(
        "<table><tr><th>step</th><th>generator</th><th>same person (95%)</th><th>p</th><th>p (fixed sequence)</th>"
        "<th>detected</th><th>semantic copies (95%)</th><th>pixel copies (95%)</th><th>C_T</th>"
        "<th>support, semantic (95%)</th><th>support, pixel (95%)</th><th>leaks</th><th>the checkpoint's own verdict"
        "</th></tr>" + "".join(rows) + "</table>"
    )
    out.append(
        '<p class="note">"detected" is the decision across checkpoints (family-wise over them all); each checkpoint\'s '
        "own verdict is its audit's decision over its five tests. Support in parentheses is conditional on the "
        "training domain's chance rate f (no real reference faces of the generated domain: see the support "
        "caveat).</p>"
    )
    if trend.get("computed_once"):
        out.append(
            f'<p class="note">Computed once for the whole series: {esc(json.dumps(trend["computed_once"]))}.</p>'
        )
    out.append("</section>")
    return "".join(out)


def render_page(trend: dict, plots: dict[str, str] | None = None) -> str:
    """A self-contained page holding the trend section alone (a training-loop log), with its JSON block."""

    plots = trend_figures(trend) if plots is None else plots
    blob = json.dumps(json_safe({"trend": trend}), allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>facemem: {TITLE}</title><style>{CSS}</style></head><body>"
        f"<header><h1>facemem: {TITLE.lower()}</h1><p>{len(trend.get('checkpoints') or [])} checkpoints</p></header>"
        f"<main>{section(trend, plots)}</main>"
        f'<script type="application/json" id="facemem-data">{blob}</script></body></html>'
    )
