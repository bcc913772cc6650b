"""A face photo as a generator's training data sees it: the centre square, downscaled.

Why one function: the training runs, the audit's domain reference (``--reference-downscale``) and
the tests must render identically, or a "copy" would differ from its original by the rendering.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def centre_square(im: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``im``, resized to ``size``×``size`` (antialiased bilinear)."""
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)


def to_tanh(images: list[Image.Image]) -> np.ndarray:
    """Images → float32 (N, 3, H, W) in [−1, 1], the range both generator families train in."""
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2) / 127.5 - 1.0)
