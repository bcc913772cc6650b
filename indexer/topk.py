"""Top-k selection by (distance, id): the one ordering every search in facemem returns.

Why one function: exact search, the IVF re-rank, the L1 cascade, the merge of per-shard results
and the service's candidate search must all order ties the same way (the smaller id first), or a
sharded index would answer differently from a monolithic one. Each of them hands its candidates
per query to :func:`select_topk`, or, already flat with each candidate's query beside it (the
vectorised L1 cascade), to :func:`select_topk_pairs`; both sort with :func:`ranked`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def select_topk(
    candidates: Iterable[tuple[np.ndarray, np.ndarray]],
    n_queries: int,
    k: int,
    pad: float | int = np.nan,
    dtype: np.dtype | type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest (distance, id) pairs of each query's candidates, ordered by (distance, id).

    ``candidates`` yields one (distances, ids) pair of 1-D arrays per query, ``n_queries`` of them.
    Returns ((n_queries, k) distances of ``dtype``, (n_queries, k) int64 ids); rows with fewer than
    k candidates are padded with ``pad`` and −1.
    """
    dists, ids, owner = [], [], []
    for j, (dist, idx) in enumerate(candidates):
        dists.append(np.asarray(dist).reshape(-1))
        ids.append(np.asarray(idx, np.int64).reshape(-1))
        owner.append(np.full(len(dists[-1]), j, np.int64))
    if not dists:
        return np.full((n_queries, k), pad, dtype=dtype), np.full((n_queries, k), -1, dtype=np.int64)
    owner_all, dist_all, ids_all = np.concatenate(owner), np.concatenate(dists), np.concatenate(ids)
    return select_topk_pairs(owner_all, dist_all, ids_all, n_queries, k, pad, dtype)


def ranked(owner: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order of candidates by (owner, *keys), and each one's rank within its owner in that order."""
    order = np.lexsort((*reversed(keys), owner))
    q = owner[order]
    return order, np.arange(q.size) - np.searchsorted(q, q, side="left")


def select_topk_pairs(
    owner: np.ndarray,
    dist: np.ndarray,
    ids: np.ndarray,
    n_queries: int,
    k: int,
    pad: float | int = np.nan,
    dtype: np.dtype | type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select_topk` of candidates given as flat arrays, candidate c belonging to query
    ``owner[c]``: one sort for all queries (the vectorised L1 cascade hands its pairs over this way)."""
    out_d = np.full((n_queries, k), pad, dtype=dtype)
    out_i = np.full((n_queries, k), -1, dtype=np.int64)
    order, rank = ranked(owner, dist, ids)
    sel = rank < k
    o = order[sel]
    out_d[owner[o], rank[sel]] = dist[o]
    out_i[owner[o], rank[sel]] = ids[o]
    return out_d, out_i


def merge_topk(dists: list[np.ndarray], ids: list[np.ndarray], k: int, pad: float | int = -1):
    """Merge per-shard top-k lists (ids already global; −1 = padding) into the global top-k,
    ordered by (distance, id) as a monolithic search orders them."""
    d = np.concatenate(dists, axis=1)
    i = np.concatenate(ids, axis=1)
    ok = i >= 0
    return select_topk(((d[j][ok[j]], i[j][ok[j]]) for j in range(len(d))), len(d), k, pad, d.dtype)
