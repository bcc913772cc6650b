"""Batch statistics: calibrated thresholds, in-batch collisions (birthday paradox), memorization.

Pure numpy/scipy on purpose: the HTTP service and the in-process batch audit both call these
functions on the same arrays, so both report the same numbers. Formulas are documented in
the README ("Statistics").

Conventions used everywhere:

* semantic distances are Euclidean distances between 128-d dlib descriptors (float64);
* pixel distances are L1 sums of |a−b| over the uint8 values of the 64×64×3 pixel crops;
* "under a threshold" is strict: ``distance < threshold``.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps
from scipy.spatial.distance import cdist

DEFAULT_FALSE_MATCH_RATE = 0.01
COPY_PERCENTILE = 1.0  # a "likely copy" is closer than 1% of train-to-train nearest distances
CONFIDENCE = 0.95
_BLOCK = 256  # rows per block in the pairwise searches (bounded memory for large audits)


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one request (or audit) uses, with where they came from.

    ``identity`` decides ``same_person`` and semantic collisions; ``semantic_copy`` and
    ``pixel_copy`` decide "likely copy". ``expected_false_match_rate`` is the share of the index's
    null distribution (a stranger's nearest neighbour) under ``identity``: the rate at which real
    strangers would be called the same person. It is None when identities are unknown.
    """

    identity: float
    source: str  # "identities" | "leave_one_out" | "user"
    false_match_rate: float | None  # the target (None when the user gave the threshold)
    expected_false_match_rate: float | None
    expected_recall: float | None
    semantic_copy: float | None
    pixel_copy: float | None
    copy_percentile: float
    null_samples: int
    same_identity_samples: int
    loo_samples: int
    pixel_loo_samples: int
    note: str

    def to_dict(self, pixel_dim: int | None = None) -> dict:
        d = asdict(self)
        d["pixel_copy_per_value"] = (
            None if self.pixel_copy is None or not pixel_dim else self.pixel_copy / (pixel_dim * 255.0)
        )
        return d


def _finite(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        return np.zeros(0, np.float64)
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def calibrate(
    calibration: Mapping[str, np.ndarray],
    false_match_rate: float = DEFAULT_FALSE_MATCH_RATE,
    threshold: float | None = None,
    copy_percentile: float = COPY_PERCENTILE,
) -> Thresholds:
    """Turn the index's stored nearest-distance distributions into thresholds.

    * With identities: ``identity`` = the ``false_match_rate`` quantile of ``sem_diff_id`` (each
      training face's nearest *other-identity* distance: how close a stranger's nearest neighbour
      gets), so real strangers are flagged at about that rate. ``expected_recall`` = share of
      ``sem_same_id`` (nearest other photo of the same person) under it.
    * Without identities: the same quantile of ``sem_loo`` (nearest other face, any identity);
      no false-match rate can be promised then, and ``note`` says so.
    * ``threshold`` given: used as is (``source="user"``); the expected rates are still reported
      at that threshold when identities are known.
    * Copy thresholds: the ``copy_percentile`` percentile of ``sem_loo`` and of ``pix_loo``
      (train-to-train nearest distances), independent of the above.
    """
    if not 0.0 < false_match_rate < 1.0:
        raise ValueError(f"false_match_rate must be in (0, 1), got {false_match_rate}")
    null = _finite(calibration.get("sem_diff_id"))
    same = _finite(calibration.get("sem_same_id"))
    loo = _finite(calibration.get("sem_loo"))
    pix = _finite(calibration.get("pix_loo"))
    notes = []
    if threshold is not None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold}")
        identity, source, target = float(threshold), "user", None
        notes.append("identity threshold given by the user")
    elif len(null):
        identity = float(np.quantile(null, false_match_rate))
        source, target = "identities", false_match_rate
        notes.append(
            f"identity threshold = {false_match_rate:g} quantile of each training face's nearest "
            f"other-identity distance ({len(null)} faces)"
        )
    elif len(loo):
        identity = float(np.quantile(loo, false_match_rate))
        source, target = "leave_one_out", false_match_rate
        notes.append(
            "the index has no identities: identity threshold = "
            f"{false_match_rate:g} quantile of the leave-one-out nearest distances "
            f"({len(loo)} faces); the false-match rate at it is unknown"
        )
    else:
        raise ValueError("the index has no calibration data (fewer than 2 faces): give a threshold")
    exp_fmr = float(np.mean(null < identity)) if len(null) else None
    exp_recall = float(np.mean(same < identity)) if len(same) else None
    sem_copy = float(np.percentile(loo, copy_percentile)) if len(loo) else None
    pix_copy = float(np.percentile(pix, copy_percentile)) if len(pix) else None
    if sem_copy is None or pix_copy is None:
        notes.append("copy thresholds unavailable (index too small)")
    return Thresholds(
        identity,
        source,
        target,
        exp_fmr,
        exp_recall,
        sem_copy,
        pix_copy,
        copy_percentile,
        int(len(null)),
        int(len(same)),
        int(len(loo)),
        int(len(pix)),
        "; ".join(notes),
    )


