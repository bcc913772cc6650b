"""The parameters of ``POST /neighbors`` and ``GET /v1/reference``: validated once, into :class:`Params`.

Nothing here knows about Flask. :func:`parse_params` accepts a query-string MultiDict or a plain
dict from Python callers and raises :class:`ApiError` (an HTTP status, a short code and a message
for the user) for anything it cannot honour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from indexer import faces
from indexer.store import FaceIndex

from .stats.thresholds import DEFAULT_FALSE_MATCH_RATE, DEFAULT_PAIR_FALSE_MATCH_RATE, MAX_PAIR_FALSE_MATCH_RATE

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
    false_match_rate: float = DEFAULT_FALSE_MATCH_RATE
    pair_false_match_rate: float = DEFAULT_PAIR_FALSE_MATCH_RATE
    vectors: bool = False  # return each face's descriptor and pixel crop (the audit computes pairs from them)
    attributes: bool = False  # per-image attribute probabilities and geometry (indexer.attributes)
    resolution_match: bool | None = None  # None: on when the index records its faces' resolution

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    def to_query(self) -> dict[str, str]:
        """These parameters as a query string's values: :func:`parse_params` of the result gives them
        back unchanged (floats in ``repr``, exact), so a client sends what was validated here."""
        switch = {True: "1", False: "0"}
        q = {
            "k": str(self.k),
            "channels": ",".join(self.channels),
            "detector": self.detector,
            "false_match_rate": repr(float(self.false_match_rate)),
            "pair_false_match_rate": repr(float(self.pair_false_match_rate)),
            "vectors": switch[self.vectors],
            "attributes": switch[self.attributes],
        }
        if self.threshold is not None:
            q["threshold"] = repr(float(self.threshold))
        if self.resolution_match is not None:
            q["resolution_match"] = switch[self.resolution_match]
        return q

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


def refuse_unknown(args: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """A 400 that names every unknown parameter and lists the allowed ones (a typo must not be ignored)."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
        )


def parse_params(args: Mapping[str, Any]) -> Params:
    """Validate ``k``, ``channels``, ``detector``, ``threshold``, ``false_match_rate``,
    ``pair_false_match_rate``, ``vectors``, ``attributes`` and ``resolution_match``.

    Accepts a query-string MultiDict (values are strings) or a plain dict from Python callers
    (ints, floats, lists allowed). Unknown names, repeats and out-of-range values raise
    :class:`ApiError` (400) with a message that says what is allowed. When both ``threshold`` and
    ``false_match_rate`` are given, ``threshold`` wins (``calibration.source`` = ``user``); both are
    still validated.
    """
    refuse_unknown(args, PARAM_NAMES)
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
        if not 0 < v <= MAX_PAIR_FALSE_MATCH_RATE:
            raise ApiError(
                400,
                "bad_parameter",
                f"pair_false_match_rate must be in (0, {MAX_PAIR_FALSE_MATCH_RATE:g}], got {v}",
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
    :func:`service.stats.training_side.training_side` (same rules as :func:`parse_params` for the shared ones)."""
    refuse_unknown(args, REFERENCE_PARAMS)
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
