"""What the generator under- and over-produces: attribute rates and pose/expression distributions of
generated faces against the training set (Bau et al., "Seeing What a GAN Cannot Generate", ICCV 2019,
for faces). Pure functions over the service's per-image entries and the index's training side.

Inputs, the same in both audit modes:

* ``entries``: the per-image entries of ``POST /neighbors?attributes=1`` (``service.query.neighbors`` called
  in-process, or the JSON of a running service): ``status``, ``attributes`` ({name: probability}) and
  ``geometry`` ({name: value}).
* ``training``: :func:`indexer.attributes.training_side` of the index (in-process), or the body of
  ``GET /v1/attributes`` (server mode).

**Attributes.** A probe calls face *i* positive when its probability is at least the probe's threshold.
Of *n* generated faces, *k* are called positive: the classified rate is q = k/n. With the probe's
true- and false-positive rates TPR and FPR (measured on held-out training identities), adjusted
classify-and-count (Forman 2008) estimates the generated rate as p̂ = clip((q − FPR)/(TPR − FPR), 0, 1).

* Interval: a percentile bootstrap (``n_boot`` replicates) that redraws the generated faces' classified
  rate *and* the probe's measured rates (they come from a finite held-out set). The generated faces
  (one photo each of many people) are drawn as Beta(k + ½, n − k + ½) (:func:`draw_rate`: a Bayesian
  bootstrap that keeps its spread at k = 0). The held-out and training faces cluster by identity
  (CelebA has about 20 photos a person, who share their labels), so they are resampled **by identity**:
  each replicate draws the held-out identities with replacement and recomputes TPR and FPR from their
  summed counts (``heldout_identity_counts``), and the training rate likewise
  (``training_identity_counts``; :func:`identity_sums`, a cluster bootstrap). Treating the faces as
  independent gave 82% coverage and 17% type-I error at 20 photos per identity. Face-level draws
  widened by estimated design effects (k/D of n/D) do as well where clusters are equal and a person's
  photos share the label (BENCHMARKS.md, omissions), but need a plug-in D per rate and draw TPR and
  FPR apart; resampled people give both from the same draw. **Fallback**: a training side without
  the per-identity counts (served or saved by an older version — they are computed from any index's
  arrays when its training side is made —, or borrowed probes, whose held-out faces are another
  index's) or a rate whose events sit in fewer than :data:`MIN_IDENTITIES`
  identities (a bootstrap over them has next to no spread) is drawn the old way, Beta at its design
  effect D (``design_effects``; :mod:`indexer.clusters`). ``resampled`` says how each rate was drawn.
  Replicates with TPR* ≤ FPR* have no estimate; their share is ``undefined_share`` (the interval is
  over the rest). Where q lies significantly outside [FPR, TPR] (``outside_probe_range``) the estimate
  is clipped and its interval collapses on the bound: the counts are then at odds with the probe's
  measured errors, which is itself a sign of domain shift. ``assumption_doubtful`` = that, or a
  label-shift p-value below ``SHIFT_ALPHA``.
* Test: H0 "the generator produces the attribute at the training rate r". Under H0 the classified
  count is k ~ Binomial(n, q0) with q0 = FPR + (TPR − FPR)·r. The p-value is two-sided,
  2·min(P(K ≤ k), P(K ≥ k)), with the binomial probabilities averaged over ``n_null`` draws of
  (r, TPR, FPR) from their own sampling distributions, so the uncertainty of the training rate and of
  the probe's error rates is in the test. Where the index has no labels (borrowed probes), q0 is the
  training faces' own classified rate (the probe is then applied to both sides alike, and TPR/FPR
  cancel out of the test). Benjamini–Hochberg q-values across the attributes tested.

**What the correction assumes** (``assumption`` in the output): the probe errs on generated faces as
it errs on held-out training faces — P(probe score | attribute) is the same on both sides and only
the attribute's prevalence differs (label shift). Generated faces are a domain shift (blur,
artefacts, another crop), which can move a probe's scores; then the corrected rate is biased, and its
interval does not cover that bias. The per-attribute ``label_shift`` diagnostic tests the assumption's
testable part: under label shift the generated probabilities must be a mixture of the held-out
negative and positive distributions; ``ks`` is the smallest Kolmogorov distance to any such mixture
(``mixture_rate`` the best mixing weight, a second estimate of the rate), with an approximate p-value
(small = the assumption is doubtful for that attribute).

**Geometry.** For each of :data:`indexer.geometry.NAMES`: the generated values against a seeded
sample of the training values; the two-sample Kolmogorov–Smirnov distance with its p-value, BH
q-values across the geometry statistics, the Wasserstein-1 distance (in the statistic's own units),
the ratio of the interquartile ranges (generated / training: < 1 = less varied poses or
expressions), and histograms on common bins.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .baselines import bh

log = logging.getLogger(__name__)

ALPHA = 0.05  # a row is flagged when its BH q-value is below this
SHIFT_ALPHA = 0.01  # label_shift p-value below this: the correction's assumption is doubtful for the row
N_BOOT = 2000
MIN_IDENTITIES = 5  # a rate is resampled by identity when at least this many identities have each outcome
N_NULL = 2000
HIST_BINS = 30
ASSUMPTION = (
    "The correction assumes that the probe errs on generated faces exactly as on held-out training faces "
    "(label shift: only the prevalence of the attribute differs). Generated faces are out of domain (blur, "
    "artefacts, other crops); where that moves the probe's scores, the corrected rate is biased and the "
    "interval does not cover the bias. label_shift.p_value tests the assumption's testable part."
)


# ----------------------------------------------------------------------------- estimators


def acc(q: Any, tpr: Any, fpr: Any) -> np.ndarray:
    """Adjusted classify-and-count: clip((q − FPR)/(TPR − FPR), 0, 1); NaN where TPR ≤ FPR."""
    q, tpr, fpr = (np.asarray(v, np.float64) for v in (q, tpr, fpr))
    j = tpr - fpr
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.clip((q - fpr) / j, 0.0, 1.0)
    return np.where(j > 0, est, np.nan)


def draw_rate(k: float, n: float, rng: np.random.Generator, size: int, design_effect: float = 1.0) -> np.ndarray:
    """Draws of a proportion observed as k of n: Beta(k + ½, n − k + ½) (Jeffreys), with k and n divided by
    the sample's ``design_effect`` (faces clustered by identity are worth n / D independent ones).

    Why not Binomial(n, k/n)/n, the plain parametric bootstrap: at k = 0 (no false positive among the
    held-out negatives, no training face called positive) it has no spread at all, and a test or an
    interval built on it is certain of what it only saw once. This is the Bayesian bootstrap of a 0/1
    sample with half a pseudo-count on each side; for moderate k the two agree.
    """
    d = max(1.0, float(design_effect or 1.0))
    return rng.beta(k / d + 0.5, (n - k) / d + 0.5, size)


def identity_counts(rows: Any) -> np.ndarray | None:
    """Per-identity count rows (``[c1, …, ck, identities]``, :func:`indexer.clusters.cluster_counts`) as
    an int array; None where the training side has none (an older version's: the design-effect fallback)."""
    if rows is None or len(rows) == 0:
        return None
    a = np.asarray(rows, np.int64)
    return a if a.ndim == 2 and a.shape[1] >= 2 and a[:, -1].sum() > 0 else None


def identity_sums(counts: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, k) column sums over ``size`` resamples of the identities with replacement (a cluster
    bootstrap: as many identities as there are, each drawn whole). Identities with equal counts are one
    row with a multiplicity, so a resample is a multinomial draw over the rows."""
    m = counts[:, -1].astype(np.float64)
    draws = rng.multinomial(int(m.sum()), m / m.sum(), size=size)
    return draws @ counts[:, :-1]


def _enough_identities(counts: np.ndarray, k_col: int, n_col: int) -> bool:
    """Whether at least MIN_IDENTITIES identities have a hit and as many a miss: with fewer, resampled
    identities give a rate with next to no spread (none at all at k = 0)."""
    k, n, m = counts[:, k_col], counts[:, n_col], counts[:, -1]
    return int(m[k > 0].sum()) >= MIN_IDENTITIES and int(m[n - k > 0].sum()) >= MIN_IDENTITIES


def _ratio(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, k / np.maximum(n, 1), np.nan)


def heldout_rates(probe: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draws of the probe's held-out (TPR, FPR) and how each was drawn: by identity (one resample of the
    held-out identities gives both, from its summed ``[pos, tp, neg, fp]``), or, without per-identity
    counts or with too few identities, Beta at the design effect (the fallback, :func:`draw_rate`)."""
    counts = identity_counts(probe.get("heldout_identity_counts"))
    how = heldout_resampling(probe, counts)
    sums = identity_sums(counts, rng, size) if counts is not None and "identities" in how.values() else None
    out = []
    for key, k_col, n_col, k, n, d in (
        ("heldout_pos", 1, 0, "tp", "n_heldout_pos", "design_effect_pos"),
        ("heldout_neg", 3, 2, "fp", "n_heldout_neg", "design_effect_neg"),
    ):
        if sums is not None and how[key] == "identities":
            out.append(_ratio(sums[:, k_col], sums[:, n_col]))
        else:
            out.append(draw_rate(probe[k], probe[n], rng, size, probe.get(d, 1.0)))
    return out[0], out[1], how


def heldout_resampling(probe: dict, counts: np.ndarray | None = None) -> dict[str, str]:
    """How :func:`heldout_rates` draws TPR (``heldout_pos``) and FPR (``heldout_neg``): ``identities``
    or ``design_effect`` (no per-identity counts, or too few identities with each outcome); ``counts``: the
    probe's :func:`identity_counts` when the caller has parsed them already."""
    if counts is None:
        counts = identity_counts(probe.get("heldout_identity_counts"))
    return {
        key: "identities" if counts is not None and _enough_identities(counts, k_col, n_col) else "design_effect"
        for key, k_col, n_col in (("heldout_pos", 1, 0), ("heldout_neg", 3, 2))
    }


def training_rate_draws(row: dict, k: float, n: float, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """Draws of the training side's rate (k of n faces: labelled positives, or the probe's calls), by
    identity where ``training_identity_counts`` allows (rows ``[faces, hits, identities]``), else Beta at
    ``design_effect_training`` (the fallback)."""
    counts = identity_counts(row.get("training_identity_counts"))
    if counts is not None and _enough_identities(counts, 1, 0):
        sums = identity_sums(counts, rng, size)
        return _ratio(sums[:, 1], sums[:, 0]), "identities"
    return draw_rate(k, n, rng, size, row.get("design_effect_training", 1.0)), "design_effect"


def acc_bootstrap(
    k: int,
    n: int,
    tp: int,
    n_pos: int,
    fp: int,
    n_neg: int,
    rng: np.random.Generator,
    n_boot: int = N_BOOT,
    deff: tuple[float, float] = (1.0, 1.0),
    counts: list | None = None,
) -> np.ndarray:
    """Bootstrap replicates of the ACC estimate: the generated faces' classified rate and the probe's
    held-out TPR and FPR all redrawn; the held-out ones by identity from ``counts`` (rows
    ``[pos, tp, neg, fp, identities]``), or without them at the design effects ``deff`` of the held-out
    positives and negatives (:func:`heldout_rates`)."""
    probe = {
        "tp": tp,
        "n_heldout_pos": n_pos,
        "fp": fp,
        "n_heldout_neg": n_neg,
        "design_effect_pos": deff[0],
        "design_effect_neg": deff[1],
        "heldout_identity_counts": counts,
    }
    q = draw_rate(k, n, rng, n_boot)
    tpr, fpr, _ = heldout_rates(probe, rng, n_boot)
    return acc(q, tpr, fpr)


def rate_interval(reps: np.ndarray, level: float = 0.95) -> tuple[list[float] | None, float]:
    """Percentile interval of the defined replicates, and the share of undefined ones."""
    ok = reps[np.isfinite(reps)]
    undefined = 1 - len(ok) / len(reps) if len(reps) else 1.0
    if len(ok) == 0:
        return None, undefined
    a = (1 - level) / 2
    return [float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a))], float(undefined)


