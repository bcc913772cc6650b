"""The audit's statistics against known truth: simulations at the descriptor level (service.audit.simulate)
and planted data. No index, no images: these run the estimators and tests directly.

The full simulation study (200+ seeds per row) is scripts/sim_support.py; BENCHMARKS.md records it.
Here fewer seeds, with thresholds a correct method passes and the first version's method fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from indexer import calibrate
from service.audit import simulate
from service.stats import baselines, collisions, ct, identities, support, thresholds


@pytest.fixture(scope="module")
def world():
    w = simulate.make_world(2000, 2, seed=0)
    cal, th = simulate.world_thresholds(w)
    return w, cal, th


# ----------------------------------------------------------------------------- pair calibration


def test_pair_tail_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    ids = rng.integers(0, 150, n)
    desc = (rng.normal(size=(n, 128)) * 0.1).astype(np.float32)
    desc[5] = desc[7] + 0.001
    c = calibrate.semantic_calibration(desc, ids, pair_sample=250)
    rows = calibrate.sample_rows(n, 250, 0)
    d = cdist(desc[rows].astype(np.float64), desc.astype(np.float64))
    other = ids[rows][:, None] != ids[None, :]
    other[np.arange(len(rows)), rows] = False
    want = np.sort(d[other])
    tail = c["pair_sem_diff_tail"]
    assert int(c["pair_sem_diff_pairs"]) == other.sum() and len(tail) == math.ceil(
        calibrate.PAIR_TAIL_RATE * other.sum()
    )
    assert np.allclose(tail, want[: len(tail)], atol=1e-12)
    same = sorted(
        np.linalg.norm(desc[i].astype(float) - desc[j]) for i in range(n) for j in range(i + 1, n) if ids[i] == ids[j]
    )
    assert np.allclose(c["pair_sem_same"], same)
    for i in range(0, n, 101):  # the nearest other-identity face, by brute force
        di = np.linalg.norm(desc - desc[i], axis=1)
        di[ids == ids[i]] = np.inf
        assert c["sem_diff_id_face"][i] == np.argmin(di)
    pix = rng.integers(0, 256, (n, 12288)).astype(np.uint8)
    pix[10] = pix[20]
    p = calibrate.pixel_calibration(pix, ids, 80)
    rows = calibrate.sample_rows(n, 80, 0)
    d = cdist(pix[rows].astype(np.float64), pix.astype(np.float64), "cityblock")
    other = ids[rows][:, None] != ids[None, :]
    other[np.arange(len(rows)), rows] = False
    assert np.array_equal(p["pair_pix_diff_tail"], np.sort(d[other])[: len(p["pair_pix_diff_tail"])])
    d2 = np.where(other, d, np.inf)
    assert np.array_equal(p["pix_diff_id"], d2.min(axis=1))


def test_pixel_calibration_searches_again_where_its_first_neighbours_do_not_reach(monkeypatch):
    """Faces in tight clusters of six photos, each cluster beside another identity's: a row's first
    PIXEL_FIRST_K neighbours are all its own identity and all closer than the pair tail's edge, so the
    nearest stranger and the tail need the searches with a larger k. Both must equal brute force,
    and the whole calibration the one that fetched 16 neighbours first."""
    rng = np.random.default_rng(3)
    base = rng.integers(40, 216, (25, 12288)).astype(np.int16)
    centres = np.concatenate([base, base + rng.integers(-12, 13, base.shape)])  # 50 identities, in pairs
    ids = np.repeat(np.arange(50), 6)
    pix = np.clip(centres[ids] + rng.integers(-3, 4, (300, 12288)), 0, 255).astype(np.uint8)
    got = calibrate.pixel_calibration(pix, ids, 120)
    rows = calibrate.sample_rows(300, 120, 0)
    d = cdist(pix[rows].astype(np.float64), pix.astype(np.float64), "cityblock")
    d[np.arange(len(rows)), rows] = np.inf
    other = ids[rows][:, None] != ids[None, :]
    assert np.array_equal(got["pix_loo"], d.min(axis=1))
    assert np.array_equal(got["pix_diff_id"], np.where(other, d, np.inf).min(axis=1))
    tail = got["pair_pix_diff_tail"]
    assert len(tail) > 1 and np.array_equal(tail, np.sort(d[other])[: len(tail)])
    first = np.sort(d, axis=1)[:, calibrate.PIXEL_FIRST_K - 1]
    assert (first < tail[-1]).all()  # every sampled row needed the second search
    monkeypatch.setattr(calibrate, "PIXEL_FIRST_K", 16)
    wide = calibrate.pixel_calibration(pix, ids, 120)
    assert wide.keys() == got.keys() and all(np.array_equal(wide[k], got[k]) for k in got)


def test_pair_threshold_does_not_drift_with_the_index_size(world):
    """The same population indexed at 1,000 faces (three disjoint subsets) and at 4,000: the 1:N
    identity threshold drifts with N; the per-pair collision threshold drifts far less (what is left
    is a small-sample bias of a low quantile of clustered pairs; celeba10k: tests/test_audit.py)."""
    w, _, th_big = world
    small = [
        thresholds.calibrate(calibrate.semantic_calibration(w.train[o : o + 1000], w.train_ids[o : o + 1000]))
        for o in (0, 1000, 2000)
    ]
    id_drift = np.mean([t.identity for t in small]) - th_big.identity
    pair_drift = np.mean([t.collision_semantic.threshold for t in small]) - th_big.collision_semantic.threshold
    assert id_drift > 0.01 and abs(pair_drift) < id_drift / 2
    for t in small:
        a = t.collision_semantic
        assert a.interval[0] < a.threshold < a.interval[1] and a.pairs_under == 10  # f·P = 1e-5 × 999,000


# ----------------------------------------------------------------------------- support


@pytest.mark.parametrize("scenario", [0, 3, 4, 6], ids=lambda i: simulate.SCENARIOS[i].name)
def test_support_interval_covers_the_known_support(world, scenario):
    """Uniform, Zipf and single-mode generators of known effective support 1/Σp²: the 95% interval
    covers it in ≥ 17 of 20 simulated audits (the first version's Poisson interval covers the Zipf
    and mode cases in 20–65%: scripts/sim_support.py)."""
    w, _, th = world
    sc = simulate.SCENARIOS[scenario]
    runs = [simulate.support_run(w, th, sc, seed, n_boot=500) for seed in range(20)]
    covered = sum(r["covered"] for r in runs)
    est = [r["estimate"] for r in runs if r["estimate"] is not None]
    assert covered >= 17, (sc.name, covered)
    assert 0.5 < np.median(est) / runs[0]["truth"] < 2.0  # and the estimate is near the truth


def test_chance_pairs_are_removed(world):
    """A generator of all-new faces (no repeats): pairs collide only by chance, at f. The corrected
    estimate then finds no support at all to report (or a huge one); uncorrected it would be s²/(2c)."""
    w, _, th = world
    pt = th.collision_semantic
    x = w.strangers(3000, np.random.default_rng(4))
    pairs = [(i, j) for i, j, _ in collisions.close_pairs(x, pt.threshold, "euclidean")]
    est = support.estimate([support.Batch(3000, tuple(pairs))], pt.per_pair_false_match_rate)
    assert est["expected_chance_pairs"] == pytest.approx(pt.per_pair_false_match_rate * 3000 * 2999 / 2)
    uncorrected = 3000 * 2999 / 2 / max(len(pairs), 1)
    assert est["estimate"] is None or est["estimate"] > 3 * uncorrected
    assert est["interval"] is None  # the data cannot bound the support from above


def test_crossing_fit_recovers_a_known_rate():
    """Trials with P(collision | s) = 1 − exp(−C(s,2)·q): the fit recovers s50, and the model-free
    interval (a bootstrap over the trials of each size, v3) covers the true s50."""
    q, f = 2e-3, 1e-5
    truth = support.s50(q)
    covered = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        sizes = [16, 32, 64] * 20
        y = [rng.random() < -math.expm1(-s * (s - 1) / 2 * q) for s in sizes]
        fit = support.crossing_fit(sizes, y, f, sizes=sizes, seed=seed)
        lo, hi = fit["interval"]
        covered += (lo is None or lo <= truth) and (hi is None or truth <= hi)
    assert covered >= 53
    assert fit["s50"] == pytest.approx(support.s50(fit["rate"]))
    assert fit["rule_s2"] == pytest.approx(fit["s50"] ** 2)
    assert "support" not in fit and "support_interval" not in fit  # v3: no number from the Poisson model
    assert support.s50(q) == pytest.approx((1 + math.sqrt(1 + 8 * math.log(2) / q)) / 2)
    none = support.crossing_fit([16, 32] * 20, [False] * 40, f)  # no collision in 40 trials: s50 > 32
    assert none["s50"] is None and none["interval"][0] > 32 and none["interval"][1] is None
    every = support.crossing_fit([16, 32] * 20, [True] * 40, f)
    assert every["interval"][0] is None and every["interval"][1] < 16


# ----------------------------------------------------------------------------- copies and nulls


def test_copy_test_detects_one_percent_copying_and_spares_new_people():
    """n = 1,000, a fresh training set each seed: a generator that copies 1% of its faces is detected
    (p < 0.05) in ≥ 80% of seeds; one that copies nothing is flagged in at most 2 of 20."""
    copier = [simulate.copy_run(0.01, 1000, seed, identities=1000, with_ct=False) for seed in range(20)]
    clean = [simulate.copy_run(0.0, 1000, seed, identities=1000, with_ct=False) for seed in range(20)]
    assert sum(r["p_copies"] < 0.05 for r in copier) >= 16
    assert sum(r["p_copies"] < 0.05 for r in clean) <= 2
    assert sum(r["p_same_person"] < 0.05 for r in clean) <= 2


def test_ct_separates_copying_spread_over_the_distribution():
    """Every generated face a training photo plus noise (closer than strangers, yet outside any copy
    threshold for most): C_T ≪ 0. New people: C_T near 0."""
    spread = [simulate.copy_run(0.0, 500, seed, spread=0.025, identities=1000) for seed in range(5)]
    clean = [simulate.copy_run(0.0, 500, seed, identities=1000) for seed in range(5)]
    assert all(r["ct"] < -3 and r["p_ct"] < 1e-3 for r in spread)
    assert all(abs(r["ct"]) < 3 for r in clean)


def test_z_u_sign_and_scale():
    rng = np.random.default_rng(1)
    held = rng.normal(1.0, 0.1, 400)
    assert ct.z_u(rng.normal(1.0, 0.1, 300), held) == pytest.approx(0, abs=3)
    assert ct.z_u(rng.normal(0.9, 0.1, 300), held) < -5  # closer: copying side
    assert ct.z_u(rng.normal(1.1, 0.1, 300), held) > 5


def test_exact_baseline_tests_hold_their_level():
    """Generated and null values from one distribution: P(p < 0.05) ≤ 5% (plus Monte Carlo slack) for
    the order-statistic (beta-binomial) test at the null's own 1% quantile and for Fisher's test at a
    fixed threshold."""
    rng = np.random.default_rng(2)
    rej_os = rej_f = 0
    sims = 1500
    for _ in range(sims):
        null, gen = rng.random(2000), rng.random(300)
        t = np.quantile(null, 0.01)
        k, m = int(np.sum(gen < t)), int(np.sum(null < t))
        rej_os += baselines.order_statistic_p_value(k, 300, m, 2000) < 0.05
        rej_f += baselines.fisher_p_value(int(np.sum(gen < 0.02)), 300, int(np.sum(null < 0.02)), 2000) < 0.05
    assert rej_os / sims <= 0.065 and rej_f / sims <= 0.065
    # and they have power: 3% of generated values under a 1% null threshold
    assert baselines.order_statistic_p_value(9, 300, 20, 2000) < 0.01
    assert baselines.order_statistic_p_value(0, 300, 20, 2000) == pytest.approx(1.0)


def test_holm_matches_a_hand_computation():
    got = baselines.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None, "e": 0.5}, alpha=0.05)
    # sorted 0.01, 0.03, 0.04, 0.5 → ×4, ×3, ×2, ×1 with running max: 0.04, 0.09, 0.09, 0.5
    assert got["a"]["p_holm"] == pytest.approx(0.04) and got["a"]["reject"]
    assert got["c"]["p_holm"] == pytest.approx(0.09) and not got["c"]["reject"]
    assert got["b"]["p_holm"] == pytest.approx(0.09) and got["e"]["p_holm"] == pytest.approx(0.5)
    assert got["d"] == {"p_value": None, "p_holm": None, "reject": None}


def test_identity_concentration_against_its_stranger_null(world):
    """Strangers' top-1 identities match the training-side null; a generator stuck on a few people
    does not."""
    w, cal, _ = world
    names = [str(c) for c in range(int(w.train_ids.max()) + 1)]
    null = identities.pool_from_training(cal["sem_diff_id_face"], w.train_ids, names, 300, seed=0)
    assert null is not None and null["faces"] == 300 and null["pool_size"] == len(set(w.train_ids.tolist()))

    def entries(x: np.ndarray) -> list[dict]:
        d = cdist(x.astype(np.float64), w.train.astype(np.float64))
        j = d.argmin(axis=1)
        return [
            {
                "status": "ok",
                "image": f"g{i}",
                "semantic": [{"identity": str(w.train_ids[jj]), "file": str(jj), "same_person": False}],
            }
            for i, jj in enumerate(j)
        ]

    rng = np.random.default_rng(3)
    ok = identities.concentration(entries(w.strangers(300, rng)), null)
    assert ok["p_value_max"] > 0.05
    few = np.repeat(w.strangers(20, rng), 15, axis=0) + rng.normal(scale=0.002, size=(300, 128))
    bad = identities.concentration(entries(few.astype(np.float32)), null)
    assert bad["p_value_max"] < 0.01 and bad["p_value_distinct"] < 0.01


def test_chance_rate_check_flags_a_domain_where_strangers_collide_more_often():
    """Planted: 200 faces with 40 colliding pairs among 19,900 (q ≈ 2.0e-3). At the calibrated
    f = 1e-5 the support is (1 − f)/(q − f); real reference faces that collide at 1e-3 (100x f) make
    the check say the support is biased low and give the support at that chance rate, (1 − f')/(q − f')."""
    from service.audit.run import Audit

    pairs = tuple((2 * i, 2 * i + 1) for i in range(40))
    batches = [support.Batch(200, pairs)]
    n_pairs = 200 * 199 // 2
    q, f = 40 / n_pairs, 1e-5
    shifted = {
        "pairs": 100_000,
        "colliding": 100,
        "rate": 1e-3,
        "interval": list(baselines.clopper_pearson(100, 100_000)),
    }
    chk = Audit._chance_rate_check(batches, f, shifted, seed=0)
    assert chk["consistent"] is False and "biased low" in chk["note"] and chk["ratio"] == pytest.approx(100)
    assert chk["support_at_reference_rate"]["estimate"] == pytest.approx((1 - 1e-3) / (q - 1e-3))
    assert support.estimate(batches, f)["estimate"] == pytest.approx((1 - f) / (q - f))
    # a reference that agrees with f: consistent, no note
    same = {
        "pairs": 2_000_000,
        "colliding": 20,
        "rate": 1e-5,
        "interval": list(baselines.clopper_pearson(20, 2_000_000)),
    }
    ok = Audit._chance_rate_check(batches, f, same, seed=0)
    assert ok["consistent"] is True and "note" not in ok
    assert Audit._chance_rate_check(batches, f, None, seed=0) is None


def test_a_finding_against_the_training_null_carries_the_domain_caveat():
    """A rejection against training-domain strangers says that another domain can cause it (the
    32 px DCGAN's C_T does, and not against degraded real strangers); against a reference it does not."""
    from service.stats import verdict

    mem = {"p_values": {"same_person": 0.9, "copies_semantic": 1.0, "copies_pixel": 1.0}}
    ct_block, idents = {"p_value_copying": 1e-10}, {"p_value_max": 0.5}
    trained = verdict.decide(mem, ct_block, idents, 0.05, "training")
    assert "ct_copying" in trained["verdict"] and "--reference-real" in trained["caveat"]
    referenced = verdict.decide(mem, ct_block, idents, 0.05, "reference_real")
    assert "caveat" not in referenced and "see the caveat" not in referenced["verdict"]
    clean = verdict.decide(mem, {"p_value_copying": 0.5}, idents, 0.05, "training")
    assert "caveat" not in clean and clean["verdict"] == "no evidence of memorization at the indexed faces"


def test_reference_faces_are_rendered_at_the_generators_resolution(tmp_path):
    """--reference-downscale 32: the centre square at 32×32, enlarged to --upscale like a generator
    sample, so it holds exactly a 32 px image's detail; undecodable bytes pass through unchanged."""
    import io

    from PIL import Image

    from service.audit import audit
    from service.audit.backends import AuditError
    from service.audit.sources import render_at

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = np.asarray(Image.open(io.BytesIO(render_at(buf.getvalue(), 32, 128))))
    small = Image.fromarray(img[:, 10:70]).resize((32, 32), Image.BILINEAR)
    want = np.asarray(small.resize((128, 128), Image.BICUBIC))
    assert out.shape == (128, 128, 3) and np.array_equal(out, want)
    assert np.asarray(Image.open(io.BytesIO(render_at(buf.getvalue(), 32, 0)))).shape == (32, 32, 3)
    assert render_at(b"not an image", 32, 128) == b"not an image"
    with pytest.raises(AuditError, match="reference_downscale needs reference_real"):
        audit(images=[img], index=tmp_path, reference_downscale=32)


def test_a_sample_held_as_an_array_meets_the_face_pipeline_as_its_png_would():
    """The in-process audit hands generator samples and rendered reference faces to the face pipeline as
    arrays: the same pixels, face, chip, landmarks and per-image status as their lossless PNGs decoded
    (what a server is sent), without the encoding round trip."""
    from conftest import CELEBA10K

    from indexer import faces
    from service.audit.sources import encoded, png_bytes, render_array, render_at
    from service.detect import detect_one

    rng = np.random.default_rng(1)
    for arr in (
        rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),  # RGB
        rng.integers(0, 256, (40, 30), dtype=np.uint8),  # grey
        rng.integers(0, 256, (40, 30, 4), dtype=np.uint8),  # alpha: composited on white, as decoded
    ):
        assert np.array_equal(faces.from_array(arr), faces.decode(png_bytes(arr)))
    for bad in (np.zeros((10, 40, 3), np.uint8), np.zeros((2000, 2100, 3), np.uint8)):
        with pytest.raises(faces.Unreadable) as a:
            faces.decode(png_bytes(bad), max_pixels=4_000_000)
        with pytest.raises(faces.Unreadable) as b:
            faces.from_array(bad, max_pixels=4_000_000)
        assert str(a.value) == str(b.value)
    photo = (CELEBA10K / "img_align_celeba" / "000001.jpg").read_bytes()
    sample = render_array(photo, 32, 128)  # a real face at a 32 px generator's resolution, as an array
    assert encoded(sample) == render_at(photo, 32, 128) and encoded(photo) is photo
    for detector in ("aligned", "hog"):
        x, y = (
            detect_one(sample, detector, attributes=True),
            detect_one(render_at(photo, 32, 128), detector, attributes=True),
        )
        assert (x.status, x.reason, x.faces_found, x.box, x.width, x.height, x.source_px) == (
            y.status,
            y.reason,
            y.faces_found,
            y.box,
            y.width,
            y.height,
            y.source_px,
        )
        for field in ("chip", "landmarks", "landmarks68", "attr_crop"):
            assert np.array_equal(getattr(x, field), getattr(y, field))
    tiny = detect_one(np.zeros((8, 8, 3), np.uint8), "aligned")
    assert (
        tiny.status == "unreadable"
        and tiny.reason == detect_one(png_bytes(np.zeros((8, 8, 3), np.uint8)), "aligned").reason
    )


