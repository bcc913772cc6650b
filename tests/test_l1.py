"""Exact L1 index: the fast path must equal brute force exactly (ids, distances, tie order) on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from indexer.augment import augment, expand_real_crops
from indexer.l1 import L1Index, l1_brute_force

N_BASE = 1500  # real crops indexed
N_HELD = 40  # real crops never indexed (queries)
CROP_SIZE = 64
# Centre crop for the half-size (89x109) aligned CelebA images: a 71x71 box around the face.
HALF_SIZE_BOX = (9, 22, 80, 93)


def center_crop_64(img: Image.Image) -> np.ndarray:
    """Deterministic face crop -> uint8 (64, 64, 3). Scales the half-size box for full-size (178x218) images."""
    img = img.convert("RGB")
    sx, sy = img.width / 89.0, img.height / 109.0
    x0, y0, x1, y1 = HALF_SIZE_BOX
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    return np.asarray(img.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR), dtype=np.uint8)


def load_celeba_crops(root: Path | str, limit: int | None = None) -> np.ndarray:
    """Load aligned CelebA images (sorted by file name) as flattened HWC uint8 crops, shape (n, 12288)."""
    root = Path(root)
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
    return out


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    if not (DATA / "celeba10k" / "img_align_celeba").is_dir():
        pytest.skip(f"CelebA test images not found under {DATA} (set FACEMEM_DATA)")
    return load_celeba_crops(DATA, limit=N_BASE + N_HELD)


@pytest.fixture(scope="module")
def data(crops: np.ndarray) -> dict[str, np.ndarray]:
    """Index = real crops + augmented copies + exact duplicates (ties); queries = held-out, near-dup, exact."""
    base, held = crops[:N_BASE], crops[N_BASE:]
    vectors = expand_real_crops(base, N_BASE + 900, seed=0)
    rng = np.random.default_rng(7)
    dup_rows = rng.choice(vectors.shape[0], 60, replace=False)
    vectors = np.concatenate([vectors, vectors[dup_rows]])  # exact duplicates: distance ties
    near = augment(base[rng.choice(N_BASE, 20, replace=False)], rng)
    exact = vectors[dup_rows[:10]]  # queries with two rows at distance 0
    queries = np.concatenate([held, near, exact])
    return {"vectors": vectors, "queries": queries, "dup_rows": dup_rows}


@pytest.fixture(scope="module")
def index(data: dict[str, np.ndarray]) -> L1Index:
    return L1Index(data["vectors"])


def assert_same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].dtype == np.int64 and a[1].dtype == np.int64


@pytest.mark.parametrize("k", [1, 5, 20])
def test_matches_brute_force(index: L1Index, data: dict[str, np.ndarray], k: int) -> None:
    got = index.search(data["queries"], k)
    ref = l1_brute_force(data["vectors"], data["queries"], k)
    assert_same(got, ref)
    assert got[0].shape == (data["queries"].shape[0], k)
    # sorted by (distance, id)
    d, i = got
    assert np.all((np.diff(d, axis=1) > 0) | ((np.diff(d, axis=1) == 0) & (np.diff(i, axis=1) > 0)))


def test_ties_ordered_by_id(index: L1Index, data: dict[str, np.ndarray]) -> None:
    n_orig = data["vectors"].shape[0] - data["dup_rows"].size
    d, i = index.search(data["queries"][-10:], 2)
    assert np.all(d == 0)
    np.testing.assert_array_equal(i[:, 0], data["dup_rows"][:10])  # original id < its duplicate's id
    np.testing.assert_array_equal(i[:, 1], n_orig + np.arange(10))


def test_sampled_seed_path(data: dict[str, np.ndarray]) -> None:
    """Small seed sizes force the strided-sample seeding used at CelebA scale; results must not change."""
    idx = L1Index(data["vectors"], n_threads=1)
    idx.seed_coarse, idx.seed_mid = 8, 4
    q = data["queries"][::3]
    assert_same(idx.search(q, 3), l1_brute_force(data["vectors"], q, 3))


def test_exclude_self(index: L1Index, data: dict[str, np.ndarray]) -> None:
    v = data["vectors"]
    rows = np.concatenate([np.arange(0, 2400, 97), data["dup_rows"][:5]]).astype(np.int64)
    got = index.search(v[rows], 5, exclude_self=rows)
    assert_same(got, l1_brute_force(v, v[rows], 5, exclude_self=rows))
    assert not np.any(got[1] == rows[:, None])
    # a duplicated row's nearest OTHER face is its twin, at distance 0
    assert np.all(got[0][-5:, 0] == 0)
    # -1 means no exclusion
    none = np.full(rows.size, -1, dtype=np.int64)
    got = index.search(v[rows], 3, exclude_self=none)
    assert np.all(got[0][:, 0] == 0)
    assert_same(got, l1_brute_force(v, v[rows], 3))


def test_padding_small_n_and_empty(data: dict[str, np.ndarray]) -> None:
    v = np.ascontiguousarray(data["vectors"][:7])
    q = data["queries"][:4]
    idx = L1Index(v)
    got = idx.search(q, 10)
    assert_same(got, l1_brute_force(v, q, 10))
    assert np.all(got[1][:, 7:] == -1) and np.all(got[0][:, 7:] == -1)
    assert np.all(got[1][:, :7] >= 0)
    ex = np.array([0, 3, 6, -1], dtype=np.int64)
    got = idx.search(q, 10, exclude_self=ex)
    assert_same(got, l1_brute_force(v, q, 10, exclude_self=ex))
    assert np.all((got[1][:3] >= 0).sum(axis=1) == 6)
    # Q = 0
    d, i = idx.search(q[:0], 5)
    assert d.shape == (0, 5) and i.shape == (0, 5) and d.dtype == np.int64
    # N = 1, excluding the only row
    one = L1Index(v[:1])
    d, i = one.search(v[:1], 3, exclude_self=np.array([0]))
    assert np.all(d == -1) and np.all(i == -1)
    d, i = one.search(v[:1], 3)
    np.testing.assert_array_equal(i, [[0, -1, -1]])
    np.testing.assert_array_equal(d, [[0, -1, -1]])


def test_memmap_not_copied(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    path = tmp_path / "v.npy"
    np.save(path, data["vectors"][:800])
    mm = np.load(path, mmap_mode="r")
    idx = L1Index(mm)
    assert np.shares_memory(idx.vectors, mm)
    assert idx.nbytes < 0.25 * mm.nbytes  # bound tables are small next to the 1 byte/dim vectors
    q = data["queries"][:12]
    assert_same(idx.search(q, 4), l1_brute_force(mm, q, 4))


@pytest.mark.parametrize("side", [32, 18])
def test_other_shapes(crops: np.ndarray, side: int) -> None:
    """Smaller images (e.g. a 32x32 generator) and sizes not divisible by the block sizes."""
    from PIL import Image

    def resize(x: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                np.asarray(Image.fromarray(r.reshape(64, 64, 3)).resize((side, side), Image.BILINEAR)).reshape(-1)
                for r in x
            ]
        )

    v = resize(crops[:600])
    v = np.concatenate([v, v[:20]])
    q = resize(crops[-20:])
    idx = L1Index(v, shape=(side, side, 3))
    for k in (1, 7):
        assert_same(idx.search(q, k), l1_brute_force(v, q, k))


def test_brute_force_reference_is_l1(data: dict[str, np.ndarray]) -> None:
    """The reference itself against a direct float64 computation."""
    v = data["vectors"][:300].astype(np.float64)
    q = data["queries"][:5]
    d, i = l1_brute_force(data["vectors"][:300], q, 3)
    full = np.abs(q.astype(np.float64)[:, None, :] - v[None]).sum(-1)
    np.testing.assert_array_equal(d, np.take_along_axis(full, i, axis=1).astype(np.int64))
    np.testing.assert_array_equal(d[:, 0], full.min(axis=1).astype(np.int64))


def test_rejects_bad_input(index: L1Index, data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError):
        L1Index(data["vectors"].astype(np.float32))
    with pytest.raises(ValueError):
        L1Index(data["vectors"], shape=(32, 32, 3))
    with pytest.raises(ValueError):
        index.search(data["queries"][:, :100], 1)
    with pytest.raises(ValueError):
        index.search(data["queries"][:2].astype(np.int64), 1)
    with pytest.raises(ValueError):
        index.search(data["queries"][:2], 1, exclude_self=np.array([1, 2, 3]))


def test_gpu_candidate_path_logic(data: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path (candidates from a flat float32 L1 index, exact re-scoring, CPU redo on ties at the
    cut-off) checked with a CPU faiss index standing in for the GPU one; the real GPU is untested here."""
    import faiss

    base = data["vectors"][:600]
    v = np.concatenate([base, np.repeat(base[5:6], 15, axis=0)])  # 16 rows at distance 0 from row 5
    idx = L1Index(v)
    flat = faiss.IndexFlat(v.shape[1], faiss.METRIC_L1)
    flat.add(v.astype(np.float32))
    idx._gpu_index = flat
    redone: list[int] = []
    cpu = idx._search_cpu
    monkeypatch.setattr(idx, "_search_cpu", lambda q, k, ex: (redone.append(q.shape[0]), cpu(q, k, ex))[1])
    q = np.concatenate([data["queries"][::2], v[[5, 7, 9]]])
    rows = np.full(q.shape[0], -1, dtype=np.int64)
    rows[-3:] = [5, 7, 9]
    for k in (1, 9):
        assert_same(idx.search(q, k, exclude_self=rows), l1_brute_force(v, q, k, exclude_self=rows))
    # only row 5 at k=1 is redone: its 15 tied twins fill all k+9 GPU candidates (at k=9 they fit in 18)
    assert redone == [1]
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        gpu = L1Index(v, use_gpu=True)
        assert_same(gpu.search(q, 9), l1_brute_force(v, q, 9))


