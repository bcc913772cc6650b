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
