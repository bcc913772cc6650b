"""Mild augmentations of real 64x64 face crops, and the expansion of a real set to N rows with them.

Shared by the benchmarks (scripts/bench.py, scripts/bench_scale.py: pixel indexes of CelebA size and
beyond) and the tests (tests/test_l1.py: near-duplicates and ties). Why real crops and not noise: the
exact L1 index prunes with block-sum lower bounds, and how well that works depends on real image
statistics (smooth regions, lighting), so random vectors would give meaningless numbers.
"""

from __future__ import annotations

import numpy as np


def augment(crops: np.ndarray, rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 3)) -> np.ndarray:
    """One random mild augmentation per crop (a realistic near-duplicate, not noise).

    Per image: horizontal flip with p=0.5; a shift of 0..3 px in x and y (edge-replicated, each axis
    shifted with p=0.7); brightness gain in [0.85, 1.15]; per-channel colour gain in [0.93, 1.07];
    additive offset in [-10, 10]; rounded and clipped to uint8.
    """
    h, w, c = shape
    n = crops.shape[0]
    imgs = crops.reshape(n, h, w, c)
    out = np.empty_like(imgs)
    flip = rng.random(n) < 0.5
    dx = rng.integers(-3, 4, n) * (rng.random(n) < 0.7)
    dy = rng.integers(-3, 4, n) * (rng.random(n) < 0.7)
    gain = rng.uniform(0.85, 1.15, (n, 1, 1, 1)) * rng.uniform(0.93, 1.07, (n, 1, 1, c))
    offset = rng.uniform(-10.0, 10.0, (n, 1, 1, 1))
    pad = 3
    padded = np.pad(imgs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    for i in range(n):
        y0, x0 = pad + dy[i], pad + dx[i]
        im = padded[i, y0 : y0 + h, x0 : x0 + w]
        out[i] = im[:, ::-1] if flip[i] else im
    f = out.astype(np.float32)
    f *= gain.astype(np.float32)
    f += offset.astype(np.float32)
    np.clip(np.rint(f, out=f), 0, 255, out=f)
    return f.astype(np.uint8).reshape(n, -1)


def expand_real_crops(crops: np.ndarray, n: int, seed: int = 0, chunk: int = 8192) -> np.ndarray:
    """Expand real crops (m, D) to n rows: the first min(m, n) rows are the crops unchanged, row j >= m is an
    augmented copy (see `augment`) of crop j % m. Deterministic for a given seed."""
    out = np.empty((n, crops.shape[1]), dtype=np.uint8)
    start = 0
    for piece in iter_expanded_crops(crops, n, seed, chunk):
        out[start : start + len(piece)] = piece
        start += len(piece)
    return out


def iter_expanded_crops(crops: np.ndarray, n: int, seed: int = 0, chunk: int = 8192):
    """`expand_real_crops` in consecutive pieces of at most `chunk` rows (the same rows), so an index
    larger than memory (2M crops are 24.6 GB) can be written as it is generated."""
    m = crops.shape[0]
    for start in range(0, min(m, n), chunk):
        yield crops[start : min(m, n, start + chunk)]
    rng = np.random.default_rng(seed)
    for start in range(m, n, chunk):
        stop = min(n, start + chunk)
        yield augment(crops[np.arange(start, stop) % m], rng)
