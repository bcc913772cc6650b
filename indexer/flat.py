"""Exact top-k Euclidean search over descriptor blocks, faster than FAISS ``IndexFlatL2`` at small batches.

Why: the service searches batches of 1-64 descriptors. FAISS's flat index runs batches below 20
queries with one thread per query (so one core for a single query) and larger ones through BLAS
plus its own selection; a matrix product ``‖b‖² − 2·q·bᵀ`` (torch, all cores) over a low-precision
copy of the rows, with a proven bound on its error, beats it at batch 1, 16 and 64 on 202,599 and 2M
rows (quiet reruns in BENCHMARKS.md, "Scale: millions of faces").

Exactness is not left to a margin of extra candidates: float32 dot products of 128-d vectors
carry a rounding error we can bound, |fl(s) − s| ≤ E with E = 2·(d+4)·u·(B² + 2‖q‖B) (u = 2⁻²⁴,
B = the largest row norm; twice the textbook γ_d bound). Every row whose float32 score is within
2E of the k-th smallest score is re-ranked in float64, and a block whose selection might have
cut such a row off is rescanned, so the result is the exact float64 top-k, ordered by
(distance, id) like a brute-force float64 search, ties included.

Blocks are any (n, 128) float32 arrays, memory maps included (the shards of a sharded index):
nothing is copied except the row norms (4 bytes per row each scan) and the low-precision copies
of the rows (256 bytes per row each).

**Batches of 1-2 queries scan a float16 copy, larger ones a centred bfloat16 copy** (``precision=
"auto"``, the default on CPU). One or two queries are a matrix-vector product: memory-bound, so a
float16 copy (half the bytes) beats float32 (0.94x FAISS measured); its extra error is bounded like
float32's — rows and query rounded to fp16 (relative 2⁻¹¹ each, plus fp16's subnormal spacing) and
the product rounded once more: ≤ 6·2⁻¹¹·‖q‖·B in the score (8·2⁻¹¹ is added to E).

Larger batches are compute-bound: float32 products ran at ~45 GFLOP/s here and fp16 ones are slower
still (no AVX-512 FP16), while bfloat16 products (AVX-512 BF16) are ~3x faster than float32. bf16
keeps only 8 significant bits, so that scan (:class:`_CentredBF16`) is built to keep its error
window narrow: rows and queries are centred on a mean row before rounding (face descriptors share a
large common component: ‖b − c‖ ≈ 0.6 against ‖b‖ ≈ 1.5), the rounding of each row is measured
(R = the largest ‖b − c − bf16(b − c)‖, ~2⁻⁹ relative) rather than assumed worst-case, and the rows are
scanned in L2-sized blocks with a running per-query threshold (the k-th best score so far + 2E), so
selecting candidates touches each score once and keeps ~100 rows per query at 2M. The bound is in
:meth:`_CentredBF16.error_bound`.

``fp32`` (or ``FACEMEM_EXACT_SCAN=fp32``) always scans the float32 rows; ``fp16`` and ``bf16`` always
scan that copy. Memory: ``auto`` keeps both copies (4 bytes per row, 1 GB at 2M rows, beside the
float32 rows); ``bf16`` alone halves that.
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
_TINY = {"fp16": 2.0**-25}  # fp16's subnormal spacing: an absolute error per element
LOW_MARGIN = 64  # the fp16 scan's wider error window keeps more rows within 2E of the k-th
SMALL_BATCH = 2  # auto: batches up to this scan the fp16 copy (memory-bound), larger ones bf16
FP16_SAFE = 16384.0  # ‖q‖·B below this: no fp16 product or coordinate overflows (fp16's max is 65504)
SCAN_SCORES = 1 << 18  # scores per block of the bf16 scan (Q × rows): 1 MB of float32, stays in L2
SCAN_ROWS = (8192, 131072)  # ... within these rows per block (few queries: fewer calls; many: wide enough)
_FP32_MIN = 2.0**-126  # smallest normal float32 / bfloat16: bf16 products flush smaller values to zero


def _torch():
    import torch

    return torch


class ExactL2:
    """Exact top-k L2 over row blocks (global id = offset of the block + row in block)."""

    def __init__(self, blocks: Sequence[np.ndarray], device: str = "cpu", precision: str = "auto"):
        torch = _torch()
        self.device = device
        self.precision = scan_precision(precision, device)
        self._low: list = []  # the fp16 copy of each sub-block
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
                if self.precision in ("auto", "fp16"):
                    self._low.append(t.to(torch.float16))
                self._norms.append(torch.from_numpy(sq.astype(np.float32)).to(device))
                self._starts.append(start + lo)
            start += len(b)
        self.ntotal = start
        self._block_starts = np.cumsum([0] + [len(b) for b in self.blocks]).astype(np.int64)
        self.max_norm = bmax
        self._bf16 = _CentredBF16(self, device) if self.precision in ("auto", "bf16") and start else None

    @property
    def nbytes(self) -> int:
        """Memory of the search's own state (row norms, the low-precision copy); the blocks are referenced."""
        own = sum(n.numel() * 4 for n in self._norms) + sum(b.numel() * 2 for b in self._low)
        return int(own + (self._bf16.nbytes if self._bf16 is not None else 0))

    def scan(self, nq: int) -> str:
        """Which rows a batch of ``nq`` queries scans: ``fp32``, the ``fp16`` copy or the ``bf16`` one."""
        if self.precision == "auto":
            return "fp16" if nq <= SMALL_BATCH else "bf16"
        return self.precision

    def _scores(self, j: int, tq, scan: str = "fp32"):
        """‖b‖² − 2 q·b for sub-block j, (Q, n), float32: from the float32 rows, or the fp16 copy."""
        torch = _torch()
        if scan == "fp16":
            dots = torch.mm(tq.to(torch.float16), self._low[j].T).float()
            return torch.add(self._norms[j], dots, alpha=-2)
        return torch.addmm(self._norms[j], tq, self._t[j].T, beta=1, alpha=-2)

    def error_bound(self, qn: np.ndarray, scan: str = "fp32") -> np.ndarray:
        """(Q,) bound on |computed score − exact score| for queries of norms ``qn`` (the fp32 and fp16
        scans; bf16's is :meth:`_CentredBF16.error_bound`): float32 rounding (twice the textbook γ_d
        bound), plus, scanning the fp16 copy, the rows, the query and the product each rounded to it
        (relative u each, and fp16's subnormal spacing per element and in the product): ≤ 2·(3u·‖q‖·B +
        √d·tiny·(‖q‖ + B) + tiny) in the score; 8u·‖q‖·B, 4√d·tiny·(‖q‖ + B) and 4·tiny cover it."""
        b = self.max_norm
        bound = 2.0 * (self.dim + 4) * _U * (b**2 + 2.0 * qn * b)
        if scan == "fp16":
            tiny = _TINY[scan]  # + the product's own rounding to fp16 where it is subnormal (absolute)
            bound = bound + 8.0 * _U_LOW[scan] * qn * b + 4.0 * np.sqrt(self.dim) * tiny * (qn + b) + 4.0 * tiny
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
        scan = self.scan(nq)
        if scan == "bf16":
            return self.rerank(q, self._bf16.candidates(q, k), k)
        tq = torch.from_numpy(q).to(self.device)
        qn = np.linalg.norm(q.astype(np.float64), axis=1)
        if scan == "fp16" and not max(float(qn.max()), 1.0) * self.max_norm < FP16_SAFE:  # would overflow
            scan = "fp32"
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


