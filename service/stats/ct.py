"""The data-copying test C_T of Meehan, Chaudhuri & Dasgupta (AISTATS 2020).

Why: a memorization rate counts faces that sit almost on a training face; a generator that copies
a little everywhere (every sample pulled towards its nearest training face) never crosses a copy
threshold. C_T compares, cell by cell, how far generated faces are from the training set with how
far *held-out real* faces are from it. In each cell π of a partition of the descriptor space (k-means
on the training descriptors) the Mann–Whitney U of the generated distances against the held-out
distances is turned into a z-score Z_U(π); C_T is their average weighted by the held-out share
P_n(π), over the cells with at least ``min_generated`` generated faces.

Reading: C_T ≪ 0 — generated faces are closer to the training set than real unseen faces are: data
copying. C_T ≫ 0 — they are farther: the generator under-fits (or its faces come from another
domain). Under H0 (generated and held-out distances exchangeable in each cell) each Z_U(π) is
approximately N(0, 1) and C_T ~ N(0, Σw²/(Σw)²); the one-sided p-value of copying comes from that.

Two departures from the paper, both stated in the report: the distance of a face is to its nearest
training face anywhere (what the service returns), not within its cell; and without a held-out real
sample (``--reference-real``) the held-out distances are the training faces' own nearest
*other-identity* distances, a stranger-like null from the training domain.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

MIN_GENERATED = 20  # generated faces a cell needs to enter the statistic (the paper's τ·m)


def cell_count(n_generated: int, per_cell: int = 50, most: int = 20) -> int:
    """Cells for n generated faces: about ``per_cell`` generated faces per cell, 2 to ``most``."""
    return int(min(most, max(2, n_generated // per_cell)))


def kmeans_cells(train: np.ndarray, k: int, seed: int = 0, sample: int = 50_000) -> np.ndarray:
    """k-means centroids of (a seeded sample of) the training descriptors (FAISS, 25 iterations)."""
    import faiss

    x = np.ascontiguousarray(train, np.float32)
    if len(x) > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))]
    km = faiss.Kmeans(x.shape[1], int(k), niter=25, seed=int(seed) + 1234, verbose=False)
    km.train(x)
    return np.asarray(km.centroids, np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each row (exact, float64)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centroids, np.float64)
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
    return np.argmin(d, axis=1)


def z_u(gen: np.ndarray, held: np.ndarray) -> float:
    """Mann–Whitney U of generated vs held-out distances as a z-score (the paper's Z_U, with its
    0.5 continuity correction): negative when generated faces are closer."""
    m, n = len(gen), len(held)
    u = float(sps.mannwhitneyu(gen, held, alternative="two-sided").statistic)
    return (u - (m * n / 2 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12)


def ct_test(
    gen_dist: np.ndarray,
    gen_cells: np.ndarray,
    held_dist: np.ndarray,
    held_cells: np.ndarray,
    k: int,
    min_generated: int = MIN_GENERATED,
) -> dict:
    """C_T from per-face nearest-training distances and cell labels of both samples."""
    gen_dist, held_dist = np.asarray(gen_dist, np.float64), np.asarray(held_dist, np.float64)
    gen_cells, held_cells = np.asarray(gen_cells), np.asarray(held_cells)
    rows, num, wsum, w2 = [], 0.0, 0.0, 0.0
    n_held = len(held_dist)
    for c in range(k):
        g, h = gen_dist[gen_cells == c], held_dist[held_cells == c]
        row = {"cell": c, "generated": int(len(g)), "held_out": int(len(h)), "held_share": len(h) / max(n_held, 1)}
        if len(g) >= min_generated and len(h) > 0:
            z = z_u(g, h)
            w = len(h) / n_held
            row["z_u"] = z
            num, wsum, w2 = num + w * z, wsum + w, w2 + w * w
        else:
            row["z_u"] = None
        rows.append(row)
    used = sum(r["z_u"] is not None for r in rows)
    out = {
        "statistic": None,
        "z": None,
        "p_value_copying": None,
        "cells": int(k),
        "cells_used": int(used),
        "min_generated_per_cell": int(min_generated),
        "generated": int(len(gen_dist)),
        "held_out": int(n_held),
        "per_cell": rows,
        "reference": "C. Meehan, K. Chaudhuri, S. Dasgupta, A Non-Parametric Test to Detect Data-Copying in "
        "Generative Models, AISTATS 2020",
    }
    if not used:
        out["note"] = f"no cell holds {min_generated} generated faces: C_T needs more generated faces"
        return out
    ct = num / wsum
    z = ct / (math.sqrt(w2) / wsum)
    out.update(statistic=ct, z=z, p_value_copying=float(sps.norm.cdf(z)))
    if ct < -3:
        out["reading"] = "C_T ≪ 0: generated faces are closer to the training set than unseen real faces: data copying"
    elif ct > 3:
        out["reading"] = (
            "C_T ≫ 0: generated faces are farther from the training set than unseen real faces "
            "(under-fitting, or another image domain)"
        )
    else:
        out["reading"] = "C_T near 0: generated faces are as close to the training set as unseen real faces"
    return out
