"""The training side of an audit: everything the statistics compare the generated faces with.

One pure function of the index, :func:`training_side`, so that an audit run in-process and one run
against a server (``GET /v1/reference``, a thin route over this function) use the very same numbers:

* the thresholds (:func:`service.stats.thresholds.calibrate`);
* the null samples the memorization tests and histograms need: each training face's nearest
  other-identity distance (a stranger's nearest training face), its nearest other face, and the
  pixel equivalents (seeded subsamples beyond ``NULL_CAP`` faces);
* the training reference of the support estimate: the same estimator, at the same collision
  thresholds, on random samples of the index's own faces of the audit's size — "generator vs
  training data";
* the stranger null of identity concentration;
* the k-means cells of the C_T test and the held-out-like distances per cell;
* the scope: how much of the training set the index covers, when the dataset says so;
* the training side of the omission statistics (:func:`indexer.attributes.training_side`).

Nothing here returns training descriptors or pixel crops.
"""

from __future__ import annotations

import logging

import numpy as np

from indexer import attributes
from indexer import pixels as pixel_channel
from indexer.datasets import CELEBA_SPLIT_BOUNDS
from indexer.store import FaceIndex

from . import collisions, ct, identities, support, thresholds

log = logging.getLogger(__name__)

NULL_CAP = 20_000  # null values returned per array (a seeded subsample beyond)
REFERENCE_DRAWS = 5  # training samples of the audit's size for the reference support
CELEBA_TOTAL = 202_599
CELEBA_SPLIT_SIZES = {
    "train": CELEBA_SPLIT_BOUNDS[0],
    "val": CELEBA_SPLIT_BOUNDS[1] - CELEBA_SPLIT_BOUNDS[0],
    "test": CELEBA_TOTAL - CELEBA_SPLIT_BOUNDS[1],
}
CELEBA_IDENTITIES = 10_177


def _sub(a: np.ndarray, rows: np.ndarray | None) -> list:
    a = np.asarray(a)
    return (a if rows is None else a[rows]).tolist()


def _reference_support(index: FaceIndex, th: thresholds.Thresholds, faces: int, seed: int) -> dict:
    """The support estimator on ``REFERENCE_DRAWS`` random samples of ``faces`` training faces."""
    n_all = index.n_faces
    size = min(faces, n_all)
    draws = REFERENCE_DRAWS if size * 2 <= n_all else 1
    rng = np.random.default_rng([seed, 7])
    batches: dict[str, list[support.Batch]] = {"semantic": [], "pixel": []}
    for _ in range(draws):
        rows = np.sort(rng.choice(n_all, size, replace=False))
        found = collisions.batch_pairs(np.asarray(index.descriptors[rows]), np.asarray(index.pixels[rows]), th)
        for ch, pairs in found.items():
            batches[ch].append(support.Batch.from_pairs(size, pairs))
    out = {}
    for ch, pt in (("semantic", th.collision_semantic), ("pixel", th.collision_pixel)):
        if pt is None or not batches[ch]:
            out[ch] = None
            continue
        est = support.estimate(batches[ch], pt.per_pair_false_match_rate, seed=seed)
        out[ch] = {
            **est,
            "threshold": pt.threshold,
            "per_pair_false_match_rate": pt.per_pair_false_match_rate,
            "same_identity_recall": pt.same_identity_recall,
            "sample_size": size,
            "draws": draws,
            "method": f"the audit's estimator on {draws} random sample(s) of {size} training faces of the index",
        }
    return out


def scope(index: FaceIndex, training_set_size: int | None = None) -> dict:
    """How much of the training set the index holds: the dataset's own numbers for CelebA (its
    standard split sizes), a user-given ``training_set_size`` otherwise."""
    m = index.manifest
    ds = m.get("dataset", {})
    faces = index.n_faces
    splits: dict[str, int] = {}
    for r in index.rows:
        if r.get("face") is not None:
            splits[str(r.get("split"))] = splits.get(str(r.get("split")), 0) + 1
    out = {
        "dataset": ds.get("kind"),
        "split": ds.get("split"),
        "indexed_faces": faces,
        "indexed_identities": ds.get("identities"),
        "faces_by_split": splits,
        "training_set_size": training_set_size,
        "coverage": None,
        "source": None,
    }
    if training_set_size:
        out["coverage"], out["source"] = faces / training_set_size, "given by the user (--training-set-size)"
    elif ds.get("kind") == "celeba":
        train = splits.get("train", 0)
        out["training_set_size"] = CELEBA_SPLIT_SIZES["train"]
        out["coverage"] = train / CELEBA_SPLIT_SIZES["train"]
        out["identities_in_celeba"] = CELEBA_IDENTITIES
        out["source"] = (
            f"CelebA's standard split: {train:,} of its {CELEBA_SPLIT_SIZES['train']:,} training images are indexed"
        )
    if out["coverage"] is not None:
        out["note"] = (
            f"The index holds {100 * out['coverage']:.1f}% of the training set: statements about copies and "
            f"identities hold for the indexed faces only; a copy of an image outside the index cannot be seen."
        )
    else:
        out["note"] = (
            "The size of the training set is unknown (give --training-set-size): statements about copies and "
            "identities hold for the indexed faces only."
        )
    return out


