"""Render the audit's result dict as one self-contained HTML file.

Why one file with everything inline: a report is mailed around, archived with a model checkpoint
and opened years later, offline. Thumbnails are base64 JPEG ``data:`` URIs, plots are base64 PNG
from matplotlib (Agg), there is no script except the machine-readable JSON block
``<script type="application/json" id="facemem-data">`` (the same numbers, for tools and tests), and
no ``src``/``href`` points outside the file except the link to the per-image CSV written beside it
(every image's row; the file itself stays bounded whatever n is: :mod:`service.audit.outputs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from ..formats import ci, esc, fmt, json_safe, pct, pval, rounded, support_words
from .style import CSS, badge_reject, img_tag

log = logging.getLogger(__name__)

SECTIONS = (
    ("summary", "1. Summary"),
    ("nn-grid", "2. Nearest-neighbour grid"),
    ("memorization", "3. Memorization against strangers"),
    ("calibration", "4. Calibration histograms"),
    ("birthday", "5. Support size (birthday paradox)"),
    ("ct-test", "6. Data-copying test C_T"),
    ("identities", "7. Identity concentration"),
    ("leaks", "8. Which training people leak"),
    ("omissions", "9. What the generator under- and over-produces"),
    ("distribution", "10. Distribution distances"),
    ("method", "Method and reproduction"),
)

TITLE = dict(SECTIONS)

# ----------------------------------------------------------------------------- sections


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def support_text(b: dict | None) -> str:
    """An estimate block (support, support_reference) in words (:func:`formats.support_words`), the
    number emphasised."""
    words = support_words(b)
    if b and (b.get("estimate") is not None or b.get("lower_bound") is not None):
        head, _, rest = words.partition(" ")
        return f'<span class="big">{esc(head)}</span> {esc(rest)}'.rstrip()
    return esc(words)


def _summary(d: dict) -> str:
    """Section 1: the verdict, the decisions, the headline numbers, the thresholds and the index."""
    s = d["summary"]
    out = [f'<section id="summary" data-section="summary"><h2>{TITLE["summary"]}</h2>']
    out.append(f'<p class="big" data-verdict>{esc(s["verdict"])}</p>')
    if s.get("caveat"):
        out.append(f'<p class="note" data-caveat>{esc(s["caveat"])}</p>')
    if s.get("support_caveat"):
        out.append(f'<p class="note warn" data-support-caveat>{esc(s["support_caveat"])}</p>')
    out += [_summary_audited(d), _decisions(s["decisions"]), _split(d.get("held_out_split"))]
    out += [_headline(d), _thresholds(d["calibration"])]
    out.append(_index_table(d["index"]))
    out.append("</section>")
    return "".join(out)


def _summary_audited(d: dict) -> str:
    """What was audited against what, and which null decides."""
    s, src, scope = d["summary"], d["source"], d.get("scope") or {}
    return _kv(
        [
            ("source", esc(src["describe"])),
            ("mode", esc(f"{d['backend']['mode']}: {d['backend']['where']}")),
            ("images audited", fmt(s["images"])),
            (
                "faces found",
                f"{fmt(s['faces'])} ok · {fmt(s['counts'].get('no_face', 0))} no face · "
                f"{fmt(s['counts'].get('unreadable', 0))} unreadable "
                f"(detector <code>{esc(d['params']['detector'])}</code>)",
            ),
            ("scope", esc(scope.get("note", ""))),
            ("null", NULLS.get(s["decisions"]["null"], NULLS["training"])),
        ]
    )


NULLS = {
    "held_out_identities": "a random split of the index's people into trained and held out "
    "(--held-out-identities): where the generated faces land, whatever they look like",
    "reference_real": "real reference faces run through the same pipeline (--reference-real)",
    "training": "the index's own strangers (each training face's nearest other-identity face); the generated "
    "faces come from another domain, so held-out identities or a domain-matched --reference-real are better",
}


def _split(block: dict | None) -> str:
    """The held-out split's five permutation tests: where the generated faces landed, trained vs held out."""
    if not block:
        return ""
    if "error" in block:
        return f'<p class="note warn" data-split-error>held-out identities not used: {esc(block["error"])}</p>'
    rows = [
        f"<tr><td>{esc(name)}</td><td class=num>{fmt(t['landed'])}</td><td class=num>{fmt(t['on_trained'])}</td>"
        f"<td class=num>{fmt(t['expected'])}</td><td class=num>{pval(t['p_value'])}</td></tr>"
        for name, t in block["tests"].items()
    ]
    return (
        f"<h3>Held-out identities: trained vs held-out people</h3><p>{fmt(block['trained_identities'])} trained and "
        f"{fmt(block['held_out_identities'])} held-out people in the index ({pct(block['held_out_share'])} held "
        f"out; {esc(block['source'])}). Each test counts the generated faces that land on a trained person (for "
        f"identity concentration: the most on one trained person) against {fmt(block['permutations'])} random "
        "re-splits of the same sizes.</p><table data-split><tr><th>test</th><th>faces that count</th><th>on trained "
        "people</th><th>expected under a random split</th><th>p</th></tr>" + "".join(rows) + "</table>"
    )


