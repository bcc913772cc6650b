"""The cheaper descriptor (issue 23): bf16 arithmetic, its fidelity to fp32, and how an index and its
queries agree on it; plus the two exact speed-ups of the face pipeline (grey landmarks, numpy ranks).

The full fidelity figures (LFW-protocol accuracy, calibrated thresholds, 10,000 faces) are
``scripts/bench_descriptor.py``'s (BENCHMARKS.md, "Descriptor precision"); here the same measures
run on a few hundred real faces, with limits loose enough to hold on any CPU and tight enough that
a broken cast (bf16 input means, a bf16 output) or a wrong default fails.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import CELEBA10K, DATA, REPO

from indexer import faces, fidelity
from indexer.devices import native_bf16, resolve_precision

N_FACES = 240


@pytest.fixture(scope="module")
def celeba_faces() -> tuple[np.ndarray, np.ndarray]:
    """Chips and identity codes of the first N_FACES celeba10k images (aligned mode)."""
    from indexer.datasets import read_dataset

    items = read_dataset("celeba", CELEBA10K, "all", N_FACES, False)
    found = [(faces.process_file(it.path, "aligned"), it.identity) for it in items]
    chips = np.stack([f.chip for f, _ in found if f.ok])
    return chips, np.array([int(i) for f, i in found if f.ok])


def test_resolve_precision() -> None:
    assert resolve_precision("fp32") == "fp32" and resolve_precision("BF16") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp32"  # bf16 is untested on a GPU: never chosen there
    assert resolve_precision("auto", "cpu", embedder="dlib") == "fp32"
    with pytest.raises(ValueError, match="fp32 descriptors only"):
        resolve_precision("bf16", "cpu", embedder="dlib")
    with pytest.raises(ValueError, match="must be auto, fp32 or bf16"):
        resolve_precision("int8")
    with pytest.raises(ValueError, match="fp32 descriptors only"):
        faces.make_embedder("dlib", "cpu", "bf16")


def test_cpuinfo_probe_agrees_with_torch() -> None:
    """The build decides ``auto`` from /proc/cpuinfo (no torch import); oneDNN's own probe must agree."""
    import torch

    assert native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_bf16_descriptors_stay_close_to_fp32(celeba_faces) -> None:
    """bf16 moves descriptors by ~1e-3 (measured max 4.4e-3 over 10,000 faces): far below the ~0.37
    identity threshold, but not zero (so the bf16 path really ran)."""
    from indexer.resnet import TorchEmbedder

    chips, idents = celeba_faces
    ref = faces.describe(TorchEmbedder(precision="fp32"), chips, True)
    alt = faces.describe(TorchEmbedder(precision="bf16"), chips, True)
    pairs = fidelity.verification_pairs(idents, 200)
    err = fidelity.descriptor_errors(ref, alt, pairs)
    assert 1e-5 < err["max_descriptor_error"] < 0.01, err
    assert err["max_distance_change"] < 0.012, err
    assert abs(err["mean_distance_change"]) < 0.002, err
    # bf16 input means would shift every descriptor the same way; a bf16 output would round to ~1e-2.
    assert np.abs(alt.mean(0) - ref.mean(0)).max() < 2e-3
    # Same-person verification is as good within a pair or two.
    ds_ref, dd_ref = fidelity.pair_distances(ref, pairs.same), fidelity.pair_distances(ref, pairs.diff)
    ds_alt, dd_alt = fidelity.pair_distances(alt, pairs.same), fidelity.pair_distances(alt, pairs.diff)
    t = 0.5
    flipped = int(((ds_ref < t) != (ds_alt < t)).sum() + ((dd_ref < t) != (dd_alt < t)).sum())
    assert flipped <= 2, flipped


