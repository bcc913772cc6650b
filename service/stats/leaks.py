"""Which training people leak: per training identity, more same-person matches than strangers give?

The audit's primary test asks whether generated faces are the same person as their nearest training
face more often than strangers are, over the whole sample. This module asks *who*: for every training
identity i, g_i generated faces (of n_gen) have i as their top-1 semantic neighbour under the identity
threshold (the ``same_person`` decision of :mod:`service.stats.memorization`), against r_i of the
stranger null's n_null faces.

Why a conditional test, and not "g_i against an expected count": how often strangers land on a
training person varies far beyond what the person's number of images explains ("hub" faces that many
strangers resemble), and with ~1% of strangers under the identity threshold the null holds only a few
hits per identity, mostly none. A p-value from an estimated rate is not valid when that rate rests on
0–2 null hits, and one from a model of rates (say, proportional to images) flags every hub the model
gets wrong. Conditioning removes the unknown rate: if generated faces and strangers hit i at the same
rate, then given the T_i = g_i + r_i hits on i, which of them are generated is a draw of n_gen from
n_gen + n_null faces — the one-sided Fisher exact (hypergeometric) test, exact for any per-identity
rate, hubs included (under Poisson sampling the same argument gives Binomial(T_i, n_gen/(n_gen+n_null))).
An identity with g_i = 0 has p = 1.

Why BH over a subset, and which one: the p-values are valid conditionally on every T_i, so
Benjamini–Hochberg may run over any set of identities chosen from the T_i alone; choosing by g_i would
not be valid. Identities with T_i = 0 have p = 1 whatever happens, and most identities with T_i = 1
or 2 cannot reach significance at all (their smallest attainable p, all T_i hits generated, exceeds
what BH could ever accept). Tarone's rule as Gilbert (2005) applied it to the FDR picks the set: the
smallest K with at most K identities whose smallest attainable p is ≤ fdr/K; BH at ``fdr`` runs over
those m(K) identities. Both steps read only the T_i, so FDR stays controlled (measured in
``tests/test_leaks.py``: any discovery in ≈1–3% of null worlds, where FDR equals the family-wise
error), and m shrinks from thousands of identities to the handful with enough hits to be testable.

Why an ``expected`` count beside it (descriptive, not the test): the null's per-stranger rate of hits
on i, shrunk toward a prior proportional to i's training images — q_i = (r_i + s·w_i)/(n_null + s/ρ),
the posterior mean of a Gamma prior with mean ρ·w_i (ρ = the null's overall same-person rate, w_i = i's
share of training images) — so that identities the null never hit are expected at their image share,
not 0, and hubs at what the null saw. The prior's strength s comes from the null itself (method of
moments): the r_i's dispersion over Poisson(n_null·ρ·w_i) is 1 + R/s, so s = R/(φ − 1) (R the null's
hits, φ the dispersion); no overdispersion means the image-share model alone.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from .baselines import bh

log = logging.getLogger(__name__)

FDR = 0.05
MAX_ROWS = 100  # significant identities listed (all are counted)
GENERATED_LISTED = 50  # generated images named per identity
TRAINING_EXAMPLES = 6  # training files named per identity (the ones the generated faces matched)
METHOD = (
    "per training identity: one-sided Fisher exact test of its same-person hits among the generated faces "
    "against the stranger null's, given its total hits (exact for any per-identity null rate); "
    "Benjamini–Hochberg over the identities with enough hits to be significant (Tarone's rule, Gilbert 2005)"
)


def conditional_p(g: np.ndarray, r: np.ndarray, n_gen: int, n_null: int) -> np.ndarray:
    """One-sided exact p of at least g_i generated hits given T_i = g_i + r_i hits on identity i (Fisher's
    exact test: hypergeometric, n_gen draws from n_gen + n_null faces). g_i = 0 or no null: 1."""
    g, r = np.asarray(g, np.int64), np.asarray(r, np.int64)
    p = np.ones(len(g), np.float64)
    if n_null < 1 or n_gen < 1:
        return p
    hit = g > 0
    p[hit] = sps.hypergeom.sf(g[hit] - 1, n_gen + n_null, g[hit] + r[hit], n_gen)
    return np.clip(p, 0.0, 1.0)


def smallest_p(total: np.ndarray, n_gen: int, n_null: int) -> np.ndarray:
    """The smallest p an identity with ``total`` hits can reach: as many of them generated as possible."""
    t = np.asarray(total, np.int64)
    if n_null < 1 or n_gen < 1:
        return np.ones(len(t))
    g = np.minimum(t, n_gen)
    return conditional_p(g, t - g, n_gen, n_null)


def tarone_set(min_p: np.ndarray, fdr: float) -> np.ndarray:
    """Mask of the identities BH runs over: Tarone's rule (Gilbert 2005), the smallest K with
    m(K) = #{min_p ≤ fdr/K} ≤ K; a function of the attainable p-values (hence of the T_i) only."""
    min_p = np.asarray(min_p, np.float64)
    if not len(min_p):
        return np.zeros(0, bool)
    sorted_p = np.sort(min_p)
    ks = np.arange(1, len(min_p) + 1)
    m_k = np.searchsorted(sorted_p, fdr / ks, side="right")
    k = int(ks[np.argmax(m_k <= ks)])
    return min_p <= fdr / k


