"""A Python client for a running facemem service (``python -m service`` / ``facemem serve``).

>>> from service.client import Client
>>> with Client("http://127.0.0.1:8000", token=None) as c:        # doctest: +SKIP
...     body = c.neighbors(["face.jpg", png_bytes, uint8_array], k=5, detector="hog")

Why a client and not plain ``requests``: the service's errors are JSON ``{"error", "message"}`` with
an HTTP status, and overload is a 503 with ``Retry-After``; this turns the first into typed
exceptions (:class:`ServiceError` and its subclasses, carrying ``status`` and ``code``) and honours
the second with a bounded number of retries, so callers (the batch audit among them) do not each
reimplement it.

One :meth:`Client.neighbors` call is one ``POST /neighbors`` request. Images are never split across
requests behind the caller's back: the collision and memorization statistics are per request, so
a batch over the server's ``--max-files`` is the server's 413 (``too_many_files``), not a silent
change of what the numbers mean. ``index_info()["limits"]["max_files"]`` says the limit.
"""

from __future__ import annotations

import email.utils
import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

log = logging.getLogger(__name__)

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray
RETRIES = 3  # retries of a 503 (after the first attempt)
MAX_RETRY_WAIT_S = 60.0  # longest single wait, whatever Retry-After says


class FacememError(Exception):
    """Anything the client could not get a good answer for."""


class Unreachable(FacememError):
    """No HTTP answer: refused connection, DNS, timeout, or a broken connection."""


