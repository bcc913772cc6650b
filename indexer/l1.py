"""Exact top-k L1 (Manhattan) search over uint8 image vectors, by successive elimination.

Why: auditing a face generator for memorised training images needs each generated face's nearest
training crops in pixel L1, exactly (a near-copy must never be missed), at CelebA size (202,599 x
12,288 dims). Brute force over float32 (faiss IndexFlat METRIC_L1) reads 10 GB per query batch; this
index keeps the vectors as uint8 (1 byte/dim, may be the caller's read-only memmap) and prunes with
block-sum lower bounds:

    for any partition of the dims into blocks B:  sum_B |sum_{i in B} a_i - sum_{i in B} b_i| <= ||a - b||_1

(triangle inequality per block). Three nested levels of per-channel pixel blocks (16x16, 8x8, 4x4 by
default) give bounds that are ~77%, ~88% and ~94% of the true distance on real faces. Per query:
full scan of the 16x16 bound (48 dims), a few candidates are evaluated exactly to get an upper bound
tau on the k-th distance, then every candidate whose bound is <= tau is kept level by level, and the
4x4 survivors are evaluated exactly. A point that is never evaluated has bound > tau >= true k-th
distance, so results equal brute force, ties included (order is (distance, id) ascending). Each step
runs vectorised over the (query, row) pairs of a block of queries: no Python loop per query, which
cost more than the arithmetic at small N (e.g. 0.4 of 0.65 ms a query in a 3,000-face calibration).

Measured at N=202,599 real-face crops on 2 CPU cores by the `pixel` row of scripts/bench.py (recorded
in BENCHMARKS.md): 312 q/s for top-5 vs 3.3 q/s for faiss IndexFlat METRIC_L1 over float32, 2.72 GiB
(uint8 vectors and the int16/float32 bound tables) vs 9.27 GiB for the flat index.

All sums are integers below 2**24 for D*255 < 2**24 (e.g. 64x64x3), so the float32 bounds are exact;
for larger D a rounding slack is added to the thresholds so pruning stays safe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from .topk import ranked, select_topk, select_topk_pairs

log = logging.getLogger(__name__)

__all__ = ["L1Index", "l1_brute_force"]

_BATCH = 32  # at most this many queries' cascades run as one vectorised block (per thread)
_BLOCK_BOUNDS = 1 << 18  # coarse bounds per block (1 MB of float32): a block's scans stay in cache
_PAIR_BYTES = 1 << 24  # temporaries of one vectorised bound or exact step over (query, row) pairs
_BUILD_CHUNK = 8192  # rows per chunk when computing block sums (bounded temporaries)
_QUERY_CHUNK = 4096  # queries per internal batch
# Seeding (initial tau): best _SEED_COARSE by the coarse bound -> best _SEED_MID of those by the mid
# bound -> best 2k by the fine bound, evaluated exactly. Measured on real faces at N=202,599, this
# gives a tau within ~1% of the final k-th distance, so later stages keep few extra candidates.
_SEED_COARSE = 1024
_SEED_MID = 128
_GPU_MARGIN = 8  # extra GPU candidates so ties at the k-th distance rarely need the CPU path
_GPU_MAX_K = 2048  # faiss GPU k limit


def _num_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def release_pages(arr: np.ndarray, lo: int, hi: int) -> None:
    """Drop bytes [lo, hi) of a read-only file memory map from this process's resident set.

    Why: building the bounds reads every crop once; without this the whole pixel file (24.6 GB at
    2M faces) would stay mapped and counted in the process's RSS, although only candidates are
    read again. The kernel's page cache still keeps what it has room for.
    """
    import mmap

    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or getattr(arr, "base", None) is None:
        return
    base = getattr(arr, "offset", 0) % mmap.ALLOCATIONGRANULARITY  # where the array starts in the mapping
    page = mmap.PAGESIZE
    a = -(-(base + lo) // page) * page
    b = (base + hi) // page * page
    if b > a:
        try:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)
        except (OSError, ValueError):  # not worth failing a search index over
            pass


def _sort_topk(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one query's (dist, id) pairs by (dist, id), padded with -1 to length k."""
    out_d, out_i = select_topk([(dist, ids)], 1, k, pad=-1, dtype=np.int64)
    return out_d[0], out_i[0]


