"""Exact tests of a generated rate against a null baseline, and multiple-testing correction.

Why not a one-sample binomial test at the baseline rate p0: p0 is itself measured, on a null sample
of N faces (each training face's nearest other-identity distance, or real strangers run through the
same pipeline), and with m of them under the threshold its uncertainty is not negligible (m ≈ 100
of 10,000 at the 1% identity threshold, m ≈ 6 under the copy threshold). Two exact tests cover the
two ways a threshold relates to the null sample:

* the threshold is an order statistic of the null sample itself (the identity threshold is its
  false_match_rate quantile): under H0 the generated values and the null values are exchangeable,
  and the number of generated values under the (m+1)-th smallest null value is beta-binomial
  (n, m + 1, N − m). Exact (conservative by at most one rank).
* the threshold was fixed otherwise (copy thresholds, a user threshold, a reference sample): the
  two counts are binomials with one common rate under H0, and Fisher's exact test (conditional on
  the total) is the exact test.

Both are one-sided: "the generator is under the threshold more often than the null".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from indexer.clusters import design_effect


def order_statistic_p_value(k: int, n: int, m: int, n_null: int) -> float | None:
    """P(K ≥ k) for K generated values (of n) under the (m+1)-th smallest of n_null null values.

    ``m`` = null values strictly under the threshold. With m = n_null the threshold is above the whole
    null sample and nothing can be said (None)."""
    if n == 0 or n_null == 0 or m >= n_null:
        return None
    return float(sps.betabinom.sf(k - 1, n, m + 1, n_null - m))


def fisher_p_value(k: int, n: int, m: int, n_null: int) -> float | None:
    """One-sided Fisher exact test: is k/n larger than m/n_null?"""
    if n == 0 or n_null == 0:
        return None
    return float(sps.fisher_exact([[k, n - k], [m, n_null - m]], alternative="greater").pvalue)


def rate_test(
    k: int,
    n: int,
    null_values: np.ndarray,
    threshold: float,
    order_statistic: bool,
    clusters: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
) -> dict:
    """Compare k of n generated faces under ``threshold`` with the share of ``null_values`` under it.

    ``clusters`` (one label per null value, e.g. the null face's training identity) makes the test
    account for dependent null values: several photos of one person give correlated distances, so
    the null share varies more than a binomial of that many faces (measured: 2.2× on celeba-like
    worlds), and an audit of thousands of faces, whose own share is precise, would reject a clean
    generator far more often than ``alpha``. ``neighbours`` (the cluster of each null value's nearest
    face) ties two people who are each other's nearest stranger into one cluster: both their
    distances are small together. The null sample then counts as its effective size N / D, with D
    the cluster-robust design effect (:func:`indexer.clusters.design_effect`)."""
    null = np.asarray(null_values, np.float64)
    keep = np.isfinite(null)
    null = null[keep]
    m, n_null = int(np.sum(null < threshold)), int(len(null))
    deff = 1.0
    if clusters is not None and n_null:
        links = None if neighbours is None else np.asarray(neighbours)[keep]
        deff = design_effect(null < threshold, np.asarray(clusters)[keep], neighbours=links)
    m_eff, n_eff = m / deff, n_null / deff
    if deff > 1.0:
        p = effective_p_value(k, n, m_eff, n_eff)
    else:
        p = order_statistic_p_value(k, n, m, n_null) if order_statistic else fisher_p_value(k, n, m, n_null)
    rate = m / n_null if n_null else None
    return {
        "null_count": m,
        "null_samples": n_null,
        "null_rate": rate,
        "null_rate_interval": clopper_pearson(m, n_null) if deff <= 1.0 else _effective_interval(m_eff, n_eff),
        "design_effect": deff,
        "null_samples_effective": n_eff,
        "expected": None if rate is None else rate * n,
        "p_value": p,
        "test": (
            "beta-binomial with the null sample at its effective size (design effect of its clusters), one-sided"
            if deff > 1.0
            else "beta-binomial (threshold = a quantile of the null sample), one-sided"
            if order_statistic
            else "Fisher exact, one-sided"
        ),
    }


def effective_p_value(k: int, n: int, m_eff: float, n_eff: float) -> float | None:
    """P(K ≥ k) for K ~ beta-binomial(n, m_eff + 1, n_eff − m_eff): the generated count under a null
    rate known from a sample worth ``n_eff`` independent values, ``m_eff`` of them under the threshold."""
    if n == 0 or n_eff <= 0 or m_eff >= n_eff:
        return None
    return float(sps.betabinom.sf(k - 1, n, m_eff + 1, n_eff - m_eff))


def _effective_interval(m_eff: float, n_eff: float, confidence: float = 0.95) -> list[float] | None:
    """Jeffreys interval of the null rate at the effective sample size."""
    if n_eff <= 0:
        return None
    a = (1 - confidence) / 2
    return [
        float(sps.beta.ppf(a, m_eff + 0.5, n_eff - m_eff + 0.5)),
        float(sps.beta.ppf(1 - a, m_eff + 0.5, n_eff - m_eff + 0.5)),
    ]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> list[float] | None:
    if n == 0:
        return None
    ci = sps.binomtest(k, n).proportion_ci(confidence, method="exact")
    return [float(ci.low), float(ci.high)]


def holm(p_values: dict[str, float | None], alpha: float = 0.05) -> dict[str, dict]:
    """Holm's step-down adjustment of a family of p-values (None = test not run, left out)."""
    items = sorted(((p, name) for name, p in p_values.items() if p is not None), key=lambda t: t[0])
    m = len(items)
    out: dict[str, dict] = {name: {"p_value": None, "p_holm": None, "reject": None} for name in p_values}
    running = 0.0
    for rank, (p, name) in enumerate(items):
        running = max(running, min(1.0, (m - rank) * p))
        out[name] = {"p_value": p, "p_holm": running, "reject": running < alpha}
    return out


def bh(pvalues: Any) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up, monotone); NaN p-values stay NaN and are not counted."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return out
