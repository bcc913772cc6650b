"""Where an audit's per-image answers come from: an index loaded in this process, or a running service.

Both backends answer the same three questions with the same functions, so an audit gives the same
numbers either way: ``neighbors`` (the body of ``POST /neighbors``, :func:`service.query.neighbors`),
``reference`` (the training side, :func:`service.stats.training_side.training_side`, which the service
serves at ``GET /v1/reference``) and ``thumbnail`` (``GET /images/<file>``). Both take the audit's one
validated :class:`service.params.Params`; the in-process answers go through
:func:`service.audit.formats.json_safe` (NaN → None, NumPy → Python), the values a client reads from
the service's JSON, so that both modes hand the statistics identical Python values. The vectors are
the exception: in-process they stay arrays (the float32 descriptor and uint8 pixel crop that the JSON
list and base64 string stand for, the same values), and generator samples reach the in-process face
pipeline as arrays, never as PNG (a server is sent their lossless PNG). ``stream`` answers a run of
requests in order; in-process, their detection and embedding run ahead in worker processes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import faces

from .. import query, thumbnails
from ..detect import DetectPool, QueryWorkers
from ..params import ApiError, Params
from ..search import Query
from ..stats.thresholds import Thresholds, calibrate
from .formats import json_safe

log = logging.getLogger(__name__)

THUMB = 150  # thumbnail side in pixels


class AuditError(Exception):
    """A failure the user can fix; ``code`` is the command's exit status (2 usage, 3 unreachable,
    4 token refused, 5 other server error)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_SERVER = 2, 3, 4, 5


@dataclass
class _Request:
    """One request of the in-process backend, handed to the workers and not yet answered."""

    images: list[tuple[str, Any]]
    params: Params
    futures: list[Future] | None  # None: answered in this process (no workers, or no image)


