"""Issue 15: flip-averaged descriptors, resolution-matched queries, and their measurement.

Real models, real images, real indexes (the session's 300-image indexes, flip-averaged and plain).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
from conftest import CELEBA10K, DATA, REPO, checkout_env, read_wild_labels
from PIL import Image

from indexer import faces, pixels, store
from service import identification, query
from service.params import ApiError, parse_params
from service.search import Searcher

OPENAPI = json.loads((REPO / "service" / "http" / "openapi.json").read_text())


def _validate(body: dict) -> None:
    schema = OPENAPI["paths"]["/neighbors"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**OPENAPI, **schema}).validate(body)


def _crop(f: str) -> bytes:
    return (CELEBA10K / "img_align_celeba" / f).read_bytes()


def _jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def old_index_dir(small_plain_index_dir, tmp_path_factory):
    """An index as today's main writes it: plain descriptors, no flip_average or face_resolution keys."""
    out = tmp_path_factory.mktemp("old") / "idx"
    shutil.copytree(small_plain_index_dir, out)
    m = json.loads((out / "manifest.json").read_text())
    del m["pipeline"]["flip_average"], m["pipeline"]["face_resolution"]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.fixture(scope="module")
def wild_sharp() -> list[tuple[str, bytes]]:
    """The first 4 celeba_wild photos whose face is far sharper than the index's (HOG finds one)."""
    out = []
    for f, _, _ in read_wild_labels():
        data = (DATA / "celeba_wild" / f).read_bytes()
        face = faces.process_bytes(data, "hog")
        if face.ok and face.source_px > 200:
            out.append((f, data))
        if len(out) == 4:
            return out
    raise AssertionError("fewer than 4 sharp wild photos")


# ----------------------------------------------------------------------------- the build's record


def test_build_records_flip_average_and_face_resolution(small_index, small_plain_index_dir):
    plain = store.load_index(small_plain_index_dir)
    assert small_index.flip_average is True and small_index.manifest["pipeline"]["flip_average"] is True
    assert plain.flip_average is False
    ok = [r for r in small_index.rows if r["status"] == "ok"]
    px = np.array([r["source_px"] for r in ok])
    assert (px > 20).all() and (px < 150).all()  # 89×109 crops: faces ~45 px wide, chips cut from ~55 px
    res = small_index.manifest["pipeline"]["face_resolution"]
    assert res["median_px"] == pytest.approx(np.median(px), abs=0.01) == small_index.face_resolution
    assert res["p10_px"] < res["median_px"] < res["p90_px"]
    # The recorded width is the chip's: recomputed from the image, through the same pipeline.
    face = faces.process_file(CELEBA10K / "img_align_celeba" / ok[7]["file"], "aligned")
    assert face.source_px == pytest.approx(ok[7]["source_px"], abs=0.01)
    assert np.array_equal(
        face.chip,
        faces.chip_from_landmarks(faces.read_file(CELEBA10K / "img_align_celeba" / ok[7]["file"]), face.landmarks),
    )


# ----------------------------------------------------------------------------- the resolution rule


def test_resolution_rule_and_degradation(wild_sharp):
    assert faces.too_sharp(300, 54.7) and faces.too_sharp(90, 54.7)
    assert not faces.too_sharp(80, 54.7)  # within 1.5× of the index: used as cut
    assert not faces.too_sharp(None, 54.7) and not faces.too_sharp(300, None)
    assert faces.effective_resolution(900) == faces.CHIP_SIZE  # a chip holds at most 150 px of detail
    chip = faces.process_bytes(wild_sharp[0][1], "hog").chip
    assert faces.match_resolution(chip, 80, 54.7) is chip and faces.match_resolution(chip, 300, None) is chip
    low = faces.match_resolution(chip, 300, 54.7)
    assert low.shape == chip.shape and low.dtype == np.uint8
    np.testing.assert_array_equal(low, faces.degrade_chip(chip, 55))

    def detail(c: np.ndarray) -> float:  # high-frequency energy: variance of the discrete Laplacian
        g = c.astype(np.float64).mean(axis=2)
        return float((4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).var())

    assert detail(low) < 0.5 * detail(chip)
    # A chip already at the index's resolution changes far less (some blur compounds: bilinear twice).
    again = faces.degrade_chip(low, 55)
    assert np.abs(again.astype(int) - low).mean() < 0.5 * np.abs(low.astype(int) - chip).mean()