def rate_test(k: int, n: int, q0_draws: np.ndarray) -> float:
    """Two-sided p-value of k positive calls among n when the classified rate under H0 is uncertain
    (``q0_draws``: its sampling distribution): binomial tail probabilities averaged over the draws."""
    from scipy.stats import binom

    q0 = np.clip(q0_draws[np.isfinite(q0_draws)], 0.0, 1.0)  # a resample without positives has no rate
    lo = float(np.mean(binom.cdf(k, n, q0)))
    hi = float(np.mean(binom.sf(k - 1, n, q0)))
    return min(1.0, 2 * min(lo, hi))


def null_classified_rate(
    row: dict, source: str, rng: np.random.Generator, n_null: int = N_NULL
) -> tuple[float, np.ndarray, dict]:
    """(estimate, draws, how each rate was drawn) of the classified rate a generator at the training rate
    would show. The training rate and the probe's held-out rates are each redrawn from their own
    samples, by identity where the training side carries per-identity counts (:func:`heldout_rates`,
    :func:`training_rate_draws`)."""
    p = row["probe"]
    if source == "probe":
        nt, kt = row["n_training"], row["n_training_calls"]
        draws, how = training_rate_draws(row, kt, nt, rng, n_null)
        return kt / nt, draws, {"training": how}
    r, nt = row["training_rate"], row["n_training"]
    tpr, fpr, held = heldout_rates(p, rng, n_null)
    rr, how = training_rate_draws(row, round(r * nt), nt, rng, n_null)
    return p["fpr"] + (p["tpr"] - p["fpr"]) * r, fpr + (tpr - fpr) * rr, {**held, "training": how}