class LocalBackend:
    """An index loaded in this process, answered with :func:`service.query.answer` directly.

    Detection and embedding run in the index build's worker processes (:class:`service.detect.QueryWorkers`:
    each worker detects and embeds its own tasks, as in ``python -m indexer build``), up to
    :data:`WINDOW` tasks per worker ahead of the request this process searches and answers
    (:meth:`stream`). Images arrive as bytes or as decoded arrays (generator samples: no PNG round
    trip), and the vectors go back to the audit as arrays (no JSON forms); everything else goes through
    :func:`service.audit.formats.json_safe`, as a client reads it from the service's JSON.
    ``detect_processes=0``: everything in this process, one request at a time (:func:`service.query.neighbors`).
    """

    mode = "index"
    WINDOW = 4  # tasks in flight per worker: the build's window, enough to keep every worker busy

    def __init__(self, index_dir: str | Path, device: str = "cpu", detect_processes: int | None = None):
        from indexer.devices import resolve_device
        from indexer.store import IndexLoadError, load_index

        from ..search import Searcher

        processes = (os.cpu_count() or 1) if detect_processes is None else int(detect_processes)
        # The workers first: their start-up (torch, the models) overlaps the index load.
        self.workers = QueryWorkers(processes, device=resolve_device(device)) if processes > 0 else None
        self.pool = DetectPool(0)  # the one-request path: detect_processes=0, or after a worker died
        try:
            try:
                self.index = load_index(Path(index_dir))
            except IndexLoadError as e:
                raise AuditError(EXIT_USAGE, str(e)) from None
            except FileNotFoundError as e:
                raise AuditError(EXIT_USAGE, f"index {index_dir}: {e}") from None
            self.where = str(Path(index_dir).resolve())
            log.info("index loaded from %s (%d faces)", self.where, self.index.n_faces)
            self.searcher = Searcher(self.index, device=device)
        except BaseException:
            self.close()
            raise
        self.max_files: int | None = None
        self._thresholds: dict[tuple, Thresholds] = {}

    def info(self) -> dict:
        """The fields of the service's ``GET /v1/index``, plus the dataset root (a local path)."""
        from ..stats import thresholds

        out = query.index_info(self.index, thresholds.calibrate(self.index.calibration))
        return json_safe(
            {**out, "search": self.searcher.search_info(), "root": str(self.index.dataset_root), "path": self.where}
        )

    def thresholds(self, params: Params) -> Thresholds:
        """The request's thresholds, calibrated once per parameter set (a pure function of the index's
        calibration and the parameters; the service calibrates per request)."""
        key = (params.false_match_rate, params.threshold, params.pair_false_match_rate)
        if key not in self._thresholds:
            self._thresholds[key] = calibrate(
                self.index.calibration,
                params.false_match_rate,
                params.threshold,
                pair_false_match_rate=params.pair_false_match_rate,
            )
        return self._thresholds[key]

    def neighbors(self, images: list[tuple[str, Any]], params: Params) -> dict:
        """:func:`service.query.neighbors` on one request's images, as the service would answer it."""
        return next(self.stream(iter([(images, params)])))

    def stream(self, requests: Iterator[tuple[list[tuple[str, Any]], Params]]) -> Iterator[dict]:
        """The answers to ``requests`` in order. Requests are taken from the iterator as the workers
        have room (:data:`WINDOW` tasks each), so their images are produced (a generator samples
        them) while the workers detect and embed the earlier ones and this process answers."""
        if self.workers is None:
            for images, params in requests:
                yield self._one(images, params)
            return
        window = self.WINDOW * self.workers.processes
        pending: deque[_Request] = deque()
        in_flight = 0
        while True:
            while in_flight < window:
                nxt = next(requests, None)
                if nxt is None:
                    break
                pending.append(self._submit(*nxt))
                in_flight += len(pending[-1].futures or ())
            if not pending:
                return
            req = pending.popleft()
            in_flight -= len(req.futures or ())
            yield self._answer(req)

    def _resolve(self, params: Params) -> Params:
        try:
            return params.for_index(self.index)
        except ApiError as e:  # a parameter this index cannot honour (the service answers 400)
            raise AuditError(EXIT_USAGE, e.message) from None

    def _one(self, images: list[tuple[str, Any]], params: Params) -> dict:
        """One request in this process (detection in :attr:`pool`): :func:`service.query.neighbors` itself."""
        params = self._resolve(params)
        body = query.neighbors(self.searcher, images, params, pool=self.pool, thresholds=self.thresholds(params))
        return json_safe(body)

    def _submit(self, images: list[tuple[str, Any]], params: Params) -> _Request:
        params = self._resolve(params)
        if self.workers is None or not images:  # a worker died earlier in this audit
            return _Request(images, params, None)
        index_px = self.searcher.face_resolution if params.resolution_match else None
        datas = [d for _, d in images]
        try:
            s = self.searcher
            futures = self.workers.submit(
                datas, params.detector, faces.MAX_PIXELS, params.attributes, s.flip_average, index_px, s.precision
            )
        except BrokenProcessPool:  # a worker died since the last request was taken
            self._workers_died()
            return _Request(images, params, None)
        return _Request(images, params, futures)

    def _workers_died(self) -> None:
        """From now on each image is detected alone (:class:`DetectPool`), so one that crashes costs itself."""
        if self.workers is not None:  # the first request to see it (the others in flight fail too)
            log.warning("a face-pipeline worker died; the rest of the audit detects one image per job")
            self.workers.close()
            self.workers, self.pool = None, DetectPool(None)

    def _answer(self, req: _Request) -> dict:
        """One request's answer from its workers' results: :func:`service.query.answer` on the faces,
        descriptors and pixel vectors they computed, as :func:`service.query.neighbors` would give it."""
        t0 = time.perf_counter()
        parts = None
        if req.futures is not None:
            try:
                parts = [f.result() for f in req.futures]
            except BrokenProcessPool:  # this request again, and the rest, in this process's DetectPool
                self._workers_died()
        if parts is None:
            return self._one(req.images, req.params)
        t_detect = time.perf_counter() - t0
        found = [f for p in parts for f in p["faces"]]
        ok = [i for i, f in enumerate(found) if f.ok]
        pix = np.concatenate([p["pixels"] for p in parts])
        t1 = time.perf_counter()
        if "chips" in parts[0]:  # the workers cut the chips; this process embeds them (a GPU)
            desc = faces.describe(
                self.searcher.embedder, np.concatenate([p["chips"] for p in parts]), self.searcher.flip_average
            )
        else:
            desc = np.concatenate([p["descriptors"] for p in parts])
        t_embed = time.perf_counter() - t1
        queries = [Query(name, f) for (name, _), f in zip(req.images, found)]
        for row, i in enumerate(ok):
            queries[i].descriptor, queries[i].pixel = desc[row], pix[row]
        # The audit computes pairs and memorization over the whole sample (service.audit.analysis): the
        # per-request summaries are left out (``collisions`` and ``memorization`` None).
        body = query.answer(
            self.searcher,
            queries,
            req.params,
            self.thresholds(req.params),
            t_embed=t_embed,
            array_vectors=True,
            summaries=False,
        )
        body["timing"] = {"detect_s": t_detect, **body["timing"], "total_s": time.perf_counter() - t0}
        vectors = [(e.pop("descriptor", None), e.pop("pixels", None)) for e in body["images"]]
        out = json_safe(body)  # everything but the vectors, as a client reads the service's JSON
        for e, (d, p) in zip(out["images"], vectors):
            if d is not None:
                e["descriptor"], e["pixels"] = d, p
        return out

    def reference(self, **params) -> dict:
        from ..stats.training_side import training_side

        return json_safe(training_side(self.index, **params))

    def thumbnail(self, file: str, size: int = THUMB) -> bytes | None:
        try:
            return thumbnails.jpeg(faces.read_file(thumbnails.image_path(self.index, file)), size)
        except faces.Unreadable as e:
            log.warning("training thumbnail %s: %s", file, e)
            return None

    def train_descriptors(self) -> np.ndarray | None:
        return self.index.descriptors

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        self.pool.close()


