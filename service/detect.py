"""Face detection in worker processes, for the service and the in-process audit.

dlib's detectors and landmark predictor hold the GIL, so a pool of processes, not threads, runs
them in parallel; an image that crashes or exhausts a worker costs that image, not the server.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np

from indexer import chunks, faces, pixels, watchdog

log = logging.getLogger(__name__)


def detect_one(
    data: bytes | np.ndarray, detector: str, max_pixels: int = faces.MAX_PIXELS, attributes: bool = False
) -> faces.Face:
    """The face pipeline on one upload, or on an image already decoded (an in-process audit's generator
    sample: the array its lossless PNG decodes to); any failure becomes an ``unreadable`` status, never
    an error."""
    return detect_many([data], detector, max_pixels, attributes)[0]


def detect_many(
    datas: list, detector: str, max_pixels: int = faces.MAX_PIXELS, attributes: bool = False
) -> list[faces.Face]:
    """:func:`detect_one` of each of ``datas``, the pipeline's stages run over all of them in a row
    (:func:`indexer.faces.process_many`: same faces, less time)."""

    def load(data: bytes | np.ndarray) -> np.ndarray:
        if isinstance(data, np.ndarray):
            return faces.from_array(data, max_pixels)
        return faces.decode(data, max_pixels)

    found, _, _ = faces.process_many(datas, load, detector, attributes)
    out = []
    for data, face in zip(datas, found):
        if isinstance(face, Exception):  # a library error on a hostile or odd file must not fail the request
            size = f"{data.nbytes} bytes decoded" if isinstance(data, np.ndarray) else f"{len(data)} bytes"
            log.error("face pipeline failed on an upload (%s)", size, exc_info=face)
            face = faces.Face("unreadable", f"face pipeline error: {type(face).__name__}: {str(face)[:200]}")
        out.append(face)
    return out


def embedding_inputs(ok: list[faces.Face], index_px: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(chips to embed, pixel vectors) of ``ok`` faces against an index whose faces are ``index_px``
    wide (None: no resolution matching): each chip much sharper than the index's is degraded to it
    first (:func:`indexer.faces.match_resolution`); the pixel vector always comes from the chip as cut.
    One function for every place a query is embedded (:meth:`service.search.Searcher.prepare`, and
    :func:`detect_task` in a worker), so all of them describe a face alike."""
    if not ok:
        return (
            np.zeros((0, faces.CHIP_SIZE, faces.CHIP_SIZE, 3), np.uint8),
            np.zeros((0, pixels.PIXEL_DIM), np.uint8),
        )
    chips = np.stack([faces.match_resolution(f.chip, f.source_px, index_px) for f in ok])
    return chips, np.stack([pixels.pixel_vector(f.chip) for f in ok])


def detect_task(args: tuple) -> dict:
    """Worker (one of the index build's, :class:`QueryWorkers`): one task of query images → their
    faces (:func:`detect_one`, chips dropped), the ok faces' pixel vectors, and their descriptors
    (``embed``: the embedder name; the build's worker embedder, :func:`indexer.chunks.embed_chips`)
    or, ``embed`` None, the chips to embed (the main process embeds them, e.g. on a GPU).

    ``args`` = (images, detector, max_pixels, attributes, embed, flip_average, index_px, precision)."""
    datas, detector, max_pixels, attributes, embed, flip_average, index_px, precision = args
    found = detect_many(datas, detector, max_pixels, attributes)
    ok = [f for f in found if f.ok]
    chips, pix = embedding_inputs(ok, index_px)
    for f in ok:
        f.chip = None  # embedded here: not worth its 67 KB back through the pipe
    out = {"faces": found, "pixels": pix}
    if embed:
        out["descriptors"] = chunks.embed_chips(embed, chips, flip_average, precision)["descriptors"]
    else:
        out["chips"] = chips
    return out


WORKER_MEMORY_MB = 3072  # address space a detection worker may add after start-up (a 40 Mpx image needs ~0.4 GB)


