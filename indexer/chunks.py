"""One task of a build, wherever it runs: the face pipeline on a few images, their descriptors,
and the chunk checkpoints the results are kept in.

Why a module of its own: both build engines (local worker processes, :mod:`indexer.build`, and Ray
actors, :mod:`indexer.ray_engine`) run exactly these functions, so they build the same rows; neither
engine needs the other to get them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import attributes, faces, pixels, watchdog
from .datasets import Item

log = logging.getLogger(__name__)

TASK_SIZE = 64  # images per worker task (chunks are cut into tasks of this size, from the chunk start)
WORKER_BATCH = 32  # torch batch inside a worker: single-threaded, 32 beats 64 by ~5% (cache)
_worker_embedders: dict[tuple[str, str], faces.Embedder] = {}  # per worker process, by (kind, precision)
_worker_device = "cpu"  # where a worker's torch embedder runs (a Ray GPU actor sets "cuda")


def init_worker(torch_threads: int, build_pid: int) -> None:
    """Worker start-up: cap the library thread pools at this worker's share of the cores, and exit
    if the build process dies.

    Why: a worker is one of ``workers`` processes sharing the cores; thread pools sized to the
    whole machine would oversubscribe it (OpenMP threads spin and stall at barriers). The env vars
    cover spawned workers (read when the libraries load); forked ones get ``torch.set_num_threads``.
    A build killed without cleanup (SIGTERM, OOM killer) leaves its workers blocked on a result pipe
    nobody reads, holding memory (and the forkserver) forever; the watchdog ends them.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(torch_threads)
    init_worker.torch_threads = torch_threads  # type: ignore[attr-defined]
    watchdog.start(build_pid)


def _get_worker_embedder(kind: str, precision: str) -> faces.Embedder:
    """This worker's embedder for ``kind`` at ``precision``: built on first use, reused for every task."""
    key = (kind, precision)
    if key not in _worker_embedders:
        if kind == "torch" and _worker_device != "cpu":
            emb = faces.make_embedder(kind, _worker_device, precision)  # batched on the GPU
        elif kind == "torch":
            from .resnet import TorchEmbedder

            threads = getattr(init_worker, "torch_threads", 1)
            emb = TorchEmbedder("cpu", batch_size=WORKER_BATCH, threads=threads, precision=precision)
        else:
            emb = faces.make_embedder(kind, "cpu", precision)
        _worker_embedders[key] = emb
    return _worker_embedders[key]


def init_task_worker(kind: str | None, device: str = "cpu", torch_threads: int = 1, precision: str = "fp32") -> None:
    """Make this process a task worker for another engine (a Ray actor): the same embedder as a
    local worker (``torch_threads`` threads on the CPU, or ``device``), loaded now, once."""
    global _worker_device
    _worker_device = device
    init_worker.torch_threads = torch_threads  # type: ignore[attr-defined]
    if device == "cpu":
        try:
            import torch

            torch.set_num_threads(torch_threads)
        except ImportError:  # pragma: no cover - dlib-only install
            pass
    worker_ready(kind, precision)
    faces.preload()


def worker_ready(kind: str | None, precision: str) -> int:
    """First call in each worker: build the embedder now, so the first task does not wait for it."""
    if kind is not None:
        _get_worker_embedder(kind, precision)
    return os.getpid()


def embed_chips(kind: str, chips: np.ndarray, flip_average: bool, precision: str) -> dict:
    """Worker: descriptors for chips the main process cut (the tasks it ran while workers started)."""
    t0 = time.perf_counter()
    desc = faces.describe(_get_worker_embedder(kind, precision), chips, flip_average)
    return {"descriptors": desc, "t_embed": time.perf_counter() - t0}


