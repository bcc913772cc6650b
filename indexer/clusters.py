"""How much a sample of dependent 0/1 outcomes is worth: the design effect of clustered data.

Why: several photos of one person give correlated outcomes (their distances to strangers, their
attribute labels and probe calls), so a share measured on N faces varies more than a binomial of N
would. Tests and intervals that treat the faces as independent then claim more certainty than the
data hold, the more so the larger the audit. The design effect D (Kish) is the ratio of the share's
cluster-robust variance to the binomial one; the sample then counts as N / D independent faces.
"""

from __future__ import annotations

import numpy as np


def codes(labels: np.ndarray | list) -> np.ndarray:
    """Cluster labels as ints; unknown ones (−1, NaN, None) each a cluster of their own."""
    a = np.asarray(labels)
    n = len(a)
    if a.dtype.kind == "f":  # codes that went through JSON as numbers (NaN: unknown)
        a = np.where(np.isfinite(a), a, -1).astype(np.int64)
    elif a.dtype.kind not in "iu":
        known = np.array([v is not None for v in a.tolist()], bool)
        inv = np.unique(a.astype(str), return_inverse=True)[1]
        a = np.where(known, inv, -1)
    a = a.astype(np.int64)
    return np.where(a >= 0, a, -1 - np.arange(n))


def _robust_variance(hit: np.ndarray, labels: np.ndarray, share: float) -> float:
    """Cluster-robust (linearised ratio) variance of the share of ``hit``, clusters by ``labels``."""
    c_codes = np.unique(labels, return_inverse=True)[1]
    size = np.bincount(c_codes).astype(np.float64)
    hits = np.bincount(c_codes, weights=hit.astype(np.float64))
    c, n = len(size), len(hit)
    if c < 2:
        return 0.0
    return c / (c - 1) * float(np.sum((hits - share * size) ** 2)) / n**2


def _dyadic_variance(hit: np.ndarray, own: np.ndarray, other: np.ndarray, share: float) -> float:
    """Dyadic cluster-robust variance of the share of ``hit`` when each value involves two identities
    (its own and its nearest stranger's) and two values are dependent when they share either one
    (Fafchamps & Gubert 2007; Aronow, Samii & Assenova 2015): Σ_k S_k² − Σ_p T_p², over n², with S_k
    the summed residuals of the values that involve identity k and T_p those of the values with the
    same pair of identities (counted twice in the first sum)."""
    n = len(hit)
    e = hit.astype(np.float64) - share
    ids = np.unique(np.concatenate([own, other]), return_inverse=True)[1]
    per_identity = np.bincount(ids, weights=np.concatenate([e, e]))
    lo, hi = np.minimum(ids[:n], ids[n:]), np.maximum(ids[:n], ids[n:])
    pair = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)[1].ravel()
    per_pair = np.bincount(pair, weights=e)
    g = len(per_identity)
    return g / max(g - 1, 1) * float(np.sum(per_identity**2) - np.sum(per_pair**2)) / n**2


def cluster_counts(columns: list[np.ndarray], clusters: np.ndarray | list) -> list[list[int]]:
    """Per-cluster sums of 0/1 ``columns``, collapsed to their distinct rows: ``[[c1, …, ck, clusters], …]``.

    Why: a cluster bootstrap (resample whole identities with replacement) needs only each identity's
    counts, and identities with the same counts are interchangeable, so the distinct rows with their
    multiplicity are all of it — a few hundred small rows where the faces are hundreds of thousands."""
    own = codes(clusters)
    if len(own) == 0:
        return []
    inv = np.unique(own, return_inverse=True)[1].reshape(-1)
    g = int(inv.max()) + 1
    per = np.stack([np.bincount(inv, weights=np.asarray(c, np.float64), minlength=g) for c in columns], axis=1)
    rows, m = np.unique(np.rint(per).astype(np.int64), axis=0, return_counts=True)
    return [[*(int(v) for v in r), int(k)] for r, k in zip(rows, m)]


def design_effect(hit: np.ndarray, clusters: np.ndarray | list, neighbours: np.ndarray | list | None = None) -> float:
    """Kish's design effect of the share of ``hit``: its cluster-robust variance over the binomial
    variance, at least 1.

    ``neighbours``: each value's second identity (its nearest stranger's), for dependence that runs
    through either — photos of one person, and two look-alike people who are each other's nearest
    stranger: the dyadic cluster-robust variance (:func:`_dyadic_variance`), never below the one-way
    one. (The first version joined the clusters of hits with their neighbours' by union-find; forming
    clusters from the outcome roughly doubled the design effect at 10 photos per identity.)"""
    hit = np.asarray(hit, bool)
    n = len(hit)
    share = float(hit.mean()) if n else 0.0
    if n < 2 or share in (0.0, 1.0):
        return 1.0
    own = codes(clusters)
    variance = _robust_variance(hit, own, share)
    if neighbours is not None:
        other = codes(neighbours)
        other = np.where(other < 0, other - n, other)  # an unknown neighbour is no one's own identity
        variance = max(variance, _dyadic_variance(hit, own, other, share))
    return max(1.0, variance / (share * (1 - share) / n))