def outside_probe_range(k: int, n: int, probe: dict, rng: np.random.Generator, n_null: int = N_NULL) -> bool:
    """Whether k of n calls is significantly (one-sided p < SHIFT_ALPHA) below what false positives alone
    give (q < FPR) or above what a generator made only of positives gives (q > TPR). Either contradicts
    the probe's measured error rates on these faces, whatever the true rate: a sign of domain shift.
    (A true omission sits at q ≈ FPR, inside the range.) ``probe``: its held-out counts, per identity
    or with design effects, as the training side gives them (:func:`heldout_rates`)."""
    from scipy.stats import binom

    tpr, fpr, _ = heldout_rates(probe, rng, n_null)
    fpr, tpr = fpr[np.isfinite(fpr)], tpr[np.isfinite(tpr)]
    below = float(np.mean(binom.cdf(k, n, fpr)))
    above = float(np.mean(binom.sf(k - 1, n, tpr)))
    return min(below, above) < SHIFT_ALPHA


def label_shift(generated_p: np.ndarray, heldout: dict | None) -> dict | None:
    """Smallest KS distance between the generated probabilities and a mixture π·F_pos + (1 − π)·F_neg of
    the held-out class distributions, the best π, and an approximate p-value (Kolmogorov distribution at
    the effective sample size; it ignores that π was fitted, so it flags too rarely rather than too often)."""
    from scipy.stats import kstwobign

    if heldout is None:
        return None
    neg = np.asarray([v for v in heldout.get("neg", []) if v is not None], np.float64)
    pos = np.asarray([v for v in heldout.get("pos", []) if v is not None], np.float64)
    g = np.sort(generated_p[np.isfinite(generated_p)])
    if len(g) == 0 or len(neg) == 0 or len(pos) == 0:
        return None
    grid = np.unique(np.concatenate([g, neg, pos]))
    fg = np.searchsorted(g, grid, side="right") / len(g)
    fn = np.searchsorted(np.sort(neg), grid, side="right") / len(neg)
    fp = np.searchsorted(np.sort(pos), grid, side="right") / len(pos)
    pis = np.linspace(0, 1, 201)
    d = np.abs(fg[None, :] - (pis[:, None] * fp[None, :] + (1 - pis[:, None]) * fn[None, :])).max(axis=1)
    i = int(np.argmin(d))
    m = len(neg) + len(pos)
    n_eff = len(g) * m / (len(g) + m)
    return {"ks": float(d[i]), "p_value": float(kstwobign.sf(d[i] * np.sqrt(n_eff))), "mixture_rate": float(pis[i])}


