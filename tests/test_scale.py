"""Large-index search on one machine: sharded indexes, the exact flat search, IVF, the pixel fallback.

Real descriptors and crops of the session's 300-face celeba10k index, real FAISS and torch; the
expected answers come from float64 / int64 brute force over the same arrays, never from
hard-coded values. Speed is measured by scripts/bench_scale.py, not here.
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest
from conftest import CELEBA10K, REPO, assert_json_close, build_index

from indexer import shards, store
from indexer.flat import ExactL2, brute_force
from indexer.l1 import l1_brute_force

OPENAPI = json.loads((REPO / "service" / "http" / "openapi.json").read_text())


@pytest.fixture(scope="module")
def sharded_dir(small_index, tmp_path_factory):
    """The small index rewritten as shards of 64 rows (same rows, arrays and calibration)."""
    out = tmp_path_factory.mktemp("sharded") / "idx"
    idx = small_index
    pieces = ((idx.descriptors[lo : lo + 50], np.asarray(idx.pixels[lo : lo + 50])) for lo in range(0, idx.n_faces, 50))
    man = {k: v for k, v in idx.manifest.items() if k not in ("files", "format_version", "written_at")}
    shards.write_sharded_index(out, list(idx.rows), pieces, 64, idx.calibration, man)
    return out


def _queries(idx) -> tuple[np.ndarray, np.ndarray]:
    """Indexed faces (distance 0), near-copies at 1e-4 (where float32's expanded form breaks
    down) and strangers' mixes, with exact duplicates planted across shard boundaries."""
    d = np.asarray(idx.descriptors)
    rng = np.random.default_rng(1)
    near = d[::17] + rng.normal(0, 1e-4 / np.sqrt(128), d[::17].shape).astype(np.float32)
    mix = (d[:20] + d[100:120]) / 2
    return np.concatenate([d[::29], near, mix]).astype(np.float32), np.asarray(idx.pixels[::23])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "auto"])
def test_exact_flat_search_equals_float64_brute_force(small_index, precision):
    d = np.asarray(small_index.descriptors).copy()
    d[200] = d[3]  # exact ties, in different blocks: order must be (distance, id)
    d[64] = d[3]
    q, _ = _queries(small_index)
    q = np.concatenate([q, d[3:4]])
    want_d, want_i = brute_force(d, q, 10)
    for blocks in ([d], [d[:64], d[64:150], d[150:]], [d[i : i + 7] for i in range(0, len(d), 7)]):
        got_d, got_i = ExactL2(blocks, precision=precision).search(q, 10)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_d, want_d)
    assert list(got_i[-1, :3]) == [3, 64, 200] and (got_d[-1, :3] == 0).all()
    # 30 rows at distances 1e-3 + j·2e-6 from row 10, ids shuffled: float32's expanded form cannot
    # order them (its error near d = 1e-3 is ~5e-5), so only the error bound's rescan gets them right
    rng = np.random.default_rng(5)
    planted = rng.permutation(np.arange(40, 280))[:30]
    for j, i in enumerate(planted):
        u = rng.normal(size=128)
        d[i] = (d[10].astype(np.float64) + u / np.linalg.norm(u) * (1e-3 + j * 2e-6)).astype(np.float32)
    got_d, got_i = ExactL2([d[:100], d[100:]], precision=precision).search(d[10:11], 8)
    want_d, want_i = brute_force(d, d[10:11], 8)
    assert list(want_i[0]) == [10, *planted[:7]]
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)
    # k larger than the index: everything, padded
    got_d, got_i = ExactL2([d[:5], d[5:9]], precision=precision).search(q[:2], 12)
    assert (got_i[:, 9:] == -1).all() and np.isnan(got_d[:, 9:]).all()