def _nonzero_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, row) of the True entries of a (queries, rows) mask, by query then row (as np.nonzero,
    ~4x faster on a wide mask: one flat scan, then a divmod of the few hits)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _per_query_smallest(qi: np.ndarray, ci: np.ndarray, key: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The (query, row) pairs with each query's m smallest keys."""
    order, rank = ranked(qi, key)
    sel = order[rank < m]
    return qi[sel], ci[sel]


def _query_pieces(qi: np.ndarray, nq: int, row_bytes: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Runs of whole queries whose pairs (``qi`` sorted) fit in :data:`_PAIR_BYTES` of gathered rows
    (a query with more pairs is a run of its own): (first query, end query, pair offsets of each query
    in the run and of its end)."""
    cuts = np.searchsorted(qi, np.arange(nq + 1))
    step = max(1, _PAIR_BYTES // row_bytes)
    first = 0
    while first < nq:
        last = max(first + 1, min(nq, int(np.searchsorted(cuts, cuts[first] + step, side="right")) - 1))
        yield first, last, cuts[first : last + 1]
        first = last


def _check_exclude(exclude_self: np.ndarray | None, nq: int) -> np.ndarray:
    if exclude_self is None:
        return np.full(nq, -1, dtype=np.int64)
    ex = np.asarray(exclude_self, dtype=np.int64).reshape(-1)
    if ex.shape[0] != nq:
        raise ValueError(f"exclude_self has {ex.shape[0]} entries for {nq} queries")
    return ex


def l1_brute_force(
    vectors: np.ndarray, queries: np.ndarray, k: int, exclude_self: np.ndarray | None = None, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact L1 top-k in plain numpy (int64 distances, ties by ascending id, -1 padding).

    Slow (reads every vector for every query) but obviously correct; used to check L1Index.
    """
    queries = np.asarray(queries)
    if queries.dtype != np.uint8 or np.asarray(vectors[:1]).dtype != np.uint8:
        raise ValueError("uint8 vectors and queries expected")
    n, nq = vectors.shape[0], queries.shape[0]
    ex = _check_exclude(exclude_self, nq)
    out_d = np.full((nq, k), -1, dtype=np.int64)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    for g in range(0, nq, 64):  # query groups bound the (group, N) distance matrix
        qg = queries[g : g + 64]
        dist = np.empty((qg.shape[0], n), dtype=np.int64)
        for s in range(0, n, chunk):
            blk = np.asarray(vectors[s : s + chunk])
            hi = np.empty_like(blk)
            lo = np.empty_like(blk)
            for j in range(qg.shape[0]):
                np.maximum(blk, qg[j], out=hi)
                np.minimum(blk, qg[j], out=lo)
                hi -= lo  # |a - b| for uint8, no overflow
                dist[j, s : s + blk.shape[0]] = hi.sum(axis=1, dtype=np.int64)
        for j in range(qg.shape[0]):
            keep = ids != ex[g + j]
            out_d[g + j], out_i[g + j] = _sort_topk(dist[j][keep], ids[keep], k)
    return out_d, out_i


def _pool(x: np.ndarray, shape: tuple[int, int, int], b: int, dtype: type) -> np.ndarray:
    """Sum (n, H*W*C) over b x b pixel blocks per channel -> (n, ceil(H/b)*ceil(W/b)*C).

    Edge blocks may be partial (still a partition of the dims, so still a lower bound).
    """
    h, w, c = shape
    n = x.shape[0]
    img = x.reshape(n, h, w, c)
    if h % b == 0 and w % b == 0:
        # Slice-and-add is ~5x faster than ndarray.sum over reshaped axes for uint8 input.
        y = img.reshape(n, h, w // b, b, c)
        s = y[:, :, :, 0].astype(dtype)
        for j in range(1, b):
            s += y[:, :, :, j]
        s = s.reshape(n, h // b, b, w // b, c)
        r = s[:, :, 0].copy()
        for j in range(1, b):
            r += s[:, :, j]
    else:
        r = np.add.reduceat(img, np.arange(0, w, b), axis=2, dtype=dtype)
        r = np.add.reduceat(r, np.arange(0, h, b), axis=1, dtype=dtype)
    return r.reshape(n, -1)


class L1Index:
    """Exact L1 top-k over uint8 vectors (successive elimination with block-sum lower bounds)."""

    def __init__(
        self,
        vectors: np.ndarray,
        shape: tuple[int, int, int] = (64, 64, 3),
        use_gpu: bool = False,
        blocks: tuple[int, int, int] = (16, 8, 4),
        n_threads: int | None = None,
    ):
        """vectors: uint8 (N, D) with D = H*W*C, row-major HWC; referenced, not copied (memmap is fine).

        blocks: block sizes (coarse, mid, fine) of the three bound levels; each must divide the previous.
        """
        if vectors.ndim != 2 or vectors.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, D) vectors, got {vectors.dtype} {vectors.shape}")
        h, w, c = (int(s) for s in shape)
        if h * w * c != vectors.shape[1]:
            raise ValueError(f"shape {shape} does not match D={vectors.shape[1]}")
        b16, b8, b4 = blocks
        if b16 % b8 or b8 % b4:
            raise ValueError(f"block sizes must nest: {blocks}")
        self.vectors = vectors if vectors.flags.c_contiguous else np.ascontiguousarray(vectors)
        self.shape = (h, w, c)
        self.blocks = (b16, b8, b4)
        self.ntotal, self.d = vectors.shape
        self.n_threads = n_threads or _num_threads()
        # float32 bounds are exact integers while every partial sum is < 2**24; otherwise allow rounding.
        total_max = 255.0 * self.d
        self._slack = 0.0 if total_max < 2**24 else np.ceil(4.0 * self.d * total_max * 2.0**-24) + 1.0
        self._gpu_index = None
        self.seed_coarse, self.seed_mid = _SEED_COARSE, _SEED_MID  # tuning only; results never depend on them
        self.last_stats: dict[str, float] = {}

        fine_dtype = np.int16 if 255 * b4 * b4 < 2**15 else np.int32
        mid_dtype = np.int16 if 255 * b8 * b8 < 2**15 else np.int32
        n = self.ntotal
        h4, w4 = -(-h // b4), -(-w // b4)
        h8, w8 = -(-h // b8), -(-w // b8)
        h16, w16 = -(-h // b16), -(-w // b16)
        self._x4 = np.empty((n, h4 * w4 * c), dtype=fine_dtype)
        self._x8 = np.empty((n, h8 * w8 * c), dtype=mid_dtype)
        self._x16 = np.empty((n, h16 * w16 * c), dtype=np.float32)
        self._rowsum = np.empty(n, dtype=np.int64)

        chunk = min(_BUILD_CHUNK, max(1024, -(-n // self.n_threads)))  # every thread busy on small N too

        def build(start: int) -> None:
            blk = np.asarray(self.vectors[start : start + chunk])
            f4 = _pool(blk, self.shape, b4, np.uint16 if 255 * b4 * b4 < 2**16 else np.int32)
            self._fill_levels(f4.astype(np.int32), slice(start, start + blk.shape[0]))
            release_pages(self.vectors, start * self.d, (start + blk.shape[0]) * self.d)

        if n:
            with ThreadPoolExecutor(self.n_threads) as ex:
                list(ex.map(build, range(0, n, chunk)))

        if use_gpu:
            self._init_gpu()
        log.info(
            "L1Index: N=%d D=%d blocks=%s, bound structures %.1f MB (vectors %.1f MB referenced)",
            n,
            self.d,
            self.blocks,
            self.nbytes / 1e6,
            self.vectors.nbytes / 1e6,
        )

    def _fill_levels(self, f4: np.ndarray, rows: slice) -> None:
        """Store the three bound levels and row sums for rows, from their fine (b4) block sums."""
        h, w, c = self.shape
        b16, b8, b4 = self.blocks
        self._x4[rows] = f4
        f8 = _pool_features(f4, (-(-h // b4), -(-w // b4), c), b8 // b4)
        self._x8[rows] = f8
        f16 = _pool_features(f8, (-(-h // b8), -(-w // b8), c), b16 // b8)
        self._x16[rows] = f16
        self._rowsum[rows] = f16.sum(axis=1, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Memory held by the index's own structures (bounds + row sums), not the referenced vectors."""
        return int(self._x4.nbytes + self._x8.nbytes + self._x16.nbytes + self._rowsum.nbytes)

    # ------------------------------------------------------------------ GPU (optional)
    def _init_gpu(self) -> None:
        """Flat float32 L1 on the GPU as a candidate generator (needs faiss with GPU support and a GPU;
        otherwise the exact CPU path is used). Float32 sums of integers are exact while D*255 < 2**24."""
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() <= 0:
            log.warning("use_gpu=True but faiss sees no GPU; using the exact CPU path")
            return
        if self._slack > 0:
            log.warning("use_gpu=True but D=%d is too large for exact float32 sums; using the CPU path", self.d)
            return
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = 0
        index = faiss.GpuIndexFlat(res, self.d, faiss.METRIC_L1, cfg)
        for s in range(0, self.ntotal, _BUILD_CHUNK):
            index.add(np.asarray(self.vectors[s : s + _BUILD_CHUNK], dtype=np.float32))
        self._gpu_res, self._gpu_index = res, index
        log.info("L1Index: GPU flat L1 index on device 0 (%.1f GB float32)", self.ntotal * self.d * 4 / 1e9)

    def _search_gpu(self, queries: np.ndarray, k: int, ex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GPU top-(k+margin) candidates, re-scored exactly on uint8 and ordered by (distance, id).

        Rows the GPU did not return are at least as far as every returned row, so the result is exact
        when the k-th distance is strictly below the farthest returned one; other queries (ties reaching
        the cut-off, too few rows) are redone on the exact CPU path.
        """
        nq = queries.shape[0]
        self.last_stats = {}
        kk = min(self.ntotal, k + 1 + _GPU_MARGIN)
        if kk > _GPU_MAX_K:
            return self._search_cpu(queries, k, ex)
        _, cand = self._gpu_index.search(queries.astype(np.float32), kk)
        out_d = np.full((nq, k), -1, dtype=np.int64)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        redo = []
        for j in range(nq):
            returned = cand[j][cand[j] >= 0]
            ids = returned[returned != ex[j]]
            qsum = queries[j : j + 1].sum(axis=1, dtype=np.int64)
            d = self._pair_exact(queries[j : j + 1], qsum, np.zeros(ids.size, np.int64), ids)
            out_d[j], out_i[j] = _sort_topk(d, ids, k)
            if returned.size < self.ntotal and (ids.size < k or out_d[j, k - 1] >= d.max()):
                redo.append(j)
        if redo:
            r = np.asarray(redo)
            out_d[r], out_i[r] = self._search_cpu(queries[r], k, ex[r])
        self.last_stats = {"gpu_redone": float(len(redo))}
        return out_d, out_i

    # ------------------------------------------------------------------ CPU exact path
    def _pair_exact(self, q: np.ndarray, qsum: np.ndarray, qi: np.ndarray, ci: np.ndarray) -> np.ndarray:
        """Exact L1 of pairs (query ``qi`` of block ``q``, row ``ci``; pairs grouped by query):
        |a-b| = a + b - 2 min(a, b), so one uint8 min and one sum per row, the rows gathered in bounded
        pieces, each query's min taken in place."""
        out = np.empty(qi.size, dtype=np.int64)
        for first, last, cuts in _query_pieces(qi, q.shape[0], self.d):
            rows = np.take(self.vectors, ci[cuts[0] : cuts[-1]], axis=0)
            for t in range(first, last):
                seg = rows[cuts[t - first] - cuts[0] : cuts[t - first + 1] - cuts[0]]
                np.minimum(seg, q[t], out=seg)
            m = rows.sum(axis=1, dtype=np.uint32).astype(np.int64)
            sl = slice(cuts[0], cuts[-1])
            out[sl] = self._rowsum[ci[sl]] + qsum[qi[sl]] - 2 * m
        return out

    @staticmethod
    def _pair_lb(qf: np.ndarray, table: np.ndarray, qi: np.ndarray, ci: np.ndarray) -> np.ndarray:
        """Block-sum bounds of pairs (query ``qi``'s float32 sums ``qf``, row ``ci`` of ``table``; pairs
        grouped by query): the rows gathered in bounded pieces, then one SIMD L1 per query (no copy of
        the query side per pair). Float32 is exact for these integer sums (see the module docstring)."""
        out = np.empty(qi.size, dtype=np.float32)
        for first, last, cuts in _query_pieces(qi, qf.shape[0], 4 * table.shape[1]):
            rows = np.take(table, ci[cuts[0] : cuts[-1]], axis=0).astype(np.float32, copy=False)
            for t in range(first, last):
                lo, hi = cuts[t - first], cuts[t - first + 1]
                if hi > lo:
                    seg = rows[lo - cuts[0] : hi - cuts[0]]
                    out[lo:hi] = faiss.pairwise_distances(qf[t : t + 1], seg, faiss.METRIC_L1)[0]
        return out

    def _seed_pairs(self, lb16: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(query, row) pairs of (about) each query's m smallest coarse bounds. Exactness does not depend
        on this choice (it only seeds tau), so for large N each query's cut is read from a strided
        sample, ~5x cheaper than argpartition over all N; excluded rows (bound inf) never come back."""
        nb, n = lb16.shape
        if n > 32 * m:
            step = n // (8 * m)
            sample = lb16[:, ::step]
            r = max(1, (m * sample.shape[1]) // n)
            t = np.partition(sample, r - 1, axis=1)[:, r - 1]
            qi, ci = _nonzero_pairs(lb16 <= t[:, None])
            counts = np.bincount(qi, minlength=nb)
            if counts.min() >= min(m, 32) and counts.max() <= 4 * m:  # else many equal bounds: cut exactly
                return qi, ci
        c = np.argpartition(lb16, m - 1, axis=1)[:, :m] if m < n else np.broadcast_to(np.arange(n), (nb, n))
        qi = np.repeat(np.arange(nb), c.shape[1])
        ci = c.reshape(-1)
        keep = np.isfinite(lb16[qi, ci])
        return qi[keep], ci[keep]

    def _search_block(
        self, q: np.ndarray, sums: tuple[np.ndarray, np.ndarray, np.ndarray], k: int, ex: np.ndarray, bound: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top-k of a block of queries, each step vectorised over all the block's (query, row)
        pairs: the cascade of the module docstring without a Python loop per query."""
        nb, n = q.shape[0], self.ntotal
        qsum = sums[2].sum(axis=1, dtype=np.int64)
        q4, q8, q16 = (f.astype(np.float32) for f in sums)
        lb16 = faiss.pairwise_distances(q16, self._x16, faiss.METRIC_L1)
        has_ex = (ex >= 0) & (ex < n)
        lb16[np.flatnonzero(has_ex), ex[has_ex]] = np.inf
        n_valid = n - int(has_ex.any())
        # 1) Seed: best few by the coarse bound, refined through the finer bounds, evaluated exactly,
        #    so tau (each query's k-th smallest exact distance so far) starts close to its final value.
        tau = np.full(nb, np.inf)
        si = sc = sd = np.zeros(0, np.int64)
        # Seed counts shrink with small N (a third of 3,000 rows seeded cost more than it saved).
        m1 = min(n_valid, max(min(self.seed_coarse, n_valid // 16), 16 * k))
        if m1 > 0:
            si, sc = self._seed_pairs(lb16, m1)
            m2 = max(min(self.seed_mid, m1 // 4), 4 * k)
            si, sc = _per_query_smallest(si, sc, self._pair_lb(q8, self._x8, si, sc), m2)
            si, sc = _per_query_smallest(si, sc, self._pair_lb(q4, self._x4, si, sc), 2 * k)
            sd = self._pair_exact(q, qsum, si, sc)
            kth_d, kth_i = select_topk_pairs(si, sd, sc, nb, k, pad=-1, dtype=np.int64)
            tau = np.where(kth_i[:, k - 1] >= 0, kth_d[:, k - 1], np.inf)
        thr = np.minimum(tau, bound) + self._slack  # float64: exact vs the float32 bounds, never rounds tau down
        # 2) Successive elimination: keep only the pairs whose bound can still reach their query's tau.
        keep = lb16 <= thr[:, None]
        keep[np.flatnonzero(has_ex), ex[has_ex]] = False  # also when tau is still inf
        qi, ci = _nonzero_pairs(keep)
        n16 = qi.size
        ok = self._pair_lb(q8, self._x8, qi, ci) <= thr[qi]
        qi, ci = qi[ok], ci[ok]
        n8 = qi.size
        ok = self._pair_lb(q4, self._x4, qi, ci) <= thr[qi]
        qi, ci = qi[ok], ci[ok]
        n4 = qi.size
        fresh = ~np.isin(qi * n + ci, si * n + sc)
        qi, ci = qi[fresh], ci[fresh]
        # 3) Exact distances of the survivors; with the seeds, the k smallest by (distance, id) per query.
        d = self._pair_exact(q, qsum, qi, ci)
        out_d, out_i = select_topk_pairs(
            np.concatenate((si, qi)), np.concatenate((sd, d)), np.concatenate((sc, ci)), nb, k, pad=-1, dtype=np.int64
        )
        stats = np.array([n16, n8, n4, sd.size + d.size], np.float64)
        return out_d, out_i, stats

    def _search_cpu(
        self, queries: np.ndarray, k: int, ex: np.ndarray, bound: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = queries.shape[0]
        bound = np.full(nq, np.inf) if bound is None else bound
        out_d = np.full((nq, k), -1, dtype=np.int64)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        h, w, c = self.shape
        b16, b8, b4 = self.blocks
        f4 = _pool(queries, self.shape, b4, np.int32)
        f8 = _pool_features(f4, (-(-h // b4), -(-w // b4), c), b8 // b4)
        f16 = _pool_features(f8, (-(-h // b8), -(-w // b8), c), b16 // b8)
        batch = max(1, min(_BATCH, _BLOCK_BOUNDS // max(self.ntotal, 1)))  # 32 at 3,000 rows, 1 at 202,599
        starts = range(0, nq, batch)
        stats = np.zeros(4)

        def block(s: int) -> np.ndarray:
            e = slice(s, s + batch)
            out_d[e], out_i[e], st = self._search_block(queries[e], (f4[e], f8[e], f16[e]), k, ex[e], bound[e])
            return st

        if self.n_threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(min(self.n_threads, len(starts))) as pool:
                stats = sum(pool.map(block, starts))
        else:
            stats = sum(block(s) for s in starts)
        self.last_stats = {name: float(v) / nq for name, v in zip(("cand16", "cand8", "cand4", "exact"), stats)}
        log.debug("L1Index.search: per-query means %s", self.last_stats)
        return out_d, out_i

    def search(
        self, queries: np.ndarray, k: int, exclude_self: np.ndarray | None = None, bound: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries uint8 (Q, D) -> (distances int64 (Q, k), ids int64 (Q, k)), sorted by (distance, id);
        -1 padding where fewer than k rows are available. exclude_self: int64 (Q,) row id to leave out
        per query (-1 = none). bound: per query, a distance the k-th neighbour is known not to exceed
        (e.g. from other shards): rows farther than it are pruned, and those the result may still
        list are correct but incomplete beyond it (CPU path; the GPU path ignores it)."""
        queries = np.asarray(queries)
        if queries.dtype != np.uint8 or queries.ndim != 2 or queries.shape[1] != self.d:
            raise ValueError(f"queries must be uint8 (Q, {self.d}), got {queries.dtype} {queries.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        nq = queries.shape[0]
        ex = _check_exclude(exclude_self, nq)
        out_d = np.full((nq, k), -1, dtype=np.int64)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or self.ntotal == 0:
            return out_d, out_i
        bd = np.full(nq, np.inf) if bound is None else np.asarray(bound, np.float64).reshape(nq)
        stats = []
        for s in range(0, nq, _QUERY_CHUNK):  # bounds the per-call temporaries for large Q
            q = np.ascontiguousarray(queries[s : s + _QUERY_CHUNK])
            e = ex[s : s + q.shape[0]]
            if self._gpu_index is not None:
                out_d[s : s + q.shape[0]], out_i[s : s + q.shape[0]] = self._search_gpu(q, k, e)
            else:
                out_d[s : s + q.shape[0]], out_i[s : s + q.shape[0]] = self._search_cpu(q, k, e, bd[s : s + q.shape[0]])
            if self.last_stats:
                stats.append((q.shape[0], self.last_stats))
        if stats:
            self.last_stats = {
                key: sum(m * st[key] for m, st in stats) / sum(m for m, _ in stats) for key in stats[0][1]
            }
        return out_d, out_i


def _pool_features(f: np.ndarray, grid: tuple[int, int, int], g: int) -> np.ndarray:
    """Sum g x g neighbourhoods of a (n, H'*W'*C) block-sum grid (next coarser bound level)."""
    h, w, c = grid
    n = f.shape[0]
    img = f.reshape(n, h, w, c)
    r = np.add.reduceat(img, np.arange(0, w, g), axis=2)
    r = np.add.reduceat(r, np.arange(0, h, g), axis=1)
    return r.reshape(n, -1)
