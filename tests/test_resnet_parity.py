"""Parity of the PyTorch port (indexer.resnet) with dlib's own face descriptor, on real CelebA chips.

Real models and real images only: dlib's HOG detector + 5-point predictor + get_face_chip produce the
chips; each JPEG is decoded once (PIL) and the *same* chip pixels go to both dlib and torch, because
PIL and dlib's libjpeg decode CelebA differently (up to 27 grey levels).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")

from indexer.resnet import (  # noqa: E402
    BLOCKS,
    DlibResNet,
    TorchEmbedder,
    load_dlib_resnet,
    parse_dlib_resnet,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEMEM_DATA", REPO / ".." / "shared" / "data")).resolve()
N_CHIPS = 240
# Half from the ~200 px test crops, half from the 89x109 aligned set (small faces, upsampled chips).
SOURCES = (("celeba_test/*.jpg", N_CHIPS // 2), ("celeba10k/img_align_celeba/*.jpg", N_CHIPS - N_CHIPS // 2))


def _gather_chips() -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    chips: list[np.ndarray] = []
    names: list[str] = []
    for pattern, quota in SOURCES:
        taken = 0
        for f in sorted(DATA.glob(pattern)):
            if taken == quota:
                break
            with Image.open(f) as im:
                img = np.asarray(im.convert("RGB"))  # decoded once; both sides see these pixels
            dets = detector(img, 1)
            if not dets:
                continue
            box = max(dets, key=lambda r: r.area())
            chips.append(dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25))
            names.append(f.name)
            taken += 1
        assert taken == quota, f"only {taken}/{quota} faces found under {DATA / pattern}"
    return np.stack(chips), names


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    if not DATA.is_dir():
        pytest.skip(f"face data not found at {DATA} (set FACEMEM_DATA)")
    t0 = time.perf_counter()
    arr, _ = _gather_chips()
    log.info("gathered %d chips in %.1f s", len(arr), time.perf_counter() - t0)
    assert arr.shape == (N_CHIPS, 150, 150, 3) and arr.dtype == np.uint8
    return arr


@pytest.fixture(scope="module")
def dlib_reference(chips: np.ndarray) -> np.ndarray:
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    t0 = time.perf_counter()
    ref = np.stack([np.asarray(rec.compute_face_descriptor(c)) for c in chips])
    log.info("dlib: %.1f ms/chip", 1000 * (time.perf_counter() - t0) / len(chips))
    return ref


def test_parity_with_dlib_on_real_chips(chips: np.ndarray, dlib_reference: np.ndarray) -> None:
    emb = TorchEmbedder(device="cpu", batch_size=64)
    t0 = time.perf_counter()
    got = emb.embed(chips)
    log.info("torch: %.2f ms/chip", 1000 * (time.perf_counter() - t0) / len(chips))
    assert got.shape == (N_CHIPS, 128) and got.dtype == np.float32

    ref = dlib_reference
    g = got.astype(np.float64)
    diff = np.abs(g - ref)
    cos = (g * ref).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(ref, axis=1))
    log.info("max abs diff %.3g, min cosine 1-%.3g", diff.max(), 1 - cos.min())
    assert cos.min() >= 0.9999
    assert diff.max() <= 1e-3
    # Descriptors are not L2-normalised (dlib's loss_metric copies the fc output).
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-2)


def test_flip_average_matches_dlibs_own_average(chips: np.ndarray, dlib_reference: np.ndarray) -> None:
    """``faces.describe(..., flip_average=True)`` = the mean of dlib's descriptors of each chip and
    of its mirror image (30 chips from both sources; dlib's side of the mirrors costs ~85 ms each)."""
    from indexer.faces import describe

    pick = np.r_[0:15, N_CHIPS // 2 : N_CHIPS // 2 + 15]
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in chips[pick]]
    ref = (dlib_reference[pick] + np.stack([np.asarray(rec.compute_face_descriptor(c)) for c in mirrored])) / 2
    got = describe(TorchEmbedder(device="cpu"), chips[pick], flip_average=True).astype(np.float64)
    assert np.abs(got - ref).max() <= 1e-3
    assert (
        np.abs(describe(TorchEmbedder(device="cpu"), chips[pick], flip_average=False) - dlib_reference[pick]).max()
        <= 1e-3
    )
    # The average is not the plain descriptor (the network is not mirror-symmetric).
    assert np.median(np.linalg.norm(ref - dlib_reference[pick], axis=1)) > 0.01


def test_batching_does_not_change_results(chips: np.ndarray) -> None:
    subset = chips[:70]
    big = TorchEmbedder(batch_size=64).embed(subset)  # one full + one partial chunk
    small = TorchEmbedder(batch_size=9).embed(subset)
    single = TorchEmbedder(batch_size=1).embed(subset[:3])
    assert np.abs(big - small).max() <= 1e-5
    assert np.abs(big[:3] - single).max() <= 1e-5


def test_parser_consumes_whole_file_and_matches_architecture() -> None:
    path = frm.face_recognition_model_location()
    w = parse_dlib_resnet(path)
    assert w.bytes_consumed == w.file_size == os.path.getsize(path)
    assert sorted(set(w.header_versions)) == [1, 2, 3]
    assert (w.header_versions.count(2), w.header_versions.count(1), w.header_versions.count(3)) == (107, 22, 1)
    assert w.header_versions[-1] == 3  # innermost: the stem conv over the input layer
    assert set(w.layer_tags) == {"con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_", "fc_2"}
    assert w.input_size == (150, 150)
    np.testing.assert_allclose(w.input_mean, [122.782, 117.001, 104.298], atol=1e-4)
    assert w.loss_margin == pytest.approx(0.04) and w.loss_dist_thresh == pytest.approx(0.6)
    assert len(w.convs) == len(w.affines) == 29
    assert w.num_floats == 5_614_592
    assert w.fc_weight.shape == (256, 128)
    assert w.convs[0].weight.shape == (32, 3, 7, 7) and (w.convs[0].stride, w.convs[0].padding) == (2, 0)
    in_ch = 32
    for i, (filters, down) in enumerate(BLOCKS):
        c1, c2 = w.convs[1 + 2 * i], w.convs[2 + 2 * i]
        assert c1.weight.shape == (filters, in_ch, 3, 3)
        assert (c1.stride, c1.padding) == ((2, 0) if down else (1, 1))
        assert c2.weight.shape == (filters, filters, 3, 3) and (c2.stride, c2.padding) == (1, 1)
        in_ch = filters
    # Cached per process: a second parse is the same object.
    assert parse_dlib_resnet(path) is w


def test_intermediate_shapes_match_dlib() -> None:
    """The table in shared/notes/dlib-resnet-port.md, including the zero-padded add_prev cases."""
    model = load_dlib_resnet()
    assert isinstance(model, DlibResNet) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    seen: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        return lambda _m, _i, out: seen.__setitem__(name, tuple(out.shape[1:]))

    model.stem_conv.register_forward_hook(hook("stem"))
    model.stem_pool.register_forward_hook(hook("pool"))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(hook(f"b{i}"))
        block.conv2.register_forward_hook(hook(f"b{i}.branch"))
        block.shortcut.register_forward_hook(hook(f"b{i}.shortcut"))
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 150, 150))
    assert out.shape == (2, 128)
    assert seen["stem"] == (32, 72, 72) and seen["pool"] == (32, 35, 35)
    expected_out = [(32, 35, 35)] * 3 + [(64, 17, 17)] * 4 + [(128, 8, 8)] * 3 + [(256, 4, 4)] * 3 + [(256, 2, 2)]
    assert [seen[f"b{i}"] for i in range(len(BLOCKS))] == expected_out
    # Down blocks: (branch, shortcut) before the zero-padded add.
    assert (seen["b3.branch"], seen["b3.shortcut"]) == ((64, 17, 17), (32, 17, 17))
    assert (seen["b7.branch"], seen["b7.shortcut"]) == ((128, 8, 8), (64, 8, 8))
    assert (seen["b10.branch"], seen["b10.shortcut"]) == ((256, 3, 3), (128, 4, 4))
    assert (seen["b13.branch"], seen["b13.shortcut"]) == ((256, 1, 1), (256, 2, 2))


def test_empty_batch_and_input_validation() -> None:
    emb = TorchEmbedder()
    assert emb.device == "cpu"
    out = emb.embed(np.zeros((0, 150, 150, 3), np.uint8))
    assert out.shape == (0, 128) and out.dtype == np.float32
    with pytest.raises(ValueError):
        emb.embed(np.zeros((1, 150, 150, 3), np.float32))
    with pytest.raises(ValueError):
        emb.embed(np.zeros((150, 150, 3), np.uint8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cuda_request_without_cuda_raises() -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        TorchEmbedder(device="cuda")
    assert TorchEmbedder(device="auto").device == "cpu"