# ----------------------------------------------------------------------------- the section


def _generated(entries: list[dict]) -> tuple[list[dict], int]:
    ok = [e for e in entries if e.get("status") == "ok"]
    return ok, len(entries) - len(ok)


def analyse_attributes(entries: list[dict], training: dict, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """``attributes`` block: one row per attribute of the index's probes, ranked (see module docstring)."""
    side = training.get("attributes") or {}
    ok, n_no_face = _generated(entries)
    with_attrs = [e for e in ok if isinstance(e.get("attributes"), dict)]
    base: dict = {
        "available": False,
        "reason": None,
        "n_images": len(entries),
        "n_generated": len(with_attrs),
        "n_without_face": n_no_face,
        "alpha": ALPHA,
        "n_boot": n_boot,
        "assumption": ASSUMPTION,
        "rows": [],
    }
    if not side.get("available"):
        base["reason"] = side.get("reason") or "the index has no attribute probes"
        return base
    if ok and not with_attrs:
        base["reason"] = "the entries carry no attribute probabilities (request POST /neighbors with attributes=1)"
        return base
    if not with_attrs:
        base["reason"] = "no generated face was found"
        return base
    source = side.get("training_rate_source", "labels")
    n = len(with_attrs)
    rows = []
    for j, tr in enumerate(side["rows"]):
        name, probe = tr["name"], tr["probe"]
        rng = np.random.default_rng([seed, j])
        row = _untested_row(tr, n)
        thr = probe.get("threshold")
        p = np.array([np.nan if e["attributes"].get(name) is None else e["attributes"][name] for e in with_attrs])
        no_rate = source == "labels" and tr.get("training_rate") is None
        if tr["status"] != "ok" or thr is None or no_rate or not np.isfinite(p).all():
            rows.append(row)
            continue
        k = int((p >= thr).sum())
        tp, n_pos, fp, n_neg = probe["tp"], probe["n_heldout_pos"], probe["fp"], probe["n_heldout_neg"]
        if source == "probe":
            row["training_rate"] = float(acc(tr["n_training_calls"] / tr["n_training"], probe["tpr"], probe["fpr"]))
        q0, q0_draws, resampled = null_classified_rate(tr, source, rng)
        deff = (probe.get("design_effect_pos", 1.0), probe.get("design_effect_neg", 1.0))
        counts = probe.get("heldout_identity_counts")
        reps = acc_bootstrap(k, n, tp, n_pos, fp, n_neg, rng, n_boot, deff, counts)
        interval, undefined = rate_interval(reps)
        row.update(
            generated_rate=float(acc(k / n, probe["tpr"], probe["fpr"])),
            interval=interval,
            undefined_share=undefined,
            generated_calls=k,
            classified_rate=k / n,
            expected_classified_rate=float(q0),
            p_value=rate_test(k, n, q0_draws),
            direction="under" if k / n < q0 else "over",
            outside_probe_range=outside_probe_range(k, n, probe, rng),
            design_effects={
                "heldout_pos": deff[0],
                "heldout_neg": deff[1],
                "training": tr.get("design_effect_training", 1.0),
            },
            resampled={**heldout_resampling(probe), **resampled},
            label_shift=label_shift(p, tr.get("heldout_p")),
        )
        shifted = bool(row["label_shift"] and row["label_shift"]["p_value"] < SHIFT_ALPHA)
        row["assumption_doubtful"] = shifted or row["outside_probe_range"]
        rows.append(row)
    q = bh([np.nan if r["p_value"] is None else r["p_value"] for r in rows])
    for r, qv in zip(rows, q):
        if np.isfinite(qv):
            r["q_value"] = float(qv)
            r["flagged"] = bool(qv < ALPHA)
    base.update(
        available=True,
        training_rate_source=source,
        probes=side.get("source"),
        borrowed_from=side.get("borrowed_from"),
        rows=sorted(rows, key=_rank_key),
        n_flagged_under=sum(r["flagged"] and r["direction"] == "under" for r in rows),
        n_flagged_over=sum(r["flagged"] and r["direction"] == "over" for r in rows),
        n_tested=int(np.isfinite(q).sum()),
    )
    return base


def _untested_row(tr: dict, n: int) -> dict:
    """An attribute's row before (or without) its statistics: what the training side says of it."""
    probe = tr["probe"]
    return {
        "name": tr["name"],
        "status": tr["status"],
        "training_rate": tr.get("training_rate"),
        "generated_rate": None,
        "interval": None,
        "p_value": None,
        "q_value": None,
        "direction": None,
        "flagged": False,
        "probe_auc": probe.get("auc"),
        "probe_tpr": probe.get("tpr"),
        "probe_fpr": probe.get("fpr"),
        "n_heldout_pos": probe.get("n_heldout_pos"),
        "n_heldout_neg": probe.get("n_heldout_neg"),
        "n_generated": n,
        "examples": list(tr.get("examples") or []),
    }


def _rank_key(r: dict) -> tuple:
    """Flagged first (most under-produced first, by the gap to the training rate), then by q-value."""
    tested = r["q_value"] is not None
    gap = (r["generated_rate"] or 0) - (r["training_rate"] or 0) if tested else 0.0
    return (not r["flagged"], not tested, gap if r["flagged"] else (r["q_value"] or 1.0), r["name"])


def _summary(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "iqr": None}
    q10, q25, q50, q75, q90 = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "median": float(q50),
        "p10": float(q10),
        "p90": float(q90),
        "iqr": float(q75 - q25),
    }


