"""How far a cheaper descriptor (``bf16``) moves the numbers users read, against exact ``fp32``.

Why a module: the precision default rests on these figures (BENCHMARKS.md, "Descriptor precision"),
and the same functions check it in the tests. The three measures follow the issue that asked for them:

* the largest descriptor error, and the largest change of a pair distance;
* face verification accuracy with LFW's protocol (10 folds of balanced same/different pairs, the
  threshold chosen on nine folds and scored on the tenth) on pairs drawn from the indexed dataset;
  LFW itself is not shipped here, so CelebA identities stand in for it;
* the calibrated thresholds, which the caller computes from :func:`indexer.calibrate.semantic_calibration`
  of both descriptor sets over the same faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = 10


@dataclass(frozen=True)
class Pairs:
    """Row pairs of one verification protocol: ``same`` and ``diff`` are (n, 2) row indices."""

    same: np.ndarray
    diff: np.ndarray


def verification_pairs(idents: np.ndarray, n_pairs: int = 3000, seed: int = 0) -> Pairs:
    """Up to ``n_pairs`` same-identity pairs, drawn at random from every such pair (taken identity by
    identity in a seeded order, at most ``10 * n_pairs`` of them), and as many random
    different-identity pairs, all with ``seed``; unknown identities (negative codes) take no part.
    LFW uses 3,000 of each."""
    idents = np.asarray(idents)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(idents >= 0)
    order = rows[np.argsort(idents[rows], kind="stable")]
    starts = np.flatnonzero(np.r_[True, idents[order][1:] != idents[order][:-1]])
    groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    same: list[tuple[int, int]] = []
    for g in rng.permutation(len(groups)):
        members = groups[g]
        same += [(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1 :]]
    same_arr = np.array(same[: 10 * n_pairs] or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
    same_arr = same_arr[rng.permutation(len(same_arr))[:n_pairs]]
    diff: list[np.ndarray] = []
    need = len(same_arr)
    while need > 0 and len(rows) > 1:
        a, b = rng.choice(rows, need), rng.choice(rows, need)
        keep = idents[a] != idents[b]
        diff.append(np.stack([a[keep], b[keep]], 1))
        need -= int(keep.sum())
    diff_arr = np.concatenate(diff)[: len(same_arr)] if diff else np.zeros((0, 2), np.int64)
    return Pairs(same_arr, diff_arr)


def pair_distances(desc: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) of the rows in each pair."""
    x = np.asarray(desc, np.float64)
    return np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)


def _best_threshold(same: np.ndarray, diff: np.ndarray) -> float:
    """The distance threshold with the highest balanced accuracy on these pairs (every midpoint)."""
    d = np.sort(np.concatenate([same, diff]))
    cuts = np.r_[d[0] - 1e-9, (d[1:] + d[:-1]) / 2, d[-1] + 1e-9]
    tp = np.searchsorted(np.sort(same), cuts, side="left") / max(len(same), 1)
    tn = 1 - np.searchsorted(np.sort(diff), cuts, side="left") / max(len(diff), 1)
    return float(cuts[int(np.argmax(tp + tn))])


def verification_accuracy(desc: np.ndarray, pairs: Pairs, seed: int = 0) -> tuple[float, np.ndarray]:
    """LFW-protocol accuracy (mean over :data:`FOLDS` folds, balanced) and the per-fold thresholds.

    The folds are fixed by ``seed`` and the pairs, not by the descriptors, so two descriptor sets
    scored with the same ``pairs`` and ``seed`` are compared on the very same splits."""
    if min(len(pairs.same), len(pairs.diff)) < FOLDS:
        raise ValueError(f"the protocol needs at least {FOLDS} pairs of each kind, got {len(pairs.same)} same-person")
    ds, dd = pair_distances(desc, pairs.same), pair_distances(desc, pairs.diff)
    rng = np.random.default_rng(seed)
    fs, fd = rng.permutation(len(ds)) % FOLDS, rng.permutation(len(dd)) % FOLDS
    accs, cuts = [], []
    for k in range(FOLDS):
        t = _best_threshold(ds[fs != k], dd[fd != k])
        accs.append(((ds[fs == k] < t).mean() + (dd[fd == k] >= t).mean()) / 2)
        cuts.append(t)
    return float(np.mean(accs)), np.array(cuts)


def descriptor_errors(ref: np.ndarray, alt: np.ndarray, pairs: Pairs) -> dict[str, float]:
    """Largest absolute descriptor error, and the largest and mean change of a pair's distance."""
    ref, alt = np.asarray(ref, np.float64), np.asarray(alt, np.float64)
    every = np.concatenate([pairs.same, pairs.diff])
    dd = pair_distances(alt, every) - pair_distances(ref, every)
    return {
        "max_descriptor_error": float(np.abs(alt - ref).max()) if len(ref) else 0.0,
        "max_distance_change": float(np.abs(dd).max()) if len(dd) else 0.0,
        "mean_distance_change": float(dd.mean()) if len(dd) else 0.0,
    }