def test_the_audit_statistics_run_without_a_backend():
    """The statistics half of an audit is plain functions of the passes' answers: a folder of 40
    faces whose first 4 are one face (6 colliding pairs), and 30 real strangers as the null, with no
    index or service anywhere."""
    import base64
    import dataclasses

    from indexer import pixels
    from service.audit import analysis
    from service.audit.run import Answers
    from service.audit.strangers import RealStrangers, TrainingStrangers

    rng = np.random.default_rng(0)
    sem = thresholds.PairThreshold("semantic", 0.2, 1e-5, 1e-5, 1, 100_000, (0.19, 0.21), 0.1, 10, "identities")
    th = thresholds.Thresholds(0.4, "identities", 0.01, 0.01, 0.1, 0.1, 100.0, 1.0, 1, 1, 1, 1, sem, None, "")

    def answers(desc: np.ndarray) -> Answers:
        out = Answers()
        body = [
            {
                "image": f"{i}.png",
                "status": "ok",
                "semantic": [{"distance": 0.5, "identity": str(i), "file": "a.jpg", "same_person": False}],
                "pixel": [{"distance": 1000, "identity": str(i), "file": "a.jpg"}],
                "descriptor": d.tolist(),
                "pixels": base64.b64encode(bytes(pixels.PIXEL_DIM)).decode(),
            }
            for i, d in enumerate(desc)
        ]
        out.add({"images": body})
        return out

    gen = rng.normal(size=(40, 128))
    gen[1:4] = gen[0]
    main, real = answers(gen), answers(rng.normal(size=(30, 128)))
    training = {"nulls": {"sem_diff_id": [0.5, None]}}
    options = {"seed": 0, "batch_sizes": (4, 8), "trials": 3, "reference_real": "r", "detector": "hog"}
    for null in (TrainingStrangers(training), RealStrangers(training, real, options)):
        pairs = analysis.batch_pairs(main.descriptors, main.pixels, th)
        out = analysis.support_statistics(len(main.ok), pairs, [], th, null, options, generator=False)
        block = out["support"]["semantic"]
        assert block["colliding_pairs"] == 6 and block["pairs_compared"] == 40 * 39 // 2
        assert out["support"]["pixel"] is None and [r["s"] for r in out["birthday"]["rows"]] == [4, 8]
        check = block["chance_rate_check"]
        assert (check is None) == (null.name == "training")
        # Which people leak: no same-person face anywhere; the training side here has no per-identity
        # null (no identity_null), the real strangers are one.
        leak = analysis.leak_statistics(main, null, training, th)
        assert leak["count"] == 0 and leak["generated_faces"] == 40 and leak["generated_hits"] == 0
        assert leak["null_faces"] == (0 if null.name == "training" else 30)
    assert dataclasses.is_dataclass(main) and null.summary()["faces"] == 30 and null.name == "reference_real"
    assert null.pair_rates(th)["semantic"]["pairs"] == 30 * 29 // 2