def test_the_scan_error_bound_holds(small_index):
    """Every computed score (float32, fp16 and centred bf16 scans) is within its error bound of the
    float64 score, on real descriptors, on rows scaled far from unit norm, with tiny coordinates (fp16
    subnormals) and with coordinates below float32's normal range (bf16 flushes them to zero); auto
    scans fp16 at batch 1 and bf16 at batch 16."""
    import torch

    d = np.asarray(small_index.descriptors, np.float32)
    tiny = d.copy()
    tiny[:, ::3] *= 1e-4
    subnormal = d.copy()
    subnormal[:, 1::4] *= np.float32(1e-39)
    for rows in (d, d * 7.5, tiny, subnormal, d * 1e-3):
        q = rows[::13] * 1.1
        r64, q64 = rows.astype(np.float64), q.astype(np.float64)
        exact = (r64**2).sum(1)[None, :] - 2 * q64 @ r64.T
        qn = np.linalg.norm(q64, axis=1)
        for precision in ("fp32", "fp16", "bf16"):
            flat = ExactL2([rows], precision=precision)
            if precision == "bf16":
                c = flat._bf16.centre
                centred = ((r64 - c) ** 2).sum(1)[None, :] - 2 * (q64 - c) @ (r64 - c).T
                qt, qtn, rq = flat._bf16.queries(q)
                with torch.inference_mode():
                    got = flat._bf16.scores(qt, 0, len(rows)).numpy()
                bound = flat._bf16.error_bound(qtn, rq)
                assert (np.abs(got.astype(np.float64) - centred) <= bound[:, None]).all(), precision
                continue
            with torch.inference_mode():
                got = flat._scores(0, torch.from_numpy(np.ascontiguousarray(q)), precision).numpy()
            bound = flat.error_bound(qn, precision)
            assert (np.abs(got.astype(np.float64) - exact) <= bound[:, None]).all(), precision
    auto = ExactL2([d], precision="auto")
    assert (auto.scan(1), auto.scan(2), auto.scan(3), auto.scan(16)) == ("fp16", "fp16", "bf16", "bf16")
    with pytest.raises(ValueError):
        ExactL2([d], precision="int4")


@pytest.mark.parametrize("scan_rows", [(7, 7), (64, 64), (8192, 131072)])
def test_blocked_bf16_scan_is_exact_with_near_ties_across_blocks(small_index, monkeypatch, scan_rows):
    """The bf16 scan's running threshold (blocks of ``scan_rows`` rows) never drops a true neighbour:
    exact duplicates and near-ties 2e-6 apart planted in different blocks, queries far from the
    centre, tiny and subnormal coordinates, k from 1 to past the end, against float64 brute force."""
    from indexer import flat as flat_mod

    monkeypatch.setattr(flat_mod, "SCAN_ROWS", scan_rows)
    rng = np.random.default_rng(11)
    d = np.asarray(small_index.descriptors, np.float32).copy()
    d[250] = d[260] = d[5]  # exact ties in three blocks
    free = np.setdiff1d(np.arange(20, 290), [40, 41, 42, 43, 60, 61, 62, 250, 260, *range(100, 120)])
    planted = rng.permutation(free)[:24]
    for j, i in enumerate(planted):  # near-ties around row 9: distances 1e-3 + j·2e-6
        u = rng.normal(size=128)
        d[i] = (d[9].astype(np.float64) + u / np.linalg.norm(u) * (1e-3 + j * 2e-6)).astype(np.float32)
    d[100:110, ::2] = np.float32(1e-39)  # subnormal coordinates (flushed by bf16 products)
    d[110:120] *= 1e-4
    q = np.concatenate([d[[5, 9, 100, 115]], d[40:44] * 3.0, d[60:63] + 0.05]).astype(np.float32)
    s = ExactL2([d[:90], d[90:200], d[200:]], precision="bf16")
    for k in (1, 5, 30, 400):
        want_d, want_i = brute_force(d, q, k)
        got_d, got_i = s.search(q, k)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_d, want_d)
    assert list(got_i[0, :3]) == [5, 250, 260]
    assert list(got_i[1, :8]) == [9, *planted[:7]]
    # the window keeps few rows for well-separated queries (the threshold prunes; not a full scan)
    cand = s._bf16.candidates(d[[0, 50, 150]], 1)
    assert all(1 <= c.size < len(d) // 4 for c in cand)


def test_low_precision_scans_handle_nan_queries_one_row_and_huge_norms(small_index):
    d = np.asarray(small_index.descriptors, np.float32)
    huge = d * 3e4  # fp16 would overflow (max 65504): that scan must fall back to float32
    for precision in ("fp16", "bf16", "auto"):
        for nq in (1, 5):
            got_d, got_i = ExactL2([huge[:150], huge[150:]], precision=precision).search(huge[7 : 7 + nq] * 1.01, 4)
            want_d, want_i = brute_force(huge, huge[7 : 7 + nq] * 1.01, 4)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_array_equal(got_d, want_d)
    s = ExactL2([d[:1]], precision="bf16")
    got_d, got_i = s.search(d[:3], 2)
    assert (got_i[:, 0] == 0).all() and (got_i[:, 1] == -1).all() and np.isnan(got_d[:, 1]).all()
    bad = d[:3].copy()
    bad[1] = np.nan
    got_d, got_i = ExactL2([d], precision="bf16").search(bad, 2)
    assert (got_i[1] == -1).all() and list(got_i[0]) == list(brute_force(d, d[:1], 2)[1][0])


def test_sharded_array_behaves_like_the_concatenation():
    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (23, 5), dtype=np.uint8)
    arr = shards.ShardedArray([full[:7], full[7:7], full[7:16], full[16:]])
    assert arr.shape == full.shape and len(arr) == 23 and arr.nbytes == full.nbytes
    for key in (
        3,
        -1,
        slice(5, 18),
        slice(None),
        slice(2, 20, 3),
        [0, 22, 7, 7, 6],
        np.array([16, 15]),
        full[:, 0] > 100,
    ):
        np.testing.assert_array_equal(arr[key], full[key])
    np.testing.assert_array_equal(arr[[4, 19], 2:4], full[[4, 19], 2:4])
    np.testing.assert_array_equal(np.asarray(arr), full)
    with pytest.raises(IndexError):
        arr[23]