class ServerBackend:
    """A running ``python -m service``, through :class:`service.client.Client`; images are posted in
    chunks of at most the service's ``max_files``."""

    mode = "server"

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0):
        from ..client import Client

        self.client = Client(url, token=token, timeout=timeout)
        self.where = self.client.url
        with self._errors("GET /healthz"):
            self.client.healthz()
        with self._errors("GET /v1/index"):
            self._info = self.client.index_info()
        self.max_files = int(self._info.get("limits", {}).get("max_files", 64))

    def _errors(self, what: str):
        """The client's typed errors as the audit's exit codes."""
        from contextlib import contextmanager

        from ..client import NotFacemem, ServiceError, Unauthorized, Unreachable

        @contextmanager
        def ctx():
            try:
                yield
            except Unreachable as e:
                raise AuditError(EXIT_UNREACHABLE, f"cannot reach the facemem service at {self.where}: {e}") from None
            except NotFacemem as e:
                raise AuditError(EXIT_UNREACHABLE, str(e)) from None
            except Unauthorized as e:
                why = "refused the token" if self.client.token else "requires a token and none was given"
                raise AuditError(
                    EXIT_AUTH,
                    f"the service at {self.where} {why} ({what}: HTTP {e.status}); pass the right one with --token "
                    f"or $FACEMEM_TOKEN",
                ) from None
            except ServiceError as e:
                raise AuditError(EXIT_SERVER, f"{what} failed: HTTP {e.status}: {e.message}") from None

        return ctx()

    def info(self) -> dict:
        return dict(self._info, path=self.where)

    def neighbors(self, images: list[tuple[str, Any]], params: Params) -> dict:
        """``POST /neighbors``; decoded images (generator samples) go as their lossless PNGs."""
        from .sources import encoded

        with self._errors("POST /neighbors"):
            return self.client.post_images([(name, encoded(data)) for name, data in images], params.to_query())

    def reference(self, **params) -> dict:
        with self._errors("GET /v1/reference"):
            return self.client.reference(**params)

    def thumbnail(self, file: str, size: int = THUMB) -> bytes | None:
        from ..client import ServiceError

        try:
            with self._errors(f"GET /images/{file}"):
                return self.client.thumbnail(file, size)
        except AuditError as e:
            if e.code == EXIT_SERVER:
                log.warning("training thumbnail %s: %s", file, e.message)
                return None
            raise
        except ServiceError:  # pragma: no cover - mapped above
            return None

    def train_descriptors(self) -> None:
        return None  # the service never hands out training descriptors

    def close(self) -> None:
        self.client.close()
