"""Build-time calibration: how close is close on *this* dataset.

For every indexed face we store its nearest distance to any other face (leave-one-out), to a face
of a different identity (the null distribution: a stranger's nearest neighbour), and to another
photo of the same identity. The service turns these into thresholds (see ``service/stats.py``).
The semantic self-search is one batched exact FAISS search; the pixel leave-one-out uses the exact
L1 search on a seeded sample of faces (a percentile needs thousands of draws, not all 200k).
"""

from __future__ import annotations

import logging

import numpy as np

from .devices import faiss_index

log = logging.getLogger(__name__)


def semantic_calibration(
    desc: np.ndarray,
    idents: np.ndarray,
    k: int = 64,
    device: str = "cpu",
    batch: int = 8192,
    sample: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-face nearest Euclidean distances: ``sem_loo``, ``sem_diff_id``, ``sem_same_id`` (NaN when
    undefined: unknown identity, or an identity with a single face).

    ``sample``: above this many faces, only a seeded sample of faces is calibrated (each against
    every face), and ``sem_rows`` says which. Why: the exact self-search costs N² distances
    (2M faces: 4·10¹² of them), while the statistics read these arrays only as distributions,
    whose quantiles a few hundred thousand draws pin down."""
    n = len(desc)
    rows = np.arange(n)
    if sample and n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    m = len(rows)
    loo = np.full(m, np.nan, np.float32)
    diff = np.full(m, np.nan, np.float32)
    same = np.full(m, np.nan, np.float32)
    extra = {"sem_rows": rows.astype(np.int64)} if m < n else {}
    if n < 2:
        return {"sem_loo": loo, "sem_diff_id": diff, "sem_same_id": same, **extra}
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    index = faiss_index(desc, "l2", device)
    kk = min(k, n)
    known = idents >= 0
    for s in range(0, m, batch):
        q = desc[rows[s : s + batch]]
        _, ids = index.search(q, kk)
        for j in range(len(q)):
            i = int(rows[s + j])
            nb = ids[j][(ids[j] != i) & (ids[j] >= 0)]
            exact = np.linalg.norm(desc[nb] - desc[i], axis=1)  # exact, not faiss's expanded form
            order = np.argsort(exact, kind="stable")
            nb, exact = nb[order], exact[order]
            loo[s + j] = exact[0]
            if known[i]:
                other = idents[nb] != idents[i]
                if other.any():
                    diff[s + j] = exact[np.argmax(other)]
                mine = idents[nb] == idents[i]
                if mine.any():
                    same[s + j] = exact[np.argmax(mine)]
    # Faces whose k nearest were all one kind: finish them exactly by brute force.
    same_count = np.bincount(idents[known], minlength=max(int(idents.max()), 0) + 1)
    kr = known[rows]
    todo_diff = np.where(kr & np.isnan(diff))[0]
    todo_same = np.where(kr & np.isnan(same) & (same_count[np.maximum(idents[rows], 0)] > 1))[0]
    for p in np.union1d(todo_diff, todo_same):
        i = int(rows[p])
        d = np.linalg.norm(desc - desc[i], axis=1)
        d[i] = np.inf
        other = idents != idents[i]
        if np.isnan(diff[p]) and other.any():
            diff[p] = d[other].min()
        mine = idents == idents[i]
        mine[i] = False
        if np.isnan(same[p]) and mine.any():
            same[p] = d[mine].min()
    log.info("semantic calibration: %d of %d faces, %d finished by brute force", m, n, len(todo_diff) + len(todo_same))
    return {"sem_loo": loo, "sem_diff_id": diff, "sem_same_id": same, **extra}


def pixel_calibration(
    pixels: np.ndarray, sample: int = 5000, seed: int = 0, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Exact leave-one-out nearest L1 distance for a seeded sample of faces (``pix_loo`` at
    ``pix_loo_rows``)."""
    from .l1 import L1Index

    n = len(pixels)
    if n < 2:
        return {"pix_loo": np.zeros(0, np.float64), "pix_loo_rows": np.zeros(0, np.int64)}
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    from .shards import ShardedArray

    if isinstance(pixels, ShardedArray):  # one shard's bound tables in memory at a time
        queries = pixels[rows]
        best = np.full(len(rows), np.iinfo(np.int64).max, np.int64)
        for start, block in zip(pixels.starts, pixels.blocks):
            if len(block) == 0:
                continue
            local = np.where((rows >= start) & (rows < start + len(block)), rows - start, -1).astype(np.int64)
            d, _ = L1Index(block, use_gpu=device == "cuda").search(queries, 1, exclude_self=local)
            best = np.where(d[:, 0] >= 0, np.minimum(best, d[:, 0]), best)
        return {"pix_loo": best.astype(np.float64), "pix_loo_rows": rows.astype(np.int64)}
    index = L1Index(pixels, use_gpu=device == "cuda")
    dist, _ = index.search(np.asarray(pixels[rows]), 1, exclude_self=rows.astype(np.int64))
    return {"pix_loo": dist[:, 0].astype(np.float64), "pix_loo_rows": rows.astype(np.int64)}
