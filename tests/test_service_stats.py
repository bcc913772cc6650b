"""service.stats: the formulas, checked against independent computations (no index needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from service.stats import collisions, memorization, support, thresholds


def _calib(rng, n=2000, with_ids=True):
    null = rng.normal(0.6, 0.05, n).astype(np.float32)
    same = rng.normal(0.4, 0.06, n).astype(np.float32)
    same[::3] = np.nan  # identities with one photo
    loo = np.minimum(null, np.nan_to_num(same, nan=9)).astype(np.float32)
    if not with_ids:
        null[:] = np.nan
        same[:] = np.nan
    return {
        "sem_loo": loo,
        "sem_diff_id": null,
        "sem_same_id": same,
        "pix_loo": rng.integers(100_000, 900_000, 500).astype(np.float64),
        "pix_loo_rows": np.arange(500),
    }


def test_calibrate_with_identities_uses_null_quantile_and_reports_recall():
    c = _calib(np.random.default_rng(0))
    th = thresholds.calibrate(c, false_match_rate=0.02)
    null = c["sem_diff_id"].astype(np.float64)
    same = c["sem_same_id"][np.isfinite(c["sem_same_id"])].astype(np.float64)
    assert th.source == "identities" and th.false_match_rate == 0.02
    assert th.identity == pytest.approx(np.quantile(null, 0.02))
    assert abs(th.expected_false_match_rate - 0.02) < 1.5 / len(null)
    assert th.expected_recall == pytest.approx(np.mean(same < th.identity))
    assert th.semantic_copy == pytest.approx(np.percentile(c["sem_loo"].astype(np.float64), 1))
    assert th.pixel_copy == pytest.approx(np.percentile(c["pix_loo"], 1))
    assert th.same_identity_samples == len(same)


def test_calibrate_without_identities_falls_back_to_leave_one_out_and_says_so():
    c = _calib(np.random.default_rng(1), with_ids=False)
    th = thresholds.calibrate(c)
    assert th.source == "leave_one_out"
    assert th.identity == pytest.approx(np.quantile(c["sem_loo"].astype(np.float64), 0.01))
    assert th.expected_false_match_rate is None and th.expected_recall is None
    assert "no identities" in th.note


def test_calibrate_user_threshold_still_reports_rates_at_it():
    c = _calib(np.random.default_rng(2))
    th = thresholds.calibrate(c, threshold=0.5)
    assert th.source == "user" and th.identity == 0.5 and th.false_match_rate is None
    assert th.expected_false_match_rate == pytest.approx(np.mean(c["sem_diff_id"] < 0.5))
    with pytest.raises(ValueError):
        thresholds.calibrate(c, threshold=-1)
    with pytest.raises(ValueError):
        thresholds.calibrate(c, false_match_rate=1.5)


def test_garwood_interval_matches_the_published_table():
    # Garwood (1936) exact 95% limits: c=0 -> [0, 3.689], c=1 -> [0.0253, 5.572], c=10 -> [4.795, 18.39]
    assert support.garwood(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert support.garwood(1) == pytest.approx((0.0253, 5.572), abs=1e-3)
    assert support.garwood(10) == pytest.approx((4.795, 18.39), abs=1e-2)
    assert support.poisson_upper(0) == pytest.approx(-math.log(0.05))
    assert -math.log(0.05) == pytest.approx(sps.chi2.ppf(0.95, 2) / 2)


def test_pair_threshold_reads_the_rank_of_the_per_pair_rate():
    rng = np.random.default_rng(1)
    tail = np.sort(rng.uniform(0.2, 0.5, 500))
    same = np.sort(rng.uniform(0.1, 0.7, 300))
    cal = {
        "pair_sem_diff_tail": tail,
        "pair_sem_diff_pairs": np.array(5_000_000),
        "pair_sem_same": same,
        "sem_diff_id": np.array([0.5, 0.6]),
    }
    pt = thresholds.pair_threshold(cal, "sem", 1e-5)  # rank 50 of 5 M pairs
    assert pt.pairs_under == 50 and pt.per_pair_false_match_rate == pytest.approx(1e-5)
    assert tail[49] < pt.threshold < tail[50] and np.sum(tail < pt.threshold) == 50
    assert pt.interval[0] < pt.threshold < pt.interval[1]  # the rank's binomial interval (no owners stored)
    assert pt.same_identity_recall == pytest.approx(np.mean(same < pt.threshold))
    assert pt.source == "identities"
    with pytest.raises(ValueError):
        thresholds.pair_threshold(cal, "sem", 1e-3)  # beyond the stored tail
    assert thresholds.pair_threshold({}, "pix") is None


def test_support_estimate_formulas():
    s, f = 100, 1e-5
    pairs = s * (s - 1) / 2
    planted = tuple((i, i + 1) for i in range(0, 10, 2))
    est = support.estimate([support.Batch(s, planted)], f)
    q = 5 / pairs
    assert est["estimate"] == pytest.approx((1 - f) / (q - f))
    assert est["expected_chance_pairs"] == pytest.approx(f * pairs)
    lo, hi = support.garwood(5)
    # The interval holds the Garwood one (and the bootstrap's, where wider).
    assert est["interval"][0] <= (1 - f) / (hi / pairs - f) and est["interval"][1] >= (1 - f) / (lo / pairs - f)
    assert est["interval"][0] < est["estimate"] < est["interval"][1]
    zero = support.estimate([support.Batch(s)], f)
    assert zero["estimate"] is None and zero["interval"] is None
    assert zero["lower_bound"] == pytest.approx((1 - f) / (-math.log(0.05) / pairs - f))
    # A batch so large that even its upper bound is chance: no bound at all, and the note says why.
    huge = support.estimate([support.Batch(3000)], f)
    assert huge["lower_bound"] is None and "beyond what this threshold resolves" in huge["note"]
    assert support.estimate([support.Batch(1)], f)["estimate"] is None


def test_bootstrap_never_pairs_a_face_with_itself():
    """Resampled faces drawn twice must not add a collision: with no collision at all, every
    bootstrap rate is 0, and with one pair the mean rate stays near the observed rate."""
    assert np.all(support.bootstrap_rates([support.Batch(50)], 200) == 0)
    r = support.bootstrap_rates([support.Batch(50, ((3, 7),))], 4000, seed=1)
    assert abs(r.mean() - 1 / (50 * 49 / 2)) < 0.1 / (50 * 49 / 2)


def test_close_pairs_is_exact_in_both_metrics():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (600, 48)).astype(np.uint8)  # > one block of 256 rows
    x[10] = x[400]
    x[20] = np.clip(x[500].astype(int) + 1, 0, 255)
    d1 = np.abs(x[:, None, :].astype(int) - x[None, :, :]).sum(-1)
    thr = 60
    want = sorted((i, j) for i, j in zip(*np.nonzero(d1 < thr)) if i < j)
    got = collisions.close_pairs(x, thr, "cityblock")
    assert [(i, j) for i, j, _ in got] == want and (10, 400) in want
    assert all(d == d1[i, j] for i, j, d in got)
    y = rng.normal(size=(300, 8))
    d2 = np.linalg.norm(y[:, None] - y[None], axis=-1)
    want2 = sorted((i, j) for i, j in zip(*np.nonzero(d2 < 1.0)) if i < j)
    assert [(i, j) for i, j, _ in collisions.close_pairs(y, 1.0, "euclidean")] == want2


def test_close_pairs_of_many_pixel_crops_uses_the_exact_l1_search():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (400, 12288)).astype(np.uint8)  # > 256 crops of the index's size
    for a, b, noise in ((3, 300, 0), (17, 18, 2), (50, 250, 3), (50, 251, 3)):
        x[b] = np.clip(x[a].astype(int) + rng.integers(-noise, noise + 1, 12288), 0, 255)
    xi = x.astype(np.int32)
    d = np.stack([np.abs(xi - row).sum(1, dtype=np.int64) for row in xi])  # brute force, a row at a time
    thr = 30_000
    want = sorted((i, j, float(d[i, j])) for i, j in zip(*np.nonzero(d < thr)) if i < j)
    got = collisions.close_pairs(x, thr, "cityblock")
    assert got == want and len(want) >= 4


def test_memorization_shares_and_p_values():
    cal = _calib(np.random.default_rng(5))
    cal["pix_diff_id"] = cal["pix_loo"] * 1.05
    th = thresholds.calibrate(cal)
    top1 = np.array([th.identity / 2, th.identity * 2, th.identity * 0.99, 5.0])
    train = [{"file": f"f{i}.jpg", "identity": str(i)} for i in range(4)]
    m = memorization.memorization(
        [f"q{i}" for i in range(4)], top1, train, None, None, th, 12288, positions=[0, 2, 3, 5], calibration=cal
    )
    assert m["same_person"]["count"] == 2 and m["same_person"]["share"] == 0.5
    null = cal["sem_diff_id"].astype(np.float64)
    base = m["same_person"]["baseline"]
    k0 = int(np.sum(null < th.identity))
    assert base["null_count"] == k0 and base["null_samples"] == len(null)
    assert base["p_value"] == pytest.approx(sps.betabinom.sf(1, 4, k0 + 1, len(null) - k0))
    assert m["likely_copies"]["pixel"] is None
    sem = m["likely_copies"]["semantic"]
    assert sem["count"] == int(np.sum(top1 < th.semantic_copy))
    m_copy = int(np.sum(null < th.semantic_copy))
    assert sem["baseline"]["p_value"] == pytest.approx(
        sps.fisher_exact([[sem["count"], 4 - sem["count"]], [m_copy, len(null) - m_copy]], alternative="greater").pvalue
    )
    assert [c["index"] for c in m["suspected_copies"]] == [
        p for p, d in zip([0, 2, 3, 5], top1) if d < th.semantic_copy
    ]


# ----------------------------------------------------------------------------- where a distance falls


def test_share_below_on_planted_values_is_exact_and_strict():
    a = np.sort(np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
    assert thresholds.share_below(a, 0.1) == 0.0  # strict: a value equal to the distance is not below it
    assert thresholds.share_below(a, 0.2) == 0.1
    assert thresholds.share_below(a, 0.25) == 0.3
    assert thresholds.share_below(a, 0.95) == 1.0
    assert thresholds.share_below(a, -1.0) == 0.0
    assert thresholds.share_below(np.zeros(0), 0.5) is None
    assert thresholds.share_below(a, float("nan")) is None


def test_distance_context_matches_the_true_null_cdf_within_the_dkw_bound():
    """Known truth: a null drawn from N(0.6, 0.05). The empirical share below d must be within the
    Dvoretzky-Kiefer-Wolfowitz band of the true CDF (at 1 - 1e-6 confidence), for every d at once."""
    rng = np.random.default_rng(7)
    n = 20_000
    null = rng.normal(0.6, 0.05, n).astype(np.float32)
    null[::50] = np.nan  # undefined entries (faces without another identity) are left out
    loo = rng.normal(0.45, 0.08, n).astype(np.float32)
    pix = rng.uniform(1e5, 9e5, 5000)
    ctx = thresholds.DistanceContext.of({"sem_diff_id": null, "sem_loo": loo, "pix_loo": pix})
    n_null = int(np.isfinite(null).sum())
    eps = math.sqrt(math.log(2 / 1e-6) / (2 * n_null))
    ds = np.linspace(0.4, 0.8, 81)
    got = np.array([ctx.semantic(d)["stranger_quantile"] for d in ds])
    assert np.max(np.abs(got - sps.norm.cdf(ds, 0.6, 0.05))) < eps
    assert np.all(np.diff(got) >= 0)
    eps_loo = math.sqrt(math.log(2 / 1e-6) / (2 * n))
    assert abs(ctx.semantic(0.45)["loo_quantile"] - 0.5) < eps_loo
    eps_pix = math.sqrt(math.log(2 / 1e-6) / (2 * len(pix)))
    assert abs(ctx.pixel(3e5)["loo_quantile"] - 0.25) < eps_pix
    # ... and exactly what an independent count gives, including the NaN handling
    finite = null[np.isfinite(null)].astype(np.float64)
    for d in (0.5, 0.6, 0.65):
        assert ctx.semantic(d)["stranger_quantile"] == np.mean(finite < d)


def test_distance_context_agrees_with_the_thresholds_it_explains():
    """At the identity threshold the stranger quantile is the expected false-match rate (same
    strict comparison), and at the copy thresholds the leave-one-out quantile is about 1%."""
    c = _calib(np.random.default_rng(3), n=5000)
    ctx = thresholds.DistanceContext.of(c)
    for fmr in (0.01, 0.05, 0.2):
        th = thresholds.calibrate(c, false_match_rate=fmr)
        assert ctx.semantic(th.identity)["stranger_quantile"] == th.expected_false_match_rate
        assert abs(ctx.semantic(th.semantic_copy)["loo_quantile"] - th.copy_percentile / 100) <= 1 / 5000 + 1e-12
        assert abs(ctx.pixel(th.pixel_copy)["loo_quantile"] - th.copy_percentile / 100) <= 1 / 500 + 1e-12
    no_ids = thresholds.DistanceContext.of(_calib(np.random.default_rng(4), with_ids=False))
    assert no_ids.semantic(0.5)["stranger_quantile"] is None and no_ids.semantic(0.5)["loo_quantile"] is not None


def test_distance_context_sorts_each_calibration_array_once():
    c = _calib(np.random.default_rng(5))
    a, b = thresholds.DistanceContext.of(c), thresholds.DistanceContext.of(c)
    assert a.sem_diff_id is b.sem_diff_id  # cached per array object
    c2 = {k: v.copy() for k, v in c.items()}
    c2["sem_diff_id"][:] = 0.1
    assert thresholds.DistanceContext.of(c2).semantic(0.2)["stranger_quantile"] == 1.0  # a new array is not confused