def test_degraded_query_is_closer_to_a_low_resolution_copy_of_the_same_photo():
    """Known truth by simulation: each celeba_test photo (~200 px, chips cut from ~120 px) is also
    shrunk to the celeba10k scale (chips from ~55 px), as an index would hold it. The sharp photo's
    descriptor, degraded by the rule, lies closer to the shrunk copy's than the undegraded one does."""
    from indexer.resnet import TorchEmbedder

    emb = TorchEmbedder("cpu")
    sharp, small, px = [], [], []
    for p in sorted((DATA / "celeba_test").glob("*.jpg"))[:24]:
        img = faces.read_file(p)
        a = faces.find_face(img, "hog")
        if not a.ok:
            continue
        k = a.source_px / 55.0
        im = Image.fromarray(img)
        b = faces.find_face(np.asarray(im.resize((round(im.width / k), round(im.height / k)), Image.BILINEAR)), "hog")
        if b.ok:
            sharp.append(a)
            small.append(b)
            px.append(b.source_px)
    assert len(sharp) >= 15
    target = float(np.median(px))
    d_low = faces.describe(emb, np.stack([f.chip for f in small]), True)
    d_sharp = faces.describe(emb, np.stack([f.chip for f in sharp]), True)
    matched = np.stack([faces.match_resolution(f.chip, f.source_px, target) for f in sharp])
    d_matched = faces.describe(emb, matched, True)
    before = np.linalg.norm(d_sharp - d_low, axis=1)
    after = np.linalg.norm(d_matched - d_low, axis=1)
    assert np.median(after) < 0.8 * np.median(before), (np.median(before), np.median(after))
    assert (after < before).mean() >= 0.75


# ----------------------------------------------------------------------------- the service


def test_parse_resolution_match():
    from werkzeug.datastructures import MultiDict

    assert parse_params({}).resolution_match is None
    for raw, want in (("1", True), ("true", True), ("0", False), ("false", False), (True, True), (False, False)):
        assert parse_params({"resolution_match": raw}).resolution_match is want
    for bad in ("yes", "", "2", "TRUE ", 1):
        with pytest.raises(ApiError) as e:
            parse_params({"resolution_match": bad})
        assert e.value.status == 400 and "resolution_match" in e.value.message
    with pytest.raises(ApiError, match="2 times"):
        parse_params(MultiDict([("resolution_match", "1"), ("resolution_match", "0")]))


def test_queries_follow_the_index(small_index, wild_sharp):
    s = Searcher(small_index, device="cpu")
    aligned = [(f, _crop(f)) for f in ("000001.jpg", "000150.jpg", "000299.jpg")]
    out = {}
    for images, det in ((aligned, "aligned"), (wild_sharp, "hog")):
        for rm in ("1", "0"):
            body = query.neighbors(s, images, {"k": 1, "detector": det, "resolution_match": rm})
            _validate(body)
            assert body["params"]["resolution_match"] is (rm == "1")
            out[det, rm] = [e["semantic"][0] for e in body["images"]]
    default = query.neighbors(s, aligned[:1], {"detector": "aligned"})
    assert default["params"]["resolution_match"] is True  # on by default: the index records a resolution
    assert default["index"]["flip_average"] is True
    assert default["index"]["face_resolution_px"] == small_index.face_resolution
    # Index-like crops are not degraded (same answer either way, themselves at distance ~0) ...
    assert out["aligned", "1"] == out["aligned", "0"]
    assert [n["file"] for n in out["aligned", "1"]] == [f for f, _ in aligned]
    assert max(n["distance"] for n in out["aligned", "1"]) < 1e-5
    # ... sharp photos are, and their descriptors move: closer to the low-resolution index.
    on_d, off_d = ([n["distance"] for n in out["hog", rm]] for rm in ("1", "0"))
    assert all(a != b for a, b in zip(on_d, off_d))
    assert np.mean(on_d) < np.mean(off_d)
    # The query descriptor is the flip average of the matched chip, as the index rows are.
    face = faces.process_bytes(wild_sharp[0][1], "hog")
    q = s.prepare([("q", face)])[0]
    chip = faces.match_resolution(face.chip, face.source_px, small_index.face_resolution)
    np.testing.assert_allclose(q.descriptor, faces.describe(s.embedder, chip[None], True)[0], atol=1e-6)
    np.testing.assert_array_equal(q.pixel, pixels.pixel_vector(face.chip))  # pixels: the chip as cut