def _init_detect_worker(max_mb: int, server_pid: int) -> None:
    """Worker initialiser: cap the address space at what is mapped now plus ``max_mb``, so a
    pathological image ends as a MemoryError (status ``unreadable``) in that worker instead of the
    kernel's OOM killer picking a process; and exit when the server is gone."""
    import re
    import resource

    watchdog.start(server_pid)  # a server killed with SIGKILL must not leave its workers behind
    if max_mb > 0:
        with open("/proc/self/status") as f:
            m = re.search(r"^VmSize:\s+(\d+) kB", f.read(), re.M)
        lim = (int(m.group(1)) << 10 if m else 0) + (max_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def _warm(detector: str) -> bool:
    """Worker initialiser: load the dlib models once per process, not on the first request."""
    faces._dlib_obj("sp5")
    if detector in ("hog", "cnn"):
        faces._dlib_obj(detector)
    return True


class DetectPool:
    """Face detection in worker processes.

    dlib's detectors and landmark predictor hold the GIL, so threads do not run them in parallel:
    a batch would pay one image's time per image, and concurrent requests would queue behind each
    other. Worker processes run them in parallel; an image that crashes a worker costs that image
    (status ``unreadable``), not the server. ``processes=0`` runs everything in the calling thread.
    """

    def __init__(self, processes: int | None = None, memory_mb: int = WORKER_MEMORY_MB):
        self.processes = (os.cpu_count() or 1) if processes is None else int(processes)
        self.memory_mb = int(memory_mb)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # Large buffers straight from mmap, so a worker hands a 40 Mpx image's memory back to
                # the OS when it is done instead of keeping it in the heap (read at process start).
                os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
                os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # per-core thread stacks: not needed here
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=get_context("spawn"),
                    initializer=_init_detect_worker,
                    initargs=(self.memory_mb, os.getpid()),
                )
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.warning("a face-detection worker died; starting a new pool")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def start(self) -> None:
        """Start the workers and load their models now (server start-up), not on the first request."""
        if self.processes > 0:
            pool = self._get()
            for f in [pool.submit(_warm, "hog") for _ in range(self.processes)]:
                f.result()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def run(self, datas: list[bytes], detector: str, max_pixels: int, attributes: bool = False) -> list[faces.Face]:
        if self.processes <= 0 or not datas:
            return detect_many(datas, detector, max_pixels, attributes)
        out: list[faces.Face | None] = [None] * len(datas)
        pool = self._get()
        try:
            futs = [pool.submit(detect_one, d, detector, max_pixels, attributes) for d in datas]
            for i, f in enumerate(futs):
                try:
                    out[i] = f.result()
                except BrokenProcessPool:
                    pass
        except BrokenProcessPool:  # broken by another request before we submitted
            pass
        if any(o is None for o in out):
            self._replace(pool)
            # Retry the unfinished images one at a time, so the one that kills a worker is found.
            for i, o in enumerate(out):
                if o is None:
                    pool = self._get()
                    try:
                        out[i] = pool.submit(detect_one, datas[i], detector, max_pixels, attributes).result()
                    except BrokenProcessPool:
                        self._replace(pool)
                        out[i] = faces.Face("unreadable", "the face pipeline crashed on this image")
        return out  # type: ignore[return-value]


class QueryWorkers:
    """Query images through the index build's worker processes (:func:`indexer.build.worker_pool`), with
    the build's batching: on the CPU the workers are forked from its warm forkserver (torch, the ResNet
    weights and the landmark models loaded once) and each detects *and* embeds its own tasks of up to
    :data:`indexer.chunks.TASK_SIZE` images, torch at ``cores // processes`` threads in batches of
    :data:`indexer.chunks.WORKER_BATCH` chips, flip-averaged as the index is; on a GPU the workers cut
    the chips and the caller embeds them (``embed_in == "main"``), as the build does.

    For the in-process audit, whose requests come in long runs: this process searches and answers one
    request while the workers detect and embed the next ones. The service keeps :class:`DetectPool`
    (detection only, one image per job, each worker's memory capped against hostile uploads).
    """

    def __init__(self, processes: int, embedder: str = "torch", device: str = "cpu", precision: str = "auto"):
        from indexer import build
        from indexer.devices import resolve_precision

        self.processes = int(processes)
        self.embed_in, threads = build.plan_embedding(embedder, device, self.processes)
        ctx, self.preloaded = build.pool_context(self.embed_in, embedder)
        self.embed = embedder if self.embed_in == "workers" else None
        self._pool = build.worker_pool(self.processes, ctx, threads)
        # Started now (models loaded, embedder built) while the caller loads its index; not waited for.
        # The index's precision is not known yet: warm the one a default build on this machine uses
        # (each task names its own, and a worker builds another embedder if it differs).
        warm = resolve_precision(precision, device, embedder)
        for _ in range(self.processes):
            self._pool.submit(chunks.worker_ready, self.embed, warm)

    def submit(
        self,
        datas: list,
        detector: str,
        max_pixels: int,
        attributes: bool,
        flip_average: bool,
        index_px: float | None,
        precision: str,
    ) -> list:
        """Futures of :func:`detect_task` on ``datas`` (bytes or decoded arrays) in tasks of the
        build's size, in order; descriptors in ``precision`` (the index's, as its queries are)."""
        size = chunks.TASK_SIZE
        flags = (attributes, self.embed, flip_average, index_px, precision)
        return [
            self._pool.submit(detect_task, (datas[lo : lo + size], detector, max_pixels, *flags))
            for lo in range(0, len(datas), size)
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