def _decisions(dec: dict) -> str:
    """The five tests, with their p-values, adjusted p-values (one procedure) and decisions."""
    tests = [("primary", dec["primary"])] + [("secondary", t) for t in dec["secondary"]]
    rows = [
        f"<tr><td>{'<b>primary</b>' if kind == 'primary' else kind}</td><td>{esc(t['hypothesis'])}</td>"
        f"<td class=num>{pval(t['p_value'])}</td><td class=num>{pval(t.get('p_adjusted'))}</td>"
        f"<td>{badge_reject(t['reject'])}</td></tr>"
        for kind, t in tests
    ]
    return (
        f"<h3>Decisions (α = {fmt(dec['alpha'])}, family-wise)</h3><table><tr><th></th><th>alternative hypothesis"
        "</th><th>p</th><th>p (adjusted)</th><th>decision</th></tr>" + "".join(rows) + "</table>"
        f'<p class="note">{esc(dec["correction"])}. The primary test is named before the data.</p>'
    )


def _headline(d: dict) -> str:
    """Same person against strangers, the support beside the training data's, and C_T."""
    sup, ref = d.get("support") or {}, d.get("support_reference") or {}
    same, ctb = d["memorization"].get("same_person") or {}, d.get("ct_test") or {}
    return "<h3>Headline numbers</h3>" + _kv(
        [
            (
                "same person as the nearest training face",
                f"{pct(same.get('share'))} {ci(same.get('interval'))} vs strangers "
                f"{pct((same.get('reference_real') or same.get('baseline') or {}).get('null_rate'))}",
            ),
            ("support, semantic (generator)", support_text(sup.get("semantic"))),
            ("support, semantic (training data, same estimator)", support_text(ref.get("semantic"))),
            ("support, pixel (generator)", support_text(sup.get("pixel"))),
            ("support, pixel (training data)", support_text(ref.get("pixel"))),
            ("C_T", f"{fmt(ctb.get('statistic'))} — {esc(ctb.get('reading', ''))}"),
        ]
    )


def _thresholds(cal: dict) -> str:
    """The thresholds the index itself gives, and what each means."""
    coll = cal.get("collision_semantic") or {}
    collp = cal.get("collision_pixel") or {}
    return "<h3>Thresholds (from the index itself)</h3>" + _kv(
        [
            (
                "identity threshold (1:N, same person)",
                f"{fmt(cal.get('identity'))} (source: {esc(cal.get('source'))}; target false-match rate "
                f"{pct(cal.get('false_match_rate'))}; expected recall {pct(cal.get('expected_recall'))})",
            ),
            (
                "collision threshold, semantic (1:1, per pair)",
                f"{fmt(coll.get('threshold'))}: a pair of two different training people falls under it with "
                f"probability {fmt(coll.get('per_pair_false_match_rate'))}; "
                f"{pct(coll.get('same_identity_recall'))} of same-person training pairs do",
            ),
            (
                "collision threshold, pixel",
                f"{fmt(collp.get('threshold'))} L1 (per-pair rate {fmt(collp.get('per_pair_false_match_rate'))}; "
                f"same-person recall {pct(collp.get('same_identity_recall'))})",
            ),
            ("semantic copy threshold", fmt(cal.get("semantic_copy"))),
            (
                "pixel copy threshold",
                f"{fmt(cal.get('pixel_copy'))} L1 sum ({fmt(cal.get('pixel_copy_per_value'))} per value)",
            ),
            ("note", esc(cal.get("note"))),
        ]
    )