class _CentredBF16:
    """The bf16 scan: rows minus a centre c, rounded to bfloat16, scanned in blocks of ~SCAN_SCORES
    scores with a running per-query threshold. Scores are ‖b − c‖² − 2(q − c)·(b − c) = ‖q − b‖² − ‖q − c‖²: the
    same order as the distances, for any c."""

    def __init__(self, flat: ExactL2, device: str, chunk: int = 65536):
        torch = _torch()
        n, dim = flat.ntotal, flat.dim
        sample = flat.rows(np.linspace(0, n - 1, min(n, chunk)).astype(np.int64))
        self.centre = sample.astype(np.float64).mean(0).astype(np.float32).astype(np.float64)
        self.low = torch.empty((n, dim), dtype=torch.bfloat16)
        norms = np.empty(n, np.float64)
        r = bt = 0.0
        for start, part in _pieces(flat.blocks, flat._block_starts, chunk):
            bp = np.asarray(part, np.float64) - self.centre
            t = torch.from_numpy(bp).to(torch.bfloat16)
            self.low[start : start + len(bp)] = t
            rounded = t.double().numpy()
            r = max(r, float(np.linalg.norm(bp - rounded, axis=1).max()))
            bt = max(bt, float(np.linalg.norm(rounded, axis=1).max()))
            norms[start : start + len(bp)] = np.einsum("ij,ij->i", bp, bp)
        self.r, self.b_low, self.b = r, bt, float(np.sqrt(norms.max()))  # R, B̃ = max ‖b̃‖, B' = max ‖b − c‖
        self.dim = dim
        self.norms = torch.from_numpy(norms.astype(np.float32)).to(device)
        self.low = self.low.to(device)

    @property
    def nbytes(self) -> int:
        return int(self.low.numel() * 2 + self.norms.numel() * 4)

    def queries(self, q: np.ndarray):
        """(q̃ = bf16(q − c) as a tensor, ‖q̃‖, ‖q − c − q̃‖), the last two float64."""
        torch = _torch()
        qp = q.astype(np.float64) - self.centre
        qt = torch.from_numpy(qp).to(torch.bfloat16)
        rounded = qt.double().numpy()
        return qt.to(self.low.device), np.linalg.norm(rounded, axis=1), np.linalg.norm(qp - rounded, axis=1)

    def scores(self, qt, lo: int, hi: int):
        """Computed scores of rows lo:hi, (Q, hi − lo) float32: fl32(‖b − c‖² − 2·bf16(q̃·b̃))."""
        return _torch().add(self.norms[lo:hi], _torch().mm(qt, self.low[lo:hi].T), alpha=-2)

    def error_bound(self, qtn: np.ndarray, rq: np.ndarray) -> np.ndarray:
        """(Q,) bound E on |computed − exact score| (exact: ‖b − c‖² − 2(q − c)·(b − c), reals).

        With P = ‖q̃‖·B̃ (≥ Σ|q̃ᵢb̃ᵢ|): the product's float32 accumulation ≤ 2(d+4)·2⁻²⁴·P (twice
        γ_d), plus d·2⁻¹²⁶·(2 + ‖q̃‖ + B̃) for bf16's flushing of subnormal inputs, products and
        sums; its rounding to bf16 ≤ 2⁻⁸·(P + that); the inputs' rounding |q̃·b̃ − q'·b'| ≤ ‖q̃‖·R +
        ‖q' − q̃‖·B' (Cauchy-Schwarz, R measured at build); float64's own rounding of q − c, b − c
        ≤ 2⁻⁴⁸·‖q'‖·B'. The score doubles the dot's error, adds the stored norm's rounding
        (≤ 2⁻²³·B'², float64 then float32) and the float32 subtraction's (≤ 2⁻²⁴·(B'² + 2|o|)).
        A factor 1 + 2⁻²⁰ covers float64's rounding of the norms measured and of this sum."""
        d, bt, b = self.dim, self.b_low, self.b
        p = qtn * bt
        acc = 2.0 * (d + 4) * _U * p + d * _FP32_MIN * (2.0 + qtn + bt)
        out = _U_LOW["bf16"] * (p + acc)
        dot = acc + out + qtn * self.r + rq * b + 2.0**-48 * (qtn + rq) * b
        sub = _U * (b**2 + 2.0 * (1.0 + _U_LOW["bf16"]) * (p + acc))
        return (2.0 * dot + 2.0**-23 * b**2 + sub) * (1.0 + 2.0**-20)

    def candidates(self, q: np.ndarray, k: int) -> list[np.ndarray]:
        """Each query's rows whose computed score is within 2E of the k-th smallest (global ids).

        Why a running threshold suffices: the k-th best score so far never falls below the final
        k-th, so a row dropped by an earlier (higher) threshold is also beyond the final one."""
        torch = _torch()
        nq, n = len(q), self.low.shape[0]
        qt, qtn, rq = self.queries(q)
        window = torch.from_numpy(2.0 * self.error_bound(qtn, rq))
        best = torch.full((nq, k), np.inf, dtype=torch.float64)
        thr = torch.full((nq,), np.inf, dtype=torch.float32)
        found: list[tuple] = []
        with torch.inference_mode():
            step = min(max(SCAN_SCORES // nq, SCAN_ROWS[0]), SCAN_ROWS[1])
            for lo in range(0, n, step):
                s = self.scores(qt, lo, min(n, lo + step)).cpu()
                if lo == 0:
                    kk = min(k, s.shape[1])
                    best[:, :kk] = torch.topk(s, kk, dim=1, largest=False).values.double()
                    thr = _round_up(best[:, k - 1] + window)
                qi, col = (s <= thr[:, None]).nonzero(as_tuple=True)
                if qi.numel() == 0:
                    continue
                sv = s[qi, col]
                found.append((qi, col + lo, sv))
                if lo > 0:
                    best = _merge_best(best, qi, sv.double(), k)
                    thr = _round_up(best[:, k - 1] + window)
            if not found:  # NaN queries: no score compares
                return [np.zeros(0, np.int64) for _ in range(nq)]
            qi, ids, sv = (torch.cat(x) for x in zip(*found))
            keep = (sv <= thr[qi]).numpy()
        qi, ids = qi.numpy()[keep], ids.numpy()[keep].astype(np.int64)
        order = np.argsort(qi, kind="stable")
        return np.split(ids[order], np.cumsum(np.bincount(qi, minlength=nq))[:-1])


def _pieces(blocks: Sequence[np.ndarray], starts: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(global start, rows) of every block in slices of at most ``rows`` (memory maps read piecewise)."""
    for b, start in zip(blocks, starts):
        for lo in range(0, len(b), rows):
            yield int(start + lo), b[lo : lo + rows]


def _merge_best(best, qi, sv, k: int):
    """The k smallest of each query's ``best`` row and its new scores ``sv`` (``qi`` sorted by query)."""
    torch = _torch()
    nq = best.shape[0]
    cnt = torch.bincount(qi, minlength=nq)
    pos = torch.arange(qi.numel()) - (torch.cumsum(cnt, 0) - cnt)[qi]
    dense = torch.full((nq, int(cnt.max())), np.inf, dtype=torch.float64)
    dense[qi, pos] = sv
    return torch.topk(torch.cat([best, dense], 1), k, dim=1, largest=False).values


def _round_up(x):
    """float64 thresholds as float32, rounded towards +inf (so a float32 comparison keeps a superset)."""
    torch = _torch()
    y = x.float()
    return torch.where(y.double() < x, torch.nextafter(y, torch.tensor(np.inf)), y)


def scan_precision(precision: str = "auto", device: str = "cpu") -> str:
    """``auto`` (fp16 copy for batches up to SMALL_BATCH, float32 above), ``fp32``, ``fp16`` or ``bf16``;
    ``auto`` can be overridden by ``$FACEMEM_EXACT_SCAN``. Off the CPU, auto is fp32 (CUDA: untested here)."""
    precision = os.environ.get("FACEMEM_EXACT_SCAN", precision) if precision == "auto" else precision
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"exact scan precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    return "fp32" if precision == "auto" and device != "cpu" else precision


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
