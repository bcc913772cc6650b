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


def merge(own: np.ndarray, other: np.ndarray, link: np.ndarray) -> np.ndarray:
    """Cluster codes ``own`` with the clusters of ``own[i]`` and ``other[i]`` joined wherever ``link[i]``
    (union-find): two people who are each other's nearest stranger are one cluster."""
    labels, inv = np.unique(np.concatenate([own, other]), return_inverse=True)
    parent = np.arange(len(labels))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    a_codes, b_codes = inv[: len(own)], inv[len(own) :]
    for a, b in zip(a_codes[link], b_codes[link]):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(int(a)) for a in a_codes], np.int64)


def design_effect(hit: np.ndarray, clusters: np.ndarray | list, neighbours: np.ndarray | list | None = None) -> float:
    """Kish's design effect of the share of ``hit``: its cluster-robust (linearised ratio) variance over
    the binomial variance, at least 1. ``neighbours``: a second cluster label per value, joined to the
    first wherever ``hit`` (:func:`merge`)."""
    hit = np.asarray(hit, bool)
    n = len(hit)
    share = float(hit.mean()) if n else 0.0
    if n < 2 or share in (0.0, 1.0):
        return 1.0
    own = codes(clusters)
    if neighbours is not None:
        own = merge(own, codes(neighbours), hit)
    c_codes = np.unique(own, return_inverse=True)[1]
    size = np.bincount(c_codes).astype(np.float64)
    hits = np.bincount(c_codes, weights=hit.astype(np.float64))
    c = len(size)
    if c < 2:
        return 1.0
    robust = c / (c - 1) * float(np.sum((hits - share * size) ** 2)) / n**2
    return max(1.0, robust / (share * (1 - share) / n))