# ----------------------------------------------------------------------------- where one distance falls


def share_below(sorted_sample: np.ndarray, distance: float) -> float | None:
    """Share of a sorted sample strictly below ``distance`` (the empirical CDF just left of it);
    None for an empty sample. Strict, like every threshold comparison here, so that at the identity
    threshold it equals :attr:`Thresholds.expected_false_match_rate` exactly."""
    n = len(sorted_sample)
    if n == 0 or not math.isfinite(distance):
        return None
    return float(np.searchsorted(sorted_sample, distance, side="left") / n)


_SORTED: dict[int, tuple[weakref.ref, np.ndarray]] = {}
_SORTED_LOCK = threading.Lock()


def _sorted_finite(a: np.ndarray | None) -> np.ndarray:
    """``a``'s finite values, sorted, cached per array object (the index's calibration arrays are
    loaded once and shared by every request; sorting 200k values per request would cost ~10 ms)."""
    if a is None:
        return np.zeros(0, np.float64)
    with _SORTED_LOCK:
        hit = _SORTED.get(id(a))
        if hit is not None and hit[0]() is a:
            return hit[1]
    out = np.sort(_finite(a))
    try:
        ref = weakref.ref(a)
    except TypeError:  # not weak-referenceable (a plain list): no caching
        return out
    with _SORTED_LOCK:
        for k in [k for k, (r, _) in _SORTED.items() if r() is None]:
            del _SORTED[k]
        _SORTED[id(a)] = (ref, out)
    return out


@dataclass(frozen=True)
class DistanceContext:
    """Where a neighbour's distance falls in the index's own calibration distributions, so a user
    can read "closer than 99% of strangers' nearest training face" instead of a bare number.

    * ``stranger_quantile`` (semantic): share of ``sem_diff_id`` (each training face's nearest
      other-identity distance: a stranger's nearest training face) strictly below the distance, i.e.
      the false-match rate a threshold at this distance would have. None without identities.
    * ``loo_quantile``: share of training faces whose nearest other training face is closer
      (``sem_loo`` semantic, ``pix_loo`` pixel); at the copy threshold it is about ``copy_percentile``/100.
    """

    sem_diff_id: np.ndarray
    sem_loo: np.ndarray
    pix_loo: np.ndarray

    @classmethod
    def of(cls, calibration: Mapping[str, np.ndarray]) -> DistanceContext:
        return cls(*(_sorted_finite(calibration.get(k)) for k in ("sem_diff_id", "sem_loo", "pix_loo")))

    def semantic(self, distance: float) -> dict:
        d = float(distance)
        return {"stranger_quantile": share_below(self.sem_diff_id, d), "loo_quantile": share_below(self.sem_loo, d)}

    def pixel(self, distance: float) -> dict:
        return {"loo_quantile": share_below(self.pix_loo, float(distance))}


# ----------------------------------------------------------------------------- pairs inside a batch


def close_pairs(x: np.ndarray, threshold: float | None, metric: str) -> list[tuple[int, int, float]]:
    """All pairs i < j with distance(x[i], x[j]) < threshold, sorted by (i, j).

    ``metric`` is ``euclidean`` (descriptors) or ``cityblock`` (pixel crops, L1 sum). Exact, in
    float64 (uint8 L1 sums are exact integers in float64), computed in blocks so memory stays
    bounded for large audits.
    """
    n = len(x)
    if threshold is None or n < 2:
        return []
    x = np.asarray(x, dtype=np.float64).reshape(n, -1)
    out: list[tuple[int, int, float]] = []
    for s in range(0, n, _BLOCK):
        a = x[s : s + _BLOCK]
        for t in range(s, n, _BLOCK):
            d = cdist(a, x[t : t + _BLOCK], metric=metric)
            ii, jj = np.nonzero(d < threshold)
            for i, j in zip(ii, jj):
                gi, gj = s + int(i), t + int(j)
                if gi < gj:
                    out.append((gi, gj, float(d[i, j])))
    out.sort()
    return out


# ----------------------------------------------------------------------------- birthday paradox


