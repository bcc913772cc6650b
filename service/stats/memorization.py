"""Memorization of one batch: how many faces sit on the training set (same person, likely copies),
each share with its exact interval and its test against the index's strangers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats as sps

from . import baselines
from .thresholds import CONFIDENCE, Thresholds, finite


def share_with_interval(k: int, n: int, confidence: float = CONFIDENCE) -> dict:
    """k of n, the share, and its exact (Clopper–Pearson) interval."""
    if n == 0:
        return {"count": 0, "faces": 0, "share": None, "interval": None}
    ci = sps.binomtest(k, n).proportion_ci(confidence, method="exact")
    return {"count": int(k), "faces": int(n), "share": k / n, "interval": [float(ci.low), float(ci.high)]}


def memorization(
    names: list[str],
    sem_top1: np.ndarray | None,
    sem_train: list[dict] | None,
    pix_top1: np.ndarray | None,
    pix_train: list[dict] | None,
    th: Thresholds,
    pixel_dim: int,
    positions: list[int] | None = None,
    confidence: float = CONFIDENCE,
    calibration: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """How much of the batch sits on the training set, from each face's top-1 neighbours.

    * ``same_person``: share with a top-1 semantic distance under the identity threshold, beside the
      share of the index's strangers (each training face's nearest other-identity face) under it,
      with the exact one-sided p-value of "more than strangers" (:mod:`service.stats.baselines`).
    * ``likely_copies``: share closer than the copy thresholds (semantic and pixel separately),
      beside the share of strangers that close, with the same kind of p-value.
    * ``suspected_copies``: each such face with its training file.

    ``calibration`` holds the index's null samples (without it, no p-values), and optionally each null
    value's cluster (``sem_diff_id_identity``, ``pix_diff_id_identity``: the null face's identity; and
    ``sem_diff_id_neighbour``: its nearest stranger's identity), which makes the tests count dependent
    null values at their effective size. ``sem_train`` /
    ``pix_train`` give each face's top-1 training face as ``{"file", "identity"}``; ``positions``
    are the faces' places in the upload (reported as ``index``).
    """
    cal = calibration or {}
    n = len(names)
    pos = list(range(n)) if positions is None else list(positions)
    out: dict = {
        "faces": int(n),
        "identity_threshold": th.identity,
        "expected_false_match_rate": th.expected_false_match_rate,
    }
    null_sem = finite(cal.get("sem_diff_id"))
    nulls = {  # raw (aligned with their clusters: the null face's training identity, when known)
        "semantic": (_raw(cal.get("sem_diff_id")), cal.get("sem_diff_id_identity"), cal.get("sem_diff_id_neighbour")),
        "pixel": (_raw(cal.get("pix_diff_id")), cal.get("pix_diff_id_identity"), None),
    }
    if sem_top1 is not None:
        sem_top1 = np.asarray(sem_top1, dtype=np.float64)
        k = int(np.sum(sem_top1 < th.identity))
        out["same_person"] = share_with_interval(k, n, confidence)
        if len(null_sem):
            values, clusters, links = nulls["semantic"]
            out["same_person"]["baseline"] = baselines.rate_test(
                k, n, values, th.identity, th.source == "identities", clusters, neighbours=links
            )
    else:
        out["same_person"] = None
    copies: list[dict] = []
    likely: dict = {}
    for channel, top1, train, thr, null in (
        ("semantic", sem_top1, sem_train, th.semantic_copy, null_sem),
        ("pixel", pix_top1, pix_train, th.pixel_copy, finite(cal.get("pix_diff_id"))),
    ):
        if top1 is None or thr is None:
            likely[channel] = None
            continue
        top1 = np.asarray(top1, dtype=np.float64)
        hit = np.nonzero(top1 < thr)[0]
        likely[channel] = {"threshold": thr, **share_with_interval(len(hit), n, confidence)}
        if channel == "pixel":
            likely[channel]["threshold_per_value"] = thr / (pixel_dim * 255.0)
        if len(null):
            values, clusters, links = nulls[channel]
            likely[channel]["baseline"] = baselines.rate_test(
                len(hit), n, values, thr, False, clusters, neighbours=links
            )
        for i in hit:
            t = train[i] if train else {}
            copies.append(
                {
                    "image": names[i],
                    "index": pos[i],
                    "channel": channel,
                    "file": t.get("file"),
                    "identity": t.get("identity"),
                    "distance": float(top1[i]),
                    "threshold": thr,
                }
            )
    copies.sort(key=lambda c: (c["index"], c["channel"] != "semantic"))
    out["likely_copies"] = likely
    out["suspected_copies"] = copies
    return out


def _raw(a) -> np.ndarray:
    return np.zeros(0) if a is None else np.asarray([np.nan if v is None else v for v in a], np.float64)
