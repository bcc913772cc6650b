"""The body of ``POST /neighbors``, as plain functions: the HTTP route and the batch audit both call
:func:`neighbors` (or :func:`neighbors_for_faces`), so both report identical numbers.

Nothing here knows about Flask. Parameters are validated by :func:`parse_params`, which raises
:class:`ApiError` (an HTTP status, a short code and a message for the user).
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any

import numpy as np

from indexer import attributes, faces, pixels, watchdog
from indexer.store import FaceIndex

from . import stats

log = logging.getLogger(__name__)

CHANNELS = ("semantic", "pixel")
K_DEFAULT = 5
K_MAX = 100
DEFAULT_DETECTOR = "hog"
PARAM_NAMES = (
    "k",
    "channels",
    "detector",
    "threshold",
    "false_match_rate",
    "pair_false_match_rate",
    "vectors",
    "attributes",
    "resolution_match",
)
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}  # the accepted spellings of a switch


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, machine-readable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Validated query parameters of ``POST /neighbors``."""

    k: int = K_DEFAULT
    channels: tuple[str, ...] = CHANNELS
    detector: str = DEFAULT_DETECTOR
    threshold: float | None = None
    false_match_rate: float = stats.DEFAULT_FALSE_MATCH_RATE
    pair_false_match_rate: float = stats.DEFAULT_PAIR_FALSE_MATCH_RATE
    vectors: bool = False  # return each face's descriptor and pixel crop (the audit computes pairs from them)
    attributes: bool = False  # per-image attribute probabilities and geometry (indexer.attributes)
    resolution_match: bool | None = None  # None: on when the index records its faces' resolution

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    def for_index(self, index: FaceIndex) -> Params:
        """These parameters with ``resolution_match`` decided for ``index``: the default is on when
        the index records its faces' resolution (``FaceIndex.face_resolution``), off otherwise; asking
        for it on an index without the record is a 400 (it cannot be done, and silence would mislead)."""
        available = index.face_resolution is not None
        if self.resolution_match is None:
            return replace(self, resolution_match=available)
        if self.resolution_match and not available:
            raise ApiError(
                400,
                "bad_parameter",
                "resolution_match=1: this index does not record its faces' resolution (built before the "
                "option existed); rebuild it, or leave resolution_match out",
            )
        return self


def _single(args: Mapping[str, Any], name: str) -> Any:
    """The one value of ``name``; repeating a parameter is an error (which one would win?)."""
    if hasattr(args, "getlist"):
        vals = args.getlist(name)
        if len(vals) > 1:
            raise ApiError(400, "bad_parameter", f"parameter {name!r} is given {len(vals)} times; give it once")
        return vals[0]
    return args[name]


def _float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ApiError(400, "bad_parameter", f"{name} must be a number, got {raw!r}")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "bad_parameter", f"{name} must be a number, got {str(raw)[:40]!r}") from None
    if not math.isfinite(v):
        raise ApiError(400, "bad_parameter", f"{name} must be finite, got {str(raw)[:40]!r}")
    return v