def test_sharded_index_answers_exactly_as_the_monolithic_one(small_index, sharded_dir):
    from service.search import Searcher

    sh = store.load_index(sharded_dir, verify_hashes=True)
    mono = small_index
    assert sh.sharded and isinstance(sh.rows, shards.LazyRows) and len(sh.manifest["shards"]) == 5
    assert isinstance(sh.pixels, shards.ShardedArray) and len(sh.pixel_blocks()) == 5
    # the FaceIndex API the statistics and the audit read
    assert list(sh.rows) == list(mono.rows) and sh.n_faces == mono.n_faces
    np.testing.assert_array_equal(sh.face_rows, mono.face_rows)
    np.testing.assert_array_equal(np.asarray(sh.descriptors), mono.descriptors)
    np.testing.assert_array_equal(np.asarray(sh.pixels), np.asarray(mono.pixels))
    np.testing.assert_array_equal(sh.identity_codes(), mono.identity_codes())
    assert all(
        sh.face_file(i) == mono.face_file(i) and sh.face_identity(i) == mono.face_identity(i) for i in range(0, 300, 11)
    )
    assert sh.calibration.keys() == mono.calibration.keys()
    lookup = sh.face_files()
    assert mono.face_file(123) in lookup and "000001.jpg.missing" not in lookup and 5 not in lookup
    # search, both channels
    q, p = _queries(mono)
    a, b = Searcher(mono, device="cpu"), Searcher(sh, device="cpu")
    for k in (1, 5, 40):
        for x, y in zip(a.semantic_search(q, k), b.semantic_search(q, k)):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(a.pixel_search(p, k), b.pixel_search(p, k)):
            np.testing.assert_array_equal(x, y)
    want_d, want_i = l1_brute_force(np.asarray(mono.pixels), p, 5)
    got_d, got_i = b.pixel_search(p, 5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)
    assert b.search_info() == {
        "semantic": {"method": "exact", "exact": True, "faces": 300, "shards": 5},
        "pixel": {"method": "exact_l1", "exact": True, "faces": 300, "shards": 5},
    }


def test_service_on_a_sharded_index(small_index, sharded_dir):
    """POST /neighbors gives the monolithic index's body (plus the shard count), valid against the
    OpenAPI schema; /images serves a face of a shard and nothing else."""
    from service import create_app

    files = [small_index.face_file(i) for i in (0, 77, 150, 299)]
    bodies = []
    for d in (small_index.root, sharded_dir):
        c = create_app(d, {"detect_processes": 0, "device": "cpu"}).test_client()
        data = {"images": [(open(CELEBA10K / "img_align_celeba" / f, "rb"), f) for f in files]}
        r = c.post("/neighbors?detector=aligned&k=3", data=data, content_type="multipart/form-data")
        assert r.status_code == 200, r.json
        body = r.get_json()
        schema = OPENAPI["paths"]["/neighbors"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**OPENAPI, **schema}).validate(body)
        bodies.append(body)
        assert c.get(f"/images/{files[1]}?size=32").status_code == 200
        assert c.get("/images/000301.jpg").status_code == 404  # in the dataset, not in the index
    mono, sh = bodies
    # Two requests ran the network: semantic floats to conftest.NET_ATOL; the pixel channel exactly.
    assert_json_close([im["semantic"] for im in mono["images"]], [im["semantic"] for im in sh["images"]])
    assert [im["pixel"] for im in mono["images"]] == [im["pixel"] for im in sh["images"]]
    assert [im["semantic"][0]["file"] for im in sh["images"]] == files
    assert mono["search"]["semantic"] == {"method": "exact", "exact": True, "faces": 300, "shards": 1}
    assert sh["search"]["pixel"]["shards"] == 5 and sh["search"]["semantic"]["exact"] is True
    for key in ("collisions", "memorization"):
        assert_json_close({key: mono[key]}, {key: sh[key]})
    for key in ("calibration", "counts"):
        assert mono[key] == sh[key], key


