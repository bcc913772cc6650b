"""Landmark geometry, batched over every face of a build: the same numbers as the formulas one face at a
time (the reference below is the per-face code the batched one replaced), degenerate sets included."""

from __future__ import annotations

import numpy as np

from indexer import attributes, geometry


def _reference(pts: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(geometry values, normalised landmarks) of one face, written out one face at a time."""
    p = np.asarray(pts, np.float64)
    left, right = p[36:42].mean(axis=0), p[42:48].mean(axis=0)
    d = right - left
    roll = float(np.arctan2(d[1], d[0]))
    iod = float(np.hypot(*d))
    c, s = np.cos(-roll), np.sin(-roll)
    q = (p - (left + right) / 2) @ np.array([[c, s], [-s, c]])
    out = np.full(len(geometry.NAMES), np.nan)
    a, b = q[30, 0] - q[0, 0], q[16, 0] - q[30, 0]
    if a + b > 0:
        out[0] = (a - b) / (a + b)
    if q[8, 1] > 0:
        out[1] = q[30, 1] / q[8, 1]
    out[2] = np.degrees(roll)
    if iod > 0:
        out[3] = float(np.mean([np.hypot(*(p[i] - p[j])) for i, j in ((61, 67), (62, 66), (63, 65))])) / iod
    w, h = max(int(width), 1), max(int(height), 1)
    span = p.max(axis=0) - p.min(axis=0)
    out[4] = float(np.sqrt(max(span[0], 0) * max(span[1], 0)) / np.sqrt(w * h))
    centre = p.mean(axis=0)
    out[5], out[6] = centre[0] / w, centre[1] / h
    return out, (q / (iod if iod > 0 else 1.0)).astype(np.float32).reshape(-1)


def test_batched_geometry_equals_the_per_face_formulas() -> None:
    rng = np.random.default_rng(0)
    shape = rng.uniform(40, 140, (68, 2))
    sets = [shape + rng.normal(0, 3, shape.shape) for _ in range(300)]
    sets += [np.zeros((68, 2)), np.full((68, 2), 7.0), -shape, shape * 1e-7, shape[::-1].copy()]
    pts = np.stack(sets).astype(np.float32)
    sizes = [[178, 218]] * 300 + [[1, 1], [0, 0], [640, 480], [3, 5], [178, 218]]
    want = [_reference(p, w, h) for p, (w, h) in zip(pts, sizes)]
    got_geo = attributes.geometry_matrix(pts, sizes)
    np.testing.assert_array_equal(got_geo, np.stack([g for g, _ in want]).astype(np.float32))
    assert np.isnan(got_geo[300, [0, 1, 3]]).all()  # a degenerate set: NaN, not a number
    lm = geometry.normalised_many(pts)
    np.testing.assert_array_equal(lm, np.stack([n for _, n in want]))
    np.testing.assert_array_equal(geometry.geometry(pts[7], 178, 218), want[7][0])
    assert attributes.geometry_matrix(pts[:0], []).shape == (0, len(geometry.NAMES))
    assert geometry.normalised_many(pts[:0]).shape == (0, 2 * geometry.N_POINTS)