def _int(args: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    raw = _single(args, name)
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit())):
        raise ApiError(400, "bad_parameter", f"{name} must be an integer from {lo} to {hi}, got {str(raw)[:40]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise ApiError(400, "bad_parameter", f"{name} must be from {lo} to {hi}, got {v}")
    return v


def parse_params(args: Mapping[str, Any]) -> Params:
    """Validate ``k``, ``channels``, ``detector``, ``threshold``, ``false_match_rate``,
    ``pair_false_match_rate``, ``vectors``, ``attributes`` and ``resolution_match``.

    Accepts a query-string MultiDict (values are strings) or a plain dict from Python callers
    (ints, floats, lists allowed). Unknown names, repeats and out-of-range values raise
    :class:`ApiError` (400) with a message that says what is allowed. When both ``threshold`` and
    ``false_match_rate`` are given, ``threshold`` wins (``calibration.source`` = ``user``); both are
    still validated.
    """
    unknown = sorted(set(args) - set(PARAM_NAMES))
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(PARAM_NAMES)}",
        )
    kw: dict[str, Any] = {}
    if "k" in args:
        kw["k"] = _int(args, "k", 1, K_MAX)
    if "channels" in args:
        raw = _single(args, "channels")
        parts = raw.split(",") if isinstance(raw, str) else list(raw)
        if not parts or any(p not in CHANNELS for p in parts):  # exact names, as documented (no spaces)
            raise ApiError(
                400,
                "bad_parameter",
                f"channels must be a comma-separated subset of {','.join(CHANNELS)}, got {str(raw)[:60]!r}",
            )
        kw["channels"] = tuple(c for c in CHANNELS if c in parts)
    if "detector" in args:
        raw = _single(args, "detector")
        if raw not in faces.DETECTORS:
            raise ApiError(
                400, "bad_parameter", f"detector must be one of {', '.join(faces.DETECTORS)}, got {str(raw)[:40]!r}"
            )
        kw["detector"] = raw
    if "threshold" in args:
        v = _float("threshold", _single(args, "threshold"))
        if v <= 0:
            raise ApiError(400, "bad_parameter", f"threshold must be a positive descriptor distance, got {v}")
        kw["threshold"] = v
    if "false_match_rate" in args:
        v = _float("false_match_rate", _single(args, "false_match_rate"))
        if not 0 < v < 1:
            raise ApiError(400, "bad_parameter", f"false_match_rate must be in (0, 1), got {v}")
        kw["false_match_rate"] = v
    if "pair_false_match_rate" in args:
        v = _float("pair_false_match_rate", _single(args, "pair_false_match_rate"))
        if not 0 < v <= stats.MAX_PAIR_FALSE_MATCH_RATE:
            raise ApiError(
                400,
                "bad_parameter",
                f"pair_false_match_rate must be in (0, {stats.MAX_PAIR_FALSE_MATCH_RATE:g}], got {v}",
            )
        kw["pair_false_match_rate"] = v
    if "vectors" in args:
        raw = _single(args, "vectors")
        v = raw if isinstance(raw, bool) else BOOLEANS.get(str(raw)) if isinstance(raw, (str, int)) else None
        if v is None:
            raise ApiError(400, "bad_parameter", f"vectors must be 0, 1, true or false, got {str(raw)[:40]!r}")
        kw["vectors"] = v
    if "attributes" in args:
        raw = _single(args, "attributes")
        if raw not in (0, 1, "0", "1") or isinstance(raw, float):  # True/False are 1/0 for Python callers
            raise ApiError(400, "bad_parameter", f"attributes must be 0 or 1, got {str(raw)[:40]!r}")
        kw["attributes"] = raw in (1, "1")
    if "resolution_match" in args:
        raw = _single(args, "resolution_match")
        v = raw if isinstance(raw, bool) else BOOLEANS.get(raw) if isinstance(raw, str) else None
        if v is None:
            raise ApiError(400, "bad_parameter", f"resolution_match must be 0, 1, true or false, got {str(raw)[:40]!r}")
        kw["resolution_match"] = v
    return Params(**kw)


REFERENCE_PARAMS = (
    "faces",
    "seed",
    "false_match_rate",
    "threshold",
    "pair_false_match_rate",
    "cells",
    "training_set_size",
)
REFERENCE_MAX_FACES = 1_000_000


def parse_reference_params(args: Mapping[str, Any]) -> dict:
    """Validate the query of ``GET /v1/reference`` into keyword arguments of
    :func:`service.audit.reference.training_side` (same rules as :func:`parse_params` for the shared ones)."""
    unknown = sorted(set(args) - set(REFERENCE_PARAMS))
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(REFERENCE_PARAMS)}",
        )
    p = parse_params(
        {k: _single(args, k) for k in ("threshold", "false_match_rate", "pair_false_match_rate") if k in args}
    )
    kw: dict[str, Any] = {
        "faces": _int(args, "faces", 2, REFERENCE_MAX_FACES) if "faces" in args else 1000,
        "seed": _int(args, "seed", 0, 2**32 - 1) if "seed" in args else 0,
        "false_match_rate": p.false_match_rate,
        "threshold": p.threshold,
        "pair_false_match_rate": p.pair_false_match_rate,
        "cells": _int(args, "cells", 2, 50) if "cells" in args else None,
        "training_set_size": _int(args, "training_set_size", 1, 10**10) if "training_set_size" in args else None,
    }
    return kw