def _index_table(idx: dict) -> str:
    """The index the audit searched: its manifest's summary."""
    summ = idx.get("summary", {})
    man = [
        ("faces", fmt(summ.get("faces"))),
        ("images", fmt(summ.get("images"))),
        ("dataset", esc(f"{summ.get('dataset')} split={summ.get('split')} identities={summ.get('identities')}")),
        (
            "pipeline",
            esc(
                f"detector={summ.get('detector')} embedder={summ.get('embedder')} pixel crop {summ.get('pixel_size')}²"
            ),
        ),
        ("written", esc(idx.get("written_at"))),
        ("format version", esc(idx.get("format_version"))),
        ("model sha256", esc(", ".join(f"{k} {str(v)[:12]}…" for k, v in (idx.get("model_sha256") or {}).items()))),
    ]
    if idx.get("root"):
        man.insert(3, ("dataset root", esc(idx["root"])))
    return "<h3>Index</h3>" + _kv(man)


def _memorization(d: dict) -> str:
    mem = d["memorization"]
    out = [f'<section id="memorization" data-section="memorization"><h2>{TITLE["memorization"]}</h2>']
    out.append(
        '<p class="note">Each generated face against its nearest training face, compared with the same count for '
        "strangers: faces of people not in the index. The training-side strangers are each training face's nearest "
        "face of another identity; with --reference-real, real faces run through the same detector (the test then "
        "compares the two samples). p-values are exact and one-sided; they account for the strangers' rate being "
        "measured, not known.</p>"
    )
    rows = []
    for label, block in (
        ("same person (identity threshold)", mem.get("same_person")),
        ("likely copy, semantic", (mem.get("likely_copies") or {}).get("semantic")),
        ("likely copy, pixel L1", (mem.get("likely_copies") or {}).get("pixel")),
    ):
        if not block:
            continue
        base, refr = block.get("baseline") or {}, block.get("reference_real") or {}
        rows.append(
            f"<tr><td>{label}</td><td>{pct(block.get('share'), 2)} ({fmt(block.get('count'))} of "
            f"{fmt(block.get('faces'))}) {ci(block.get('interval'))}</td>"
            f"<td>{pct(base.get('null_rate'), 2)} ({fmt(base.get('null_count'))} of {fmt(base.get('null_samples'))})"
            f"</td><td class=num>{pval(base.get('p_value'))}</td>"
            + (
                f"<td>{pct(refr.get('null_rate'), 2)} ({fmt(refr.get('null_count'))} of "
                f"{fmt(refr.get('null_samples'))})</td><td class=num>{pval(refr.get('p_value'))}</td>"
                if refr
                else "<td>—</td><td>—</td>"
            )
            + "</tr>"
        )
    out.append(
        "<table><tr><th>measure</th><th>generated</th><th>training-side strangers</th><th>p</th>"
        "<th>real reference faces</th><th>p</th></tr>" + "".join(rows) + "</table>"
    )
    sc = mem.get("suspected_copies") or []
    if sc:
        out.append(
            f"<details><summary>{len(sc)} suspected copies</summary><table><tr><th>image</th><th>channel</th>"
            "<th>training file</th><th>identity</th><th>distance</th></tr>"
            + "".join(
                f"<tr><td>{esc(c['image'])}</td><td>{esc(c['channel'])}</td><td>{esc(c['file'])}</td>"
                f"<td>{esc(c['identity'])}</td><td class=num>{fmt(c['distance'])}</td></tr>"
                for c in sc
            )
            + "</table></details>"
        )
    out.append("</section>")
    return "".join(out)


def _nn_row(r: dict, thumbs: dict[str, str]) -> str:
    sem = r["semantic"][0] if r.get("semantic") else None
    pix = r["pixel"][0] if r.get("pixel") else None
    badges = " ".join(
        f'<span class="badge {"b-amber" if b == "same person" else "b-red"}">{esc(b)}</span>'
        for b in r.get("badges", [])
    )
    g = (
        f"<figure>{img_tag(thumbs.get('gen:' + r['image']), r['image'], 128)}"
        f'<figcaption><span class="lbl">generated</span> {esc(r["image"])}<br>{badges}</figcaption></figure>'
    )
    if pix:
        p = (
            f'<figure>{img_tag(thumbs.get("train:" + pix["file"]), pix["file"], 128)}<figcaption><span class="lbl">'
            f"L1-pixel NN</span> {esc(pix['file'])} · id {esc(pix['identity'])}<br>L1 {fmt(pix['distance'])} "
            f"({fmt(pix['distance_per_value'])} per value)</figcaption></figure>"
        )
    else:
        p = "<div>—</div>"
    if sem:
        same = '<span class="badge b-amber">same person</span>' if sem["same_person"] else ""
        s = (
            f'<figure>{img_tag(thumbs.get("train:" + sem["file"]), sem["file"], 128)}<figcaption><span class="lbl">'
            f"semantic NN</span> {esc(sem['file'])} · id {esc(sem['identity'])}<br>distance {fmt(sem['distance'])} "
            f"{same}</figcaption></figure>"
        )
    else:
        s = "<div>—</div>"
    return f'<div class="nn nnrow"><div class="rank">#{r["order"]}</div>{g}{p}{s}</div>'