def test_reference_cache_key_follows_files_rendering_params_and_index(tmp_path):
    """The cache answers only for the same files processed the same way against the same index;
    anything else is a new key, and a damaged entry is ignored."""
    from service.audit import reference_cache as rc

    files = []
    for name, data in (("a.jpg", b"one"), ("b.jpg", b"two")):
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    rendering, params, index = {"downscale": None, "upscale": None}, {"detector": "hog", "k": 5}, {"written_at": "x"}
    base = rc.key(files, rendering, params, index)
    assert base == rc.key(files, dict(rendering), dict(params), dict(index))
    assert base != rc.key(files, {"downscale": 32, "upscale": 128}, params, index)
    assert base != rc.key(files, rendering, {**params, "detector": "aligned"}, index)
    assert base != rc.key(files, rendering, params, {"written_at": "y"})
    (tmp_path / "b.jpg").write_bytes(b"changed")
    assert base != rc.key(files, rendering, params, index)
    answers = [{"images": [{"image": "a.jpg", "status": "ok", "descriptor": [0.5] * 4}], "calibration": {"x": 1}}]
    directory = tmp_path / "cache"
    assert rc.load(directory, base) is None
    assert rc.save(directory, base, answers) is not None and rc.load(directory, base) == answers
    (directory / f"{base}.json.gz").write_bytes(b"not gzip")
    assert rc.load(directory, base) is None
