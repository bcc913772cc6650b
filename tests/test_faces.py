"""The face pipeline's two shortcuts give exactly the plain pipeline's faces, on real photos:
the landmark refinement that skips passes it can predict (``faces.refined_landmarks``), and the
stage-by-stage pipeline over many images (``faces.find_faces``, ``faces.process_many``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CELEBA10K, WILD

from indexer import faces

ALIGNED = sorted((CELEBA10K / "img_align_celeba").glob("*.jpg"))[:240]
PHOTOS = sorted(WILD.glob("*.jpg"))[:16]


def plain_refinement(img: np.ndarray, box) -> tuple[list, tuple, np.ndarray]:
    """Every refinement pass run (the definition): the landmark sets of all passes, the final box
    and the mean of the last two sets."""
    seq = [faces.landmarks(img, box)]
    for _ in range(faces.REFINE_PASSES):
        box = faces.box_from_landmarks(seq[-1])
        seq.append(faces.landmarks(img, box))
    return seq, tuple(int(round(v)) for v in box), (seq[-2] + seq[-1]) / 2


def one_by_one(data: bytes) -> faces.Face:
    """The face of one upload image by image: decode (bad bytes: ``unreadable``), then :func:`find_face`."""
    try:
        img = faces.decode(data)
    except faces.Unreadable as e:
        return faces.Face("unreadable", str(e))
    return faces.find_face(img, "aligned", attributes=True)


def key(f: faces.Face | Exception) -> tuple:
    """Everything a face carries, arrays by dtype and bytes."""
    if isinstance(f, Exception):
        return ("exception", type(f).__name__, str(f))
    arrays = (f.landmarks, f.chip, f.landmarks68, f.attr_crop)
    plain = (f.status, f.reason, f.width, f.height, f.faces_found, f.box, f.source_px)
    return (*plain, *(None if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in arrays))


@pytest.fixture(scope="module")
def starts() -> list[tuple[np.ndarray, tuple]]:
    """(grey image, start box): celeba10k crops from aligned mode's box, wild photos from HOG's."""
    out = []
    for p in ALIGNED:
        img = faces.read_file(p)
        out.append((faces.intensity(img), faces.aligned_start_box(img)))
    for p in PHOTOS:
        img = faces.read_file(p)
        boxes = faces.detect(img, "hog")
        if boxes:
            out.append((faces.intensity(img), boxes[0]))
    return out


def test_refinement_skips_only_passes_that_repeat_and_returns_the_plain_result(starts, monkeypatch) -> None:
    plain = [plain_refinement(g, b) for g, b in starts]
    # The photos hold every case the skip handles: a fixed point (a set equals the one before)
    # and a 2-cycle (a set equals the one two passes back), each before the last pass.
    fixed = sum(any(np.array_equal(s[k], s[k - 1]) for k in range(1, len(s) - 1)) for s, _, _ in plain)
    cycle = sum(
        any(np.array_equal(s[k], s[k - 2]) and not np.array_equal(s[k], s[k - 1]) for k in range(2, len(s) - 1))
        for s, _, _ in plain
    )
    assert fixed >= 20 and cycle >= 5, (fixed, cycle)

    calls = []
    real = faces.landmarks
    monkeypatch.setattr(faces, "landmarks", lambda img, box: calls.append(1) or real(img, box))
    for (g, b), (_, box, pts) in zip(starts, plain):
        got_box, got_pts = faces.refined_landmarks(g, b)
        assert got_box == box
        assert got_pts.dtype == pts.dtype and np.array_equal(got_pts, pts)
    # and it did skip: at most ~80% of the plain passes ran (celeba10k: ~70%)
    assert len(calls) <= 0.8 * len(starts) * (faces.REFINE_PASSES + 1), len(calls)


def test_intensity_is_dlibs_grey_level() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    rgb[0, :3] = [[255, 255, 255], [0, 0, 0], [255, 255, 254]]
    want = (rgb.astype(np.int64).sum(axis=2) // 3).astype(np.uint8)
    assert np.array_equal(faces.intensity(rgb), want)


@pytest.mark.parametrize("detector", ["aligned", "hog"])
def test_stage_by_stage_faces_equal_image_by_image(detector: str) -> None:
    paths = ALIGNED[:24] + PHOTOS[:6]
    imgs = [faces.read_file(p) for p in paths]
    imgs.append(np.full((120, 100, 3), 128, np.uint8))  # no face for HOG
    alone = [faces.find_face(img, detector, attributes=True) for img in imgs]
    together = faces.find_faces(imgs, detector, attributes=True)
    assert [key(f) for f in together] == [key(f) for f in alone]
    assert {f.status for f in together} == ({"ok"} if detector == "aligned" else {"ok", "no_face"})
    plain = faces.find_faces(imgs, detector)  # without the extras stage
    assert [key(f) for f in plain] == [key(faces.find_face(img, detector)) for img in imgs]


def test_a_stage_that_raises_costs_only_its_image(monkeypatch) -> None:
    imgs = [faces.read_file(p) for p in ALIGNED[:6]]
    alone = [faces.find_face(img, "aligned", attributes=True) for img in imgs]
    real, calls = faces.landmarks68, []

    def third_fails(img, box):
        calls.append(box)
        if len(calls) == 3:
            raise RuntimeError("injected fault in the 68-point stage")
        return real(img, box)

    monkeypatch.setattr(faces, "landmarks68", third_fails)
    got = faces.find_faces(imgs, "aligned", attributes=True)
    assert isinstance(got[2], RuntimeError) and got[2].__traceback__ is not None
    assert [key(f) for i, f in enumerate(got) if i != 2] == [key(f) for i, f in enumerate(alone) if i != 2]
    calls.clear()
    with pytest.raises(RuntimeError, match="injected"):  # find_face, one image, raises as before
        for img in imgs:
            faces.find_face(img, "aligned", attributes=True)


def test_process_many_bounds_the_pixels_it_holds_and_reports_each_bad_source(monkeypatch) -> None:
    datas = [p.read_bytes() for p in ALIGNED[:10]]
    datas[3] = b"not an image"
    datas[6] = datas[6][: len(datas[6]) // 3]  # truncated JPEG
    one = faces.decode(datas[0]).nbytes
    monkeypatch.setattr(faces, "PROCESS_GROUP_BYTES", 3 * one)
    groups, real = [], faces.find_faces

    def recorded(imgs, detector, attributes=False):
        groups.append(sum(i.nbytes for i in imgs))
        return real(imgs, detector, attributes)

    monkeypatch.setattr(faces, "find_faces", recorded)

    def load(data: bytes) -> np.ndarray:
        if data is datas[8]:
            raise OSError("injected read error")
        return faces.decode(data)

    got, t_decode, t_face = faces.process_many(datas, load, "aligned", attributes=True)
    assert len(got) == len(datas) and t_decode > 0 and t_face > 0
    assert isinstance(got[8], OSError)
    for i in (3, 6):
        want = one_by_one(datas[i])
        assert want.status == "unreadable" and key(got[i]) == key(want)
    for i in (0, 1, 2, 4, 5, 7, 9):
        assert key(got[i]) == key(one_by_one(datas[i]))
    assert len(groups) >= 2 and max(groups) <= 3 * one, groups  # a group closes once it holds the budget