def test_ivf_says_approximate_and_equals_exact_when_it_probes_every_list(small_index):
    from service.search import Searcher

    q, _ = _queries(small_index)
    exact = Searcher(small_index, device="cpu")
    s = Searcher(small_index, device="cpu", semantic="ivf", ivf_nprobe=1)
    info = s.search_info(("semantic",))["semantic"]
    assert info["method"] == "ivf" and info["exact"] is False and info["nprobe"] == 1
    d1, i1 = s.semantic_search(q, 5)
    ref_d, ref_i = exact.semantic_search(q, 5)
    # every distance reported is the exact float64 distance of the id reported
    dd = np.linalg.norm(small_index.descriptors[i1[:, 0]].astype(np.float64) - q.astype(np.float64), axis=1)
    np.testing.assert_array_equal(d1[:, 0], dd)
    assert (d1[:, 0] >= ref_d[:, 0]).all()  # never better than exact
    full = Searcher(small_index, device="cpu", semantic="ivf", ivf_nprobe=info["nlist"])
    np.testing.assert_array_equal(full.semantic_search(q, 5)[1], ref_i)  # every list probed: exhaustive


def test_pixel_channel_above_the_exact_size_searches_the_semantic_candidates(small_index):
    from service.search import Searcher

    q, _ = _queries(small_index)
    p = np.asarray(small_index.pixels[::29])
    dq = np.asarray(small_index.descriptors[::29])
    s = Searcher(small_index, device="cpu", pixel_exact_max_faces=100, pixel_candidates=40)
    assert s.l1 is None
    assert s.search_info(("pixel",))["pixel"] == {
        "method": "l1_over_semantic_candidates",
        "exact": False,
        "candidates": 40,
        "faces": 300,
        "shards": 1,
    }
    got_d, got_i = s.pixel_search(p, 5, desc=dq)
    _, cand = s.semantic_search(dq, 40)
    for j in range(len(p)):  # exact L1 over exactly those 40 candidates
        c = np.sort(cand[j])
        wd, wi = l1_brute_force(np.asarray(small_index.pixels[c]), p[j : j + 1], 5)
        np.testing.assert_array_equal(got_i[j], c[wi[0]])
        np.testing.assert_array_equal(got_d[j], wd[0])
    assert (got_d[:, 0] == 0).all() and (got_i[:, 0] == np.arange(0, 300, 29)).all()
    with pytest.raises(ValueError):
        s.pixel_search(p, 5)


