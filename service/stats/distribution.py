"""Distribution distances between generated and training faces in dlib face-descriptor space.

* Fréchet distance: the FID formula ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), applied to 128-d dlib
  descriptors instead of 2048-d Inception-v3 pool features. The numbers are on another scale and
  measure another thing (identity-relevant face geometry, not general image statistics): they are
  **not comparable with published FID values**.
* k-NN precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", k = 3): precision is the share of generated faces that fall inside
  the training manifold (the union of balls reaching each training face's k-th nearest training
  neighbour); recall is the share of training faces inside the generated manifold.

Both are biased by sample size (the Fréchet distance upwards for small N, the k-NN radii shrink as
N grows), so the paper's protocol of equal sample sizes is followed: the training side is a random
subset of the generated size, redrawn ``repeats`` times. The same statistics between two disjoint
training subsets of that size are returned as the baseline a perfect generator would score.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

log = logging.getLogger(__name__)

NOT_COMPARABLE = (
    "Computed on 128-d dlib face descriptors, not Inception-v3 features: these values are "
    "not comparable with published FID / precision / recall numbers. Compare them only with "
    "the training-vs-training baseline at the same sample size, and between generators "
    "audited against the same index."
)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (the FID formula).

    Tr((Σ₁Σ₂)^½) is computed as Σ√λ of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues as
    Σ₁Σ₂), with symmetric eigendecompositions: exact, fast, and stable for the rank-deficient
    covariances of small samples (fewer faces than 128 dimensions), where ``scipy.linalg.sqrtm``
    is slow and needs the reference implementation's diagonal offset.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


_ROWS = 1024  # rows per block of the k-NN distances: 1,024 × 5,000 float64 is 41 MB, not 200 MB a matrix


def _knn_radii(x: np.ndarray, k: int, block: int = _ROWS) -> np.ndarray:
    """Distance from each row to its k-th nearest other row, a block of rows at a time (bounded
    memory; ``cdist`` computes each pair alone, so the radii equal the dense matrix's)."""
    out = np.empty(len(x), np.float64)
    for s in range(0, len(x), block):
        d = cdist(x[s : s + block], x)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        out[s : s + block] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = _ROWS) -> np.ndarray:
    """Whether each point lies inside some ball (centre, radius), a block of points at a time."""
    out = np.empty(len(points), bool)
    for s in range(0, len(points), block):
        out[s : s + block] = (cdist(points[s : s + block], centres) <= radii[None, :]).any(axis=1)
    return out


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 improved precision and recall with k-NN manifolds, in bounded memory
    (no (fake × real) matrix: the same comparisons, a block of rows at a time)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    precision = float(_covered(fake, real, r_real).mean())
    recall = float(_covered(real, fake, r_fake).mean())
    return precision, recall


def _mean_std(v: list[float]) -> dict:
    a = np.asarray(v, np.float64)
    return {"mean": float(np.nanmean(a)), "std": float(np.nanstd(a)), "values": [float(x) for x in a]}


def distribution_distances(
    generated: np.ndarray, train: np.ndarray, k: int = 3, repeats: int = 5, seed: int = 0, max_n: int = 5000
) -> dict:
    """Fréchet distance and k-NN precision/recall of generated vs training descriptors, with the
    training-vs-training baseline at the same sample size. Subsets are seeded."""
    gen = np.asarray(generated, np.float64)
    train = np.asarray(train, np.float64)
    rng = np.random.default_rng(seed)
    n = int(min(len(gen), len(train) // 2, max_n))
    out: dict = {
        "k": k,
        "n_generated": int(len(gen)),
        "n_train": int(len(train)),
        "n_per_side": n,
        "repeats": repeats,
        "seed": seed,
        "note": NOT_COMPARABLE,
    }
    if n <= k:
        out["error"] = f"too few faces for the statistics (need more than {k} per side, have {n})"
        return out
    if len(gen) > n:
        gen = gen[np.sort(rng.choice(len(gen), n, replace=False))]
    fd, prec, rec, fd0, prec0, rec0 = [], [], [], [], [], []
    for _ in range(repeats):
        perm = rng.permutation(len(train))
        real, real2 = train[perm[:n]], train[perm[n : 2 * n]]
        fd.append(frechet_distance(gen, real))
        p, r = knn_precision_recall(real, gen, k)
        prec.append(p)
        rec.append(r)
        fd0.append(frechet_distance(real2, real))
        p, r = knn_precision_recall(real, real2, k)
        prec0.append(p)
        rec0.append(r)
    out["generated"] = {"frechet": _mean_std(fd), "precision": _mean_std(prec), "recall": _mean_std(rec)}
    out["baseline_train_vs_train"] = {
        "frechet": _mean_std(fd0),
        "precision": _mean_std(prec0),
        "recall": _mean_std(rec0),
    }
    # One more number that needs no subsampling: the Fréchet distance to the whole training set.
    out["frechet_vs_full_train"] = frechet_distance(np.asarray(generated, np.float64), train)
    log.info(
        "distribution distances: n=%d FD=%.4f P=%.3f R=%.3f",
        n,
        out["generated"]["frechet"]["mean"],
        out["generated"]["precision"]["mean"],
        out["generated"]["recall"]["mean"],
    )
    return out