# ----------------------------------------------------------------------------- face detection


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


# ----------------------------------------------------------------------------- the response


def index_summary(index: FaceIndex) -> dict:
    """What a response says about the index it searched (no server paths)."""
    m = index.manifest
    ds, pipe = m.get("dataset", {}), m.get("pipeline", {})
    return {
        "faces": index.n_faces,
        "images": len(index.rows),
        "dataset": ds.get("kind"),
        "split": ds.get("split"),
        "identities": ds.get("identities"),
        "identities_known": bool(m.get("identities_known")),
        "detector": pipe.get("detector"),
        "embedder": pipe.get("embedder"),
        "pixel_size": pipe.get("pixel", {}).get("size"),
        "flip_average": index.flip_average,
        "face_resolution_px": index.face_resolution,
        "written_at": m.get("written_at"),
    }


def index_info(index: FaceIndex, thresholds: stats.Thresholds) -> dict:
    """``GET /v1/index`` without the server's own part (limits, device): the manifest summary, no
    server paths, and the default thresholds (the audit's in-process backend reports the same)."""
    m = index.manifest
    return {
        "summary": index_summary(index),
        "dataset": {k: v for k, v in m.get("dataset", {}).items() if k != "root"},  # no server paths
        "counts": m.get("counts", {}),
        "pipeline": m.get("pipeline", {}),
        "build": m.get("build", {}),
        "format_version": m.get("format_version"),
        "written_at": m.get("written_at"),
        "model_sha256": m.get("model_sha256", {}),
        "libraries": m.get("libraries", {}),
        "calibration": thresholds.to_dict(pixels.PIXEL_DIM),
    }


def _image_entry(name: str, face: faces.Face) -> dict:
    reason = face.reason
    if face.ok and face.faces_found > 1:
        reason = f"{face.faces_found} faces found; the largest is used"
    return {
        "image": name,
        "status": face.status,
        "reason": reason,
        "faces_found": int(face.faces_found),
        "box": list(face.box) if face.box is not None else None,
        "image_size": [face.width, face.height] if face.width else None,
        "semantic": [],
        "pixel": [],
    }


def _add_attributes(searcher, entries: list[dict], found: list[faces.Face], desc: np.ndarray, pos: list[int]) -> None:
    """``attributes=1``: each entry gets ``attributes`` ({name: probability}, null without probes or face)
    and ``geometry`` ({name: value}, null without a face)."""
    for e in entries:
        e["attributes"], e["geometry"] = None, None
    with_extras = [j for j, f in enumerate(found) if f.landmarks68 is not None and f.attr_crop is not None]
    described = attributes.describe_faces(
        getattr(searcher, "probes", None), [found[j] for j in with_extras], desc[with_extras]
    )
    for j, (a, g) in zip(with_extras, described):
        entries[pos[j]]["attributes"], entries[pos[j]]["geometry"] = a, g