def test_counts(g: np.ndarray, r: np.ndarray, n_gen: int, n_null: int, fdr: float = FDR) -> dict[str, np.ndarray]:
    """The test on aligned count arrays (one entry per identity): ``p``, ``q`` (1 outside the tested
    set), ``tested`` and ``significant`` masks."""
    g, r = np.asarray(g, np.int64), np.asarray(r, np.int64)
    p = conditional_p(g, r, n_gen, n_null)
    tested = tarone_set(smallest_p(g + r, n_gen, n_null), fdr) & (g + r > 0)
    q = np.ones(len(g))
    q[tested] = bh(p[tested])
    return {"p": p, "q": q, "tested": tested, "significant": tested & (q <= fdr)}


def leaks(
    generated: Sequence[Mapping],
    null_identities: Sequence[str | None],
    null_same: Sequence[bool],
    training_images: Mapping[str, int] | None = None,
    fdr: float = FDR,
    null_source: str | None = None,
) -> dict:
    """The ``leaks`` block of the report (module docstring).

    ``generated``: one record per generated face with a top-1 semantic neighbour — ``image``,
    ``identity`` (its top-1 training identity, None unknown), ``file`` (that training face) and
    ``same_person`` (under the identity threshold). ``null_identities`` / ``null_same``: the stranger
    null's faces, their top-1 identity and same-person decision, aligned. ``training_images``: each
    training identity's number of indexed faces (None: unknown; only ``expected`` reads it).
    """
    n_gen, n_null = len(generated), len(null_identities)
    g_count: Counter = Counter()
    gen_images: dict[str, list[str]] = defaultdict(list)
    train_files: dict[str, list[str]] = defaultdict(list)
    for rec in generated:
        ident = rec.get("identity")
        if not rec.get("same_person") or ident is None:
            continue
        ident = str(ident)
        g_count[ident] += 1
        gen_images[ident].append(str(rec["image"]))
        if rec.get("file") is not None and rec["file"] not in train_files[ident]:
            train_files[ident].append(rec["file"])
    r_count = Counter(str(i) for i, s in zip(null_identities, null_same) if s and i is not None)
    images = {str(k): int(v) for k, v in (training_images or {}).items()}
    names = sorted(set(images) | set(g_count) | set(r_count))
    g = np.asarray([g_count.get(k, 0) for k in names], np.int64)
    r = np.asarray([r_count.get(k, 0) for k in names], np.int64)
    res = test_counts(g, r, n_gen, n_null, fdr)
    rates, prior = _expected(r, [images.get(k) for k in names] if images else None, n_null)
    sig = np.flatnonzero(res["significant"])
    sig = sig[np.lexsort((sig, res["p"][sig], res["q"][sig]))]  # by q, then p, then name
    rows = [
        {
            "identity": names[i],
            "generated": int(g[i]),
            "expected": float(n_gen * rates[i]),
            "null_hits": int(r[i]),
            "p": float(res["p"][i]),
            "q": float(res["q"][i]),
            "training_images": images.get(names[i]),
            "generated_images": gen_images[names[i]][:GENERATED_LISTED],
            "training_examples": train_files[names[i]][:TRAINING_EXAMPLES],
        }
        for i in sig[:MAX_ROWS]
    ]
    tested = int(res["tested"].sum())
    out = {
        "method": METHOD,
        "fdr": fdr,
        "identities": len(names),
        "identities_with_hits": int(np.sum(g + r > 0)),
        "identities_tested": tested,
        "count": len(sig),
        "listed": len(rows),
        "generated_faces": n_gen,
        "generated_hits": int(g.sum()),
        "null_faces": n_null,
        "null_hits": int(r.sum()),
        "null_source": null_source,
        "expected_prior": prior,
        "rows": rows,
    }
    if n_null < 1:
        out["note"] = "no stranger null: no identity can be tested"
    elif not int(g.sum()):
        out["note"] = "no generated face is the same person as its nearest training face"
    log.debug("leaks: %d of %d tested identities significant", len(sig), tested)
    return out


def _expected(r: np.ndarray, images: list[int | None] | None, n_null: int) -> tuple[np.ndarray, dict]:
    """Per-stranger rates q_i for every identity (module docstring): the null's counts shrunk toward
    ρ·(images share) with the method-of-moments strength; without image counts, half a hit each."""
    r = np.asarray(r, np.float64)
    if n_null < 1:
        return np.full(len(r), np.nan), {"prior": None}
    if images is None:
        return (r + 0.5) / (n_null + 1.0), {"prior": "half a hit per identity (no image counts)"}
    w = np.maximum(np.asarray([1 if v is None else v for v in images], np.float64), 1.0)
    w = w / w.sum()
    hits = float(r.sum())
    rho = max(hits, 0.5) / n_null  # no null hit at all: the rate is below ~1/n_null
    info: dict = {
        "prior": "the null's same-person rate × the identity's share of training images",
        "null_rate": rho,
        "strength": None,
    }
    mu = hits * w
    if hits < 1 or len(r) < 2:
        return rho * w, info
    phi = float(np.sum((r - mu) ** 2 / mu) / (len(r) - 1))  # dispersion of r_i over Poisson(mu_i)
    info["dispersion"] = phi
    if phi <= 1.0:
        return rho * w, info  # no overdispersion: the image-share model alone
    s = hits / (phi - 1.0)
    info["strength"] = s  # prior weight, in null hits
    return (r + s * w) / (n_null + s / rho), info
