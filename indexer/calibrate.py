"""Build-time calibration: how close is close on *this* dataset.

For every indexed face we store its nearest distance to any other face (leave-one-out), to a face
of a different identity (the null distribution: a stranger's nearest neighbour) and which face that
is, and to another photo of the same identity. The service turns these into thresholds (see
``service/stats/thresholds.py``). The semantic self-search is one batched exact FAISS search; the pixel
leave-one-out uses the exact L1 search on a seeded sample of faces (a percentile needs thousands of
draws, not all 200k).

Nearest-neighbour distances are 1:N statistics: they shrink as the index grows. The birthday-paradox
collisions need a per-*pair* rate instead, so :func:`pair_calibration` also stores the lower tail of
the distances between two faces of different identities (and the distances of same-identity pairs),
from which a threshold with a given per-pair false-match rate is read, whatever the index size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from .devices import faiss_index
from .topk import merge_topk, select_topk

log = logging.getLogger(__name__)


def semantic_calibration(
    desc: np.ndarray,
    idents: np.ndarray,
    k: int = 64,
    device: str = "cpu",
    batch: int = 8192,
    pair_sample: int = 5000,
    sample: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-face nearest Euclidean distances: ``sem_loo``, ``sem_diff_id``, ``sem_same_id`` (NaN when
    undefined: unknown identity, or an identity with a single face), ``sem_diff_id_face`` (the row of
    that nearest other-identity face, −1 when undefined); and the semantic pair tails of
    :func:`pair_calibration` over ``pair_sample`` seeded rows.

    ``sample``: above this many faces, only a seeded sample of faces is calibrated (each against
    every face), and ``sem_rows`` says which (the per-face arrays then have one entry per sampled
    face). Why: the exact self-search costs N² distances (2M faces: 4·10¹² of them), while the
    statistics read these arrays only as distributions, whose quantiles a few hundred thousand
    draws pin down."""
    n = len(desc)
    idents = np.asarray(idents, np.int64)
    rows = sample_rows(n, sample, seed) if sample else np.arange(n)
    m = len(rows)
    loo = np.full(m, np.nan, np.float32)
    diff = np.full(m, np.nan, np.float32)
    same = np.full(m, np.nan, np.float32)
    diff_face = np.full(m, -1, np.int64)
    extra = {"sem_rows": rows.astype(np.int64)} if m < n else {}
    if n < 2:
        return {
            "sem_loo": loo,
            "sem_diff_id": diff,
            "sem_same_id": same,
            "sem_diff_id_face": diff_face,
            **extra,
            **_empty_pairs("sem"),
        }
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    index = faiss_index(desc, "l2", device)
    loo, diff, same, diff_face, brute = nearest_kinds(desc, idents, rows, index, k, batch)
    log.info("semantic calibration: %d of %d faces, %d finished by brute force", m, n, brute)
    out = {"sem_loo": loo, "sem_diff_id": diff, "sem_same_id": same, "sem_diff_id_face": diff_face, **extra}

    def search(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k other faces of ``rows`` (FAISS candidates, float64 distances)."""
        kk = min(k + 1, n)
        _, ids = index.search(desc[rows], kk)

        def scored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for t, r in enumerate(rows):
                c = ids[t][(ids[t] != r) & (ids[t] >= 0)]
                yield np.linalg.norm(desc[c].astype(np.float64) - desc[r].astype(np.float64), axis=1), c

        return select_topk(scored(), len(rows), k, pad=np.inf)

    def pair_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(desc[a].astype(np.float64) - desc[b].astype(np.float64), axis=1)

    out.update(pair_calibration(search, sample_rows(n, pair_sample, 0), idents, n, "sem", pair_dist))
    return out


def nearest_kinds(
    desc: np.ndarray, idents: np.ndarray, rows: np.ndarray, index, k: int = 64, batch: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """For faces ``rows`` of float32 ``desc`` (``index``: an exact L2 index over all of them): the exact
    nearest distance to any other face, to another identity's face and which face that is, and to the
    same identity's (NaN / −1 where undefined); and how many faces needed the brute-force finish.

    Vectorised over blocks of faces: FAISS's top-k candidates, their exact float32 distances (not
    FAISS's expanded form), the first of the smallest in candidate order; faces whose k candidates were
    all one kind are finished exactly against every face. (The simulation studies call this too.)"""
    n, m = len(desc), len(rows)
    known = idents >= 0
    loo, diff, same = (np.full(m, np.nan, np.float32) for _ in range(3))
    diff_face = np.full(m, -1, np.int64)
    kk = min(k, n)
    for s in range(0, m, batch):
        _, cand_all = index.search(desc[rows[s : s + batch]], kk)
        for t in range(0, len(cand_all), 1024):
            pos = np.arange(s + t, s + t + len(cand_all[t : t + 1024]))
            me, cand = rows[pos], cand_all[t : t + 1024]
            valid = (cand != me[:, None]) & (cand >= 0)
            c = np.where(valid, cand, 0)
            d = np.linalg.norm(desc[c] - desc[me][:, None, :], axis=2)
            d[~valid] = np.inf
            loo[pos] = d.min(axis=1)
            kn = known[me][:, None]
            other = np.where(kn & valid, idents[c] != idents[me][:, None], False)
            dd = np.where(other, d, np.inf)
            j = np.argmin(dd, axis=1)
            best = dd[np.arange(len(pos)), j]
            found = np.isfinite(best)
            diff[pos[found]], diff_face[pos[found]] = best[found], c[np.arange(len(pos)), j][found]
            ds = np.where(kn & valid & ~other, d, np.inf).min(axis=1)
            same[pos[np.isfinite(ds)]] = ds[np.isfinite(ds)]
    # Faces whose k nearest were all one kind: finish them exactly by brute force.
    same_count = np.bincount(idents[known], minlength=max(int(idents.max(initial=0)), 0) + 1)
    kr = known[rows]
    todo_diff = np.where(kr & np.isnan(diff))[0]
    todo_same = np.where(kr & np.isnan(same) & (same_count[np.maximum(idents[rows], 0)] > 1))[0]
    for p in np.union1d(todo_diff, todo_same):
        i = int(rows[p])
        d = np.linalg.norm(desc - desc[i], axis=1)
        d[i] = np.inf
        other = idents != idents[i]
        if np.isnan(diff[p]) and other.any():
            j = int(np.flatnonzero(other)[np.argmin(d[other])])
            diff[p], diff_face[p] = d[j], j
        mine = idents == idents[i]
        mine[i] = False
        if np.isnan(same[p]) and mine.any():
            same[p] = d[mine].min()
    return loo, diff, same, diff_face, len(todo_diff) + len(todo_same)


def pixel_calibration(
    pixels: np.ndarray,
    idents: np.ndarray | None = None,
    sample: int = 5000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Exact nearest L1 distances for a seeded sample of faces: to any other face (``pix_loo``), to a
    face of another identity (``pix_diff_id``, NaN when identities are unknown), at ``pix_loo_rows``;
    and the pair tails of :func:`pair_calibration` in the pixel channel."""
    from .l1 import L1Index

    n = len(pixels)
    idents = np.full(n, -1, np.int64) if idents is None else np.asarray(idents, np.int64)
    if n < 2:
        return {
            "pix_loo": np.zeros(0, np.float64),
            "pix_loo_rows": np.zeros(0, np.int64),
            "pix_diff_id": np.zeros(0, np.float64),
            **_empty_pairs("pix"),
        }
    rows = sample_rows(n, sample, seed)
    from .shards import ShardedArray

    if isinstance(pixels, ShardedArray):  # one shard's bound tables in memory at a time
        shards = [(start, block) for start, block in zip(pixels.starts, pixels.blocks) if len(block)]
    else:
        shards = [(0, pixels)]
    one = L1Index(pixels, use_gpu=device == "cuda") if len(shards) == 1 and shards[0][0] == 0 else None

    def l1_search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k other faces of rows ``q``: per shard, then merged (ties broken by row)."""
        k = min(k, n - 1)
        queries = np.asarray(pixels[q])
        if one is not None:
            d, i = one.search(queries, k, exclude_self=q.astype(np.int64))
            return d.astype(np.float64), i
        best_d = np.full((len(q), k), -1, np.int64)
        best_i = np.full((len(q), k), -1, np.int64)
        for start, block in shards:  # as ShardedL1.search, but one shard's L1Index at a time
            local = np.where((q >= start) & (q < start + len(block)), q - start, -1).astype(np.int64)
            d, i = L1Index(block, use_gpu=device == "cuda").search(queries, min(k, len(block)), exclude_self=local)
            best_d, best_i = merge_topk([best_d, d], [best_i, np.where(i >= 0, i + start, -1)], k, pad=-1)
        d = best_d.astype(np.float64)
        d[best_i < 0] = np.inf
        return d, best_i

    search = _Prefetched(l1_search, rows, PIXEL_FIRST_K)  # one top-4 pass serves all three statistics
    dist, _ = search(rows, 1)
    out = {"pix_loo": dist[:, 0], "pix_loo_rows": rows.astype(np.int64)}
    out["pix_diff_id"] = nearest_other_identity(search, rows, idents, n, PIXEL_FIRST_K)[0]
    out.update(pair_calibration(search, rows, idents, n, "pix", lambda a, b: _l1(pixels, a, b), PIXEL_FIRST_K))
    return out


# ----------------------------------------------------------------------------- pairs

FIRST_K = 16  # neighbours fetched per row first; rows that need more are searched again
# The exact L1 search costs ~1.5x more per query at 16 than at 4 neighbours (more rows survive its
# bounds), and few rows need more than 4: those are searched again, so the results are the same.
PIXEL_FIRST_K = 4
PAIR_TAIL_RATE = 1e-4  # the lowest 0.01% of different-identity pair distances is kept: f up to 1e-4
SAME_PAIRS_MAX = 50_000  # same-identity pairs measured for the recall at the threshold


def sample_rows(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """A seeded sorted sample of ``sample`` of ``n`` rows (all of them when n ≤ sample)."""
    return np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


class _Prefetched:
    """A top-k search whose first ``k0`` results for ``rows`` are computed once and sliced after."""

    def __init__(self, search, rows: np.ndarray, k0: int):
        self._search, self.k0 = search, k0
        self._pos = {int(r): t for t, r in enumerate(rows)}
        self._d, self._i = search(rows, k0)

    def __call__(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k <= self.k0 and all(int(r) in self._pos for r in q):
            t = np.array([self._pos[int(r)] for r in q], np.int64)
            return self._d[t, :k], self._i[t, :k]
        return self._search(q, k)


def _empty_pairs(ch: str) -> dict[str, np.ndarray]:
    return {
        f"pair_{ch}_diff_tail": np.zeros(0, np.float64),
        f"pair_{ch}_diff_pairs": np.array(0, np.int64),
        f"pair_{ch}_diff_tail_row": np.zeros(0, np.int64),
        f"pair_{ch}_rows_identity": np.zeros(0, np.int64),
        f"pair_{ch}_rows_pairs": np.zeros(0, np.int64),
        f"pair_{ch}_same": np.zeros(0, np.float64),
    }


def _l1(pixels: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 2048) -> np.ndarray:
    out = np.empty(len(a), np.float64)
    for s in range(0, len(a), block):
        x = np.asarray(pixels[a[s : s + block]], np.int16)
        y = np.asarray(pixels[b[s : s + block]], np.int16)
        out[s : s + block] = np.abs(x - y).sum(axis=1)
    return out


def nearest_other_identity(search, rows: np.ndarray, idents: np.ndarray, n: int, k0: int = FIRST_K):
    """For each of ``rows``: the distance to, and the row of, its nearest face of another identity.

    ``search(rows, k)`` returns the exact top-k other faces (self excluded) as (distances, ids); k grows
    for rows whose top-k are all of their own identity. NaN / −1 where identities are unknown."""
    dist = np.full(len(rows), np.nan)
    face = np.full(len(rows), -1, np.int64)
    todo = np.flatnonzero(idents[rows] >= 0)
    k = k0
    while len(todo):
        d, ids = search(rows[todo], k)
        left = []
        for t, (dr, ir) in enumerate(zip(d, ids)):
            ok = (ir >= 0) & (idents[np.maximum(ir, 0)] != idents[rows[todo[t]]])
            if ok.any():
                j = int(np.argmax(ok))
                dist[todo[t]], face[todo[t]] = dr[j], ir[j]
            elif k < n - 1:
                left.append(todo[t])
        todo, k = np.array(left, np.int64), k * 4
    return dist, face


def pair_calibration(
    search, rows: np.ndarray, idents: np.ndarray, n: int, ch: str, pair_dist, k0: int = FIRST_K
) -> dict:
    """The lower tail of the distances of pairs of faces of *different* identities, and the distances
    of same-identity pairs, in one channel.

    Pairs are (i, j) with i one of the sampled ``rows`` and j any other face of another identity (any
    other face when identities are unknown): ``pair_<ch>_diff_pairs`` of them. The smallest
    ``PAIR_TAIL_RATE`` share is kept, exactly (``pair_<ch>_diff_tail``, sorted): a threshold with a
    per-pair false-match rate f ≤ PAIR_TAIL_RATE is read from it, and it estimates the same pair-distance
    quantile whatever the index size. ``search(rows, k)`` gives each row's exact top-k other faces;
    rows whose top-k might not reach the tail's edge are searched again with a larger k.
    ``pair_dist(a, b)`` gives the distances of row pairs (for the same-identity pairs); ``k0`` is the
    first k asked of ``search``.
    """
    known = idents >= 0
    if known.any():
        same_count = np.bincount(idents[known])
        others = n - 1 - np.where(known[rows], same_count[np.maximum(idents[rows], 0)] - 1, 0)
    else:
        others = np.full(len(rows), n - 1)
    total = int(others.sum())
    keep = max(1, int(np.ceil(PAIR_TAIL_RATE * total)))
    tails: list[np.ndarray] = [np.zeros(0)] * len(rows)
    todo, k, edge = np.arange(len(rows)), k0, np.inf
    while len(todo):
        d, ids = search(rows[todo], k)
        for t, (dr, ir) in enumerate(zip(d, ids)):
            valid = ir >= 0
            if known[rows[todo[t]]]:
                valid &= idents[np.maximum(ir, 0)] != idents[rows[todo[t]]]
            tails[todo[t]] = dr[valid]
        allv = np.concatenate(tails)
        edge = np.partition(allv, keep - 1)[keep - 1] if len(allv) >= keep else np.inf
        # A row may hold more pairs under the edge than its top-k show: its k-th (any identity) is below it.
        last = d[:, -1] if d.shape[1] else np.full(len(todo), np.inf)
        more = (last < edge) & (ids[:, -1] >= 0) if d.shape[1] else np.zeros(len(todo), bool)
        if k >= n - 1:
            break
        todo, k = todo[more], min(k * 4, n - 1)
    allv = np.concatenate(tails)
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), [len(t) for t in tails])
    order = np.lexsort((owner, allv))[:keep]
    allv = allv[order]
    out = {
        f"pair_{ch}_diff_tail": allv,
        f"pair_{ch}_diff_pairs": np.array(total, np.int64),
        # which sampled face each tail pair belongs to, and each sampled face's identity and pair count:
        # what a bootstrap over identities needs to say how precisely a threshold is placed
        f"pair_{ch}_diff_tail_row": owner[order],
        f"pair_{ch}_rows_identity": idents[rows].astype(np.int64),
        f"pair_{ch}_rows_pairs": others.astype(np.int64),
    }
    # Same-identity pairs: all of them, or those of a seeded sample of identities beyond SAME_PAIRS_MAX.
    a_idx, b_idx = [], []
    if known.any():
        order = np.argsort(idents, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(idents[order])) + 1)
        groups = [g for g in groups if len(g) > 1 and idents[g[0]] >= 0]
        rng = np.random.default_rng(1)
        budget = SAME_PAIRS_MAX
        for gi in rng.permutation(len(groups)):
            g = groups[gi]
            ii, jj = np.triu_indices(len(g), 1)
            if len(ii) > budget:
                break
            a_idx.append(g[ii])
            b_idx.append(g[jj])
            budget -= len(ii)
    if a_idx:
        a_arr, b_arr = np.concatenate(a_idx), np.concatenate(b_idx)
        out[f"pair_{ch}_same"] = np.sort(pair_dist(a_arr, b_arr))
    else:
        out[f"pair_{ch}_same"] = np.zeros(0, np.float64)
    log.info(
        "pair calibration (%s): %d different-identity pairs, lowest %d kept (edge %.4g); %d same-identity pairs",
        ch,
        total,
        keep,
        out[f"pair_{ch}_diff_tail"][-1] if keep and len(allv) else float("nan"),
        len(out[f"pair_{ch}_same"]),
    )
    return out


def missing_keys(calibration: dict) -> list[str]:
    """Calibration arrays that an index written before them lacks."""
    want = ("sem_diff_id_face", "pair_sem_diff_tail", "pix_diff_id", "pair_pix_diff_tail")
    return [k for k in want if k not in calibration]


def complete(calibration: dict, desc: np.ndarray, pix: np.ndarray, idents: np.ndarray, device: str = "cpu") -> dict:
    """The calibration with what an older index lacks computed now from its vectors (same functions
    as the build, so the numbers equal a rebuild's). Costs seconds per 10,000 faces."""
    missing = missing_keys(calibration)
    if not missing:
        return calibration
    log.warning("the index predates %s: computing them now (rebuild the index to store them)", ", ".join(missing))
    out = dict(calibration)
    if any(k.startswith(("sem_", "pair_sem")) for k in missing):
        rows = calibration.get("sem_rows")  # a sampled calibration is completed on the same sample
        sem = semantic_calibration(desc, idents, device=device, sample=len(rows) if rows is not None else None)
        out.update({k: v for k, v in sem.items() if k not in calibration})
    if any(k.startswith(("pix_", "pair_pix")) for k in missing):
        rows = calibration.get("pix_loo_rows")
        sample = len(rows) if rows is not None and len(rows) else 5000
        px = pixel_calibration(pix, idents, sample, device=device)
        out.update({k: v for k, v in px.items() if k not in calibration})
    return out