def test_index_from_before_the_change_keeps_working_unaveraged(old_index_dir, wild_sharp):
    idx = store.load_index(old_index_dir)
    assert idx.flip_average is False and idx.face_resolution is None
    s = Searcher(idx, device="cpu")
    files = ["000001.jpg", "000150.jpg", "000299.jpg"]
    body = query.neighbors(s, [(f, _crop(f)) for f in files], {"k": 1, "detector": "aligned"})
    _validate(body)
    assert body["params"]["resolution_match"] is False
    assert body["index"]["flip_average"] is False and body["index"]["face_resolution_px"] is None
    # Plain queries on a plain index: every indexed crop finds itself at distance ~0 (a flip-averaged
    # query would sit ~0.1 away).
    for f, e in zip(files, body["images"]):
        assert e["semantic"][0]["file"] == f and e["semantic"][0]["distance"] < 1e-5
    face = faces.process_bytes(wild_sharp[0][1], "hog")
    np.testing.assert_allclose(s.prepare([("q", face)])[0].descriptor, s.embedder.embed(face.chip[None])[0], atol=1e-6)
    assert (
        query.neighbors(s, [("a", _crop(files[0]))], {"resolution_match": "0"})["params"]["resolution_match"] is False
    )
    with pytest.raises(ApiError) as e:
        query.neighbors(s, [("a", _crop(files[0]))], {"resolution_match": "1"})
    assert e.value.status == 400 and "does not record" in e.value.message


# ----------------------------------------------------------------------------- the measurement


def test_evaluation_on_planted_answers(small_index, small_plain_index_dir):
    """The evaluation library end to end on a few queries whose right answer is known: same-photo
    copies of indexed crops find their crop; every lever row is measured on the same faces."""
    same = identification.same_photo_set(small_index, 8, seed=1)
    assert len({f for _, _, f in same}) == 8
    labels = read_wild_labels()
    wild = [(f, (DATA / "celeba_wild" / f).read_bytes(), i, r) for f, i, r in labels[:4]]
    strangers = identification.read_strangers(DATA / "celeba_test")[:4]
    queries = identification.detect_all(wild, strangers, same, "hog", processes=0)
    assert [q.group for q in queries[4:8]] == ["stranger"] * 4
    searchers = {
        "index": Searcher(small_index, device="cpu"),
        "plain": Searcher(store.load_index(small_plain_index_dir), device="cpu"),
    }
    rows = identification.evaluate(searchers, queries)
    assert [r["levers"] for r in rows] == ["none", "flip", "resolution", "flip + resolution"]
    for r in rows:
        assert r["same_photo_top1"] == 1.0
        assert r["faces"]["same_photo"] == 8 and r["faces"]["stranger"] == 4
        assert (r["degraded_faces"] > 0) == r["resolution_match"]
    assert rows[0]["threshold"] != rows[1]["threshold"]  # each index is calibrated on its own descriptors
    table = identification.format_table(rows)
    assert table.count("\n| ") == 4 and "flip + resolution" in table
    trade = identification.tradeoff(searchers["index"], queries, [0.01, 0.2])
    assert trade[0]["threshold"] < trade[1]["threshold"]


def test_eval_cli_help_and_refusals(small_index_dir, small_plain_index_dir):
    run = [sys.executable, str(REPO / "scripts" / "eval_identification.py")]
    h = subprocess.run([*run, "--help"], capture_output=True, text=True, env=checkout_env())
    assert h.returncode == 0 and "--plain-index" in h.stdout and "resolution" in h.stdout
    bad = subprocess.run(  # the two indexes swapped: refused before any work
        [*run, "--index", str(small_plain_index_dir), "--plain-index", str(small_index_dir)],
        capture_output=True,
        text=True,
        env=checkout_env(),
    )
    assert bad.returncode == 2 and "not flip-averaged" in bad.stderr
