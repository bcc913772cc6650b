"""The pixel channel: the face crop compared in L1, as in the Progressive GAN nearest-neighbour figure.

The crop is the same aligned face chip that feeds the descriptor (dlib's 5-landmark similarity
transform, 150×150 at padding 0.25: the face plus a thin margin, background dropped), reduced to
``PIXEL_SIZE``×``PIXEL_SIZE`` RGB by box (area) averaging and stored as uint8. Deriving it from the
landmarks rather than from the image frame makes it deterministic for any input geometry (89×109
or 178×218 CelebA, 1024² GAN samples, wild photos), and the same function serves index and queries.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PIXEL_SIZE = 64
PIXEL_DIM = PIXEL_SIZE * PIXEL_SIZE * 3


def pixel_vector(chip: np.ndarray, size: int = PIXEL_SIZE) -> np.ndarray:
    """(150,150,3) uint8 chip → flat (size·size·3,) uint8 vector, row-major HWC."""
    small = Image.fromarray(chip).resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.uint8).reshape(-1)


def normalised_l1(dist: float | np.ndarray, dim: int = PIXEL_DIM) -> float | np.ndarray:
    """Sum of |a−b| over uint8 values → mean absolute difference per value, in 0–1."""
    return np.asarray(dist, dtype=np.float64) / (dim * 255.0)
