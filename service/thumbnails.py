"""Thumbnails of faces, one recipe for the service's ``GET /images`` and the audit's report, so a
training face looks the same in both (LANCZOS into size×size, JPEG quality 90)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from indexer.store import FaceIndex


def jpeg(arr: np.ndarray, size: int) -> bytes:
    """An RGB image shrunk to fit ``size``×``size`` (aspect kept), as JPEG bytes."""
    from PIL import Image

    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_path(index: FaceIndex, file: str) -> Path:
    """Where an indexed row's file lives: ``<root>/img_align_celeba/<file>`` for CelebA, ``<root>/<file>``
    for a folder."""
    root = index.dataset_root
    if index.manifest.get("dataset", {}).get("kind") == "celeba":
        return root / "img_align_celeba" / file
    return root / file
