"""Capability checks for the optional GPU paths (torch CUDA, faiss GPU).

Everything falls back to the CPU. The GPU branches are written against the documented APIs but have
not been run on a GPU here (see README, "GPU").
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def faiss_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # pragma: no cover - broken install
        return 0


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``. ``cuda`` without one is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if device == "cuda" and not has_cuda:
        raise RuntimeError("--device cuda requested but torch sees no CUDA device")
    return "cuda" if has_cuda else "cpu"


_gpu_res = None


def faiss_index(vectors: np.ndarray, metric: str, device: str = "cpu"):
    """An exact flat FAISS index over ``vectors`` (``l2`` or ``l1``), on the GPU when asked and
    available (``StandardGpuResources`` + ``index_cpu_to_gpu``), else on the CPU."""
    import faiss

    global _gpu_res
    d = vectors.shape[1]
    cpu = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlat(d, faiss.METRIC_L1)
    if len(vectors):
        cpu.add(np.ascontiguousarray(vectors, dtype=np.float32))
    if device == "cuda" and faiss_gpus() > 0:
        if _gpu_res is None:
            _gpu_res = faiss.StandardGpuResources()
        log.info("faiss: moving %s index (%d vectors) to GPU 0", metric, len(vectors))
        return faiss.index_cpu_to_gpu(_gpu_res, 0, cpu)
    return cpu
