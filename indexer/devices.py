"""Capability checks for the optional GPU paths (torch CUDA, faiss GPU).

Everything falls back to the CPU. The GPU branches are written against the documented APIs but have
not been run on a GPU here (see README, "GPU").
"""

from __future__ import annotations

import functools
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


#: Descriptor arithmetic (``resnet.TorchEmbedder``): ``fp32`` is dlib's own (parity to float32
#: round-off); ``bf16`` runs the network in bfloat16 with float32 accumulation (oneDNN), about 2x
#: faster on CPUs with native bf16, within the fidelity limits in BENCHMARKS.md ("Descriptor precision").
PRECISIONS = ("fp32", "bf16")


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX-BF16); elsewhere torch
    emulates them and bf16 is slower than fp32.

    Why /proc/cpuinfo first: the build's main process decides the precision and never imports torch
    (~1 core-second) on a CPU-only machine. Without the file, torch's own oneDNN probe decides.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        try:
            import torch

            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # pragma: no cover - a torch without the probe
            return False


def resolve_precision(precision: str, device: str = "cpu", embedder: str = "torch") -> str:
    """``auto`` → ``bf16`` on a CPU with native bf16, else ``fp32`` (CUDA included: bf16 is untested there).

    dlib's own embedder has one arithmetic; asking it for bf16 is an error, not a silent fp32.
    """
    want = str(precision).strip().lower()
    if want not in (*PRECISIONS, "auto"):
        raise ValueError(f"descriptor precision must be auto, fp32 or bf16, got {precision!r}")
    if embedder != "torch":
        if want == "bf16":
            raise ValueError(f"the {embedder} embedder computes fp32 descriptors only (bf16 needs --embedder torch)")
        return "fp32"
    if want != "auto":
        return want
    return "bf16" if device == "cpu" and native_bf16() else "fp32"