def test_verification_protocol_is_balanced_and_fixed() -> None:
    idents = np.r_[np.repeat(np.arange(40), 4), np.arange(40, 80), [-1, -1]]  # 4 photos, 1 photo, unknown
    pairs = fidelity.verification_pairs(idents, 50, seed=3)
    assert len(pairs.same) == 50 and (idents[pairs.same] >= 0).all() and (idents[pairs.diff] >= 0).all()
    assert len(pairs.same) == len(pairs.diff) > 0
    assert (idents[pairs.same[:, 0]] == idents[pairs.same[:, 1]]).all()
    assert (idents[pairs.diff[:, 0]] != idents[pairs.diff[:, 1]]).all()
    again = fidelity.verification_pairs(idents, 50, seed=3)
    assert np.array_equal(pairs.same, again.same) and np.array_equal(pairs.diff, again.diff)
    # A perfect descriptor (the identity itself) scores 100%; noise scores about half.
    onehot = np.eye(idents.max() + 1)[idents] * 10
    assert fidelity.verification_accuracy(onehot, pairs)[0] == 1.0
    noise = np.random.default_rng(0).normal(size=(len(idents), 8))
    assert fidelity.verification_accuracy(noise, pairs)[0] < 0.75
    with pytest.raises(ValueError, match="at least 10 pairs"):
        fidelity.verification_accuracy(onehot, fidelity.Pairs(pairs.same[:5], pairs.diff[:5]))


def test_index_records_its_precision_and_queries_follow(small_index, small_plain_index_dir) -> None:
    from indexer.store import load_index
    from service.search import Searcher

    assert small_index.descriptor_precision == resolve_precision("auto", "cpu")
    assert small_index.manifest["pipeline"]["descriptor_precision"] == small_index.descriptor_precision
    plain = load_index(small_plain_index_dir)
    assert plain.descriptor_precision == "fp32"
    assert Searcher(small_index, device="cpu").embedder.precision == small_index.descriptor_precision
    assert Searcher(plain, device="cpu").embedder.precision == "fp32"


def test_dlib_embedder_with_bf16_is_a_usage_error(tmp_path) -> None:
    out = tmp_path / "idx"
    r = subprocess.run(
        [sys.executable, "-m", "indexer", "build", "--dataset", "celeba", "--root", str(CELEBA10K), "--out", str(out)]
        + ["--limit", "5", "--embedder", "dlib", "--descriptor-precision", "bf16", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "fp32 descriptors only" in r.stderr
    assert not out.exists() and not out.with_name("idx.partial").exists()


@pytest.mark.parametrize("folder", ["celeba10k/img_align_celeba", "celeba_wild"])
def test_grey_landmarks_are_identical(folder: str) -> None:
    """Landmarks from :func:`faces.intensity` equal those from the RGB image (both predictors)."""
    root = DATA / folder
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".jpg")[:15]
    checked = 0
    for name in names:
        img = faces.read_file(root / name)
        boxes = faces.detect(img, "hog")
        if not boxes:
            continue
        grey = faces.intensity(img)
        box, pts = faces.refined_landmarks(img, boxes[0])
        box_g, pts_g = faces.refined_landmarks(grey, boxes[0])
        assert box == box_g and np.array_equal(pts, pts_g), name
        assert np.array_equal(faces.landmarks68(img, box), faces.landmarks68(grey, box)), name
        checked += 1
    assert checked >= 8


def test_numpy_ranks_equal_scipys() -> None:
    from scipy.stats import rankdata as scipy_rankdata

    from indexer.attributes import rankdata

    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.integers(0, 4, (40, 5)) * rng.choice([1.0, 0.25])  # many ties
        assert np.array_equal(rankdata(a, axis=0), scipy_rankdata(a, axis=0))
    b = rng.normal(size=31)
    assert np.array_equal(rankdata(b), scipy_rankdata(b))
    nan = np.array([[1.0, np.nan], [2.0, 3.0]])
    np.testing.assert_array_equal(rankdata(nan, axis=0), scipy_rankdata(nan, axis=0))
