"""The report section "What the generator under- and over-produces", as one HTML fragment.

Self-contained like the rest of the report: rate bars are inline CSS, histograms are base64 PNG from
matplotlib (Agg), thumbnails are the ``data:`` URIs the caller passes in. Every string from the data is
escaped. Class names follow the audit report's stylesheet (``.note``, ``.badge b-red``, ``td.num``);
:data:`CSS` holds the few rules this section adds.
"""

from __future__ import annotations

import math
from typing import Any

from ..formats import decimal, esc
from . import plots

SECTION_ID = "omissions"
DIFFERS = '<span class="badge b-red">differs</span>'
TITLE = "What the generator under- and over-produces"
EXAMPLE_ATTRIBUTES = 4  # most under-produced attributes shown with training examples
CSS = (
    ".om-bar{position:relative;width:180px;height:14px;background:#f2f5f8;border:1px solid #dde3ea}"
    ".om-bar .t{position:absolute;top:0;bottom:0;width:2px;background:#1f3b57}"
    ".om-bar .g{position:absolute;top:3px;height:8px;background:#c0392b;opacity:.35}"
    ".om-bar .p{position:absolute;top:1px;width:4px;height:12px;margin-left:-2px;background:#c0392b}"
    ".om-geo{display:flex;flex-wrap:wrap;gap:8px}.om-geo img{width:340px;height:auto}"
)


def _pct(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100 * float(x):.{digits}f}%"


def _bar(training: Any, generated: Any, interval: list | None) -> str:
    """Training rate (dark line), generated rate (red mark) and its interval (red band) on 0–100%."""

    def pos(v: Any) -> float:
        return max(0.0, min(100.0, 100 * float(v)))

    parts = []
    if interval:
        lo, hi = pos(interval[0]), pos(interval[1])
        parts.append(f'<span class="g" style="left:{lo:.2f}%;width:{max(hi - lo, 0.5):.2f}%"></span>')
    if training is not None:
        parts.append(f'<span class="t" style="left:{pos(training):.2f}%"></span>')
    if generated is not None:
        parts.append(f'<span class="p" style="left:{pos(generated):.2f}%"></span>')
    title = f"training {_pct(training)}, generated {_pct(generated)}"
    return f'<div class="om-bar" title="{esc(title)}">{"".join(parts)}</div>'


def _badge(row: dict) -> str:
    if not row.get("flagged"):
        return '<span class="badge b-grey">—</span>' if row.get("q_value") is None else ""
    cls = "b-red" if row.get("direction") == "under" else "b-amber"
    doubt = (
        ' <span class="badge b-grey" title="label-shift test: the probe scores of the generated faces are not '
        'a mixture of the training classes, so the correction may be biased">assumption doubtful</span>'
        if row.get("assumption_doubtful")
        else ""
    )
    return f'<span class="badge {cls}">{esc(row.get("direction"))}-produced</span>{doubt}'


