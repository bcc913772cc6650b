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

from indexer import faces, watchdog

log = logging.getLogger(__name__)


def detect_one(data: bytes, detector: str, max_pixels: int = faces.MAX_PIXELS, attributes: bool = False) -> faces.Face:
    """The face pipeline on one upload; any failure becomes an ``unreadable`` status, never an error."""
    try:
        return faces.process_bytes(data, detector, max_pixels, attributes)
    except Exception as e:  # a library error on a hostile or odd file must not fail the request
        log.exception("face pipeline failed on an upload (%d bytes)", len(data))
        return faces.Face("unreadable", f"face pipeline error: {type(e).__name__}: {str(e)[:200]}")


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
            return [detect_one(d, detector, max_pixels, attributes) for d in datas]
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
