"""Synthetic descriptor worlds with known truth, for validating the audit's statistics.

A world is a population of identities in a 128-d descriptor space (identity centres on a 16-d
subspace, so that distance tails are heavier than an isotropic Gaussian's) and photos of them
(centre + isotropic noise). A "training set" is photos of some identities; "strangers" are photos of
others. Generators draw from it with a known structure:

* :func:`modal_sampler`: K distinct faces (each one photo of a new identity) with probabilities p;
  every sample is one of them plus a tiny jitter. Two samples of one face always collide and two
  faces of different people collide at the world's own per-pair false-match rate, so the effective
  support is exactly 1/Σp² (:func:`effective_support`).
* :func:`copying_sampler`: new people, except that a share ``rate`` of the samples are training photos
  plus a small "re-rendering" noise.

The tests and ``scripts/sim_support.py`` run the audit's real functions (pair calibration, close
pairs, the support estimator, the copy tests) on these worlds and count how often the intervals cover
the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIM, LATENT = 128, 16
CENTRE_SCALE, PHOTO_NOISE = 0.14, 0.035  # per-coordinate scales: different-person pairs ~0.96, same-person ~0.56
JITTER = 0.002  # per coordinate: a repeated face moves by ~0.02, far below any threshold
COPY_NOISE = 0.01  # per coordinate: a copied training photo moves by ~0.11


@dataclass
class World:
    """A descriptor world: the projection that makes identity centres, and a training set."""

    basis: np.ndarray  # (DIM, LATENT)
    train: np.ndarray  # (N, DIM) float32 training photos
    train_ids: np.ndarray  # (N,) int64 identity of each training photo
    seed: int

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.normal(size=(n, LATENT)) @ self.basis.T) * CENTRE_SCALE

    def photos(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (centres + rng.normal(scale=PHOTO_NOISE, size=centres.shape)).astype(np.float32)

    def strangers(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """One photo each of ``n`` people who are not in the training set."""
        return self.photos(self.centres(n, rng), rng)


def make_world(identities: int = 2000, photos_per_identity: int = 2, seed: int = 0) -> World:
    """A world with a training set of ``identities`` × ``photos_per_identity`` photos."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(DIM, LATENT))
    basis /= np.linalg.norm(basis, axis=0)
    w = World(basis, np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), seed)
    c = np.repeat(w.centres(identities, rng), photos_per_identity, axis=0)
    w.train = w.photos(c, rng)
    w.train_ids = np.repeat(np.arange(identities, dtype=np.int64), photos_per_identity)
    return w


def mode_probabilities(kind: str, k: int, zipf_a: float = 1.0, mode_mass: float = 0.03) -> np.ndarray:
    """``uniform`` over k faces, ``zipf`` (p ∝ 1/rank^a), or ``mode``: one face with ``mode_mass``, the
    other k − 1 uniform."""
    if kind == "uniform":
        p = np.full(k, 1.0 / k)
    elif kind == "zipf":
        p = 1.0 / np.arange(1, k + 1) ** zipf_a
    elif kind == "mode":
        p = np.full(k, (1.0 - mode_mass) / (k - 1))
        p[0] = mode_mass
    else:
        raise ValueError(f"unknown generator kind {kind!r}")
    return p / p.sum()


def effective_support(p: np.ndarray) -> float:
    """The truth the support estimator targets: 1/Σp²."""
    return float(1.0 / np.sum(np.asarray(p) ** 2))


def modal_sampler(world: World, p: np.ndarray, seed: int):
    """A sampler over len(p) fixed faces (new people) with probabilities p: ``sample(n, rng)``."""
    faces = world.strangers(len(p), np.random.default_rng([seed, 1]))

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        pick = rng.choice(len(p), n, p=p)
        return (faces[pick] + rng.normal(scale=JITTER, size=(n, DIM))).astype(np.float32)

    return sample


def copying_sampler(world: World, rate: float):
    """New people, except a share ``rate`` of training photos plus COPY_NOISE: ``sample(n, rng)`` →
    (descriptors, is_copy)."""

    def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        out = world.strangers(n, rng)
        copy = rng.random(n) < rate
        src = rng.integers(0, len(world.train), int(copy.sum()))
        out[copy] = world.train[src] + rng.normal(scale=COPY_NOISE, size=(int(copy.sum()), DIM))
        return out.astype(np.float32), copy

    return sample


# ----------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Scenario:
    """A modal generator and an audit design: ``batches`` = faces per batch (the main sample first,
    then any trial batches), all pooled by the estimator."""

    name: str
    kind: str
    k: int
    batches: tuple[int, ...]
    zipf_a: float = 1.0
    mode_mass: float = 0.03


