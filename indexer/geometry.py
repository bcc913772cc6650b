"""Pose, expression and framing from dlib's 68-point landmarks: label-free statistics of every face.

Why: a generator can drop poses (profiles, tilted heads), expressions (open mouths) or framings (small or
off-centre faces) without dropping any labelled attribute. These numbers need no labels, so they exist for
every indexed face and every generated face, and the audit compares their distributions.

The values are *proxies* computed from 2-D landmarks, not angles from a 3-D head model:

* ``yaw``: where the nose tip (point 30) sits between the two sides of the jaw (points 0 and 16), after
  de-rolling: (left gap − right gap) / (sum), in [−1, 1]; 0 is frontal, positive = nose nearer the image's
  right edge.
* ``pitch``: the nose tip's height between the eye line and the chin (point 8), as a fraction of that
  distance (≈ 0.4–0.5 for a level head; it shrinks as the head tilts back).
* ``roll``: the angle of the line between the eye centres, degrees (positive = clockwise in the image).
* ``mouth_open``: the mean gap between the inner lips (points 61–67, 62–66, 63–65) over the distance
  between the eye centres.
* ``face_size``: the square root of the landmarks' bounding-box area over the square root of the image
  area (how much of the frame the face fills).
* ``face_x``, ``face_y``: the landmark centroid as a fraction of the image width and height.

The landmarks themselves come from :func:`indexer.faces.landmarks68`; this module is arithmetic on them.
"""

from __future__ import annotations

import numpy as np

NAMES = ("yaw", "pitch", "roll", "mouth_open", "face_size", "face_x", "face_y")
LABELS = {
    "yaw": "yaw proxy (nose between jaw sides, −1…1)",
    "pitch": "pitch proxy (nose height between eyes and chin)",
    "roll": "roll (eye line angle, degrees)",
    "mouth_open": "mouth opening (inner-lip gap / eye distance)",
    "face_size": "face size (fraction of the frame)",
    "face_x": "face centre x (fraction of width)",
    "face_y": "face centre y (fraction of height)",
}
N_POINTS = 68


def frames(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmark sets (N, 68, 2) de-rolled about their eye midpoints, their roll angles (radians) and eye
    distances. Batched: a build computes these for every face (the same numbers as one at a time)."""
    p = np.asarray(pts, np.float64)
    left, right = p[:, 36:42].mean(axis=1), p[:, 42:48].mean(axis=1)  # image-left eye, image-right eye
    d = right - left
    roll = np.arctan2(d[:, 1], d[:, 0])
    iod = np.hypot(d[:, 0], d[:, 1])
    c, s = np.cos(-roll), np.sin(-roll)
    mid = (left + right) / 2
    rot = np.stack([np.stack([c, s], axis=-1), np.stack([-s, c], axis=-1)], axis=1)  # (N, 2, 2)
    return np.matmul(p - mid[:, None, :], rot), roll, iod


def geometry_many(pts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N, len(NAMES)) float64: the :data:`NAMES` values of N faces (landmarks (N, 68, 2), image sizes
    (N, 2) as width, height); NaN where a landmark set is degenerate."""
    p = np.asarray(pts, np.float64).reshape(-1, N_POINTS, 2)
    q, roll, iod = frames(p)
    out = np.full((len(p), len(NAMES)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = q[:, 30, 0] - q[:, 0, 0], q[:, 16, 0] - q[:, 30, 0]
        out[:, 0] = np.where(a + b > 0, (a - b) / (a + b), np.nan)
        chin = q[:, 8, 1]
        out[:, 1] = np.where(chin > 0, q[:, 30, 1] / chin, np.nan)
        out[:, 2] = np.degrees(roll)
        gaps = np.stack([np.hypot(*(p[:, i] - p[:, j]).T) for i, j in ((61, 67), (62, 66), (63, 65))], axis=1)
        out[:, 3] = np.where(iod > 0, gaps.mean(axis=1) / iod, np.nan)
    wh = np.maximum(np.asarray(sizes, np.int64).reshape(-1, 2), 1)
    span = np.maximum(p.max(axis=1) - p.min(axis=1), 0)
    out[:, 4] = np.sqrt(span[:, 0] * span[:, 1]) / np.sqrt(wh[:, 0] * wh[:, 1])
    c = p.mean(axis=1)
    out[:, 5], out[:, 6] = c[:, 0] / wh[:, 0], c[:, 1] / wh[:, 1]
    return out


def geometry(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    """The :data:`NAMES` values of one face, float64 (NaN where a landmark set is degenerate)."""
    return geometry_many(np.asarray(pts)[None], np.array([[int(width), int(height)]]))[0]


def normalised_many(pts: np.ndarray) -> np.ndarray:
    """(N, 136) float32: :func:`normalised` of N landmark sets (N, 68, 2)."""
    q, _, iod = frames(np.asarray(pts).reshape(-1, N_POINTS, 2))
    return (q / np.where(iod > 0, iod, 1.0)[:, None, None]).astype(np.float32).reshape(len(q), 2 * N_POINTS)


def normalised(pts: np.ndarray) -> np.ndarray:
    """(136,) float32: the landmarks de-rolled, centred on the eye midpoint and scaled by the eye distance
    (the shape of the face, independent of where it is in the frame); a probe feature."""
    return normalised_many(np.asarray(pts)[None])[0]