def test_query_chunks(index: L1Index, data: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    import indexer.l1 as l1

    monkeypatch.setattr(l1, "_QUERY_CHUNK", 7)
    rows = np.arange(0, 2400, 150).astype(np.int64)
    v = data["vectors"]
    assert_same(index.search(v[rows], 4, exclude_self=rows), l1_brute_force(v, v[rows], 4, exclude_self=rows))


@pytest.mark.parametrize("pair_bytes", [40_000, 400_000])
def test_vectorised_blocks_cut_into_small_gathers(
    index: L1Index, data: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch, pair_bytes: int
) -> None:
    """The cascade runs over blocks of queries, its gathers cut at query boundaries: blocks of 5 and
    gathers of a few rows (one query's pairs above the limit, runs of several queries below it) must
    answer exactly as brute force."""
    import indexer.l1 as l1

    monkeypatch.setattr(l1, "_PAIR_BYTES", pair_bytes)
    monkeypatch.setattr(l1, "_BATCH", 5)
    v = data["vectors"]
    rows = np.concatenate([np.arange(0, 2400, 130), data["dup_rows"][:3]]).astype(np.int64)
    for k in (1, 6):
        want = l1_brute_force(v, v[rows], k, exclude_self=rows)
        assert_same(index.search(v[rows], k, exclude_self=rows), want)
    assert_same(index.search(data["queries"][::4], 3), l1_brute_force(v, data["queries"][::4], 3))