def _attribute_table(a: dict) -> str:
    head = (
        "<tr><th>attribute</th><th>training</th><th>generated (95% CI)</th><th>rates</th>"
        "<th>q-value</th><th></th><th>probe AUC</th><th>TPR / FPR</th><th>label shift p</th></tr>"
    )
    body = []
    for r in a["rows"]:
        ls = r.get("label_shift") or {}
        iv = r.get("interval")
        gen = _pct(r.get("generated_rate"))
        if iv:
            gen += f" [{_pct(iv[0])} – {_pct(iv[1])}]"
        if r.get("status") != "ok":
            gen = f'<span class="badge b-grey">{esc(r.get("status"))}</span>'
        else:
            gen = esc(gen)
        warn = (
            ' class="num" style="color:#a3120b"'
            if ls.get("p_value") is not None and ls["p_value"] < 0.01
            else ' class="num"'
        )
        body.append(
            "<tr>"
            f'<td>{esc(r["name"])}</td><td class="num">{esc(_pct(r.get("training_rate")))}</td>'
            f'<td class="num">{gen}</td><td>{_bar(r.get("training_rate"), r.get("generated_rate"), iv)}</td>'
            f'<td class="num">{esc(decimal(r.get("q_value")))}</td><td>{_badge(r)}</td>'
            f'<td class="num">{esc(decimal(r.get("probe_auc")))}</td>'
            f'<td class="num">{esc(_pct(r.get("probe_tpr")))} / {esc(_pct(r.get("probe_fpr")))}</td>'
            f"<td{warn}>{esc(decimal(ls.get('p_value')))}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _examples(a: dict, thumbnails: dict[str, str]) -> str:
    under = [r for r in a["rows"] if r.get("flagged") and r.get("direction") == "under"][:EXAMPLE_ATTRIBUTES]
    if not under:
        return '<p class="note">No attribute is significantly under-produced, so no examples are shown.</p>'
    out = ["<h3>Training faces of the most under-produced attributes</h3>"]
    for r in under:
        figs = []
        for f in r.get("examples") or []:
            uri = thumbnails.get(f)
            img = (
                f'<img src="{esc(uri)}" alt="{esc(f)}" width="96" height="96" style="object-fit:contain">'
                if uri
                else f'<div class="badge b-grey">{esc(f)}: no image</div>'
            )
            figs.append(f"<figure>{img}<figcaption>{esc(f)}</figcaption></figure>")
        out.append(
            f"<p><b>{esc(r['name'])}</b>: training {esc(_pct(r.get('training_rate')))}, generated "
            f'{esc(_pct(r.get("generated_rate")))}</p><div class="gal">{"".join(figs)}</div>'
        )
    return "".join(out)


def _geometry(g: dict) -> str:
    if not g.get("available"):
        return f'<p class="note warn">Pose and expression: not available: {esc(g.get("reason"))}</p>'
    rows, figures = [], []
    for s in g["stats"]:
        t, gen = s["training"], s["generated"]
        rows.append(
            f'<tr><td>{esc(s.get("label") or s["name"])}</td><td class="num">{esc(decimal(t.get("median")))}</td>'
            f'<td class="num">{esc(decimal(gen.get("median")))}</td>'
            f'<td class="num">{esc(decimal(s.get("spread_ratio")))}</td>'
            f'<td class="num">{esc(decimal(s.get("ks")))}</td><td class="num">{esc(decimal(s.get("wasserstein")))}</td>'
            f'<td class="num">{esc(decimal(s.get("q_value")))}</td>'
            f"<td>{DIFFERS if s.get('flagged') else ''}</td></tr>"
        )
        uri = plots.plot_geometry(s)
        if uri:
            figures.append(f'<img class="plot" src="{uri}" alt="{esc(s["name"])} histogram">')
    head = (
        "<tr><th>statistic</th><th>training median</th><th>generated median</th><th>spread ratio (IQR)</th>"
        "<th>KS</th><th>Wasserstein</th><th>q-value</th><th></th></tr>"
    )
    return (
        f"<h3>Pose, expression and framing</h3><p>{g['n_generated']:,} generated faces against a seeded sample "
        f"of {esc(g.get('n_training_sample'))} training faces. Spread ratio &lt; 1: less varied than the "
        f"training set. Face size and position compare framing conventions as much as the generator.</p>"
        f'<table>{head}{"".join(rows)}</table><div class="om-geo">{"".join(figures)}</div>'
    )


def render(data: dict, thumbnails: dict[str, str], title: str = TITLE) -> str:
    """The section as an HTML string: ``data`` is :func:`service.stats.omissions.analyse`'s result,
    ``thumbnails`` maps training files (``rows[].examples``) to image ``data:`` URIs."""
    a, g = data.get("attributes") or {}, data.get("geometry") or {}
    parts = [f'<section id="{SECTION_ID}" data-section="{SECTION_ID}"><style>{CSS}</style><h2>{esc(title)}</h2>']
    if not a.get("available"):
        parts.append(f'<p class="note warn">Attributes: this section is skipped: {esc(a.get("reason"))}</p>')
    else:
        src = "labels" if a.get("training_rate_source") == "labels" else "the probe on the training faces"
        borrowed = f" (probes borrowed from {esc(a.get('borrowed_from'))})" if a.get("probes") == "borrowed" else ""
        parts.append(
            f"<p>{a['n_generated']:,} generated faces; {a.get('n_tested', 0)} attributes tested{borrowed}. "
            f"Training rate from {esc(src)}; generated rate = the probe's count corrected for its held-out "
            f"error (adjusted classify-and-count), 95% bootstrap interval over the generated faces and the "
            f"probe's measured TPR/FPR; flagged where the Benjamini–Hochberg q-value &lt; {a['alpha']}: "
            f"<b>{a.get('n_flagged_under', 0)} under-produced, {a.get('n_flagged_over', 0)} over-produced</b>. "
            f"Bar: training rate (dark line), generated rate (red mark) and interval (band).</p>"
        )
        parts.append(f'<p class="note warn">{esc(a.get("assumption"))} Label shift p &lt; 0.01 is shown in red.</p>')
        parts.append(_attribute_table(a))
        parts.append(_examples(a, thumbnails))
    parts.append(_geometry(g))
    parts.append("</section>")
    return "".join(parts)