def _grid(d: dict, thumbs: dict[str, str]) -> str:
    g = d["grid"]
    top = "".join(_nn_row(r, thumbs) for r in g["rows"][: g["expanded"]])
    rest = g["rows"][g["expanded"] :]
    out = [
        f'<section id="nn-grid" data-section="nn-grid"><h2>{TITLE["nn-grid"]}</h2>',
        '<p class="note">Each generated face beside its nearest training face in L1 pixel distance (64×64 aligned '
        "face crop, the Progressive GAN protocol) and in dlib descriptor distance (identity). Ordered most "
        "suspicious first: by the smaller of (semantic distance / semantic copy threshold) and "
        "(pixel distance / pixel copy threshold).</p>",
        f'<div class="nngrid">{top}</div>',
    ]
    if rest:
        out.append(
            f'<details><summary>the other {len(rest)} generated faces</summary><div class="nngrid">'
            + "".join(_nn_row(r, thumbs) for r in rest)
            + "</div></details>"
        )
    if g.get("omitted"):
        out.append(f'<p class="note">{fmt(g["omitted"])} more faces are not drawn (--grid-max).</p>')
    out.append(f'<p class="note" id="per-image">{per_image(d)}</p>')
    nf = g.get("no_face", [])
    if nf:
        missing = d["summary"]["images"] - d["summary"]["faces"]
        first = f" (the first {fmt(len(nf))} listed)" if len(nf) < missing else ""
        out.append(
            f"<details><summary>{fmt(missing)} image{'s' if missing != 1 else ''} without a usable face{first}"
            "</summary>"
            "<table><tr><th>image</th>"
            "<th>status</th><th>reason</th></tr>"
            + "".join(
                f"<tr><td>{esc(x['image'])}</td><td>{esc(x['status'])}</td><td>{esc(x['reason'])}</td></tr>" for x in nf
            )
            + "</table></details>"
        )
    out.append("</section>")
    return "".join(out)


def _calibration(d: dict, plots: dict[str, str]) -> str:
    h = d["histograms"]
    out = [
        f'<section id="calibration" data-section="calibration"><h2>{TITLE["calibration"]}</h2>',
        "<p class=\"note\">Red outline: each generated face's nearest training face. Grey: training faces' "
        "nearest other training face (leave-one-out) and, semantically, their nearest face of another identity "
        "(what a stranger scores). A generator that copies puts red mass left of the grey.</p>",
    ]
    for key in ("semantic", "pixel"):
        if plots.get(f"hist_{key}"):
            out.append(img_tag(plots[f"hist_{key}"], f"{key} histogram", cls="plot"))
    if h.get("note"):
        out.append(f'<p class="note warn">{esc(h["note"])}</p>')
    st = h.get("stats", {})
    if st:
        out.append(
            "<table><tr><th>distribution</th><th>n</th><th>p1</th><th>median</th><th>share under its "
            "copy threshold</th></tr>"
            + "".join(
                f"<tr><td>{esc(k)}</td><td class=num>{fmt(v.get('n'))}</td><td class=num>{fmt(v.get('p1'))}</td>"
                f"<td class=num>{fmt(v.get('median'))}</td><td class=num>{pct(v.get('under_copy'))}</td></tr>"
                for k, v in st.items()
            )
            + "</table>"
        )
    out.append("</section>")
    return "".join(out)


def _pair_fig(p: dict, thumbs: dict[str, str]) -> str:
    flags = []
    if p.get("collides"):
        flags.append('<span class="badge b-amber">semantic collision</span>')
    if p.get("pixel_duplicate"):
        flags.append('<span class="badge b-red">pixel near-duplicate</span>')
    return (
        f'<div class="pair pairfig">{img_tag(thumbs.get("gen:" + p["a"]), p["a"], 110)}'
        f'{img_tag(thumbs.get("gen:" + p["b"]), p["b"], 110)}<div class="cap">#{p["rank"]} distance '
        f"{fmt(p['distance'])}<br>{esc(p['a'])}<br>{esc(p['b'])}<br>{' '.join(flags)}</div></div>"
    )


