"""Calibrated thresholds: the identity, copy and pair (collision) thresholds of an index, read from
its stored null samples, and where one distance falls among them.

Pure numpy on purpose: the HTTP service and the in-process audit both call these functions on the
same arrays, so both report the same numbers. Formulas are documented in the README ("Statistics").

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
from dataclasses import asdict, dataclass, fields

import numpy as np

DEFAULT_FALSE_MATCH_RATE = 0.01
# Collisions (birthday paradox): per-pair false-match rate of the collision threshold; see README
# "Collisions" for why 1e-5. The index keeps the lowest 1e-4 of its pair distances, hence the cap.
DEFAULT_PAIR_FALSE_MATCH_RATE = 1e-5
MAX_PAIR_FALSE_MATCH_RATE = 1e-4
COPY_PERCENTILE = 1.0  # a "likely copy" is closer than 1% of train-to-train nearest distances
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class PairThreshold:
    """A collision threshold read from pairs of faces of different training identities.

    ``threshold`` is the distance under which such a pair falls with probability
    ``per_pair_false_match_rate`` (measured: ``pairs_under`` of ``pairs_sampled``, for the target
    ``target_rate``); ``interval`` is its 95% interval from a bootstrap over the sampled faces'
    identities (how precisely the threshold is known; the rank's binomial interval for an index
    built before the bootstrap's inputs were stored). ``same_identity_recall`` is the share of pairs of two
    photos of one training person under it. ``source``: ``identities``, or ``all_pairs`` when the
    index has no identities (the rate is then over all pairs, same-person pairs included).
    """

    channel: str
    threshold: float
    target_rate: float
    per_pair_false_match_rate: float
    pairs_under: int
    pairs_sampled: int
    interval: tuple[float, float]
    same_identity_recall: float | None
    same_identity_pairs: int
    source: str


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one request (or audit) uses, with where they came from.

    ``identity`` decides ``same_person`` (a 1:N decision: is this face's nearest training face the
    same person?); ``semantic_copy`` and ``pixel_copy`` decide "likely copy"; ``collision_semantic``
    and ``collision_pixel`` decide whether two generated faces are a near-duplicate pair (a 1:1
    decision, calibrated per pair, so that it does not depend on the index size).
    ``expected_false_match_rate`` is the share of the index's null distribution (a stranger's
    nearest neighbour) under ``identity``: the rate at which real strangers would be called the
    same person. It is None when identities are unknown.
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
    collision_semantic: PairThreshold | None
    collision_pixel: PairThreshold | None
    note: str

    def to_dict(self, pixel_dim: int | None = None) -> dict:
        d = asdict(self)
        d["pixel_copy_per_value"] = (
            None if self.pixel_copy is None or not pixel_dim else self.pixel_copy / (pixel_dim * 255.0)
        )
        for key in ("collision_semantic", "collision_pixel"):
            if d[key] is not None:
                d[key]["interval"] = list(d[key]["interval"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Thresholds:
        """Rebuild the thresholds a response used from its ``calibration`` block."""
        kw = {f.name: d[f.name] for f in fields(cls)}
        for key in ("collision_semantic", "collision_pixel"):
            if kw[key] is not None:
                kw[key] = PairThreshold(**{**kw[key], "interval": tuple(kw[key]["interval"])})
        return cls(**kw)


def finite(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        return np.zeros(0, np.float64)
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


PAIR_BOOTSTRAP = 200


def _threshold_interval(
    calibration: Mapping[str, np.ndarray], channel: str, tail: np.ndarray, rate: float
) -> tuple[float, float] | None:
    """95% interval of the rate-``rate`` threshold from a bootstrap over the sampled faces' identities.

    Why not the rank's binomial interval: pairs are not independent draws. A face that resembles many
    others owns many of the tail's pairs, and so do the other photos of its person; resampling whole
    identities (with all their faces' pairs) shows how much the threshold moves from one training
    sample to another (on celeba10k, ±0.01 between random 2,500-face subsets, where the binomial
    interval of the rank says ±0.004)."""
    owner = np.asarray(calibration.get(f"pair_{channel}_diff_tail_row", []), np.int64)
    row_id = np.asarray(calibration.get(f"pair_{channel}_rows_identity", []), np.int64)
    row_pairs = np.asarray(calibration.get(f"pair_{channel}_rows_pairs", []), np.float64)
    if len(owner) != len(tail) or not len(row_id) or len(row_pairs) != len(row_id):
        return None
    # identity clusters of the sampled faces (unknown identities: each face its own cluster)
    key = np.where(row_id >= 0, row_id, -1 - np.arange(len(row_id)))
    _, cluster = np.unique(key, return_inverse=True)
    rng = np.random.default_rng(0)
    w = rng.poisson(1.0, size=(PAIR_BOOTSTRAP, cluster.max() + 1)).astype(np.float64)[:, cluster]  # (B, rows)
    need = rate * (w @ row_pairs)  # weighted pairs under the threshold at the target rate, per draw
    cum = np.cumsum(w[:, owner], axis=1)  # tail in distance order
    pos = np.array([np.searchsorted(c, n) for c, n in zip(cum, need)])
    ok = pos < len(tail)
    if ok.sum() < PAIR_BOOTSTRAP // 2:
        return None
    lo, hi = np.quantile(tail[pos[ok]], [0.025, 0.975])
    return float(lo), float(hi)


def pair_threshold(
    calibration: Mapping[str, np.ndarray], channel: str, rate: float = DEFAULT_PAIR_FALSE_MATCH_RATE
) -> PairThreshold | None:
    """The ``channel`` (``sem`` or ``pix``) collision threshold with per-pair false-match rate ``rate``,
    from the index's stored pair tail (None when the index has too few pairs)."""
    if not 0.0 < rate <= MAX_PAIR_FALSE_MATCH_RATE:
        raise ValueError(f"pair_false_match_rate must be in (0, {MAX_PAIR_FALSE_MATCH_RATE:g}], got {rate}")
    tail = finite(calibration.get(f"pair_{channel}_diff_tail"))
    total = int(np.asarray(calibration.get(f"pair_{channel}_diff_pairs", 0)))
    if not len(tail) or total <= 0:
        return None
    r = min(max(1, int(round(rate * total))), len(tail))
    thr = float((tail[r - 1] + tail[r]) / 2) if r < len(tail) else float(np.nextafter(tail[r - 1], np.inf))
    interval = _threshold_interval(calibration, channel, tail, rate)
    if interval is None:  # an index without the tail's owners: the rank's binomial interval
        half = 1.96 * math.sqrt(r)
        lo_r, hi_r = max(1, int(math.floor(r - half))), min(len(tail), int(math.ceil(r + half)))
        interval = (float(tail[lo_r - 1]), float(tail[hi_r - 1]))
    same = finite(calibration.get(f"pair_{channel}_same"))
    known = bool(np.isfinite(np.asarray(calibration.get("sem_diff_id", [np.nan]), np.float64)).any())
    return PairThreshold(
        channel="semantic" if channel == "sem" else "pixel",
        threshold=thr,
        target_rate=rate,
        per_pair_false_match_rate=r / total,
        pairs_under=r,
        pairs_sampled=total,
        interval=interval,
        same_identity_recall=float(np.mean(same < thr)) if len(same) else None,
        same_identity_pairs=int(len(same)),
        source="identities" if known else "all_pairs",
    )


def calibrate(
    calibration: Mapping[str, np.ndarray],
    false_match_rate: float = DEFAULT_FALSE_MATCH_RATE,
    threshold: float | None = None,
    copy_percentile: float = COPY_PERCENTILE,
    pair_false_match_rate: float = DEFAULT_PAIR_FALSE_MATCH_RATE,
) -> Thresholds:
    """Turn the index's stored distance distributions into thresholds.

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
    * Collision thresholds (:func:`pair_threshold`): per-pair false-match rate
      ``pair_false_match_rate`` in each channel.
    """
    if not 0.0 < false_match_rate < 1.0:
        raise ValueError(f"false_match_rate must be in (0, 1), got {false_match_rate}")
    null = finite(calibration.get("sem_diff_id"))
    same = finite(calibration.get("sem_same_id"))
    loo = finite(calibration.get("sem_loo"))
    pix = finite(calibration.get("pix_loo"))
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
    coll_sem = pair_threshold(calibration, "sem", pair_false_match_rate)
    coll_pix = pair_threshold(calibration, "pix", pair_false_match_rate)
    if coll_sem is None:
        notes.append("collision thresholds unavailable (the index has fewer than 2 faces)")
    elif coll_sem.pairs_under < 10:
        notes.append(
            f"the collision threshold rests on {coll_sem.pairs_under} pair(s) of {coll_sem.pairs_sampled:,}: "
            "the index is too small to place it precisely"
        )
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
        coll_sem,
        coll_pix,
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


def _sortedfinite(a: np.ndarray | None) -> np.ndarray:
    """``a``'s finite values, sorted, cached per array object (the index's calibration arrays are
    loaded once and shared by every request; sorting 200k values per request would cost ~10 ms)."""
    if a is None:
        return np.zeros(0, np.float64)
    with _SORTED_LOCK:
        hit = _SORTED.get(id(a))
        if hit is not None and hit[0]() is a:
            return hit[1]
    out = np.sort(finite(a))
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
        return cls(*(_sortedfinite(calibration.get(k)) for k in ("sem_diff_id", "sem_loo", "pix_loo")))

    def semantic(self, distance: float) -> dict:
        d = float(distance)
        return {"stranger_quantile": share_below(self.sem_diff_id, d), "loo_quantile": share_below(self.sem_loo, d)}

    def pixel(self, distance: float) -> dict:
        return {"loo_quantile": share_below(self.pix_loo, float(distance))}
