"""Attribute probes: linear classifiers, fitted at build time, that say which CelebA attributes a face has.

Why probes at all: a generated face has no labels, so "does the generator produce bald people as often as
its training set has them" needs a classifier, and a classifier errs. The audit corrects the rate it
counts for the error measured here (adjusted classify-and-count, ``service/audit/omissions.py``), so what
matters is that the error is *measured honestly*: on faces of identities the probe never saw.

Features (cheap, no downloaded weights; ``scripts/probe_quality.py`` measures each set):

* ``descriptor``: the 128-d dlib descriptor the index already computes (identity, sex, age, hair colour);
* ``crop``: a small colour crop of the face *with context* (padding :data:`CROP_PADDING`, :data:`CROP_SIZE`²
  RGB) cut from the same 5 landmarks as the descriptor's chip: hats, bangs, hair, glasses, make-up;
* ``landmarks``: the 68 landmarks in the eye frame (:func:`indexer.geometry.normalised`): mouth opening,
  smiles, face shape, pose.

The probe is ridge regression on the standardised concatenation (one solve for all attributes, through
one XᵀX and a Cholesky-free solve per penalty), with its penalty chosen per attribute on an inner
identity-disjoint validation split, a Platt map from score to probability fitted on that validation
split, and the operating point at the probability where adjusted classify-and-count has the smallest
variance (:func:`_operating_point`). AUC, TPR and FPR are then measured on a held-out split of identities that took no
part in any of these choices.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from . import geometry
from .clusters import cluster_counts, codes, design_effect
from .faces import CROP_PADDING, CROP_SIZE

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
CROP_DIM = CROP_SIZE * CROP_SIZE * 3
LANDMARK_DIM = 2 * geometry.N_POINTS
DESCRIPTOR_DIM = 128
FEATURE_SETS = ("descriptor", "crop", "landmarks")
HELDOUT_FRACTION = 0.3  # of identities, for the measured AUC/TPR/FPR
INNER_FRACTION = 0.25  # of the fit split's identities, for the penalty, the Platt map and the threshold
MIN_LABELS = 10  # positives and negatives needed in each split, else the attribute gets no probe
LAMBDAS = tuple(float(x) for x in np.logspace(-1, 5, 13))  # ridge penalties, relative to n / 1000
SEED = 0
N_GEN = 1000  # nominal generated sample size for choosing the operating point
HELDOUT_SAMPLE = 400  # held-out probabilities kept per class and attribute (the label-shift diagnostic)


def feature_signature() -> dict:
    """What a probe's input is; borrowed probes must have been fitted on the same features."""
    return {
        "version": FEATURE_VERSION,
        "sets": list(FEATURE_SETS),
        "crop_size": CROP_SIZE,
        "crop_padding": CROP_PADDING,
        "landmarks": "dlib 68-point, eye frame",
        "descriptor": "dlib_face_recognition_resnet_model_v1 (128-d)",
    }


def feature_matrix(descriptors: np.ndarray, crops: np.ndarray, lm68: np.ndarray) -> np.ndarray:
    """(N, 128 + CROP_DIM + 136) float32 probe input from what the face pipeline produced."""
    n = len(descriptors)
    lm = geometry.normalised_many(np.asarray(lm68).reshape(n, geometry.N_POINTS, 2))
    parts = [
        np.asarray(descriptors, np.float32).reshape(n, DESCRIPTOR_DIM),
        np.asarray(crops, np.float32).reshape(n, CROP_DIM) / 255.0,
        lm.reshape(n, LANDMARK_DIM),
    ]
    return np.concatenate(parts, axis=1)


def feature_columns(sets: tuple[str, ...]) -> np.ndarray:
    """Column indices of :func:`feature_matrix` for a subset of :data:`FEATURE_SETS` (probe_quality)."""
    bounds = {"descriptor": (0, DESCRIPTOR_DIM), "crop": (DESCRIPTOR_DIM, DESCRIPTOR_DIM + CROP_DIM)}
    bounds["landmarks"] = (DESCRIPTOR_DIM + CROP_DIM, DESCRIPTOR_DIM + CROP_DIM + LANDMARK_DIM)
    return np.concatenate([np.arange(*bounds[s]) for s in sets])


# ----------------------------------------------------------------------------- splits and metrics