def analyse_geometry(entries: list[dict], training: dict) -> dict:
    """``geometry`` block: training against generated distribution of every geometry statistic."""
    from scipy.stats import ks_2samp, wasserstein_distance

    from indexer.geometry import LABELS

    side = training.get("geometry") or {}
    ok, _ = _generated(entries)
    with_geo = [e for e in ok if isinstance(e.get("geometry"), dict)]
    base: dict = {"available": False, "reason": None, "n_generated": len(with_geo), "alpha": ALPHA, "stats": []}
    if not side.get("available"):
        base["reason"] = side.get("reason") or "the index has no geometry"
        return base
    if not with_geo:
        base["reason"] = (
            "the entries carry no geometry (request POST /neighbors with attributes=1)" if ok else "no face found"
        )
        return base
    stats = []
    for name in side["names"]:
        t = np.array([v for v in side["sample"].get(name, []) if v is not None], np.float64)
        g = np.array([e["geometry"].get(name) for e in with_geo if e["geometry"].get(name) is not None], np.float64)
        st: dict = {"name": name, "label": LABELS.get(name, name), "training": _summary(t), "generated": _summary(g)}
        if len(t) and len(g):
            ks = ks_2samp(g, t)
            lo, hi = np.quantile(np.concatenate([t, g]), [0.005, 0.995])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, HIST_BINS + 1)
            st.update(
                ks=float(ks.statistic),
                p_value=float(ks.pvalue),
                wasserstein=float(wasserstein_distance(g, t)),
                spread_ratio=(st["generated"]["iqr"] / st["training"]["iqr"]) if st["training"]["iqr"] else None,
                histogram={
                    "edges": edges.tolist(),
                    "training": np.histogram(np.clip(t, lo, hi), edges, density=True)[0].tolist(),
                    "generated": np.histogram(np.clip(g, lo, hi), edges, density=True)[0].tolist(),
                },
            )
        stats.append(st)
    q = bh([s.get("p_value", np.nan) for s in stats])
    for s, qv in zip(stats, q):
        s["q_value"] = float(qv) if np.isfinite(qv) else None
        s["flagged"] = bool(np.isfinite(qv) and qv < ALPHA)
    base.update(available=True, n_training_sample=side.get("sample_size"), stats=stats)
    return base


def analyse(entries: list[dict], training: dict, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """The report section's data: ``{"attributes": {...rows...}, "geometry": {...}, "seed": seed}``.

    ``entries``: ``POST /neighbors?attributes=1`` per-image entries; ``training``: the index's training
    side (``indexer.attributes.training_side`` or ``GET /v1/attributes``). Deterministic given ``seed``.
    """
    return {
        "attributes": analyse_attributes(entries, training, seed, n_boot),
        "geometry": analyse_geometry(entries, training),
        "seed": seed,
    }
