"""Collisions inside one batch (the birthday paradox): near-duplicate pairs under the pair-calibrated
thresholds, and the support estimate of that batch.

Exact, in bounded memory: pairs are found block by block (dense descriptors) or with the exact L1
search (many uint8 pixel crops).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy.spatial.distance import cdist

from indexer import pixels

from . import support
from .thresholds import CONFIDENCE, Thresholds

_BLOCK = 256  # rows per block in the pairwise searches (bounded memory for large audits)
_GRAM_BLOCK = 2048  # rows per block of the screened Euclidean searches (32 MB of float64 a block)
_L1_ROWS = 2048  # crops per exact L1 search call (bounds its (rows, k) answers)
_L1_CELLS = 1 << 22  # rows × k per L1 search call at most (64 MB of int64 distances and ids)


class Pairs(Sequence):
    """Pairs (i < j, distance) sorted by (i, j), kept as three arrays: a sequence of (i, j, distance)
    tuples to its readers, 24 bytes a pair in memory.

    Why: the number of colliding pairs grows as n². At 50,000 samples of the 32 px DCGAN, 1.2% of
    the 1.25·10⁹ pixel pairs collide: 15 million pairs, ~2 GB as a list of Python tuples, 360 MB here.
    Readers that need all of them use the arrays (``i``, ``j``, ``d``); iteration and slicing give
    tuples and :class:`Pairs`, so code written for lists keeps working."""

    __slots__ = ("i", "j", "d", "_keys")

    def __init__(self, i=(), j=(), d=()):
        self.i = np.asarray(i, np.int64).reshape(-1)
        self.j = np.asarray(j, np.int64).reshape(-1)
        self.d = np.asarray(d, np.float64).reshape(-1)
        self._keys: np.ndarray | None = None

    @classmethod
    def sorted(cls, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> Pairs:
        """Pairs from unordered arrays with i < j, sorted by (i, j)."""
        order = np.lexsort((j, i))
        return cls(np.asarray(i)[order], np.asarray(j)[order], np.asarray(d)[order])

    def __len__(self) -> int:
        return len(self.i)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return Pairs(self.i[k], self.j[k], self.d[k])
        return int(self.i[k]), int(self.j[k]), float(self.d[k])

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        for s in range(0, len(self.i), 65536):  # tuples made a chunk at a time
            yield from zip(
                self.i[s : s + 65536].tolist(), self.j[s : s + 65536].tolist(), self.d[s : s + 65536].tolist()
            )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pairs):
            return bool(np.array_equal(self.i, other.i) and np.array_equal(self.j, other.j)) and bool(
                np.array_equal(self.d, other.d)
            )
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(tuple(a) == b for a, b in zip(other, self))
        return NotImplemented

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        return f"Pairs({len(self)} pairs)"

    def distance(self, i: int, j: int) -> float | None:
        """The distance of pair (i, j) if it is listed, else None (binary search, no dict of all pairs)."""
        if not len(self.i):
            return None
        if self._keys is None:
            self._keys = self.i * (int(self.j.max()) + 1) + self.j
        base = int(self.j.max()) + 1
        if j >= base:
            return None
        key = i * base + j
        k = int(np.searchsorted(self._keys, key))
        return float(self.d[k]) if k < len(self._keys) and self._keys[k] == key else None


def close_pairs(x: np.ndarray, threshold: float | None, metric: str) -> Pairs:
    """All pairs i < j with distance(x[i], x[j]) < threshold, sorted by (i, j), as :class:`Pairs`.

    ``metric`` is ``euclidean`` (descriptors) or ``cityblock`` (pixel crops, L1 sum). Exact, in
    float64 (uint8 L1 sums are exact integers in float64), computed in blocks so memory stays
    bounded for large audits. Euclidean distances are screened block by block with a matrix product
    and every candidate within a safe margin of the threshold is measured again with ``cdist``, so the
    pairs and their distances are bit for bit those of a dense ``cdist``. Many pixel crops (uint8, the
    index's crop size) go through the exact L1 search of :mod:`indexer.l1` instead of a dense pass:
    every pair of 1,000 crops densely is 1.2·10¹⁰ operations, while near-duplicates are rare.
    """
    n = len(x)
    if threshold is None or n < 2:
        return Pairs()
    x = np.asarray(x).reshape(n, -1)
    if metric == "cityblock" and n > _BLOCK and x.dtype == np.uint8 and x.shape[1] == pixels.PIXEL_DIM:
        return _close_pairs_l1(x, threshold)
    x = x.astype(np.float64)
    if metric == "euclidean":
        return _close_pairs_gram(x, float(threshold))
    ii, jj, dd = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for s in range(0, n, _BLOCK):
        a = x[s : s + _BLOCK]
        for t in range(s, n, _BLOCK):
            d = cdist(a, x[t : t + _BLOCK], metric=metric)
            i, j = np.nonzero(d < threshold)
            keep = s + i < t + j
            ii.append(s + i[keep])
            jj.append(t + j[keep])
            dd.append(d[i[keep], j[keep]])
    return Pairs.sorted(np.concatenate(ii), np.concatenate(jj), np.concatenate(dd))


def _gram_blocks(x: np.ndarray, block: int):
    """Upper-triangle blocks of squared Euclidean distances by a matrix product (fast, approximate):
    yields (row start, column start, d² block with j <= i set to +inf, the block's error bound).

    Why: ``cdist`` is a plain loop (~55 ns a pair: 70 s for the 1.25·10⁹ pairs of 50,000 faces); a
    matrix product is several times faster. 8·dim·eps·(max |a|² + max |b|²) bounds the gap between its
    d² and the square of ``cdist``'s distance (both roundings), so callers screen with that margin and
    measure the candidates again exactly."""
    sq = np.einsum("ij,ij->i", x, x)
    slack = 8.0 * x.shape[1] * np.finfo(np.float64).eps
    n = len(x)
    for s in range(0, n, block):
        e = min(s + block, n)
        a, sa = x[s:e], sq[s:e]
        for t in range(s, n, block):
            f = min(t + block, n)
            d2 = a @ x[t:f].T
            d2 *= -2.0
            d2 += sa[:, None]
            d2 += sq[None, t:f]
            if t == s:
                d2[np.tril_indices(e - s, 0, f - t)] = np.inf
            yield s, t, d2, slack * (sa.max() + sq[t:f].max()) + 1e-300


def _exact(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``cdist``'s own Euclidean distance of each pair (i[k], j[k]), row by row (bit-identical to a
    dense ``cdist``)."""
    out = np.empty(len(i), np.float64)
    for r in np.unique(i):
        k = np.flatnonzero(i == r)
        out[k] = cdist(x[r : r + 1], x[j[k]])[0]
    return out


def _close_pairs_gram(x: np.ndarray, threshold: float) -> Pairs:
    """:func:`close_pairs` for descriptors: screened by :func:`_gram_blocks`, confirmed by ``cdist``."""
    ii, jj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for s, t, d2, err in _gram_blocks(x, _GRAM_BLOCK):
        a, b = np.nonzero(d2 < threshold * threshold + err)
        ii.append(a + s)
        jj.append(b + t)
    i, j = np.concatenate(ii), np.concatenate(jj)
    d = _exact(x, i, j)
    keep = d < threshold
    return Pairs.sorted(i[keep], j[keep], d[keep])


def _close_pairs_l1(x: np.ndarray, threshold: float) -> Pairs:
    """:func:`close_pairs` for uint8 crops with the exact L1 search: each crop's top-k others within
    the threshold (the search's ``bound``), k growing for the crops whose k-th neighbour is still under
    it; a crop keeps its partners j > i (it finds every partner itself), a chunk of crops at a time."""
    from indexer.l1 import L1Index

    n = len(x)
    index = L1Index(np.ascontiguousarray(x))
    ii, jj, dd = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for start in range(0, n, _L1_ROWS):
        rows, k = np.arange(start, min(start + _L1_ROWS, n), dtype=np.int64), 8
        while len(rows):
            k = min(k, n - 1)
            step = max(1, _L1_CELLS // k)
            again = []
            for s in range(0, len(rows), step):
                r = rows[s : s + step]
                d, ids = index.search(x[r], k, exclude_self=r, bound=np.full(len(r), float(threshold)))
                more = (d[:, -1] >= 0) & (d[:, -1] < threshold) & (k < n - 1)  # searched again with a larger k
                hit = (ids >= 0) & (d < threshold) & (ids > r[:, None]) & ~more[:, None]
                ii.append(np.broadcast_to(r[:, None], ids.shape)[hit])
                jj.append(ids[hit])
                dd.append(d[hit].astype(np.float64))
                again.append(r[more])
            rows, k = np.concatenate(again), k * 4
    return Pairs.sorted(np.concatenate(ii), np.concatenate(jj), np.concatenate(dd))


def batch_pairs(descriptors: np.ndarray, pix: np.ndarray, th: Thresholds) -> dict[str, Pairs]:
    """Colliding pairs of one batch in each channel (positions among its faces), under the channel's
    pair-calibrated collision threshold; a channel without a threshold has none."""
    out = {}
    for channel, x, pt, metric in (
        ("semantic", descriptors, th.collision_semantic, "euclidean"),
        ("pixel", pix, th.collision_pixel, "cityblock"),
    ):
        out[channel] = close_pairs(x, pt.threshold, metric) if pt is not None else Pairs()
    return out


def closest_pairs(descriptors: np.ndarray, m: int = 20, block: int = 2048) -> list[tuple[int, int, float]]:
    """The ``m`` closest pairs (i < j) by descriptor distance, exactly, in bounded memory: the pairs a
    human should look at first, colliding or not. Ordered by (distance, i, j).

    Each block of the upper triangle keeps every pair within the error bound of its own m-th smallest
    screened distance (:func:`_gram_blocks`); a pair left out is then farther than m kept ones, so
    the exact ``cdist`` distances of the kept pairs give the true top m."""
    x = np.asarray(descriptors, np.float64).reshape(len(descriptors), -1)
    if m < 1 or len(x) < 2:
        return []
    ii, jj = [], []
    for s, t, d2, err in _gram_blocks(x, block):
        flat = d2.ravel()
        rows, cols = d2.shape
        pairs = rows * (rows - 1) // 2 + rows * (cols - rows) if s == t else flat.size  # finite entries
        if not pairs:
            continue
        take = min(m, pairs)
        tau = np.partition(flat, take - 1)[take - 1]
        cand = np.flatnonzero(flat <= tau + 2.0 * err)
        ii.append(cand // d2.shape[1] + s)
        jj.append(cand % d2.shape[1] + t)
    i, j = np.concatenate(ii), np.concatenate(jj)
    d = _exact(x, i, j)
    return [(a, b, dist) for dist, a, b in sorted(zip(d.tolist(), i.tolist(), j.tolist()))[:m]]


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
