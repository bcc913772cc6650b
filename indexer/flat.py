"""Exact top-k Euclidean search over descriptor blocks, faster than FAISS ``IndexFlatL2`` at small batches.

Why: the service searches batches of 1-64 descriptors. FAISS's flat index runs batches below 20
queries with one thread per query (so one core for a single query) and larger ones through BLAS
plus its own selection; a plain matrix product ``‖b‖² − 2·q·bᵀ`` (torch, all cores) followed by
``topk`` is 1.5-1.7x faster at batch 1 and 3.7-5.7x at batch 16-64, on 202,599 and 2M rows
(BENCHMARKS.md, "Scale: millions of faces").

Exactness is not left to a margin of extra candidates: float32 dot products of 128-d vectors
carry a rounding error we can bound, |fl(s) − s| ≤ E with E = 2·(d+4)·u·(B² + 2‖q‖B) (u = 2⁻²⁴,
B = the largest row norm; twice the textbook γ_d bound). Every row whose float32 score is within
2E of the k-th smallest score is re-ranked in float64, and a block whose selection might have
cut such a row off is rescanned, so the result is the exact float64 top-k, ordered by
(distance, id) like a brute-force float64 search, ties included.

Blocks are any (n, 128) float32 arrays, memory maps included (the shards of a sharded index):
nothing is copied except the row norms (4 bytes per row) and the low-precision copy of the rows
(256 bytes per row).

**Small batches scan a float16 copy** (``precision="auto"``, the default on CPU). A batch of 1-2
queries is a matrix-vector product: memory-bound, so the float32 scan runs at FAISS's speed (0.94×
measured). A float16 copy of the rows reads half the bytes; its extra error is bounded like
float32's — rows and query rounded to fp16 (relative 2⁻¹¹ each, plus fp16's subnormal spacing) and
the product rounded once more: ≤ 6·2⁻¹¹·‖q‖·B in the score (8·2⁻¹¹ is added to E) — so the same
re-ranking keeps the result exact. Larger batches are compute-bound and scan the float32 rows (this
CPU's fp16 matrix products are slow). ``fp32`` (or ``FACEMEM_EXACT_SCAN=fp32``) always scans the
float32 rows; ``fp16`` and ``bf16`` always scan that copy (bf16's 2⁻⁸ rounding makes its window 8×
wider, which costs more re-ranking than its faster products save at 1 query).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from .topk import select_topk

log = logging.getLogger(__name__)

MARGIN = 16  # extra candidates per block beyond k (almost always enough; rescans cover the rest)
SUB_ROWS = 1 << 18  # rows per matrix product: bounds the (Q, rows) float32 temporary (64 MB at Q=64)
_U = 2.0**-24
_U_LOW = {"fp16": 2.0**-11, "bf16": 2.0**-8}  # unit roundoff: 11 and 8 significant bits
_TINY = {"fp16": 2.0**-25, "bf16": 0.0}  # fp16's subnormal spacing: an absolute error per element
LOW_MARGIN = 64  # the low-precision scan's wider error window keeps more rows within 2E of the k-th
SMALL_BATCH = 2  # auto: batches up to this scan the fp16 copy (memory-bound), larger ones float32


def _torch():
    import torch

    return torch


class ExactL2:
    """Exact top-k L2 over row blocks (global id = offset of the block + row in block)."""

    def __init__(self, blocks: Sequence[np.ndarray], device: str = "cpu", precision: str = "auto"):
        torch = _torch()
        self.device = device
        self.precision = scan_precision(precision, device)
        self._low: list = []  # the fp16 / bf16 copy of each sub-block
        self.dim = int(blocks[0].shape[1]) if blocks else 128
        self.blocks = [b for b in blocks]
        self._t, self._norms, self._starts = [], [], []
        start, bmax = 0, 0.0
        for b in self.blocks:
            for lo in range(0, len(b), SUB_ROWS):
                part = b[lo : lo + SUB_ROWS]
                with warnings.catch_warnings():  # read-only memory maps: torch only reads them
                    warnings.simplefilter("ignore", UserWarning)
                    t = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
                sq = _sq_norms(part)
                bmax = max(bmax, float(np.sqrt(sq.max())) if len(sq) else 0.0)
                if device != "cpu":
                    t = t.to(device)
                self._t.append(t)
                if self.precision != "fp32":
                    self._low.append(t.to(_dtype(self.low)))
                self._norms.append(torch.from_numpy(sq.astype(np.float32)).to(device))
                self._starts.append(start + lo)
            start += len(b)
        self.ntotal = start
        self._block_starts = np.cumsum([0] + [len(b) for b in self.blocks]).astype(np.int64)
        self.max_norm = bmax

    @property
    def nbytes(self) -> int:
        """Memory of the search's own state (row norms, the low-precision copy); the blocks are referenced."""
        return int(sum(n.numel() * 4 for n in self._norms) + sum(b.numel() * 2 for b in self._low))

    @property
    def low(self) -> str:
        """The low-precision copy's format (``fp16`` for ``auto``)."""
        return "fp16" if self.precision == "auto" else self.precision

    def scan(self, nq: int) -> str:
        """Which rows a batch of ``nq`` queries scans: ``fp32`` or the low-precision copy."""
        if self.precision == "auto":
            return "fp16" if nq <= SMALL_BATCH else "fp32"
        return self.precision

    def _scores(self, j: int, tq, scan: str = "fp32"):
        """‖b‖² − 2 q·b for sub-block j, (Q, n), float32: from the float32 rows, or the low-precision copy."""
        torch = _torch()
        if scan != "fp32":
            dots = torch.mm(tq.to(_dtype(scan)), self._low[j].T).float()
            return torch.add(self._norms[j], dots, alpha=-2)
        return torch.addmm(self._norms[j], tq, self._t[j].T, beta=1, alpha=-2)

    def error_bound(self, qn: np.ndarray, scan: str = "fp32") -> np.ndarray:
        """(Q,) bound on |computed score − exact score| for queries of norms ``qn``: float32 rounding
        (twice the textbook γ_d bound), plus, scanning a low-precision copy, the rows, the query and the
        product each rounded to it (relative u each, and fp16's subnormal spacing per element):
        ≤ 2·(3u·‖q‖·B + √d·tiny·(‖q‖ + B)) in the score; 8u·‖q‖·B and 4√d·tiny·(‖q‖ + B) cover it."""
        b = self.max_norm
        bound = 2.0 * (self.dim + 4) * _U * (b**2 + 2.0 * qn * b)
        if scan != "fp32":
            bound = bound + 8.0 * _U_LOW[scan] * qn * b + 4.0 * np.sqrt(self.dim) * _TINY[scan] * (qn + b)
        return bound

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` (global), float32, from the referenced blocks."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        which = np.searchsorted(self._block_starts, ids, side="right") - 1
        for b in np.unique(which):
            sel = np.flatnonzero(which == b)
            out[sel] = self.blocks[b][ids[sel] - self._block_starts[b]]
        return out

    def rerank(self, q: np.ndarray, cand: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 distances of each query's candidates, top-k by (distance, id), NaN/−1 padded."""

        def scored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for j, c in enumerate(cand):
                c = np.unique(c[c >= 0])
                if c.size == 0:
                    yield np.zeros(0), c
                    continue
                yield np.linalg.norm(self.rows(c).astype(np.float64) - q[j].astype(np.float64), axis=1), c

        return select_topk(scored(), len(q), k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances float64 (Q, k), ids int64 (Q, k)): the exact top-k; NaN / −1 padding."""
        torch = _torch()
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        nq = len(q)
        if nq == 0 or self.ntotal == 0 or k < 1:
            return np.full((nq, k), np.nan), np.full((nq, k), -1, np.int64)
        tq = torch.from_numpy(q).to(self.device)
        qn = np.linalg.norm(q.astype(np.float64), axis=1)
        scan = self.scan(nq)
        bound = self.error_bound(qn, scan)  # (Q,)
        margin = MARGIN if scan == "fp32" else LOW_MARGIN
        vals, ids, last = [], [], []
        with torch.inference_mode():
            for j, start in enumerate(self._starts):
                n = self._t[j].shape[0]
                kk = min(n, k + margin)
                s = self._scores(j, tq, scan)
                v, i = torch.topk(s, kk, dim=1, largest=False, sorted=False)
                v, i = v.cpu().numpy(), i.cpu().numpy()
                vals.append(v)
                ids.append(i.astype(np.int64) + start)
                # the largest kept score, if the block had more rows than were kept (else +inf)
                last.append(v.max(axis=1) if kk < n else np.full(nq, np.inf, np.float32))
            v = np.concatenate(vals, axis=1).astype(np.float64)
            i = np.concatenate(ids, axis=1)
            kth = np.partition(v, min(k, v.shape[1]) - 1, axis=1)[:, min(k, v.shape[1]) - 1]
            thr = kth + 2.0 * bound  # every true top-k row scores at most this in float32
            cand = [i[j][v[j] <= thr[j]] for j in range(nq)]
            for j, start in enumerate(self._starts):  # blocks whose cut may have dropped a row <= thr
                redo = np.flatnonzero(last[j] <= thr)
                if redo.size:
                    s = self._scores(j, tq[torch.from_numpy(redo).to(self.device)], scan).cpu().numpy()
                    for r, qi in enumerate(redo):
                        extra = np.flatnonzero(s[r] <= thr[qi]).astype(np.int64) + start
                        cand[qi] = np.concatenate([cand[qi], extra])
                    log.debug("ExactL2: rescanned sub-block %d for %d queries", j, redo.size)
        return self.rerank(q, cand, k)


def scan_precision(precision: str = "auto", device: str = "cpu") -> str:
    """``auto`` (fp16 copy for batches up to SMALL_BATCH, float32 above), ``fp32``, ``fp16`` or ``bf16``;
    ``auto`` can be overridden by ``$FACEMEM_EXACT_SCAN``. Off the CPU, auto is fp32 (CUDA: untested here)."""
    precision = os.environ.get("FACEMEM_EXACT_SCAN", precision) if precision == "auto" else precision
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"exact scan precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    return "fp32" if precision == "auto" and device != "cpu" else precision


def _dtype(scan: str):
    torch = _torch()
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[scan]


def _sq_norms(x: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """Squared row norms in float64, in chunks (no full float64 copy of a large block)."""
    out = np.empty(len(x), np.float64)
    for lo in range(0, len(x), chunk):
        p = np.asarray(x[lo : lo + chunk], np.float64)
        out[lo : lo + chunk] = np.einsum("ij,ij->i", p, p)
    return out


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 distances to every row, top-k by (distance, id). Slow; for tests."""
    v = np.asarray(vectors, np.float64)
    ids = np.arange(len(v))
    scored = ((np.linalg.norm(v - qj, axis=1), ids) for qj in np.asarray(queries, np.float64))
    return select_topk(scored, len(queries), k)