def identity_groups(identities: list[str | None], files: list[str]) -> np.ndarray:
    """A stable group key per face: its identity, or its file where the identity is unknown."""
    return np.array([i if i is not None else f"file:{f}" for i, f in zip(identities, files)], dtype=object)


def group_split(groups: np.ndarray, fraction: float, salt: str) -> np.ndarray:
    """Boolean mask of the faces whose group hashes into the first ``fraction``: deterministic, identity-
    disjoint, and independent of the face order (sha256 of salt + group)."""
    u = np.array([int.from_bytes(hashlib.sha256(f"{salt}:{g}".encode()).digest()[:8], "big") / 2**64 for g in groups])
    return u < fraction


def rankdata(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank), as ``scipy.stats.rankdata`` gives them.

    Why not scipy's: importing ``scipy.stats`` costs ~1.1 s, which every index build paid for two
    AUCs (a twentieth of a 3,000-image build). A column holding NaN ranks as all-NaN, as scipy's
    default ``nan_policy="propagate"`` does."""
    a = np.asarray(a, dtype=np.float64)
    if axis is None:
        return _ranks_1d(a.ravel())
    return np.apply_along_axis(_ranks_1d, axis, a)


def _ranks_1d(x: np.ndarray) -> np.ndarray:
    if np.isnan(x).any():
        return np.full(len(x), np.nan)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    r = np.empty(len(x))
    r[order] = ((starts + 1 + ends) / 2)[np.cumsum(new) - 1]
    return r


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); NaN without both classes."""
    y = np.asarray(labels, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _platt(s: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """1-D logistic regression p = σ(a·s + b) by Newton's method (a tiny ridge keeps separable data finite)."""
    a, b = 1.0, 0.0
    yy = y.astype(np.float64)
    for _ in range(iters):
        z = np.clip(a * s + b, -30, 30)
        p = 1 / (1 + np.exp(-z))
        w = p * (1 - p) + 1e-9
        g = np.array([((p - yy) * s).sum() + 1e-3 * a, (p - yy).sum()])
        h = np.array([[(w * s * s).sum() + 1e-3, (w * s).sum()], [(w * s).sum(), w.sum()]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(z, -50, 50)))


def _operating_point(p: np.ndarray, y: np.ndarray, rate: float, n_pos: int, n_neg: int) -> float:
    """The probability threshold (classify p ≥ t) at which adjusted classify-and-count has the smallest
    variance, from TPR(t), FPR(t) on (p, y):

        Var ≈ [q(1 − q)/N_GEN + r²·TPR(1 − TPR)/n_pos + (1 − r)²·FPR(1 − FPR)/n_neg] / (TPR − FPR)²,
        q = FPR + (TPR − FPR)·r,

    at the training prevalence r, a nominal N_GEN generated faces and the held-out sizes that will
    measure TPR and FPR. Why not Youden's max TPR − FPR: for a rare attribute it sits at a high FPR, and
    the false positives' noise then swamps the signal (measured: Eyeglasses at 6% had FPR 0.11).
    """
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tpr = np.cumsum(ys) / max(ys.sum(), 1)
    fpr = np.cumsum(~ys) / max((~ys).sum(), 1)
    last = np.r_[ps[1:] != ps[:-1], True]  # only between distinct values
    j = tpr - fpr
    q = fpr + j * rate
    var = (
        q * (1 - q) / N_GEN
        + rate**2 * tpr * (1 - tpr) / max(n_pos, 1)
        + (1 - rate) ** 2 * fpr * (1 - fpr) / max(n_neg, 1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(last & (j > 0.05), var / j**2, np.inf)
    i = int(np.argmin(score))
    return float(ps[i])


# ----------------------------------------------------------------------------- the probes


@dataclass
class Probes:
    """Fitted probes for ``names``: score = ((x − mean) / scale) · W + bias; p = σ(a·score + b); call p ≥ threshold."""

    names: list[str]
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weights: np.ndarray  # (D, A)
    bias: np.ndarray  # (A,)
    platt: np.ndarray  # (A, 2)
    threshold: np.ndarray  # (A,) probability threshold; NaN = no probe
    metrics: list[dict]  # per attribute: status, auc, tpr, fpr, counts (JSON-safe)
    heldout_p: dict[str, np.ndarray]  # name -> (2, HELDOUT_SAMPLE) held-out probabilities (neg, pos), NaN padded

    def usable(self) -> np.ndarray:
        return np.isfinite(self.threshold)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, A) float64 probabilities; NaN for attributes without a probe."""
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        s = x @ self.weights + self.bias
        p = _sigmoid(self.platt[:, 0] * s + self.platt[:, 1])
        p[:, ~self.usable()] = np.nan
        return p

    def to_arrays(self) -> dict[str, np.ndarray]:
        import json

        out = {
            "names": np.array(self.names),
            "mean": self.mean,
            "scale": self.scale,
            "weights": self.weights,
            "bias": self.bias,
            "platt": self.platt,
            "threshold": self.threshold,
            "metrics": np.array(json.dumps(self.metrics)),
        }
        for n, v in self.heldout_p.items():
            out[f"heldout_p/{n}"] = v
        return out

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> Probes:
        import json

        names = [str(n) for n in z["names"]]
        return cls(
            names=names,
            mean=np.asarray(z["mean"], np.float64),
            scale=np.asarray(z["scale"], np.float64),
            weights=np.asarray(z["weights"], np.float64),
            bias=np.asarray(z["bias"], np.float64),
            platt=np.asarray(z["platt"], np.float64),
            threshold=np.asarray(z["threshold"], np.float64),
            metrics=json.loads(str(z["metrics"])),
            heldout_p={n: np.asarray(z[f"heldout_p/{n}"]) for n in names if f"heldout_p/{n}" in z},
        )


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run numpy's OpenBLAS on one thread inside the block.

    Why: on the shared 2-core machine a multithreaded LAPACK solve of the 1,032² ridge system took
    0.4–2 s (threads spinning against other jobs) and 0.03–0.06 s single-threaded; the fit does ~20.
    Best effort: where numpy is not linked to the bundled scipy-openblas, nothing changes.
    """
    lib = _numpy_openblas()
    if lib is None:
        yield
        return
    old = lib.scipy_openblas_get_num_threads64_()
    lib.scipy_openblas_set_num_threads64_(1)
    try:
        yield
    finally:
        lib.scipy_openblas_set_num_threads64_(old)


@cache
def _numpy_openblas():
    import ctypes
    import glob

    for path in glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "libscipy_openblas64_*.so")):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_openblas_get_num_threads64_.restype = ctypes.c_int
            lib.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


class _Ridge:
    """Ridge regression for many targets: XᵀX once, then one Cholesky solve per distinct penalty."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.xm, self.ym = x.mean(axis=0), y.mean(axis=0)
        xc = x - self.xm
        self.c = xc.T @ xc
        self.g = xc.T @ (y - self.ym)
        self.n = len(x)

    def coef(self, lam: np.ndarray) -> np.ndarray:
        """(D, A) weights, penalty ``lam[a]`` (relative: × n / 1000) for target a."""
        lam = np.asarray(lam, np.float64)
        w = np.zeros_like(self.g)
        eye = np.eye(len(self.c))
        for lv in np.unique(lam):
            cols = lam == lv
            w[:, cols] = np.linalg.solve(self.c + eye * (lv * self.n / 1000 + 1e-9), self.g[:, cols])
        return w

    def bias(self, w: np.ndarray) -> np.ndarray:
        return self.ym - self.xm @ w


def auc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`auc` of every column at once."""
    y = np.asarray(labels, bool)
    n1, n0 = y.sum(axis=0), (~y).sum(axis=0)
    r = rankdata(scores, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), ((r * y).sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0), np.nan)


