"""Where an audit's per-image answers come from: an index loaded in this process, or a running service.

Both backends answer the same three questions with the same functions, so an audit gives the same
numbers either way: ``neighbors`` (the body of ``POST /neighbors``, :func:`service.query.neighbors`),
``reference`` (the training side, :func:`service.stats.training_side.training_side`, which the service
serves at ``GET /v1/reference``) and ``thumbnail`` (``GET /images/<file>``). Both take the audit's one
validated :class:`service.params.Params`; the in-process answers go through
:func:`service.audit.formats.json_safe` (NaN → None, NumPy → Python), the values a client reads from
the service's JSON, so that both modes hand the statistics identical Python values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from indexer import faces

from .. import query, thumbnails
from ..detect import DetectPool
from ..params import ApiError, Params
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


class LocalBackend:
    """An index loaded in this process; :func:`service.query.neighbors` called directly."""

    mode = "index"

    def __init__(self, index_dir: str | Path, device: str = "cpu", detect_processes: int | None = None):
        from indexer.store import IndexLoadError, load_index

        from ..search import Searcher

        try:
            self.index = load_index(Path(index_dir))
        except IndexLoadError as e:
            raise AuditError(EXIT_USAGE, str(e)) from None
        except FileNotFoundError as e:
            raise AuditError(EXIT_USAGE, f"index {index_dir}: {e}") from None
        self.where = str(Path(index_dir).resolve())
        log.info("index loaded from %s (%d faces)", self.where, self.index.n_faces)
        self.searcher = Searcher(self.index, device=device)
        self.pool = DetectPool(detect_processes)
        self.max_files: int | None = None

    def info(self) -> dict:
        """The fields of the service's ``GET /v1/index``, plus the dataset root (a local path)."""
        from ..stats import thresholds

        out = query.index_info(self.index, thresholds.calibrate(self.index.calibration))
        return json_safe(
            {**out, "search": self.searcher.search_info(), "root": str(self.index.dataset_root), "path": self.where}
        )

    def neighbors(self, images: list[tuple[str, bytes]], params: Params) -> dict:
        """:func:`service.query.neighbors` on one request's images, as the service would answer it."""
        try:
            return json_safe(query.neighbors(self.searcher, images, params, pool=self.pool))
        except ApiError as e:  # a parameter this index cannot honour (the service answers 400)
            raise AuditError(EXIT_USAGE, e.message) from None

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

    def neighbors(self, images: list[tuple[str, bytes]], params: Params) -> dict:
        with self._errors("POST /neighbors"):
            return self.client.post_images(images, params.to_query())

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
