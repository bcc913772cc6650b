"""The Flask application: routes, limits, authentication and JSON errors.

The index is loaded once, read-only, into a :class:`~service.search.Searcher` that all request
threads share. Every error leaves as JSON ``{"error": code, "message": text}``: bad input is a 4xx
or a per-image status, never a 500. The route bodies are thin; the work is in :mod:`service.query`.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import ClosingIterator

from indexer import attributes, faces, ivf
from indexer.store import FaceIndex, load_index

from .. import query, thumbnails
from ..detect import DetectPool
from ..params import K_MAX, ApiError, parse_params, parse_reference_params
from ..search import EXACT_MAX_FACES, PIXEL_CANDIDATES, PIXEL_EXACT_MAX_FACES, Searcher
from ..stats.thresholds import DEFAULT_FALSE_MATCH_RATE, DEFAULT_PAIR_FALSE_MATCH_RATE, Thresholds, calibrate
from . import metrics, page
from .admission import Admission, Overloaded
from .auth import token_matches
from .uploads import read_images

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")

# Defaults, also documented in the README and `python -m service --help`.
DEFAULTS: dict[str, Any] = {
    "token": None,  # bearer token; None = no authentication (loopback use)
    "max_files": 64,  # images per request
    "max_request_mb": 64.0,  # whole request body, MiB
    "max_pixels": faces.MAX_PIXELS,  # per image, checked from the header before decoding
    "device": "auto",
    "embedder": "torch",
    "detect_processes": None,  # face-detection worker processes; None = one per core, 0 = in-thread
    "thumbnail_max": 1024,  # largest ?size= for /images
    "max_inflight": None,  # POST /neighbors computing at once; None = one per core
    "max_queue": 16,  # POST /neighbors waiting for a slot before 503; None = unbounded (naive baseline)
    "queue_wait_s": 30.0,  # longest wait for a slot before 503
    "verify": True,  # check every index file's sha256 at start-up (bit rot, edits), not just sizes
    "semantic_search": "auto",  # auto (exact up to exact_max_faces, IVF above) | exact | ivf
    "exact_max_faces": EXACT_MAX_FACES,
    "ivf_nprobe": ivf.DEFAULT_NPROBE,  # IVF clusters scanned per query
    "pixel_exact_max_faces": PIXEL_EXACT_MAX_FACES,  # above: exact L1 over the semantic candidates only
    "pixel_candidates": PIXEL_CANDIDATES,
}
THUMB_DEFAULT = 256
# Routes that need no token: liveness, and the browser page that asks for the token (it holds no data).
PUBLIC_ENDPOINTS = frozenset({"healthz"}) | page.PUBLIC_ENDPOINTS


@dataclass
class ServiceState:
    """Everything the routes share; read-only after start-up except the counters."""

    index: FaceIndex
    searcher: Searcher
    config: dict
    pool: DetectPool
    admission: Admission
    default_thresholds: Thresholds
    face_files: Container[str]  # file names of the index's faces (set-like; hashed for large indexes)
    openapi: dict
    training_side: dict  # GET /v1/attributes: what the omission statistics need (indexer.attributes)
    started: float = field(default_factory=time.time)
    requests: int = 0
    internal_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: metrics.Metrics | None = None
    reference_cache: dict = field(default_factory=dict)  # GET /v1/reference answers by query

    def count(self, attr: str) -> None:
        with self.lock:
            setattr(self, attr, getattr(self, attr) + 1)


def _state() -> ServiceState:
    from flask import current_app

    return current_app.extensions["facemem"]


def error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    resp = jsonify({"error": code, "message": message})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _no_params(allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        allowed_txt = f"allowed: {', '.join(allowed)}" if allowed else "this route takes no parameters"
        raise ApiError(400, "unknown_parameter", f"unknown parameter(s) {', '.join(map(repr, unknown))}; {allowed_txt}")


# ----------------------------------------------------------------------------- the app


def create_app(index_dir: str | os.PathLike, config: dict | None = None) -> Flask:
    """Load the index once and build the app. ``config`` keys: see :data:`DEFAULTS`."""
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **(config or {})}
    if cfg["token"] is None and os.environ.get("FACEMEM_TOKEN", "").strip():
        cfg["token"] = os.environ["FACEMEM_TOKEN"].strip()
    if int(cfg["max_files"]) < 1 or float(cfg["max_request_mb"]) <= 0:
        raise ValueError("max_files must be >= 1 and max_request_mb > 0")
    t0 = time.perf_counter()
    index = load_index(Path(index_dir), verify_hashes=bool(cfg["verify"]))
    searcher = Searcher(
        index,
        device=cfg["device"],
        embedder=cfg["embedder"],
        semantic=cfg["semantic_search"],
        exact_max_faces=int(cfg["exact_max_faces"]),
        ivf_nprobe=int(cfg["ivf_nprobe"]),
        pixel_exact_max_faces=int(cfg["pixel_exact_max_faces"]),
        pixel_candidates=int(cfg["pixel_candidates"]),
    )
    pool = DetectPool(cfg["detect_processes"])
    inflight = int(cfg["max_inflight"] or os.cpu_count() or 1)
    queue = None if cfg["max_queue"] is None else int(cfg["max_queue"])
    state = ServiceState(
        index=index,
        searcher=searcher,
        config=cfg,
        pool=pool,
        admission=Admission(inflight, queue, float(cfg["queue_wait_s"])),
        default_thresholds=calibrate(index.calibration),
        face_files=index.face_files(),
        openapi=json.loads(OPENAPI_PATH.read_text()),
        training_side=attributes.training_side(index),
    )
    log.info(
        "index %s loaded: %d faces, device %s (%.1f s)",
        index_dir,
        index.n_faces,
        searcher.device,
        time.perf_counter() - t0,
    )

    app = Flask("facemem", static_folder=None)  # no implicit /static from the working directory
    app.config["MAX_CONTENT_LENGTH"] = int(float(cfg["max_request_mb"]) * 1024 * 1024)
    # Werkzeug's multipart part cap: a backstop above max_files, so the count check gives the message.
    app.config["MAX_FORM_PARTS"] = max(1000, 2 * int(cfg["max_files"]) + 16)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.merge_slashes = False  # paths are taken literally (no redirects on '//' in file names)
    app.extensions["facemem"] = state
    atexit.register(pool.close)
    state.metrics = metrics.install(app, state, _no_params)  # first: its clock starts before the token check
    page.install(app, _no_params)
    _register(app)
    inner = app.wsgi_app
    adm = state.admission

    def tracked(environ, start_response):  # open until the server has taken the whole body
        counted = adm.request_started()
        done = functools.partial(adm.request_finished, counted)
        try:
            return ClosingIterator(inner(environ, start_response), [done])
        except BaseException:
            done()
            raise

    app.wsgi_app = tracked  # type: ignore[method-assign]
    return app


def _register(app: Flask) -> None:
    _register_hooks(app)
    _register_info(app)
    _register_search(app)
    _register_images(app)


def _register_hooks(app: Flask) -> None:
    """Authentication, request logging and the JSON error handlers: every error leaves as JSON."""

    @app.before_request
    def _auth() -> Response | None:
        st = _state()
        st.count("requests")
        g.t0 = time.perf_counter()
        if st.admission.draining:
            raise st.admission.shutting_down()
        token = st.config["token"]
        if token and request.endpoint not in PUBLIC_ENDPOINTS:
            if not token_matches(request.headers.get("Authorization", ""), token):
                return error(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    {"WWW-Authenticate": 'Bearer realm="facemem"'},
                )
        return None

    @app.after_request
    def _log(resp: Response) -> Response:
        dt = time.perf_counter() - g.get("t0", time.perf_counter())
        log.info("%s %s -> %d (%.0f ms)", request.method, request.path, resp.status_code, dt * 1000)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> Response:
        return error(e.status, e.code, e.message)

    @app.errorhandler(Overloaded)
    def _overloaded(e: Overloaded) -> Response:
        return error(503, e.code, f"{e.message}; retry after {e.retry_after} s", {"Retry-After": str(e.retry_after)})

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        code = (e.name or "error").lower().replace(" ", "_")
        msg = e.description or ""
        if e.code == 413:
            st = _state()
            code = "request_too_large"
            msg = (
                f"request too large: the limit is {st.config['max_request_mb']:g} MiB per request and "
                f"{st.config['max_files']} files (server options --max-request-mb, --max-files)"
            )
        headers = {}
        if e.code == 405 and e.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
        return error(e.code or 500, code, msg, headers)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        # Last resort only: the tests send every kind of bad input and require that none gets here.
        _state().count("internal_errors")
        log.exception("internal error on %s %s", request.method, request.path)
        return error(500, "internal_error", f"internal error ({type(e).__name__}); see the server log")


def _register_info(app: Flask) -> None:
    """What the service says about itself: liveness, the index, the attribute training side, the API."""

    @app.get("/healthz")
    def healthz() -> Response:
        _no_params()
        st = _state()
        return jsonify(
            {
                "status": "ok",
                "faces": st.index.n_faces,
                "uptime_s": time.time() - st.started,
                "requests": st.requests,
                "internal_errors": st.internal_errors,
                "admission": st.admission.to_dict(),
            }
        )

    @app.get("/v1/index")
    def index_info() -> Response:
        _no_params()
        st = _state()
        return jsonify(
            {
                **query.index_info(st.index, st.default_thresholds),
                "limits": {
                    "max_files": st.config["max_files"],
                    "max_request_mb": st.config["max_request_mb"],
                    "max_pixels": st.config["max_pixels"],
                    "k_max": K_MAX,
                },
                "device": st.searcher.device,
                "search": st.searcher.search_info(),
            }
        )

    @app.get("/v1/attributes")
    def attributes_info() -> Response:
        """The training side of the omission statistics: the same dict the in-process audit reads."""
        _no_params()
        return jsonify(_state().training_side)

    @app.get("/openapi.json")
    def openapi() -> Response:
        _no_params()
        return jsonify(_state().openapi)


def _register_search(app: Flask) -> None:
    """The work routes: ``POST /neighbors`` and the audit's training side ``GET /v1/reference``."""

    @app.post("/neighbors")
    def neighbors() -> Response:
        st = _state()
        params = parse_params(request.args)
        default = (
            params.threshold is None
            and params.false_match_rate == DEFAULT_FALSE_MATCH_RATE
            and params.pair_false_match_rate == DEFAULT_PAIR_FALSE_MATCH_RATE
        )
        thresholds = st.default_thresholds if default else None  # else calibrated per request (< 1 ms)
        if (request.content_length or 0) > current_app.config["MAX_CONTENT_LENGTH"]:
            raise RequestEntityTooLarge()  # refused from the header, without waiting for a slot
        with st.admission.slot():  # waits (bounded) before the body is parsed; 503 when full
            images = read_images(int(st.config["max_files"]))
            body = query.neighbors(
                st.searcher,
                images,
                params,
                pool=st.pool,
                max_pixels=int(st.config["max_pixels"]),
                thresholds=thresholds,
            )
        st.metrics.observe_neighbors(body)
        return jsonify(body)

    @app.get("/v1/reference")
    def reference() -> Response:
        """The training side of a batch audit (service.stats.training_side.training_side), cached per query."""
        st = _state()
        kw = parse_reference_params(request.args)
        key = tuple(sorted(kw.items()))
        with st.lock:
            body = st.reference_cache.get(key)
        if body is None:
            from ..stats.training_side import training_side

            with st.admission.slot():  # seconds of CPU: queued like a search
                body = training_side(st.index, **kw)
            with st.lock:
                st.reference_cache[key] = body
                while len(st.reference_cache) > 8:
                    st.reference_cache.pop(next(iter(st.reference_cache)))
        return jsonify(body)


