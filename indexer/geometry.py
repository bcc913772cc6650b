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


def _frame(pts: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Points de-rolled about the eye midpoint, the roll angle (radians) and the eye distance."""
    p = np.asarray(pts, np.float64)
    left, right = p[36:42].mean(axis=0), p[42:48].mean(axis=0)  # image-left eye, image-right eye
    d = right - left
    roll = float(np.arctan2(d[1], d[0]))
    iod = float(np.hypot(*d))
    c, s = np.cos(-roll), np.sin(-roll)
    mid = (left + right) / 2
    q = (p - mid) @ np.array([[c, s], [-s, c]])
    return q, roll, iod


def geometry(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    """The :data:`NAMES` values of one face, float64 (NaN where a landmark set is degenerate)."""
    p = np.asarray(pts, np.float64)
    q, roll, iod = _frame(p)
    out = np.full(len(NAMES), np.nan)
    a, b = q[30, 0] - q[0, 0], q[16, 0] - q[30, 0]
    if a + b > 0:
        out[0] = (a - b) / (a + b)
    chin = q[8, 1]
    if chin > 0:
        out[1] = q[30, 1] / chin
    out[2] = np.degrees(roll)
    if iod > 0:
        gaps = [np.hypot(*(p[i] - p[j])) for i, j in ((61, 67), (62, 66), (63, 65))]
        out[3] = float(np.mean(gaps)) / iod
    w, h = max(int(width), 1), max(int(height), 1)
    span = p.max(axis=0) - p.min(axis=0)
    out[4] = float(np.sqrt(max(span[0], 0) * max(span[1], 0)) / np.sqrt(w * h))
    c = p.mean(axis=0)
    out[5], out[6] = c[0] / w, c[1] / h
    return out


def normalised(pts: np.ndarray) -> np.ndarray:
    """(136,) float32: the landmarks de-rolled, centred on the eye midpoint and scaled by the eye distance
    (the shape of the face, independent of where it is in the frame); a probe feature."""
    q, _, iod = _frame(pts)
    return (q / (iod if iod > 0 else 1.0)).astype(np.float32).reshape(-1)
