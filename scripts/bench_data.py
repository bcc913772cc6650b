"""Real-face benchmark data for the L1 index: 64x64 CelebA crops and a documented expansion to CelebA size.

Why real images: the exact L1 index prunes with block-sum lower bounds, and how well that works depends
on real image statistics (smooth regions, lighting), so random noise would give meaningless numbers.

The shared data has 10,000 aligned CelebA images (half size, 89x109). CelebA has 202,599; to benchmark at
that size each real crop is expanded with mild augmentations (see `expand_real_crops`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

CELEBA_N = 202_599
CROP_SIZE = 64
# Centre crop for the half-size (89x109) aligned CelebA images: a 71x71 box around the face.
HALF_SIZE_BOX = (9, 22, 80, 93)


def default_data_root() -> Path:
    """Shared data folder, overridable with $FACEMEM_DATA (tests and benchmarks must not hard-code it)."""
    repo = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("FACEMEM_DATA", repo.parent / "shared" / "data"))


def center_crop_64(img: Image.Image) -> np.ndarray:
    """Deterministic face crop -> uint8 (64, 64, 3). Scales the half-size box for full-size (178x218) images."""
    img = img.convert("RGB")
    sx, sy = img.width / 89.0, img.height / 109.0
    x0, y0, x1, y1 = HALF_SIZE_BOX
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    return np.asarray(img.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR), dtype=np.uint8)


def load_celeba_crops(root: Path | str | None = None, limit: int | None = None) -> np.ndarray:
    """Load aligned CelebA images (sorted by file name) as flattened HWC uint8 crops, shape (n, 12288)."""
    root = Path(root) if root is not None else default_data_root()
    img_dir = root / "celeba10k" / "img_align_celeba"
    if not img_dir.is_dir():
        img_dir = root / "img_align_celeba"
    files = sorted(img_dir.glob("*.jpg"))
    if limit is not None:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no CelebA images under {img_dir}")
    out = np.empty((len(files), CROP_SIZE * CROP_SIZE * 3), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            out[i] = center_crop_64(im).reshape(-1)
    log.info("loaded %d crops from %s", len(files), img_dir)
    return out


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


def celeba_size_benchmark_set(
    n: int = CELEBA_N, n_heldout: int = 500, n_near_dup: int = 500, seed: int = 0, root: Path | str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index vectors (n, D), held-out real queries, near-duplicate queries).

    The last `n_heldout` real crops are held out as queries (faces not in the index); the rest are expanded
    to n rows. Near-duplicate queries are fresh augmentations (different seed) of indexed real crops.
    """
    crops = load_celeba_crops(root)
    base, heldout = crops[:-n_heldout], crops[-n_heldout:]
    vectors = expand_real_crops(base, n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    pick = rng.choice(base.shape[0], size=n_near_dup, replace=False)
    near_dup = augment(base[pick], rng)
    return vectors, heldout, near_dup