def _register_images(app: Flask) -> None:
    """``GET /images/<file>``: a thumbnail of an indexed training face, and nothing else from the disk."""

    @app.get("/images/<path:file>")
    def image(file: str) -> Response:
        _no_params(("size",))
        st = _state()
        size = THUMB_DEFAULT
        if "size" in request.args:
            raw = request.args["size"]
            if not raw.isdigit() or not 16 <= int(raw) <= st.config["thumbnail_max"]:
                raise ApiError(
                    400,
                    "bad_parameter",
                    f"size must be an integer from 16 to {st.config['thumbnail_max']}, got {raw[:40]!r}",
                )
            size = int(raw)
        if file not in st.face_files:  # only indexed faces; anything else never touches the disk
            raise ApiError(404, "not_found", f"{file!r} is not a face in this index")
        root = st.index.dataset_root.resolve()
        try:
            path = thumbnails.image_path(st.index, file).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ApiError(404, "not_found", f"{file!r} is in the index but not on disk") from None
        if not path.is_relative_to(root) or not path.is_file():
            log.warning("refusing %s: resolves outside the dataset root", file)
            raise ApiError(404, "not_found", f"{file!r} is not available")
        try:
            arr = faces.read_file(path, int(st.config["max_pixels"]))
        except faces.Unreadable as e:
            raise ApiError(404, "not_found", f"{file!r} cannot be read: {e}") from None
        resp = Response(thumbnails.jpeg(arr, size), mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "public, max-age=86400"
        return resp
