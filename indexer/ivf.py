"""Approximate semantic search for large indexes: an IVF index from ``faiss.index_factory``.

Why: exact search reads every descriptor for every query (512 bytes per face per query); above a
few million faces that costs more than a request may. An inverted-file index clusters the
descriptors (k-means on a seeded sample) and scans only the ``nprobe`` nearest clusters. It is
approximate: a true neighbour in an unvisited cluster is missed. Recall@k against exact search
is measured by ``scripts/bench_scale.py`` (BENCHMARKS.md), and every response says which search
ran (``search.semantic.exact``). Candidates are re-ranked with exact float64 distances, so the
distances reported are exact; only the candidate set is approximate.

``IVF{nlist},Flat`` keeps the float32 vectors (512 B/face); ``IVF{nlist},PQ{m}`` (e.g. PQ32,
32 B/face) when memory demands it, at a further loss of recall that the benchmark measures.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SPEC = "IVF{nlist},Flat"
DEFAULT_NPROBE = 128  # recall@5 0.999 at 2M with IVF2048 (BENCHMARKS.md, "Scale"); 32 gave 0.95
TRAIN_PER_LIST = 64  # training points per cluster (faiss warns below 39)
ADD_CHUNK = 1 << 17


def default_nlist(n: int) -> int:
    """About 2·sqrt(n) clusters, a power of two (faiss's guideline is 4-16·sqrt(n) for very large n;
    fewer, larger lists keep training and the coarse search cheap here)."""
    return int(2 ** max(4, round(math.log2(max(16.0, 2.0 * math.sqrt(max(n, 1)))))))


def spec_for(n: int, spec: str = DEFAULT_SPEC) -> str:
    return spec.format(nlist=default_nlist(n))


def build(blocks: Sequence[np.ndarray], spec: str = DEFAULT_SPEC, seed: int = 0, train_size: int | None = None):
    """Train ``faiss.index_factory(128, spec)`` on a seeded sample and add every row of ``blocks``
    (ids = global row numbers, in block order). ``{nlist}`` in ``spec`` is filled from the size."""
    import faiss

    n = int(sum(len(b) for b in blocks))
    d = int(blocks[0].shape[1])
    spec = spec_for(n, spec)
    index = faiss.index_factory(d, spec)
    nlist = faiss.extract_index_ivf(index).nlist
    m = min(n, train_size or TRAIN_PER_LIST * nlist)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, m, replace=False))
    starts = np.cumsum([0] + [len(b) for b in blocks])
    which = np.searchsorted(starts, pick, side="right") - 1
    sample = np.concatenate([np.asarray(blocks[b][pick[which == b] - starts[b]]) for b in np.unique(which)])
    t0 = time.perf_counter()
    faiss.extract_index_ivf(index).cp.seed = seed  # k-means seed: the same sample gives the same clusters
    index.train(np.ascontiguousarray(sample, np.float32))
    t1 = time.perf_counter()
    for b in blocks:
        for lo in range(0, len(b), ADD_CHUNK):
            index.add(np.ascontiguousarray(b[lo : lo + ADD_CHUNK], np.float32))
    log.info(
        "IVF %s over %d faces: trained on %d in %.1f s, added in %.1f s",
        spec,
        n,
        m,
        t1 - t0,
        time.perf_counter() - t1,
    )
    return index


def load(path, mmap: bool = True, device: str = "cpu"):
    """Read a stored IVF index (its inverted lists memory-mapped when ``mmap``), and move it to
    GPU 0 when ``device`` is cuda and faiss has GPU support (capability-checked; untested here)."""
    import faiss

    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError:  # an index type without mmap support: read it whole
        index = faiss.read_index(str(path))
    return to_device(index, device)


def to_device(index, device: str):
    from .devices import faiss_gpus

    if device != "cuda" or faiss_gpus() == 0:
        return index
    import faiss

    from . import devices

    if devices._gpu_res is None:
        devices._gpu_res = faiss.StandardGpuResources()
    log.info("faiss: moving the IVF index (%d vectors) to GPU 0", index.ntotal)
    return faiss.index_cpu_to_gpu(devices._gpu_res, 0, index)


def describe(index) -> dict:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # a GPU index: read its CPU twin's parameters
        ivf = faiss.extract_index_ivf(faiss.index_gpu_to_cpu(index))
    return {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe), "faces": int(index.ntotal)}


def candidates(index, queries: np.ndarray, k: int, nprobe: int = DEFAULT_NPROBE) -> np.ndarray:
    """The approximate top-k ids (−1 padded) for exact re-ranking."""
    import faiss

    q = np.ascontiguousarray(queries, np.float32)
    if isinstance(index, faiss.IndexIVF):  # per-call parameters: safe with concurrent requests
        _, ids = index.search(q, k, params=faiss.SearchParametersIVF(nprobe=int(nprobe)))
    else:  # wrapped (e.g. "OPQ16,IVF...") or GPU (untested here): the index's own setting
        try:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))
        except RuntimeError:
            index.nprobe = int(nprobe)
        _, ids = index.search(q, k)
    return ids.astype(np.int64)
