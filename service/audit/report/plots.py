"""The report's figures, drawn with matplotlib (Agg) into PNG ``data:`` URIs, so the report stays one
self-contained file."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from ..formats import decimal


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png(fig, dpi: int = 100) -> str:
    """A finished matplotlib figure as a PNG data URI (and the figure closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue(), "image/png")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display; safe in worker threads)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(a: Any) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in a] if isinstance(a, list) else a, dtype=np.float64)
    return a[np.isfinite(a)]


def plot_histogram(
    title: str, xlabel: str, generated: list[float], reference: dict[str, Any], thresholds: dict[str, float | None]
) -> str:
    """Density histograms of the generated→train NN distances against train→train distributions."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    gen = _finite(generated)
    refs = {k: _finite(v) for k, v in reference.items() if v is not None and len(_finite(v))}
    allv = np.concatenate([gen, *refs.values()]) if (len(gen) or refs) else np.zeros(1)
    lo, hi = float(np.percentile(allv, 0.1)), float(np.percentile(allv, 99.9))
    thr_vals = [t for t in thresholds.values() if t is not None]
    lo, hi = min([lo, *thr_vals]), max([hi, *thr_vals])
    bins = np.linspace(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo), 60)
    colors = ["#7f8c99", "#b8c4d0", "#c9a227"]
    for (name, v), c in zip(refs.items(), colors):
        ax.hist(v, bins=bins, density=True, alpha=0.55, color=c, label=f"{name} (n={len(v):,})")
    if len(gen):
        ax.hist(
            gen,
            bins=bins,
            density=True,
            histtype="step",
            lw=2.2,
            color="#c0392b",
            label=f"generated → training NN (n={len(gen):,})",
        )
    styles = ["--", ":", "-."]
    for (name, t), ls in zip(thresholds.items(), styles):
        if t is not None:
            ax.axvline(t, color="#1f3b57", ls=ls, lw=1.6, label=f"{name} = {t:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return png(fig)


def plot_birthday(rows: list[dict], crossing: dict) -> str:
    """Share of trials with ≥1 colliding pair against the batch size s, with the fitted curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    s = [r["s"] for r in rows]
    grid = np.geomspace(max(2, min(s) / 2), max(s) * 2, 200)
    for ch, color, label in (("semantic", "#c0392b", "semantic collision"), ("pixel", "#2e86c1", "pixel collision")):
        y = [r[ch]["share"] if r.get(ch) else np.nan for r in rows]
        ax.plot(s, y, "o", color=color, label=f"{label}: share of trials")
        q = ((crossing or {}).get(ch) or {}).get("rate")
        if q:
            ax.plot(
                grid,
                -np.expm1(-grid * (grid - 1) / 2 * q),
                "-",
                color=color,
                lw=1.2,
                alpha=0.8,
                label=f"{label}: fit 1 − exp(−C(s,2)·q)",
            )
    ax.axhline(0.5, color="#6b7885", ls="--", lw=1)
    s50 = ((crossing or {}).get("semantic") or {}).get("s50")
    if s50 and math.isfinite(s50):
        ax.axvline(s50, color="#c0392b", ls=":", lw=1.4, label=f"semantic 50% crossing s ≈ {s50:.3g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(s)
    ax.set_xticklabels([str(v) for v in s])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("batch size s")
    ax.set_ylabel("share of trials with ≥ 1 pair")
    ax.set_title("Birthday-paradox test (Arora & Zhang)", fontsize=11)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return png(fig)


def plot_identities(top: list[dict], null: dict | None = None) -> str:
    plt = pyplot()
    top = top[:20]
    fig, ax = plt.subplots(figsize=(7.2, max(2.0, 0.28 * len(top) + 0.8)))
    labels = [str(t["identity"]) for t in top][::-1]
    ax.barh(labels, [t["top1"] for t in top][::-1], color="#b8c4d0", label="top-1 semantic match")
    ax.barh(labels, [t["same_person"] for t in top][::-1], color="#c0392b", label="… under the identity threshold")
    if null:
        ax.axvline(
            null["max_count_p95"],
            color="#1f3b57",
            ls="--",
            lw=1.4,
            label=f"strangers: 95th percentile of the largest count ({null['max_count_p95']:.0f})",
        )
    ax.set_xlabel("generated faces")
    ax.set_title("Most-matched training identities", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png(fig)


def plot_geometry(stat: dict) -> str | None:
    """Density histograms of one geometry statistic, training (grey) against generated (red)."""
    h = stat.get("histogram")
    if not h:
        return None
    plt = pyplot()
    edges = h["edges"]
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    ax.stairs(h["training"], edges, fill=True, color="#b8c4d0", label=f"training (n={stat['training']['n']:,})")
    ax.stairs(h["generated"], edges, color="#c0392b", lw=2, label=f"generated (n={stat['generated']['n']:,})")
    ax.set_xlabel(stat.get("label") or stat["name"], fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_title(
        f"{stat['name']}: KS {stat.get('ks', float('nan')):.3f}, q = {decimal(stat.get('q_value'))}", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig, dpi=90)