def process_task(args: tuple[list[tuple[str, str]], str, str | None, bool, str]) -> dict:
    """Worker (or the main process): one task's (path, file) items → row records, pixel vectors,
    and descriptors (embedder name given) or chips (None: someone else embeds them), plus the per-face
    ``face_extras`` (68 landmarks, attribute crop) that attribute probes and geometry need.

    ``args`` = (items, detector, embedder name or None, flip_average, descriptor precision): everything
    per image happens here or in :mod:`indexer.faces`, so every build engine that runs this function
    builds the same rows.
    """
    items, detector, embed_here, flip_average, precision = args
    rows, chips, pix, lm68, crops = [], [], [], [], []
    paths = [path for path, _ in items]
    found, t_decode, t_face = faces.process_many(paths, faces.read_file, detector, attributes=True)
    for path, face in zip(paths, found):
        if isinstance(face, Exception):  # never let one image take the build down
            log.error("unexpected error on %s", path, exc_info=face)
            face = faces.Face("unreadable", f"internal error: {type(face).__name__}: {face}")
        rows.append(
            {
                "status": face.status,
                "reason": face.reason,
                "faces_found": face.faces_found,
                "box": list(face.box) if face.box else None,
                "size": [face.width, face.height],
                "source_px": None if face.source_px is None else round(face.source_px, 2),
            }
        )
        if face.ok:
            chips.append(face.chip)
            pix.append(pixels.pixel_vector(face.chip))
            lm68.append(face.landmarks68)
            crops.append(face.attr_crop)
    chip_arr = np.stack(chips) if chips else np.zeros((0, faces.CHIP_SIZE, faces.CHIP_SIZE, 3), np.uint8)
    out = {
        "rows": rows,
        "pixels": np.stack(pix) if pix else np.zeros((0, pixels.PIXEL_DIM), np.uint8),
        "t_decode": t_decode,
        "t_face": t_face,
        "t_embed": 0.0,
        "face_extras": attributes.stack_extras(lm68, crops),
    }
    if embed_here:
        out.update(embed_chips(embed_here, chip_arr, flip_average, precision))
    else:
        out["chips"] = chip_arr
    return out


def plan_tasks(chunks: list[list[Item]], todo: list[int]) -> list[tuple[int, int]]:
    """(chunk, first item) of every task of the ``todo`` chunks: a fixed function of the chunk
    layout, so every engine embeds the same batches (and a resumed build equals an uninterrupted one)."""
    return [(i, lo) for i in todo for lo in range(0, len(chunks[i]), TASK_SIZE)]


def task_items(chunks: list[list[Item]], task: tuple[int, int]) -> list[tuple[str, str]]:
    """The (path, file) items of one task: the first argument of :func:`process_task`."""
    i, lo = task
    return [(str(it.path), it.file) for it in chunks[i][lo : lo + TASK_SIZE]]


def parts_per_chunk(chunks: list[list[Item]], todo: list[int]) -> dict[int, int]:
    return {i: -(-len(chunks[i]) // TASK_SIZE) for i in todo}


def save_chunk(
    path: Path, rows: list[dict], desc: np.ndarray, pix: np.ndarray, times: dict, extras: dict | None = None
) -> None:
    tmp = path.with_suffix(".tmp.npz")
    ex = {f"extra/{k}": v for k, v in (extras or {}).items()}
    try:
        np.savez(
            tmp, rows=np.array(json.dumps(rows)), descriptors=desc, pixels=pix, times=np.array(json.dumps(times)), **ex
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave no half-written chunk behind
        raise


def load_chunk(path: Path, pixels: bool = True) -> tuple[list[dict], np.ndarray, np.ndarray | None, dict]:
    """A checkpoint's rows, descriptors, pixel vectors (None unless ``pixels``: they are the bulk of
    it, ~12 KB a face) and stage times."""
    with np.load(path) as z:
        pix = z["pixels"] if pixels else None
        return json.loads(str(z["rows"])), z["descriptors"], pix, json.loads(str(z["times"]))


def load_chunk_extras(path: Path) -> dict[str, np.ndarray]:
    """The per-face extras of a checkpoint (``face_extras`` of :func:`process_task`)."""
    with np.load(path) as z:
        return {k[len("extra/") :]: z[k] for k in z.files if k.startswith("extra/")}


def chunk_ok(path: Path, n_items: int) -> bool:
    """Whether a finished checkpoint reads back whole (a power cut can leave one short or empty)."""
    try:
        rows, desc, pix, _ = load_chunk(path)
        extras = load_chunk_extras(path)
    except Exception:  # noqa: BLE001 - whatever a damaged zip or npy raises, the chunk is redone
        return False
    n_faces = sum(r.get("status") == "ok" for r in rows)
    return len(rows) == n_items and len(desc) == len(pix) == n_faces and attributes.extras_ok(extras, n_faces)


def merge_parts(parts: list[dict]) -> dict:
    """One chunk's result from its tasks' results (in task order)."""
    return {
        "rows": [r for p in parts for r in p["rows"]],
        "descriptors": np.concatenate([p["descriptors"] for p in parts]),
        "pixels": np.concatenate([p["pixels"] for p in parts]),
        "face_extras": attributes.concat_extras([p["face_extras"] for p in parts]),
        **{k: sum(p[k] for p in parts) for k in ("t_decode", "t_face", "t_embed")},
    }