def training_side(
    index: FaceIndex,
    faces: int,
    seed: int = 0,
    false_match_rate: float = thresholds.DEFAULT_FALSE_MATCH_RATE,
    threshold: float | None = None,
    pair_false_match_rate: float = thresholds.DEFAULT_PAIR_FALSE_MATCH_RATE,
    cells: int | None = None,
    training_set_size: int | None = None,
) -> dict:
    """The training side for an audit of ``faces`` generated faces (see the module docstring)."""
    cal = index.calibration
    th = thresholds.calibrate(cal, false_match_rate, threshold, pair_false_match_rate=pair_false_match_rate)
    n_all = index.n_faces
    # The per-face semantic arrays cover every face, or (indexes above the build's
    # --semantic-calibration-sample) the faces ``sem_rows``: positions below index those arrays.
    m = len(cal["sem_diff_id"])
    sem_face = np.asarray(cal["sem_rows"], np.int64) if "sem_rows" in cal else np.arange(m, dtype=np.int64)
    rng = np.random.default_rng([seed, 11])
    rows = None if m <= NULL_CAP else np.sort(rng.choice(m, NULL_CAP, replace=False))
    pix_rows = np.asarray(cal.get("pix_loo_rows", np.zeros(0, np.int64)))
    pix_sub = None if len(pix_rows) <= NULL_CAP else np.sort(rng.choice(len(pix_rows), NULL_CAP, replace=False))
    ids, names = _identity_codes_and_names(index)
    clusters = null_clusters(index, ids)
    nulls = {
        "sem_diff_id": _sub(cal["sem_diff_id"], rows),
        "sem_diff_id_identity": _sub(clusters["sem_diff_id_identity"], rows),
        "sem_diff_id_neighbour": _sub(clusters["sem_diff_id_neighbour"], rows),
        "pix_diff_id_identity": _sub(clusters["pix_diff_id_identity"], pix_sub),
        "sem_loo": _sub(cal["sem_loo"], rows),
        "pix_loo": _sub(cal.get("pix_loo", np.zeros(0)), pix_sub),
        "pix_diff_id": _sub(cal.get("pix_diff_id", np.zeros(0)), pix_sub),
    }
    k = cells or ct.cell_count(faces)
    centroids = ct.kmeans_cells(index.descriptors, k, seed)
    held_rows = one_per_identity(np.arange(m) if rows is None else rows, ids[sem_face], seed)
    held = np.asarray(cal["sem_diff_id"], np.float64)[held_rows]
    finite = np.isfinite(held)
    out = {
        "format": "facemem-reference/1",
        "faces": int(faces),
        "seed": int(seed),
        "index_faces": n_all,
        "calibration": th.to_dict(pixel_channel.PIXEL_DIM),
        "nulls": nulls,
        "support_reference": _reference_support(index, th, max(int(faces), 2), seed),
        "identity_null": identities.pool_from_training(
            cal["sem_diff_id_face"], ids, names, int(faces), seed=seed, rows=sem_face, distances=cal["sem_diff_id"]
        ),
        "ct": {
            "cells": int(k),
            "centroids": centroids.tolist(),
            "held_out_distance": held[finite].tolist(),
            "held_out_cells": ct.assign(index.descriptors[sem_face[held_rows][finite]], centroids).tolist(),
            "held_out_source": "one face per training identity: its nearest other-identity distance (training-domain "
            "strangers)",
        },
        "scope": scope(index, training_set_size),
        "omissions": attributes.training_side(index),  # the same dict as GET /v1/attributes
    }
    if not finite.any():
        out["ct"]["note"] = "the index has no identities: no stranger-like held-out distances"
    return out


def _identity_codes_and_names(index: FaceIndex) -> tuple[np.ndarray, list[str]]:
    """(F,) identity code per face (−1 unknown; :meth:`FaceIndex.identity_codes`) and each code's label."""
    codes = index.identity_codes()
    names: list[str | None] = [None] * (int(codes.max()) + 1 if len(codes) else 0)
    known = np.flatnonzero(codes >= 0)
    _, first = np.unique(codes[known], return_index=True)
    for face in known[first]:
        names[codes[face]] = index.face_identity(int(face))
    return codes, [str(n) for n in names]


def null_clusters(index: FaceIndex, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The clusters of the index's null samples, aligned with them: each ``sem_diff_id`` value's face
    identity and its nearest other-identity face's identity (look-alike pairs), and each ``pix_diff_id``
    value's face identity (−1 unknown). The memorization tests count the nulls at their effective size
    with them (:func:`service.stats.baselines.rate_test`); the service and the audit read the same."""
    cal = index.calibration
    ids = index.identity_codes() if ids is None else ids
    m = len(cal["sem_diff_id"])
    sem_face = np.asarray(cal["sem_rows"], np.int64) if "sem_rows" in cal else np.arange(m, dtype=np.int64)
    diff_face = np.asarray(cal["sem_diff_id_face"], np.int64)
    pix_rows = np.asarray(cal.get("pix_loo_rows", np.zeros(0, np.int64)), np.int64)
    return {
        "sem_diff_id_identity": ids[sem_face],
        "sem_diff_id_neighbour": np.where(diff_face >= 0, ids[np.clip(diff_face, 0, None)], -1),
        "pix_diff_id_identity": ids[pix_rows] if len(pix_rows) else np.zeros(0, np.int64),
    }


def one_per_identity(rows: np.ndarray, identity: np.ndarray, seed: int) -> np.ndarray:
    """``rows`` (positions into the per-face arrays) with one seeded pick per identity, in order; faces
    of unknown identity (−1) all stay. Why: C_T treats its held-out values as independent, and photos
    of one person are not (measured: its null z spread 1.12–1.19 with every photo, 0.96–1.01 with one
    face per identity, so a clean generator's C_T rejected 7–9% of the time at 5%)."""
    rows = np.asarray(rows, np.int64)
    who = np.asarray(identity, np.int64)[rows]
    order = np.random.default_rng([seed, 13]).permutation(len(rows))
    known = order[who[order] >= 0]
    _, first = np.unique(who[known], return_index=True)
    keep = np.concatenate([known[first], np.flatnonzero(who < 0)])
    return rows[np.sort(keep)]
