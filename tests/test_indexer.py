"""Indexer: real images, real dlib models, real FAISS. Nothing is mocked."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CELEBA10K, REPO, WILD, build_index
from PIL import Image

from indexer import faces, pixels, store

log = logging.getLogger(__name__)


def _query_files(searcher, paths, detector):
    qs = searcher.prepare([(str(p), faces.process_file(p, detector)) for p in paths])
    return qs


def test_every_row_has_status_and_aligned_ok_rate(small_index):
    rows = small_index.rows
    assert len(rows) == 300
    assert all(r["status"] in faces.STATUSES for r in rows)
    ok = sum(r["status"] == "ok" for r in rows)
    assert ok / len(rows) >= 0.99, f"aligned-mode ok rate {ok}/{len(rows)}"
    assert small_index.manifest["counts"]["ok"] == ok == small_index.n_faces
    for r in rows:
        assert (r["face"] is not None) == (r["status"] == "ok")
        if r["status"] == "ok":
            l, t, rr, b = r["box"]
            assert rr > l and b > t


def test_indexed_images_return_themselves_at_rank_1(small_index):
    from service.search import Searcher

    s = Searcher(small_index, device="cpu")
    ok_rows = [r for r in small_index.rows if r["status"] == "ok"]
    qs = _query_files(s, [CELEBA10K / "img_align_celeba" / r["file"] for r in ok_rows], "aligned")
    desc = np.stack([q.descriptor for q in qs])
    pix = np.stack([q.pixel for q in qs])
    sd, si = s.semantic_search(desc, 1)
    pd, pi = s.pixel_search(pix, 1)
    want = np.array([r["face"] for r in ok_rows])
    assert (si[:, 0] == want).all()
    assert (pi[:, 0] == want).all()
    # The query pipeline is the build pipeline: the distances to themselves are zero.
    assert np.allclose(sd[:, 0], 0, atol=1e-6) and (pd[:, 0] == 0).all()


def test_calibration_arrays(small_index):
    c = small_index.calibration
    n = small_index.n_faces
    assert c["sem_loo"].shape == (n,) and np.isfinite(c["sem_loo"]).all()
    # Leave-one-out is the minimum over every other face, so it cannot exceed either identity split.
    both = ~np.isnan(c["sem_same_id"])
    assert (c["sem_loo"][both] <= c["sem_same_id"][both] + 1e-6).all()
    assert (c["sem_loo"] <= c["sem_diff_id"] + 1e-6).all()
    # Check a few rows against brute force.
    d = np.linalg.norm(small_index.descriptors[:, None] - small_index.descriptors[None], axis=2)
    np.fill_diagonal(d, np.inf)
    ids = small_index.identity_codes()
    for i in range(0, n, 37):
        assert c["sem_loo"][i] == pytest.approx(d[i].min(), abs=1e-5)
        assert c["sem_diff_id"][i] == pytest.approx(d[i][ids != ids[i]].min(), abs=1e-5)
    assert len(c["pix_loo"]) == n  # small index: every face is in the pixel sample


def test_celeba_wild_indexed_people_found(full_index, wild_labels):
    """In-the-wild photos (HOG) of people in celeba10k against the aligned celeba10k index (every
    other one of the 300: the full set's figures come from scripts/eval_identification.py)."""
    from service.search import Searcher

    s = Searcher(full_index, device="cpu")
    wanted = [(f, ident) for f, ident, rel in wild_labels if rel == "indexed_person"][::2]
    qs = _query_files(s, [WILD / f for f, _ in wanted], "hog")
    found = [(q, ident) for q, (_, ident) in zip(qs, wanted) if q.face.ok]
    assert len(found) >= 0.8 * len(wanted)
    _, ids = s.semantic_search(np.stack([q.descriptor for q, _ in found]), 1)
    right = sum(s.identities[i] == ident for i, (_, ident) in zip(ids[:, 0], found))
    rate = right / len(found)
    log.warning(
        "celeba_wild indexed_person: semantic top-1 correct %d/%d = %.1f%% (faces found %d/%d)",
        right,
        len(found),
        100 * rate,
        len(found),
        len(wanted),
    )
    assert rate > 0.6


def _write_bad_folder(root: Path) -> None:
    src = sorted((CELEBA10K / "img_align_celeba").iterdir())[:4]
    for p in src:
        shutil.copy(p, root / p.name)
    (root / "zero.jpg").write_bytes(b"")
    data = src[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "notes.txt").write_text("ignored: not an image extension\n")
    sub = root / "person_b"
    sub.mkdir()
    shutil.copy(src[1], sub / "b1.png")


def test_corrupt_files_become_unreadable_rows(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    _write_bad_folder(ds)
    out = build_index(tmp_path / "idx", root=ds, dataset="folder", identity_from_folders=True)
    idx = store.load_index(out)
    by_file = {r["file"]: r for r in idx.rows}
    assert set(by_file) == {
        "000001.jpg",
        "000002.jpg",
        "000003.jpg",
        "000004.jpg",
        "zero.jpg",
        "truncated.jpg",
        "text.jpg",
        "person_b/b1.png",
    }
    for bad in ("zero.jpg", "truncated.jpg", "text.jpg"):
        assert by_file[bad]["status"] == "unreadable", by_file[bad]
        assert by_file[bad]["reason"]
    assert by_file["zero.jpg"]["reason"].startswith("empty file")
    assert by_file["person_b/b1.png"]["identity"] == "person_b"
    assert by_file["000001.jpg"]["identity"] is None
    assert idx.manifest["counts"] == {"ok": 5, "no_face": 0, "unreadable": 3}


def test_excluded_identities_are_left_out_and_recorded(tmp_path):
    """A generator's control run trains on people the audited index must not hold."""
    ds = tmp_path / "ds"
    ds.mkdir()
    _write_bad_folder(ds)
    (tmp_path / "held_out.txt").write_text("# a members file: file identity\nb1.png person_b\n")
    out = build_index(
        tmp_path / "idx",
        root=ds,
        dataset="folder",
        identity_from_folders=True,
        exclude_identities=str(tmp_path / "held_out.txt"),
    )
    idx = store.load_index(out)
    files = {r["file"] for r in idx.rows}
    assert "person_b/b1.png" not in files and "000001.jpg" in files and len(files) == 7
    assert idx.manifest["dataset"]["exclude_identities"] == ["person_b"]
    with pytest.raises(SystemExit, match="exclude-identities"):
        build_index(tmp_path / "idx2", root=ds, dataset="folder", exclude_identities=str(tmp_path / "nope.txt"))


def test_full_size_crops_work_in_aligned_mode(tmp_path):
    """178×218 (full CelebA geometry): 2× upscales of the half-size sample."""
    ds = tmp_path / "full"
    ds.mkdir()
    for p in sorted((CELEBA10K / "img_align_celeba").iterdir())[:40]:
        im = Image.open(p)
        im.resize((im.width * 2, im.height * 2), Image.BICUBIC).save(ds / p.name, quality=95)
    out = build_index(tmp_path / "idx", root=ds, dataset="folder")
    idx = store.load_index(out)
    assert idx.manifest["counts"]["ok"] >= 39
    assert all(r["size"] == [178, 218] for r in idx.rows)


def test_manifest_rejects_wrong_model_hash_and_version(small_index_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_index_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["model_sha256"]["resnet"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(store.IndexLoadError, match="different resnet model"):
        store.load_index(bad)
    m = json.loads((small_index_dir / "manifest.json").read_text())
    m["pipeline_signature"]["refine_passes"] = 2
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(store.IndexLoadError, match="refine_passes"):
        store.load_index(bad)
    m = json.loads((small_index_dir / "manifest.json").read_text())
    m["format_version"] = 999
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(store.IndexLoadError, match="format version 999"):
        store.load_index(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(store.IndexLoadError, match="not a facemem index"):
        store.load_index(bad)


def test_damaged_file_is_refused(small_index_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_index_dir, bad)
    with open(bad / "pixels.npy", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\xff" * 10)
    store.load_index(bad)  # same size: the quick check passes…
    with pytest.raises(store.IndexLoadError, match="sha256"):
        store.load_index(bad, verify_hashes=True)  # …the full check does not
    with open(bad / "pixels.npy", "ab") as f:
        f.write(b"x")
    with pytest.raises(store.IndexLoadError, match="wrong size"):
        store.load_index(bad)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True, **kw)


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    common = [
        "build",
        "--dataset",
        "celeba",
        "--root",
        str(CELEBA10K),
        "--limit",
        "200",
        "--chunk-size",
        "8",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    ref = tmp_path / "ref"
    r = _cli(*common, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    p = subprocess.Popen(
        [sys.executable, "-m", "indexer", *common, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(partial.glob("chunk-*.npz"))) < 5:
        assert p.poll() is None, "build finished before it could be killed"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_done = len(list(partial.glob("chunk-*.npz")))
    assert 5 <= n_done < 50
    with pytest.raises(store.IndexLoadError):
        store.load_index(out)  # nothing half-written loads as an index
    r = _cli(*common, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "built" in r.stdout and "img/s" in r.stdout
    a, b = store.load_index(ref), store.load_index(out)
    assert b.manifest["build"]["resumed"] is True
    assert [dict(x, row=0) for x in a.rows] == [dict(x, row=0) for x in b.rows]
    np.testing.assert_array_equal(a.descriptors, b.descriptors)
    np.testing.assert_array_equal(np.asarray(a.pixels), np.asarray(b.pixels))
    for k in a.calibration:
        np.testing.assert_array_equal(a.calibration[k], b.calibration[k])
    assert not partial.exists()


def test_cli_info_and_help(small_index_dir):
    r = _cli("info", str(small_index_dir), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["counts"]["ok"] == info["faces"] > 0
    assert info["calibration"]["semantic_loo_median"] > 0
    for sub in ([], ["build"], ["info"]):
        h = _cli(*sub, "--help")
        assert h.returncode == 0 and "usage" in h.stdout
    bad = _cli("info", str(REPO))
    assert bad.returncode == 2 and "not a facemem index" in bad.stderr


def test_pixel_vector_is_deterministic_crop():
    img = faces.read_file(sorted((CELEBA10K / "img_align_celeba").iterdir())[0])
    f1, f2 = faces.find_face(img, "aligned"), faces.find_face(img.copy(), "aligned")
    v = pixels.pixel_vector(f1.chip)
    assert v.shape == (pixels.PIXEL_DIM,) and v.dtype == np.uint8
    np.testing.assert_array_equal(v, pixels.pixel_vector(f2.chip))