class ServiceError(FacememError):
    """The service answered with an error: ``status`` (HTTP), ``code`` (its JSON ``error``, or
    ``http_<status>`` when the body was not the service's JSON), ``message``, ``retry_after`` (s)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None, body: Any = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after, self.body = status, code, message, retry_after, body


class Unauthorized(ServiceError):
    """401/403: the token is missing or wrong."""


class Overloaded(ServiceError):
    """503 (``overloaded`` or ``shutting_down``) still, after the allowed retries."""


class NotFacemem(FacememError):
    """The URL answers, but not as a facemem service (``GET /healthz`` is not its JSON)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def encode_array(arr: np.ndarray) -> bytes:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) array as PNG (lossless: the server sees these pixels)."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            a = np.round(a * 255).astype(np.uint8)  # floats in [0, 1]
        else:
            raise ValueError(f"an image array must be uint8 (or float in [0, 1]), got {a.dtype}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, "PNG")
    return buf.getvalue()


def as_upload(item: ImageLike | tuple[str, ImageLike], i: int) -> tuple[str, bytes]:
    """One image as ``(name, bytes)``: a path (read; named by its file name), bytes (``image-<i>``),
    an array (PNG, ``array-<i>.png``), or a ``(name, any of those)`` pair."""
    name = None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, item = item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return name or f"image-{i + 1}", bytes(item)
    if isinstance(item, np.ndarray):
        return name or f"array-{i + 1}.png", encode_array(item)
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        return name or p.name, p.read_bytes()
    raise TypeError(f"image {i + 1}: expected a path, bytes, a numpy array or (name, one of those), got {type(item)}")


def query_value(v: Any) -> str:
    """A parameter as the query string wants it: lists comma-joined, floats exact (repr), bools lower-case."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, set, frozenset)):
        return ",".join(query_value(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


class Client:
    """A session with one facemem service.

    ``token``: the bearer token (default ``$FACEMEM_TOKEN``; pass ``""`` for none). ``retries``: how
    many times a 503 is retried, each after its ``Retry-After`` (capped at ``max_retry_wait_s``).
    ``on_retry(attempt, wait_s, error)`` is called before each wait (for logging or progress).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 600.0,
        retries: int = RETRIES,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
        on_retry: Callable[[int, float, ServiceError], None] | None = None,
        session: Any = None,
    ):
        import requests

        if retries < 0 or max_retry_wait_s < 0:
            raise ValueError("retries and max_retry_wait_s must be >= 0")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.max_retry_wait_s, self.on_retry = timeout, retries, max_retry_wait_s, on_retry
        self._requests = requests
        self.session = session or requests.Session()
        tok = os.environ.get("FACEMEM_TOKEN", "") if token is None else token
        self.token = tok.strip() or None
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any):
        """One HTTP request, with 503s retried; returns the ``requests.Response`` of a 2xx answer,
        raises :class:`ServiceError` (or a subclass) for an error answer, :class:`Unreachable` for none."""
        kw.setdefault("timeout", self.timeout)
        attempt = 0
        while True:
            try:
                r = self.session.request(method, self.url + path, **kw)
            except self._requests.RequestException as e:
                raise Unreachable(f"{method} {path} on {self.url}: {type(e).__name__}: {e}") from None
            if r.status_code < 400:
                return r
            err = self._error(r)
            if not isinstance(err, Overloaded) or attempt >= self.retries:
                raise err
            attempt += 1
            wait = min(self.max_retry_wait_s, err.retry_after if err.retry_after is not None else 1.0)
            log.info("%s %s: %s; retry %d of %d in %.1f s", method, path, err.code, attempt, self.retries, wait)
            if self.on_retry:
                self.on_retry(attempt, wait, err)
            time.sleep(wait)

    @staticmethod
    def _error(r) -> ServiceError:
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            code, msg = body["error"], str(body.get("message", ""))
        else:
            code, msg = f"http_{r.status_code}", (r.text or r.reason or "")[:300]
        retry = parse_retry_after(r.headers.get("Retry-After"))
        cls = Unauthorized if r.status_code in (401, 403) else Overloaded if r.status_code == 503 else ServiceError
        return cls(r.status_code, code, msg, retry, body)

    def _json(self, method: str, path: str, **kw: Any) -> dict:
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise NotFacemem(f"{method} {path} on {self.url} answered {r.status_code} without JSON") from None

    # ------------------------------------------------------------------ the API

    def healthz(self) -> dict:
        """``GET /healthz`` (never needs the token); :class:`NotFacemem` if it is not facemem's answer."""
        try:
            body = self._json("GET", "/healthz", timeout=min(self.timeout, 15.0))
        except Overloaded:
            raise  # a draining facemem answers 503 shutting_down, even here
        except ServiceError as e:
            raise NotFacemem(f"{self.url} is not a facemem service (GET /healthz answered HTTP {e.status})") from None
        if not isinstance(body, dict) or body.get("status") != "ok":
            raise NotFacemem(f"{self.url} is not a facemem service (GET /healthz: {str(body)[:100]})")
        return body

    def index_info(self) -> dict:
        """``GET /v1/index``: manifest summary, default calibration, limits."""
        return self._json("GET", "/v1/index")

    def neighbors(self, images: Iterable[ImageLike | tuple[str, ImageLike]], **params: Any) -> dict:
        """``POST /neighbors`` for ``images`` in order; ``params`` are its query parameters (``k``,
        ``channels``, ``detector``, ``threshold``, ``false_match_rate``, ...; None values are left
        out). Returns the JSON body."""
        uploads = [as_upload(it, i) for i, it in enumerate(images)]
        return self.post_images(uploads, params)

    def post_images(self, images: list[tuple[str, bytes]], params: Mapping[str, Any] | None = None) -> dict:
        """``POST /neighbors`` with ``(name, bytes)`` pairs as they are (the audit's form)."""
        if not images:
            raise ValueError("no images to send")
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        q = {k: query_value(v) for k, v in (params or {}).items() if v is not None}
        return self._json("POST", "/neighbors", params=q, files=files)

    def reference(self, **params: Any) -> dict:
        """``GET /v1/reference``: the training side of an audit (thresholds, null samples, the
        training reference of the support estimate, the C_T cells); see :mod:`service.stats.training_side`."""
        q = {k: query_value(v) for k, v in params.items() if v is not None}
        return self._json("GET", "/v1/reference", params=q)

    def thumbnail(self, file: str, size: int | None = None) -> bytes:
        """``GET /images/<file>?size=``: JPEG bytes of a training face (404 → :class:`ServiceError`)."""
        params = {"size": str(int(size))} if size is not None else None
        return self.request("GET", "/images/" + quote(file), params=params).content

    def openapi(self) -> dict:
        return self._json("GET", "/openapi.json")

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition."""
        return self.request("GET", "/metrics").text


__all__ = [
    "Client",
    "FacememError",
    "NotFacemem",
    "Overloaded",
    "ServiceError",
    "Unauthorized",
    "Unreachable",
    "as_upload",
    "encode_array",
    "parse_retry_after",
    "query_value",
]