def neighbors_for_faces(
    searcher, named_faces: list[tuple[str, faces.Face]], params: Params, thresholds: stats.Thresholds | None = None
) -> dict:
    """Embed, search and summarise faces that went through the face pipeline already.

    Every ok face is embedded in one batch (:meth:`Searcher.prepare`) and searched in one batched
    call per channel, so a batch of 64 costs one forward pass, and a single image a batch of one.
    """
    t0 = time.perf_counter()
    params = params.for_index(searcher.index)
    cal = searcher.index.calibration
    th = thresholds or stats.calibrate(
        cal, params.false_match_rate, params.threshold, pair_false_match_rate=params.pair_false_match_rate
    )
    ctx = stats.DistanceContext.of(cal)
    # The keyword only when it changes something: callers that wrap ``prepare(named_faces)`` keep working.
    off = not params.resolution_match and searcher.index.face_resolution is not None
    queries = searcher.prepare(named_faces, **({"resolution_match": False} if off else {}))
    t_embed = time.perf_counter() - t0
    entries = [_image_entry(q.name, q.face) for q in queries]
    pos = [i for i, q in enumerate(queries) if q.face.ok]
    names = [queries[i].name for i in pos]
    desc = np.stack([queries[i].descriptor for i in pos]) if pos else np.zeros((0, 128), np.float32)
    pix = np.stack([queries[i].pixel for i in pos]) if pos else np.zeros((0, pixels.PIXEL_DIM), np.uint8)
    files, idents = searcher.files, searcher.identities
    sem_top1 = pix_top1 = sem_train = pix_train = None
    t1 = time.perf_counter()
    if "semantic" in params.channels:
        sd, si = searcher.semantic_search(desc, params.k)
        for row, i in enumerate(pos):
            entries[i]["semantic"] = [
                {
                    "rank": r + 1,
                    "file": files[j],
                    "identity": idents[j],
                    "distance": float(sd[row, r]),
                    "same_person": bool(sd[row, r] < th.identity),
                    **ctx.semantic(sd[row, r]),
                }
                for r, j in enumerate(si[row])
                if j >= 0
            ]
        sem_top1 = sd[:, 0] if pos else np.zeros(0)
        sem_train = [{"file": files[j], "identity": idents[j]} for j in si[:, 0]] if pos else []
    if "pixel" in params.channels:
        pd, pi = searcher.pixel_search(pix, params.k, desc=desc)
        for row, i in enumerate(pos):
            entries[i]["pixel"] = [
                {
                    "rank": r + 1,
                    "file": files[j],
                    "identity": idents[j],
                    "distance": int(pd[row, r]),
                    "distance_per_value": float(pixels.normalised_l1(pd[row, r])),
                    **ctx.pixel(pd[row, r]),
                }
                for r, j in enumerate(pi[row])
                if j >= 0
            ]
        pix_top1 = pd[:, 0].astype(np.float64) if pos else np.zeros(0)
        pix_train = [{"file": files[j], "identity": idents[j]} for j in pi[:, 0]] if pos else []
    t_search = time.perf_counter() - t1
    if params.attributes:
        _add_attributes(searcher, entries, [queries[i].face for i in pos], desc, pos)
    t2 = time.perf_counter()
    coll = stats.collisions(names, desc, pix, th, batch_size=len(queries), positions=pos)
    mem = stats.memorization(
        names, sem_top1, sem_train, pix_top1, pix_train, th, pixels.PIXEL_DIM, positions=pos, calibration=cal
    )
    if params.vectors:
        for row, i in enumerate(pos):
            entries[i]["descriptor"] = [float(v) for v in desc[row]]
            entries[i]["pixels"] = base64.b64encode(np.ascontiguousarray(pix[row]).tobytes()).decode("ascii")
    counts = {s: sum(q.face.status == s for q in queries) for s in faces.STATUSES}
    return {
        "images": entries,
        "counts": counts,
        "collisions": coll,
        "memorization": mem,
        "calibration": th.to_dict(pixels.PIXEL_DIM),
        "index": index_summary(searcher.index),
        "search": searcher.search_info(params.channels),
        "params": params.to_dict(),
        "timing": {"embed_s": t_embed, "search_s": t_search, "stats_s": time.perf_counter() - t2},
    }


def neighbors(
    searcher,
    images: list[tuple[str, bytes]],
    params: Params | Mapping[str, Any] | None = None,
    pool: DetectPool | None = None,
    max_pixels: int = faces.MAX_PIXELS,
    thresholds: stats.Thresholds | None = None,
) -> dict:
    """The exact JSON body of ``POST /neighbors`` for ``images`` = [(name, bytes)] in upload order.

    ``params`` may be a :class:`Params` or a raw mapping (validated here). Face detection runs in
    ``pool`` when given (parallel worker processes), else in this thread.
    """
    if not isinstance(params, Params):
        params = parse_params(params or {})
    params = params.for_index(searcher.index)  # a parameter the index cannot honour fails before any work
    t0 = time.perf_counter()
    datas = [d for _, d in images]
    found = (
        pool.run(datas, params.detector, max_pixels, params.attributes)
        if pool
        else [detect_one(d, params.detector, max_pixels, params.attributes) for d in datas]
    )
    t_detect = time.perf_counter() - t0
    body = neighbors_for_faces(searcher, [(n, f) for (n, _), f in zip(images, found)], params, thresholds)
    body["timing"] = {"detect_s": t_detect, **body["timing"], "total_s": time.perf_counter() - t0}
    return body