def _chance_pairs(g: dict) -> str:
    """The pairs chance alone predicts: r·P with a same-domain reference, else f·P."""
    rate = (
        g.get("chance_rate") if g.get("chance_rate_source") == "reference_real" else g.get("per_pair_false_match_rate")
    )
    if rate is None or g.get("pairs_compared") is None:
        return "—"
    return f"{rate * g['pairs_compared']:,.1f}" + (
        " from r" if g.get("chance_rate_source") == "reference_real" else " from f"
    )


def _s50(c: dict) -> str:
    """s50 rounded to what its interval supports, with the model-free interval where there is one."""
    if not c.get("s50"):
        return "—"
    iv = c.get("interval")
    if iv and iv[0] is not None and iv[1] is not None:
        return f"{rounded(c['s50'], iv)} [{rounded(iv[0], iv)} – {rounded(iv[1], iv)}]"
    return f"{rounded(c['s50'])} (no interval)"


def _birthday(d: dict, plots: dict[str, str], thumbs: dict[str, str]) -> str:
    b, sup, ref = d["birthday"], d.get("support") or {}, d.get("support_reference") or {}
    cross = d.get("crossing") or {}
    out = [
        f'<section id="birthday" data-section="birthday"><h2>{TITLE["birthday"]}</h2>',
        '<p class="note">Arora &amp; Zhang: if a generator spreads its mass over M equally likely distinct faces, a '
        "pair of its samples collides with probability 1/M. Collisions here are pairs under the collision threshold, "
        "calibrated per pair on faces of two different training people (so it does not depend on the index size); "
        "the pairs that threshold lets through by chance are removed. That chance rate is measured on real faces of "
        "people not in the index, rendered like the generated ones (--reference-real): r, and M = (1 − r)/(q − r); "
        "without them there is no support number, only the excess over the training domain's f, since faces of "
        "another domain collide by chance far more often. M is an effective support 1/Σp² in threshold balls, not "
        "people, and relative to the reference: a generator of one narrow group of people collides more than a broad "
        "reference, so its M measures that narrowness as well as duplication. The training data's own support with "
        "the same f-based estimator stands beside it.</p>",
        f'<p class="note">{esc(b["protocol"])}</p>',
    ]
    rows = []
    for ch in ("semantic", "pixel"):
        g, r, c = sup.get(ch) or {}, ref.get(ch) or {}, cross.get(ch) or {}
        rows.append(
            f"<tr><td>{ch}</td><td>{support_text(g)}</td><td>{support_text(r)}</td>"
            f"<td class=num>{fmt(g.get('colliding_pairs'))} / {fmt(g.get('pairs_compared'))} "
            f"(chance {_chance_pairs(g)})</td>"
            f"<td>{_s50(c)}</td><td class=num>{rounded(c['rule_s2']) if c.get('rule_s2') else '—'}</td></tr>"
        )
    out.append(
        "<table><tr><th>channel</th><th>support, generator (95%)</th><th>support, training data (95%)</th>"
        "<th>colliding / compared pairs</th><th>50% crossing s50</th>"
        "<th>Arora &amp; Zhang s50²</th></tr>" + "".join(rows) + "</table>"
    )
    for ch in ("semantic", "pixel"):
        g = sup.get(ch) or {}
        if g.get("method"):
            out.append(f'<p class="note">{esc(ch)}: {esc(g["method"])}. {esc(g.get("note") or "")}</p>')
        rr, chk = g.get("reference_real_pair_rate"), g.get("chance_rate_check")
        if rr and chk:
            alt = chk.get("support_at_reference_rate")
            out.append(
                f'<p class="note" data-chance-check="{esc(ch)}">{esc(ch)}, check of f in the generated domain: '
                f"pairs of the real reference faces collide at {rr['rate']:.3g} "
                f"[{rr['interval'][0]:.3g} – {rr['interval'][1]:.3g}], "
                f"{fmt(chk.get('ratio'))}× the calibrated f. "
                + (esc(chk["note"]) + ". " if chk.get("note") else "Consistent with f. ")
                + (f"With the reference's rate as the chance rate the support is {support_text(alt)}." if alt else "")
                + "</p>"
            )
        c = cross.get(ch) or {}
        if c.get("method"):
            out.append(f'<p class="note">{esc(ch)} crossing: {esc(c["method"])}. {esc(c.get("note") or "")}</p>')
    if plots.get("birthday"):
        out.append(img_tag(plots["birthday"], "birthday paradox plot", cls="plot"))
    out.append(
        "<table><tr><th>batch size s</th><th>trials</th><th>mean faces</th><th>share with ≥1 semantic pair"
        "</th><th>mean pairs</th><th>share with ≥1 pixel pair</th><th>mean pairs</th></tr>"
        + "".join(
            f"<tr><td class=num>{r['s']}</td><td class=num>{r['trials']}</td><td class=num>{fmt(r['faces_mean'])}</td>"
            f"<td class=num>{pct(r['semantic']['share'])}</td><td class=num>{fmt(r['semantic']['mean_pairs'])}</td>"
            f"<td class=num>{pct((r.get('pixel') or {}).get('share'))}</td>"
            f"<td class=num>{fmt((r.get('pixel') or {}).get('mean_pairs'))}</td></tr>"
            for r in b["rows"]
        )
        + "</table>"
    )
    tp = b.get("top_pairs", [])
    out.append(
        f"<h3>The {len(tp)} most similar pairs of the audited faces</h3>"
        '<p class="note">Arora &amp; Zhang\'s protocol: the estimate is only as good as the pairs it rests on, so '
        "confirm by eye that the colliding pairs are the same face.</p>"
    )
    out.append('<div class="pairs">' + "".join(_pair_fig(p, thumbs) for p in tp) + "</div></section>")
    return "".join(out)


