"""Collisions inside one batch (the birthday paradox): near-duplicate pairs under the pair-calibrated
thresholds, and the support estimate of that batch.

Exact, in bounded memory: pairs are found block by block (dense descriptors) or with the exact L1
search (many uint8 pixel crops).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from indexer import pixels

from . import support
from .thresholds import CONFIDENCE, Thresholds

_BLOCK = 256  # rows per block in the pairwise searches (bounded memory for large audits)


def close_pairs(x: np.ndarray, threshold: float | None, metric: str) -> list[tuple[int, int, float]]:
    """All pairs i < j with distance(x[i], x[j]) < threshold, sorted by (i, j).

    ``metric`` is ``euclidean`` (descriptors) or ``cityblock`` (pixel crops, L1 sum). Exact, in
    float64 (uint8 L1 sums are exact integers in float64), computed in blocks so memory stays
    bounded for large audits. Many pixel crops (uint8, the index's crop size) go through the exact
    L1 search of :mod:`indexer.l1` instead of a dense pass: every pair of 1,000 crops densely is
    1.2·10¹⁰ operations, while near-duplicates are rare.
    """
    n = len(x)
    if threshold is None or n < 2:
        return []
    x = np.asarray(x).reshape(n, -1)
    if metric == "cityblock" and n > _BLOCK and x.dtype == np.uint8 and x.shape[1] == pixels.PIXEL_DIM:
        return _close_pairs_l1(x, threshold)
    x = x.astype(np.float64)
    out: list[tuple[int, int, float]] = []
    for s in range(0, n, _BLOCK):
        a = x[s : s + _BLOCK]
        for t in range(s, n, _BLOCK):
            d = cdist(a, x[t : t + _BLOCK], metric=metric)
            ii, jj = np.nonzero(d < threshold)
            for i, j in zip(ii, jj):
                gi, gj = s + int(i), t + int(j)
                if gi < gj:
                    out.append((gi, gj, float(d[i, j])))
    out.sort()
    return out


def _close_pairs_l1(x: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """:func:`close_pairs` for uint8 crops with the exact L1 search: each crop's top-k others, k
    growing for the crops whose k-th neighbour is still under the threshold."""
    from indexer.l1 import L1Index

    n = len(x)
    index = L1Index(np.ascontiguousarray(x))
    found: dict[tuple[int, int], float] = {}
    rows, k = np.arange(n, dtype=np.int64), 8
    while len(rows):
        k = min(k, n - 1)
        d, ids = index.search(x[rows], k, exclude_self=rows)
        for r, dr, ir in zip(rows, d, ids):
            for dist, j in zip(dr, ir):
                if j >= 0 and dist < threshold:
                    found[(min(int(r), int(j)), max(int(r), int(j)))] = float(dist)
        if k >= n - 1:
            break
        rows, k = rows[(d[:, -1] >= 0) & (d[:, -1] < threshold)], k * 4
    return sorted((i, j, dist) for (i, j), dist in found.items())


def batch_pairs(descriptors: np.ndarray, pix: np.ndarray, th: Thresholds) -> dict[str, list[tuple[int, int, float]]]:
    """Colliding pairs of one batch in each channel (positions among its faces), under the channel's
    pair-calibrated collision threshold; a channel without a threshold has none."""
    out = {}
    for channel, x, pt, metric in (
        ("semantic", descriptors, th.collision_semantic, "euclidean"),
        ("pixel", pix, th.collision_pixel, "cityblock"),
    ):
        out[channel] = close_pairs(x, pt.threshold, metric) if pt is not None else []
    return out


def closest_pairs(descriptors: np.ndarray, m: int = 20, block: int = 512) -> list[tuple[int, int, float]]:
    """The ``m`` closest pairs (i < j) by descriptor distance, exactly, in bounded memory: the pairs a
    human should look at first, colliding or not."""
    x = np.asarray(descriptors, np.float64)
    n = len(x)
    best: list[tuple[float, int, int]] = []
    for s in range(0, n, block):
        e = min(s + block, n)
        d = cdist(x[s:e], x)
        d[(np.arange(s, e)[:, None] >= np.arange(n)[None, :])] = np.inf  # keep j > i
        flat = d.ravel()
        take = min(m, flat.size)
        for f in np.argpartition(flat, take - 1)[:take] if take else []:
            if np.isfinite(flat[f]):
                best.append((float(flat[f]), s + int(f) // n, int(f) % n))
        best = sorted(best)[:m]
    return [(i, j, d) for d, i, j in best]


# ----------------------------------------------------------------------------- birthday paradox


def collisions(
    names: list[str],
    descriptors: np.ndarray | None,
    pix: np.ndarray | None,
    th: Thresholds,
    batch_size: int,
    positions: list[int] | None = None,
    confidence: float = CONFIDENCE,
) -> dict:
    """Near-duplicate pairs inside the batch and the support estimate of this one batch, per channel.

    ``names`` / ``descriptors`` / ``pix`` cover the batch's ok faces only (same order); a channel
    given as None is reported as not computed. Pairs collide under the channel's pair-calibrated
    collision threshold; the support estimate (:func:`service.stats.support.estimate`) removes the
    chance pairs that threshold lets through. ``positions`` are the faces' places in the upload
    (default 0..s−1); pairs report them as ``a_index`` / ``b_index``.
    """
    s = len(names)
    pos = list(range(s)) if positions is None else list(positions)
    out: dict = {"batch_size": int(batch_size), "faces": int(s), "reference": support.REFERENCE}
    for channel, x, pt, metric in (
        ("semantic", descriptors, th.collision_semantic, "euclidean"),
        ("pixel", pix, th.collision_pixel, "cityblock"),
    ):
        if x is None:
            out[channel] = None
            continue
        if pt is None:
            out[channel] = {"threshold": None, "pairs": [], "note": "the index is too small for a collision threshold"}
            continue
        pairs = close_pairs(x, pt.threshold, metric)
        est = support.estimate([support.Batch.from_pairs(s, pairs)], pt.per_pair_false_match_rate, confidence)
        cast = float if channel == "semantic" else (lambda v: int(round(v)))  # L1 sums are integers
        out[channel] = {
            "threshold": pt.threshold,
            "per_pair_false_match_rate": pt.per_pair_false_match_rate,
            "same_identity_recall": pt.same_identity_recall,
            "pairs": [
                {"a": names[i], "b": names[j], "a_index": pos[i], "b_index": pos[j], "distance": cast(d)}
                for i, j, d in pairs
            ],
            **est,
        }
    return out