SCENARIOS = (
    Scenario("uniform 2,000, n = 1,000", "uniform", 2000, (1000,)),
    Scenario("uniform 20,000, n = 1,000", "uniform", 20000, (1000,)),
    Scenario("Zipf a=1 over 20,000, n = 1,000", "zipf", 20000, (1000,)),
    Scenario("Zipf a=0.7 over 3,000, n = 1,000", "zipf", 3000, (1000,), zipf_a=0.7),
    Scenario("one 3% mode + 5,000, n = 1,000", "mode", 5000, (1000,)),
    Scenario("one 1% mode + 20,000, n = 1,000", "mode", 20000, (1000,), mode_mass=0.01),
    Scenario("one 3% mode + 5,000, s = 128", "mode", 5000, (128,)),
    Scenario("Zipf a=1 over 20,000, s = 128", "zipf", 20000, (128,)),
    Scenario("one 3% mode + 5,000, 1,000 + 20×(16..128)", "mode", 5000, (1000,) + (16, 32, 64, 128) * 20),
)


def world_thresholds(world: World, pair_false_match_rate: float | None = None, pair_sample: int = 5000):
    """The audit's thresholds for a world, from the index calibration functions themselves; returns
    (calibration arrays, :class:`service.stats.thresholds.Thresholds`)."""
    from indexer.calibrate import semantic_calibration

    from ..stats import thresholds

    cal = semantic_calibration(world.train, world.train_ids, pair_sample=pair_sample)
    rate = thresholds.DEFAULT_PAIR_FALSE_MATCH_RATE if pair_false_match_rate is None else pair_false_match_rate
    return cal, thresholds.calibrate(cal, pair_false_match_rate=rate)


def support_run(world: World, th, sc: Scenario, seed: int, n_boot: int = 1000) -> dict:
    """One simulated audit of ``sc``: the estimate, its interval, and whether it covers 1/Σp²."""
    from ..stats import collisions, support

    p = mode_probabilities(sc.kind, sc.k, sc.zipf_a, sc.mode_mass)
    truth = effective_support(p)
    sample = modal_sampler(world, p, seed)
    rng = np.random.default_rng([seed, 2])
    pt = th.collision_semantic
    batches = []
    for n in sc.batches:
        pairs = collisions.close_pairs(sample(n, rng), pt.threshold, "euclidean")
        batches.append(support.Batch(n, tuple((i, j) for i, j, _ in pairs)))
    est = support.estimate(batches, pt.per_pair_false_match_rate, n_boot=n_boot, seed=seed)
    if est["interval"] is not None:
        covered = est["interval"][0] <= truth <= est["interval"][1]
    else:
        covered = est["lower_bound"] is None or est["lower_bound"] <= truth
    return {
        "truth": truth,
        "estimate": est["estimate"],
        "interval": est["interval"],
        "lower_bound": est["lower_bound"],
        "covered": bool(covered),
        "pairs": est["colliding_pairs"],
    }


def nearest_training(world: World, x: np.ndarray) -> np.ndarray:
    """Each row's exact distance to its nearest training photo (FAISS candidates, float64 distance)."""
    import faiss

    index = faiss.IndexFlatL2(DIM)
    index.add(np.ascontiguousarray(world.train, np.float32))
    x = np.ascontiguousarray(x, np.float32)
    _, ids = index.search(x, 4)
    d = np.linalg.norm(world.train[ids].astype(np.float64) - x[:, None, :].astype(np.float64), axis=2)
    return d.min(axis=1)


def copy_run(rate: float, n: int, seed: int, spread: float = 0.0, identities: int = 2000, with_ct: bool = True) -> dict:
    """One simulated audit, in a fresh world (training set) per seed, of a generator of new people
    that copies a share ``rate`` of its faces (``spread`` > 0: instead, every face is a training photo
    moved by ``spread`` per coordinate — the copying C_T is built to catch). Returns the p-values of
    the copy and same-person tests and C_T.

    Why a fresh training set each time: the null (training faces' nearest other-identity distances)
    is measured on one training set, and the tests' p-values account for that measurement; their
    error rates hold over training sets and generated samples both, not for one fixed training set."""
    from ..stats import ct, memorization

    world = make_world(identities, 2, seed=1000 + seed)
    cal, th = world_thresholds(world, pair_sample=200)  # the copy tests need no collision threshold
    rng = np.random.default_rng([seed, 3])
    if spread > 0:
        src = rng.integers(0, len(world.train), n)
        x = (world.train[src] + rng.normal(scale=spread, size=(n, DIM))).astype(np.float32)
    else:
        x, _ = copying_sampler(world, rate)(n, rng)
    top1 = nearest_training(world, x)
    names = [f"g{i}" for i in range(n)]
    mem = memorization.memorization(names, top1, None, None, None, th, 1, calibration=cal)
    out = {
        "p_copies": mem["likely_copies"]["semantic"]["baseline"]["p_value"],
        "p_same_person": mem["same_person"]["baseline"]["p_value"],
        "ct": None,
        "p_ct": None,
    }
    if not with_ct:
        return out
    k = ct.cell_count(n)
    centroids = ct.kmeans_cells(world.train, k, seed)
    held = np.asarray(cal["sem_diff_id"], np.float64)
    ok = np.isfinite(held)
    c = ct.ct_test(top1, ct.assign(x, centroids), held[ok], ct.assign(world.train[ok], centroids), k)
    return out | {"ct": c["statistic"], "p_ct": c["p_value_copying"]}