def test_damaged_sharded_index_is_refused(sharded_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sharded_dir, bad)
    (bad / "shard-000002" / "pixels.npy").unlink()
    with pytest.raises(store.IndexLoadError, match="shard-000002/pixels.npy is missing"):
        store.load_index(bad)
    shutil.rmtree(bad)
    shutil.copytree(sharded_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["shards"][1]["name"] = "../../etc"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(store.IndexLoadError, match="file list is damaged"):
        store.load_index(bad)


def test_local_build_writes_shards_and_an_ivf(tmp_path):
    """--shard-size and --ivf on through the build (the local engine; the Ray engine's sharded
    build is tests/test_ray_cluster.py): the same rows and arrays as a monolithic build."""
    from service.search import Searcher

    mono = store.load_index(build_index(tmp_path / "mono", limit=90, chunk_size=32))
    sh = store.load_index(build_index(tmp_path / "sh", limit=90, chunk_size=32, shard_size=40, ivf="on"))
    assert [s["rows"] for s in sh.manifest["shards"]] == [[0, 40], [40, 80], [80, 90]]
    assert list(sh.rows) == list(mono.rows) and sh.ivf_path is not None and mono.ivf_path is None
    np.testing.assert_array_equal(np.asarray(sh.descriptors), mono.descriptors)
    np.testing.assert_array_equal(np.asarray(sh.pixels), np.asarray(mono.pixels))
    for k in mono.calibration:
        np.testing.assert_array_equal(sh.calibration[k], mono.calibration[k])
    assert sh.manifest["build"]["engine"] == "local" and sh.manifest["pixel_calibration_sample"] == 90
    np.testing.assert_array_equal(sh.geometry, mono.geometry)  # the optional per-face files, top level
    assert (sh.attributes is None) == (mono.attributes is None)
    s = Searcher(sh, device="cpu", exact_max_faces=50)  # auto: IVF above 50 faces
    assert s.search_info()["semantic"]["method"] == "ivf"
    d, i = s.semantic_search(np.asarray(mono.descriptors[:10]), 1)
    assert (i[:, 0] == np.arange(10)).all() and (d[:, 0] == 0).all()


def test_sampled_semantic_calibration_equals_the_full_one_on_its_rows(small_index):
    """Large builds calibrate a seeded sample of faces, each against every face: the values at
    the sampled rows are exactly the full calibration's."""
    from indexer.calibrate import semantic_calibration

    desc, ids = small_index.descriptors, small_index.identity_codes()
    full = semantic_calibration(desc, ids)
    part = semantic_calibration(desc, ids, sample=120, seed=3)
    rows = part["sem_rows"]
    assert len(rows) == 120 == len(set(rows.tolist())) and "sem_rows" not in full
    for key in ("sem_loo", "sem_diff_id", "sem_same_id", "sem_diff_id_face"):
        np.testing.assert_array_equal(part[key], full[key][rows])
    for key in (k for k in full if k.startswith("pair_")):  # the pair tails have their own sample
        np.testing.assert_array_equal(part[key], full[key])


def test_audit_reference_reads_a_sampled_calibration(small_index):
    """The audit's training side indexes the per-face arrays by their position in the sample
    (``sem_rows``), not by face: its held-out cells are the sampled faces' and the identity null
    takes each sampled face's own identity."""
    import dataclasses

    from indexer.calibrate import semantic_calibration
    from service.stats import identities, training_side

    ids = small_index.identity_codes()
    part = semantic_calibration(small_index.descriptors, ids, sample=150, seed=5)
    idx = dataclasses.replace(small_index, calibration={**small_index.calibration, **part})
    ref = training_side.training_side(idx, faces=20, cells=4)
    # C_T's held-out values: one sampled face per identity (v3), read at their sample positions
    held = training_side.one_per_identity(np.arange(len(part["sem_rows"])), ids[part["sem_rows"]], 0)
    held = held[np.isfinite(part["sem_diff_id"][held])]
    assert len(ref["ct"]["held_out_distance"]) == len(ref["ct"]["held_out_cells"]) == len(held)
    assert len(set(ids[part["sem_rows"][held]].tolist())) == len(held)  # distinct people
    np.testing.assert_allclose(ref["ct"]["held_out_distance"], part["sem_diff_id"][held], rtol=1e-6)
    cents = np.asarray(ref["ct"]["centroids"], np.float32)
    from service.stats import ct

    want = ct.assign(np.asarray(small_index.descriptors)[part["sem_rows"][held]], cents)
    assert ref["ct"]["held_out_cells"] == want.tolist()
    assert ref["identity_null"] is not None
    # Planted: sampled faces 1, 3, 5 are of three identities (their positions 0, 1, 2 would read
    # identities 0, 0, 1 and leave two strangers): three strangers, three distinct nearest identities.
    face_ids = np.array([0, 0, 1, 1, 2, 2])
    sampled, diff_face = np.array([1, 3, 5]), np.array([2, 4, 0])
    pool = identities.pool_from_training(diff_face, face_ids, ["a", "b", "c"], 3, rows=sampled)
    assert pool is not None and sorted(pool["pool"]) == ["a", "b", "c"]


def test_sharded_l1_with_ties_across_shards_equals_brute_force(small_index):
    """The running k-th distance of earlier shards bounds later ones; exact ties across shards
    must still come out ordered by (distance, global id)."""
    pix = np.asarray(small_index.pixels).copy()
    for dup in (40, 130, 250, 299):  # row 7's crop in four other shards
        pix[dup] = pix[7]
    pix[200] = pix[11]
    q = np.concatenate([pix[[7, 11, 0, 150]], np.asarray(small_index.pixels[5::37])])
    want = l1_brute_force(pix, q, 6)
    got = shards.ShardedL1([pix[i : i + 60] for i in range(0, len(pix), 60)]).search(q, 6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert list(got[1][0, :5]) == [7, 40, 130, 250, 299] and (got[0][0, :5] == 0).all()