def _ct(d: dict) -> str:
    c = d.get("ct_test") or {}
    out = [f'<section id="ct-test" data-section="ct-test"><h2>{TITLE["ct-test"]}</h2>']
    out.append(
        '<p class="note">Meehan, Chaudhuri &amp; Dasgupta (AISTATS 2020): in each k-means cell of the training '
        "descriptors, the generated faces' distances to their nearest training face against those of held-out real "
        "faces (Mann–Whitney z-score); C_T is their average weighted by the held-out share. C_T ≪ 0: data copying; "
        "C_T ≫ 0: under-fitting or another domain. It catches copying spread over the whole distribution, which a "
        "1% copy rate misses, and has little power against a few exact copies (the copy rate catches those).</p>"
    )
    out.append(
        _kv(
            [
                ("C_T", f'<span class="big">{fmt(c.get("statistic"))}</span> ({esc(c.get("reading", c.get("note")))})'),
                ("one-sided p (copying)", pval(c.get("p_value_copying"))),
                (
                    "cells used",
                    f"{fmt(c.get('cells_used'))} of {fmt(c.get('cells'))} "
                    f"(≥ {fmt(c.get('min_generated_per_cell'))} generated faces each)",
                ),
                ("held-out faces", f"{fmt(c.get('held_out'))}: {esc(c.get('held_out_source'))}"),
                ("distance", "to the nearest training face anywhere (the service's answer), not within the cell"),
            ]
        )
    )
    cells = [r for r in c.get("per_cell", []) if r.get("z_u") is not None]
    if cells:
        out.append(
            "<table><tr><th>cell</th><th>generated</th><th>held out</th><th>held-out share</th><th>Z_U</th></tr>"
            + "".join(
                f"<tr><td class=num>{r['cell']}</td><td class=num>{r['generated']}</td><td class=num>{r['held_out']}"
                f"</td><td class=num>{pct(r['held_share'])}</td><td class=num>{fmt(r['z_u'])}</td></tr>"
                for r in cells
            )
            + "</table>"
        )
    out.append("</section>")
    return "".join(out)


def _identities(d: dict, plots: dict[str, str], thumbs: dict[str, str]) -> str:
    idn = d["identities"]
    out = [
        f'<section id="identities" data-section="identities"><h2>{TITLE["identities"]}</h2>',
        f'<p class="note">{esc(idn["text"])}</p>',
        _kv(
            [
                ("p-value of the largest count", pval(idn.get("p_value_max"))),
                ("p-value of fewer distinct identities than strangers", pval(idn.get("p_value_distinct"))),
                ("null", esc((idn.get("null") or {}).get("source", "none"))),
            ]
        ),
    ]
    if plots.get("identities"):
        out.append(img_tag(plots["identities"], "identity counts", cls="plot"))
    out.append(
        "<table><tr><th>identity</th><th>top-1 matches</th><th>same person</th><th>training faces matched</th>"
        "<th>generated faces</th></tr>"
    )
    for t in idn["top"][: idn.get("gallery", 10)]:
        tr = "".join(f"<figure>{img_tag(thumbs.get('train:' + f), f, 64)}</figure>" for f in t["train_files"][:4])
        gn = "".join(f"<figure>{img_tag(thumbs.get('gen:' + f), f, 64)}</figure>" for f in t["generated"][:6])
        out.append(
            f"<tr><td>{esc(t['identity'])}</td><td class=num>{t['top1']}</td><td class=num>{t['same_person']}</td>"
            f'<td><div class="gal">{tr}</div></td><td><div class="gal">{gn}</div></td></tr>'
        )
    out.append("</table></section>")
    return "".join(out)


