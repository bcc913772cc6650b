"""Top-k selection by (distance, id): the one ordering every search in facemem returns.

Why one function: exact search, the IVF re-rank, the L1 cascade, the merge of per-shard results
and the service's candidate search must all order ties the same way (the smaller id first), or a
sharded index would answer differently from a monolithic one. Each of them hands its candidates
per query to :func:`select_topk`.
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
    out_d = np.full((n_queries, k), pad, dtype=dtype)
    out_i = np.full((n_queries, k), -1, dtype=np.int64)
    for j, (dist, ids) in enumerate(candidates):
        order = np.lexsort((ids, dist))[:k]
        out_d[j, : order.size] = dist[order]
        out_i[j, : order.size] = ids[order]
    return out_d, out_i


def merge_topk(dists: list[np.ndarray], ids: list[np.ndarray], k: int, pad: float | int = -1):
    """Merge per-shard top-k lists (ids already global; −1 = padding) into the global top-k,
    ordered by (distance, id) as a monolithic search orders them."""
    d = np.concatenate(dists, axis=1)
    i = np.concatenate(ids, axis=1)
    ok = i >= 0
    return select_topk(((d[j][ok[j]], i[j][ok[j]]) for j in range(len(d))), len(d), k, pad, d.dtype)