def fit_probes(
    features: np.ndarray, labels: np.ndarray, names: list[str], groups: np.ndarray, seed: int = SEED
) -> Probes:
    """Fit one probe per attribute on identity-disjoint splits and measure it on held-out identities.

    ``labels`` is (N, A) bool; ``groups`` the identity key of each face (:func:`identity_groups`).
    """
    with single_threaded_blas():
        return _fit_probes(features, labels, names, groups, seed)


def _fit_probes(features: np.ndarray, labels: np.ndarray, names: list[str], groups: np.ndarray, seed: int) -> Probes:
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, bool)
    held = group_split(groups, HELDOUT_FRACTION, f"heldout-{seed}")
    fit = ~held
    inner_val = fit & group_split(groups, INNER_FRACTION, f"inner-{seed}")
    inner_tr = fit & ~inner_val
    mean = x[fit].mean(axis=0) if fit.any() else np.zeros(x.shape[1])
    scale = x[fit].std(axis=0) if fit.any() else np.ones(x.shape[1])
    scale = np.where(scale > 1e-6, scale, 1.0)
    xs = (x - mean) / scale
    a = len(names)
    yf = y.astype(np.float64)

    def counts(mask):
        return y[mask].sum(axis=0), (~y[mask]).sum(axis=0)

    enough = np.ones(a, bool)
    for mask in (inner_tr, inner_val, held):
        p, n = counts(mask)
        enough &= (p >= MIN_LABELS) & (n >= MIN_LABELS)

    lam = np.full(a, LAMBDAS[len(LAMBDAS) // 2])
    platt = np.tile([1.0, 0.0], (a, 1))
    thr = np.full(a, np.nan)
    weights = np.zeros((x.shape[1], a))
    bias = np.zeros(a)
    if enough.any():
        inner = _Ridge(xs[inner_tr], yf[inner_tr][:, enough])
        xv = xs[inner_val]
        best = np.full(int(enough.sum()), -np.inf)
        val_scores = np.zeros((len(xv), int(enough.sum())))
        cols = np.flatnonzero(enough)
        for lv in LAMBDAS:
            w = inner.coef(np.full(len(cols), lv))
            sv = xv @ w + inner.bias(w)
            u = auc_columns(sv, y[inner_val][:, cols])
            better = u > best
            best[better], lam[cols[better]], val_scores[:, better] = u[better], lv, sv[:, better]
        for j, col in enumerate(np.flatnonzero(enough)):
            platt[col] = _platt(val_scores[:, j], y[inner_val, col])
            pv = _sigmoid(platt[col, 0] * val_scores[:, j] + platt[col, 1])
            rate = float(y[fit, col].mean())
            n_pos, n_neg = int(y[held, col].sum()), int((~y[held, col]).sum())
            ok = platt[col, 0] > 0
            thr[col] = _operating_point(pv, y[inner_val, col], rate, n_pos, n_neg) if ok else np.nan
        outer = _Ridge(xs[fit], yf[fit][:, enough])
        w = outer.coef(lam[enough])
        weights[:, enough] = w
        bias[enough] = outer.bias(w)
    probes = Probes(list(names), mean, scale, weights, bias, platt, thr, [], {})
    ph = probes.probabilities(x[held]) if held.any() else np.zeros((0, a))
    rng = np.random.default_rng(seed)
    for col, name in enumerate(names):
        yh = y[held, col]
        m = {
            "name": name,
            "status": "ok" if np.isfinite(thr[col]) else "too_few_labels",
            "n_fit_pos": int(y[fit, col].sum()),
            "n_fit_neg": int((~y[fit, col]).sum()),
            "n_heldout_pos": int(yh.sum()),
            "n_heldout_neg": int((~yh).sum()),
            "lambda": float(lam[col]),
        }
        if m["status"] == "ok":
            call = ph[:, col] >= thr[col]
            m.update(
                auc=auc(ph[:, col], yh),
                tp=int((call & yh).sum()),
                fp=int((call & ~yh).sum()),
                tpr=float((call & yh).sum() / max(yh.sum(), 1)),
                fpr=float((call & ~yh).sum() / max((~yh).sum(), 1)),
                threshold=float(thr[col]),
            )
            keep = np.full((2, HELDOUT_SAMPLE), np.nan)
            for k, cls in enumerate((~yh, yh)):
                v = ph[cls, col]
                v = v if len(v) <= HELDOUT_SAMPLE else rng.choice(v, HELDOUT_SAMPLE, replace=False)
                keep[k, : len(v)] = v
            probes.heldout_p[name] = keep.astype(np.float32)
            if m["tpr"] <= m["fpr"]:
                m["status"] = "uninformative"
        else:
            m.update(auc=None, tp=None, fp=None, tpr=None, fpr=None, threshold=None)
        probes.metrics.append(m)
    log.info(
        "attribute probes: %d of %d usable; held-out AUC median %.3f",
        sum(m["status"] == "ok" for m in probes.metrics),
        a,
        float(np.nanmedian([m["auc"] if m["auc"] is not None else np.nan for m in probes.metrics]))
        if probes.metrics
        else float("nan"),
    )
    return probes


# ----------------------------------------------------------------------------- build side

GEOMETRY_FILE = "geometry.npy"
ATTRIBUTES_FILE = "attributes.npz"
GEOMETRY_SAMPLE = 4000  # training geometry values served to the audit (seeded sample)
EXAMPLES = 6  # example training files per attribute


def stack_extras(lm68: list[np.ndarray], crops: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One task's per-face extras as arrays (what a build checkpoint stores beside the descriptors)."""
    return {
        "landmarks68": np.stack(lm68).astype(np.float32) if lm68 else np.zeros((0, geometry.N_POINTS, 2), np.float32),
        "attr_crops": np.stack(crops).astype(np.uint8) if crops else np.zeros((0, CROP_DIM), np.uint8),
    }


def concat_extras(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return stack_extras([], [])
    return {k: np.concatenate([p[k] for p in parts]) for k in ("landmarks68", "attr_crops")}


def extras_ok(extras: dict[str, np.ndarray], n_faces: int) -> bool:
    """Whether a checkpoint's extras are whole (a damaged checkpoint is redone)."""
    lm, cr = extras.get("landmarks68"), extras.get("attr_crops")
    return (
        lm is not None
        and cr is not None
        and lm.shape == (n_faces, geometry.N_POINTS, 2)
        and cr.shape == (n_faces, CROP_DIM)
    )


def geometry_matrix(lm68: np.ndarray, sizes: list) -> np.ndarray:
    """(F, len(geometry.NAMES)) float32 geometry of every face."""
    n = len(lm68)
    pts = np.asarray(lm68).reshape(n, geometry.N_POINTS, 2)
    return geometry.geometry_many(pts, np.asarray(sizes, np.int64).reshape(n, 2)).astype(np.float32)


def borrowed_probes(path: str) -> tuple[Probes, dict]:
    """The probes of another index (``--attribute-probes``), after checking they read the same features."""
    from . import store

    idx = store.load_index(path)
    block = idx.manifest.get("attributes") or {}
    if idx.attributes is None or not block.get("available"):
        raise ValueError(f"--attribute-probes {path}: that index has no attribute probes")
    if block.get("feature_signature") != feature_signature():
        raise ValueError(
            f"--attribute-probes {path}: its probes read other features ({block.get('feature_signature')}); "
            f"rebuild that index with this facemem"
        )
    return Probes.from_arrays(idx.attributes), {"borrowed_from": str(Path(path).resolve()), "source_index": block}


def index_outputs(face_rows: list[dict], descriptors: np.ndarray, extras: dict, cfg, identities_known: bool):
    """The build's optional index files and manifest blocks for geometry and attribute probes.

    Returns ``({file name: array or dict of arrays}, {manifest key: block})``. Probes are fitted when the
    dataset has attribute labels, borrowed with ``cfg.attribute_probes``, and absent otherwise (the
    manifest says why).
    """
    from .datasets import celeba_attribute_names

    lm, crops = extras["landmarks68"], extras["attr_crops"]
    if len(lm) != len(face_rows):
        raise RuntimeError(f"attribute extras for {len(lm)} faces, expected {len(face_rows)}")
    files: dict = {GEOMETRY_FILE: geometry_matrix(lm, [r["size"] for r in face_rows])}
    manifest: dict = {"geometry": {"names": list(geometry.NAMES), "landmarks": "dlib 68-point"}}
    names = celeba_attribute_names(Path(cfg.root)) if cfg.dataset == "celeba" else []
    labelled = np.array(["attrs" in (r.get("extra") or {}) for r in face_rows], bool)
    block: dict = {"feature_signature": feature_signature()}
    if cfg.attribute_probes:
        probes, info = borrowed_probes(cfg.attribute_probes)
        block.update(source="borrowed", **info)
    elif names and labelled.any():
        probes, block["source"] = None, "fitted"
    else:
        why = "the dataset has no attribute labels" if cfg.dataset != "celeba" or not names else "no labelled face"
        manifest["attributes"] = {"available": False, "reason": f"{why} and no --attribute-probes index was given"}
        return files, manifest
    x = feature_matrix(descriptors, crops, lm)
    if probes is None:
        y = np.array([[n in set((r.get("extra") or {}).get("attrs", [])) for n in names] for r in face_rows], bool)
        groups = identity_groups([r["identity"] for r in face_rows], [r["file"] for r in face_rows])
        probes = fit_probes(x[labelled], y[labelled].reshape(-1, len(names)), names, groups[labelled])
        block["identity_disjoint"] = bool(identities_known)
    lab_names = set(names)
    if not set(probes.names) <= lab_names:
        labelled = np.zeros(len(face_rows), bool)  # labels of other attributes than the probes' are no use
    y = np.array(
        [[n in set((r.get("extra") or {}).get("attrs", [])) for n in probes.names] for r in face_rows], bool
    ).reshape(len(face_rows), len(probes.names))
    arrays = probes.to_arrays()
    arrays.update(
        face_p=probes.probabilities(x).astype(np.float32),
        labels=(y & labelled[:, None]).astype(np.uint8),
        labelled=labelled,
    )
    files[ATTRIBUTES_FILE] = arrays
    block.update(
        available=True,
        names=probes.names,
        probes=probes.metrics,
        labelled_faces=int(labelled.sum()),
        training_rate_source="labels" if labelled.any() else "probe",
        heldout_fraction=HELDOUT_FRACTION,
        seed=SEED,
    )
    manifest["attributes"] = block
    return files, manifest


# ----------------------------------------------------------------------------- query side


def probes_of(index) -> Probes | None:
    """The index's probes (None for an index without them: built before probes existed, or no labels)."""
    return Probes.from_arrays(index.attributes) if getattr(index, "attributes", None) is not None else None


def describe_faces(probes: Probes | None, found: list, descriptors: np.ndarray) -> list[tuple[dict | None, dict]]:
    """Per ok face (``found`` faces from the pipeline with ``attributes=True``, ``descriptors`` in the same
    order): ({attribute: probability} or None without probes, {geometry name: value})."""
    if not found:
        return []
    lm = np.stack([f.landmarks68 for f in found])
    geo = geometry_matrix(lm, [(f.width, f.height) for f in found])
    probs = None
    if probes is not None:
        probs = probes.probabilities(feature_matrix(descriptors, np.stack([f.attr_crop for f in found]), lm))
    out = []
    for i in range(len(found)):
        g = {n: _num(geo[i, j]) for j, n in enumerate(geometry.NAMES)}
        a = None if probs is None else {n: _num(probs[i, j]) for j, n in enumerate(probes.names)}  # type: ignore[union-attr]
        out.append((a, g))
    return out


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _r(v, digits: int = 6) -> float | None:
    v = float(v)
    return round(v, digits) if np.isfinite(v) else None


def training_side(index, sample: int = GEOMETRY_SAMPLE, seed: int = SEED) -> dict:
    """Everything the omission statistics need from the training side, JSON-ready, the same in-process and
    from ``GET /v1/attributes``: per attribute the training rate (from labels, or the probe's corrected
    rate where the index has no labels) and the probe's held-out measurements; a seeded sample of the
    training geometry."""
    m = index.manifest
    out: dict = {"attributes": {"available": False, "reason": None, "rows": []}, "geometry": {"available": False}}
    block = m.get("attributes")
    if index.attributes is None or not (block or {}).get("available"):
        out["attributes"]["reason"] = (block or {}).get(
            "reason"
        ) or "this index was built before attribute probes existed; rebuild it (labels or --attribute-probes)"
    else:
        z = index.attributes
        probes = Probes.from_arrays(z)
        face_p = np.asarray(z["face_p"], np.float64)
        labels, labelled = np.asarray(z["labels"], bool), np.asarray(z["labelled"], bool)
        src = block.get("training_rate_source", "labels")
        files = [index.face_file(i) for i in range(index.n_faces)]
        groups = identity_groups([index.face_identity(i) for i in range(index.n_faces)], files)
        # the held-out identities the fitted probes were measured on (the same hash split as the build's)
        held = labelled & group_split(groups, HELDOUT_FRACTION, f"heldout-{block.get('seed', SEED)}")
        groups = codes(groups)  # ints from here: the clustering below factorises them once, not per attribute
        rows = []
        for j, (name, met) in enumerate(zip(probes.names, probes.metrics)):
            row: dict = {"name": name, "status": met["status"]}
            probe = {k: met.get(k) for k in ("auc", "tpr", "fpr", "tp", "fp", "n_heldout_pos", "n_heldout_neg")}
            probe["threshold"] = met.get("threshold")
            row["probe"] = probe
            thr = probes.threshold[j]
            calls = face_p[:, j] >= thr if np.isfinite(thr) else np.zeros(len(face_p), bool)
            if block.get("source") == "fitted":
                probe.update(heldout_clusters(calls[held], labels[held, j].astype(bool), groups[held]))
            if src == "labels":
                row.update(n_training=int(labelled.sum()), n_training_pos=int(labels[labelled, j].sum()))
                row["training_rate"] = row["n_training_pos"] / row["n_training"] if row["n_training"] else None
                row.update(training_clusters(labels[labelled, j].astype(bool), groups[labelled]))
                pos = np.flatnonzero(labels[:, j])
            else:
                row.update(n_training=int(len(face_p)), n_training_calls=int(calls.sum()))
                row["training_rate"] = None  # computed from the calls by the statistics (same correction)
                row.update(training_clusters(calls, groups))
                pos = np.flatnonzero(calls)
            order = pos[np.argsort(-np.nan_to_num(face_p[pos, j], nan=-1), kind="stable")][:EXAMPLES]
            row["examples"] = [files[i] for i in order]
            hp = probes.heldout_p.get(name)
            row["heldout_p"] = (
                {"neg": [_r(v) for v in hp[0] if np.isfinite(v)], "pos": [_r(v) for v in hp[1] if np.isfinite(v)]}
                if hp is not None
                else None
            )
            rows.append(row)
        out["attributes"] = {
            "available": True,
            "reason": None,
            "source": block.get("source"),
            "borrowed_from": block.get("borrowed_from") and Path(block["borrowed_from"]).name,
            "training_rate_source": src,
            "heldout_fraction": block.get("heldout_fraction"),
            "rows": rows,
        }
    geo = getattr(index, "geometry", None)
    if geo is None:
        out["geometry"] = {"available": False, "reason": "this index was built before geometry existed; rebuild it"}
    else:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(geo), min(sample, len(geo)), replace=False)) if len(geo) else np.zeros(0, int)
        out["geometry"] = {
            "available": True,
            "names": list(geometry.NAMES),
            "n_training": int(len(geo)),
            "sample_size": int(len(pick)),
            "seed": seed,
            "sample": {n: [_r(v) for v in geo[pick, j]] for j, n in enumerate(geometry.NAMES)},
        }
    return out


def heldout_clusters(calls: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> dict:
    """The probe's held-out faces by identity: each identity's positives, true positives, negatives and
    false positives (``heldout_identity_counts``, :func:`indexer.clusters.cluster_counts`: rows
    ``[pos, tp, neg, fp, identities]``), which the omission statistics resample identity by identity,
    and the design effects of TPR and FPR, their fallback. Why: photos of one person share their label
    and mostly their call, so the held-out faces are worth fewer independent ones."""
    calls, truth = np.asarray(calls, bool), np.asarray(truth, bool)
    return {
        "design_effect_pos": design_effect(calls[truth], groups[truth]),
        "design_effect_neg": design_effect(calls[~truth], groups[~truth]),
        "heldout_identity_counts": cluster_counts([truth, calls & truth, ~truth, calls & ~truth], groups),
    }


def training_clusters(hit: np.ndarray, groups: np.ndarray) -> dict:
    """The training rate's faces by identity (``training_identity_counts``: rows ``[faces, hits,
    identities]``; hits = labelled positives, or the probe's calls without labels) and its design effect,
    the fallback: the training rate is a share of clustered faces too."""
    hit = np.asarray(hit, bool)
    return {
        "design_effect_training": design_effect(hit, groups),
        "training_identity_counts": cluster_counts([np.ones(len(hit), bool), hit], groups),
    }


def compare_feature_sets(
    features: np.ndarray, labels: np.ndarray, names: list[str], groups: np.ndarray, seed: int = SEED
) -> dict[str, list[dict]]:
    """Held-out metrics of probes fitted on each feature set alone and on all of them (same splits), so
    the choice of features is measured, not assumed (``scripts/probe_quality.py --compare-features``)."""
    out = {}
    for sets in [(s,) for s in FEATURE_SETS] + [FEATURE_SETS]:
        cols = feature_columns(sets)
        out["+".join(sets)] = fit_probes(features[:, cols], labels, names, groups, seed).metrics
    return out