LEAKS_SHOWN = 20  # identities with thumbnails (all significant ones are in the JSON, up to its own cap)
LEAK_FACES = 6  # generated faces and training faces shown per identity


def _leaks(d: dict, thumbs: dict[str, str]) -> str:
    """Section 8: each significant identity, its generated faces beside its training faces."""
    lk = d.get("leaks") or {}
    out = [f'<section id="leaks" data-section="leaks"><h2>{TITLE["leaks"]}</h2>']
    tested = lk.get("identities_tested", 0)
    if not lk.get("count"):
        out.append(
            f"<p>No training identity leaks at FDR {pct(lk.get('fdr'))}: {fmt(tested)} identities tested "
            f"({fmt(lk.get('identities_with_hits', 0))} with a same-person match among the generated faces or "
            f"the strangers){esc('; ' + lk['note']) if lk.get('note') else ''}.</p></section>"
        )
        return "".join(out)
    out.append(
        f'<p class="note">{fmt(lk["count"])} training identities have more generated faces that are the same person '
        f"than strangers do ({fmt(lk.get('null_faces'))} strangers, the {esc(lk.get('null_source'))} null): "
        f"Benjamini–Hochberg at FDR {pct(lk['fdr'])} over {fmt(tested)} identities tested. {esc(lk['method'])}.</p>"
    )
    out.append(
        "<table><tr><th>identity</th><th>generated same person</th><th>expected</th><th>strangers</th>"
        "<th>p</th><th>q</th><th>training images</th><th>generated faces</th><th>its training faces</th></tr>"
    )
    for r in lk["rows"][:LEAKS_SHOWN]:
        gn = "".join(
            f"<figure>{img_tag(thumbs.get('gen:' + f), f, 64)}</figure>" for f in r["generated_images"][:LEAK_FACES]
        )
        tr = "".join(
            f"<figure>{img_tag(thumbs.get('train:' + f), f, 64)}</figure>" for f in r["training_examples"][:LEAK_FACES]
        )
        out.append(
            f"<tr><td>{esc(r['identity'])}</td><td class=num>{r['generated']}</td><td class=num>{fmt(r['expected'])}"
            f"</td><td class=num>{r['null_hits']}</td><td class=num>{pval(r['p'])}</td><td class=num>{pval(r['q'])}"
            f'</td><td class=num>{fmt(r["training_images"])}</td><td><div class="gal">{gn}</div></td>'
            f'<td><div class="gal">{tr}</div></td></tr>'
        )
    out.append("</table>")
    if lk["count"] > LEAKS_SHOWN:
        out.append(f'<p class="note">{fmt(lk["count"] - LEAKS_SHOWN)} more in the JSON (<code>leaks.rows</code>).</p>')
    out.append("</section>")
    return "".join(out)


def _omissions(d: dict, thumbs: dict[str, str]) -> str:
    """Section 8 (service.audit.report.omissions), with the training thumbnails it shows."""
    from . import omissions as omissions_section

    train = {k[len("train:") :]: v for k, v in thumbs.items() if k.startswith("train:")}
    return omissions_section.render(
        {"attributes": d.get("attributes"), "geometry": d.get("geometry")}, train, TITLE["omissions"]
    )