def poisson_interval(c: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval for a Poisson mean from one count ``c``:
    [χ²(α/2; 2c)/2, χ²(1−α/2; 2c+2)/2], with lower bound 0 at c = 0."""
    alpha = 1.0 - confidence
    lo = 0.0 if c == 0 else float(sps.chi2.ppf(alpha / 2, 2 * c) / 2)
    hi = float(sps.chi2.ppf(1 - alpha / 2, 2 * c + 2) / 2)
    return lo, hi


def support_estimate(s: int, c: int, confidence: float = CONFIDENCE) -> dict:
    """Arora & Zhang's birthday-paradox support estimate from ``c`` colliding pairs among ``s`` faces.

    For a distribution uniform over M distinct faces, the expected number of colliding pairs
    among s samples is C(s,2)/M, so M̂ = s(s−1)/(2c). c is treated as Poisson: the exact Garwood
    interval for its mean maps to [s(s−1)/(2·λ_hi), s(s−1)/(2·λ_lo)]. With c = 0 there is no
    point estimate, only the one-sided lower bound M ≥ s(s−1)/(2·λ₀), λ₀ = −ln(1−confidence)
    (≈ 3.0 at 95%). With s < 2 nothing can be said.
    """
    pairs = s * (s - 1) / 2
    out = {
        "faces": int(s),
        "pairs_compared": int(pairs),
        "colliding_pairs": int(c),
        "confidence": confidence,
        "support_estimate": None,
        "support_interval": None,
        "support_lower_bound": None,
    }
    if s < 2:
        out["note"] = "fewer than 2 faces: no estimate"
        return out
    if c == 0:
        lam0 = -math.log(1.0 - confidence)  # = χ²(confidence; 2)/2, one-sided
        out["support_lower_bound"] = pairs / lam0
        out["note"] = (
            f"no collision among {int(pairs)} pairs: one-sided {confidence:.0%} lower bound M >= s(s-1)/(2*{lam0:.3f})"
        )
        return out
    lo, hi = poisson_interval(c, confidence)
    out["support_estimate"] = pairs / c
    out["support_interval"] = [pairs / hi, pairs / lo]
    out["note"] = f"M = s(s-1)/(2c); {confidence:.0%} interval from the exact Poisson (Garwood) interval on c"
    return out


def collisions(
    names: list[str],
    descriptors: np.ndarray | None,
    pix: np.ndarray | None,
    th: Thresholds,
    batch_size: int,
    positions: list[int] | None = None,
    confidence: float = CONFIDENCE,
) -> dict:
    """Near-duplicate pairs inside the batch and the support estimate, per channel.

    ``names`` / ``descriptors`` / ``pix`` cover the batch's ok faces only (same order); a channel
    given as None is reported as not computed. Semantic collisions use the identity threshold
    (same person), pixel collisions the pixel copy threshold. ``positions`` are the faces' places
    in the upload (default 0..s−1); pairs report them as ``a_index`` / ``b_index``.
    """
    s = len(names)
    pos = list(range(s)) if positions is None else list(positions)
    out: dict = {
        "batch_size": int(batch_size),
        "faces": int(s),
        "reference": "Arora & Zhang (2017), Do GANs "
        "actually learn the distribution? An empirical study, arXiv:1706.08224",
    }
    for channel, x, thr, metric in (
        ("semantic", descriptors, th.identity, "euclidean"),
        ("pixel", pix, th.pixel_copy, "cityblock"),
    ):
        if x is None:
            out[channel] = None
            continue
        pairs = close_pairs(x, thr, metric)
        est = support_estimate(s, len(pairs), confidence)
        cast = float if channel == "semantic" else (lambda v: int(round(v)))  # L1 sums are integers
        out[channel] = {
            "threshold": thr,
            "pairs": [
                {"a": names[i], "b": names[j], "a_index": pos[i], "b_index": pos[j], "distance": cast(d)}
                for i, j, d in pairs
            ],
            **est,
        }
        if thr is None:
            out[channel]["note"] = "no pixel copy threshold in this index: pixel collisions not computed"
    return out


# ----------------------------------------------------------------------------- memorization


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
) -> dict:
    """How much of the batch sits on the training set, from each face's top-1 neighbours.

    * ``same_person``: share with a top-1 semantic distance under the identity threshold, beside
      the expected false-match rate (what the same number of real strangers would score), with a
      one-sided exact binomial p-value for "more than strangers".
    * ``likely_copies``: share closer than the copy thresholds (semantic and pixel separately).
    * ``suspected_copies``: each such face with its training file.

    ``sem_train`` / ``pix_train`` give each face's top-1 training face as ``{"file", "identity"}``;
    ``positions`` are the faces' places in the upload (reported as ``index``).
    """
    n = len(names)
    pos = list(range(n)) if positions is None else list(positions)
    out: dict = {
        "faces": int(n),
        "identity_threshold": th.identity,
        "expected_false_match_rate": th.expected_false_match_rate,
    }
    if sem_top1 is not None:
        sem_top1 = np.asarray(sem_top1, dtype=np.float64)
        k = int(np.sum(sem_top1 < th.identity))
        same = share_with_interval(k, n, confidence)
        p0 = th.expected_false_match_rate
        same["p_value_vs_strangers"] = (
            float(sps.binomtest(k, n, p0, alternative="greater").pvalue)
            if n and p0 is not None and 0 < p0 < 1
            else None
        )
        out["same_person"] = same
    else:
        out["same_person"] = None
    copies: list[dict] = []
    likely: dict = {}
    for channel, top1, train, thr in (
        ("semantic", sem_top1, sem_train, th.semantic_copy),
        ("pixel", pix_top1, pix_train, th.pixel_copy),
    ):
        if top1 is None or thr is None:
            likely[channel] = None
            continue
        top1 = np.asarray(top1, dtype=np.float64)
        hit = np.nonzero(top1 < thr)[0]
        likely[channel] = {"threshold": thr, **share_with_interval(len(hit), n, confidence)}
        if channel == "pixel":
            likely[channel]["threshold_per_value"] = thr / (pixel_dim * 255.0)
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