def _distribution(d: dict) -> str:
    dd = d.get("distribution") or {}
    out = [f'<section id="distribution" data-section="distribution"><h2>{TITLE["distribution"]}</h2>']
    out.append(f'<p class="note warn"><b>Not comparable with published FID.</b> {esc(dd.get("note", ""))}</p>')
    if dd.get("error"):
        out.append(f'<p class="note warn">{esc(dd["error"])}</p></section>')
        return "".join(out)
    g, b = dd["generated"], dd["baseline_train_vs_train"]

    def cell(m: dict) -> str:
        return f"{fmt(m['mean'])} ± {fmt(m['std'])}"

    out.append(
        f"<p>{fmt(dd['n_per_side'])} faces per side, training side redrawn {dd['repeats']} times (seed "
        f"{dd['seed']}); k = {dd['k']} for precision/recall.</p>"
    )
    out.append(
        "<table><tr><th>statistic</th><th>generated vs training</th><th>training vs training (baseline)</th></tr>"
        f"<tr><td>Fréchet distance (FID formula on dlib descriptors)</td><td class=num>{cell(g['frechet'])}</td>"
        f"<td class=num>{cell(b['frechet'])}</td></tr>"
        f"<tr><td>k-NN precision (Kynkäänniemi et al. 2019)</td><td class=num>{cell(g['precision'])}</td>"
        f"<td class=num>{cell(b['precision'])}</td></tr>"
        f"<tr><td>k-NN recall</td><td class=num>{cell(g['recall'])}</td><td class=num>{cell(b['recall'])}</td></tr>"
        "</table>"
    )
    out.append(
        f"<p>Fréchet distance of all {fmt(dd['n_generated'])} generated faces to all {fmt(dd['n_train'])} "
        f"training faces: {fmt(dd.get('frechet_vs_full_train'))}.</p></section>"
    )
    return "".join(out)


def _method(d: dict) -> str:
    t = d.get("timing", {})
    return (
        f'<section id="method" data-section="method"><h2>{TITLE["method"]}</h2>'
        f"<pre>{esc(d.get('command', ''))}</pre>"
        + _kv(
            [
                ("created", esc(d.get("created_at"))),
                ("seed", esc(d.get("seed"))),
                ("runtime", esc(", ".join(f"{k} {v:.1f} s" for k, v in t.items() if isinstance(v, (int, float))))),
                ("parameters", f"<code>{esc(json.dumps(d.get('params')))}</code>"),
            ]
        )
        + '<p class="note">Every number in this report is also in the JSON block '
        '<code>&lt;script type="application/json" id="facemem-data"&gt;</code> at the end of this file. '
        "Per-image neighbour lists there are exactly the service's <code>POST /neighbors</code> response "
        f"entries. {per_image(d)}</p></section>"
    )


def per_image(d: dict) -> str:
    """Where the per-image rows are: the CSV beside the report (a relative link), and how many images
    the embedded JSON lists (:mod:`service.audit.outputs`)."""
    p = d.get("per_image") or {}
    images, listed = p.get("images", d["summary"]["images"]), p.get("listed", d["summary"]["images"])
    where = (
        f'one row per image ({fmt(images)} rows) in <a href="{esc(p["csv"])}" download>{esc(p["csv"])}</a>'
        if p.get("csv")
        else "no per-image CSV was written with this report"
    )
    listed_words = "every image" if listed >= images else f"the first {fmt(listed)} of {fmt(images)} images"
    return f"Per-image results: {where}; the JSON block lists {listed_words}."


def _sections(data: dict) -> tuple[tuple[str, str], ...]:
    """The navigation: the trend section after the summary, only for a series of checkpoints."""
    from . import trend

    if not data.get("trend"):
        return SECTIONS
    return (SECTIONS[0], (trend.SECTION_ID, trend.TITLE), *SECTIONS[1:])


def _trend(data: dict, plots: dict[str, str]) -> str:
    """Memorization across training (service.audit.report.trend); '' for a single audit."""
    from . import trend

    return trend.section(data.get("trend"), plots)


def render(data: dict, thumbs: dict[str, str], plots: dict[str, str]) -> str:
    """The whole report. ``thumbs`` maps ``gen:<name>`` / ``train:<file>`` to data URIs."""
    parts: list[str] = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>facemem audit: {esc(data['source']['describe'])}</title><style>{CSS}</style></head><body>",
        f"<header><h1>facemem memorization audit</h1><p>{esc(data['source']['describe'])} against "
        f"{fmt(data['index']['summary'].get('faces'))} training faces · {esc(data.get('created_at'))}</p></header>",
        "<nav>" + "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in _sections(data)) + "</nav><main>",
    ]
    builders: list[Callable[[], str]] = [
        lambda: _summary(data),
        lambda: _trend(data, plots),
        lambda: _grid(data, thumbs),
        lambda: _memorization(data),
        lambda: _calibration(data, plots),
        lambda: _birthday(data, plots, thumbs),
        lambda: _ct(data),
        lambda: _identities(data, plots, thumbs),
        lambda: _leaks(data, thumbs),
        lambda: _omissions(data, thumbs),
        lambda: _distribution(data),
        lambda: _method(data),
    ]
    parts += [b() for b in builders]
    blob = json.dumps(json_safe(data), allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    parts.append(f'</main><script type="application/json" id="facemem-data">{blob}</script></body></html>')
    return "".join(parts)
