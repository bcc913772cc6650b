"""The omission estimators by simulation with known truth: adjusted classify-and-count, its bootstrap
interval's coverage (probe error rates estimated on a finite held-out set, as in the index), the
null test's calibration, Benjamini–Hochberg, and the label-shift diagnostic."""

from __future__ import annotations

import numpy as np

from service.stats import omissions


def simulate_probe(rng, true_tpr, true_fpr, n_pos, n_neg):
    """Held-out measurements of a probe with known error rates: (tp, fp)."""
    return int(rng.binomial(n_pos, true_tpr)), int(rng.binomial(n_neg, true_fpr))


def test_acc_inverts_the_probe_error_exactly():
    for rate in (0.0, 0.03, 0.2, 0.5, 1.0):
        for tpr, fpr in ((0.9, 0.05), (0.7, 0.2), (1.0, 0.0)):
            q = fpr + (tpr - fpr) * rate
            assert abs(float(omissions.acc(q, tpr, fpr)) - rate) < 1e-12
    assert float(omissions.acc(0.01, 0.9, 0.05)) == 0.0  # below FPR: clipped
    assert float(omissions.acc(0.99, 0.9, 0.05)) == 1.0
    assert np.isnan(omissions.acc(0.3, 0.4, 0.4))  # an uninformative probe has no estimate


def test_bh_matches_the_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.001])
    q = omissions.bh(p)
    m = 5
    ok = np.isfinite(p)
    order = np.argsort(p[ok])
    ps = p[ok][order]
    expect = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
    assert np.allclose(np.sort(q[ok]), expect) and np.isnan(q[4])
    assert np.allclose(q[ok][order], expect)


def test_bootstrap_interval_covers_the_true_rate():
    """95% intervals over 300 simulated audits per setting: the truth is inside about 95% of the time,
    with the probe's TPR/FPR re-estimated from a held-out set of realistic size in every audit."""
    rng = np.random.default_rng(0)
    settings = [  # (true rate, TPR, FPR, generated n, held-out positives, negatives)
        (0.15, 0.9, 0.06, 500, 120, 600),
        (0.40, 0.8, 0.15, 300, 300, 450),
        (0.06, 0.85, 0.04, 1000, 60, 900),
        (0.0, 0.85, 0.04, 500, 60, 900),  # a true omission: the estimate sits on the bound
    ]
    for rate, tpr, fpr, n, n_pos, n_neg in settings:
        hits = 0
        sims = 300
        for _ in range(sims):
            tp, fp = simulate_probe(rng, tpr, fpr, n_pos, n_neg)
            y = rng.random(n) < rate
            calls = np.where(y, rng.random(n) < tpr, rng.random(n) < fpr)
            reps = omissions.acc_bootstrap(int(calls.sum()), n, tp, n_pos, fp, n_neg, rng, 1000)
            iv, _ = omissions.rate_interval(reps)
            hits += iv[0] <= rate <= iv[1]
        cover = hits / sims
        assert 0.91 <= cover <= 0.99, (rate, cover)


def test_ignoring_the_probe_uncertainty_would_under_cover():
    """Why TPR/FPR are resampled: with only generated faces redrawn, a small held-out set leaves the
    interval too narrow (the test above passes only because of the resampling)."""
    rng = np.random.default_rng(1)
    rate, tpr, fpr, n, n_pos, n_neg = 0.3, 0.8, 0.1, 3000, 40, 60
    hits_full = hits_naive = 0
    sims = 300
    for _ in range(sims):
        tp, fp = simulate_probe(rng, tpr, fpr, n_pos, n_neg)
        y = rng.random(n) < rate
        k = int(np.where(y, rng.random(n) < tpr, rng.random(n) < fpr).sum())
        iv, _ = omissions.rate_interval(omissions.acc_bootstrap(k, n, tp, n_pos, fp, n_neg, rng, 1000))
        hits_full += iv[0] <= rate <= iv[1]
        q = rng.binomial(n, k / n, 1000) / n
        naive = omissions.acc(q, tp / n_pos, fp / n_neg)
        lo, hi = np.nanquantile(naive, [0.025, 0.975])
        hits_naive += lo <= rate <= hi
    assert hits_full / sims >= 0.91 and hits_naive / sims < 0.75, (hits_full, hits_naive)


def test_null_test_is_calibrated_and_has_power():
    rng = np.random.default_rng(2)
    tpr, fpr, n_pos, n_neg, n_train, n = 0.85, 0.05, 80, 900, 2500, 600
    r = 0.12
    pvals, under = [], []
    for _ in range(400):
        tp, fp = simulate_probe(rng, tpr, fpr, n_pos, n_neg)
        r_hat = rng.binomial(n_train, r) / n_train
        row = {
            "training_rate": r_hat,
            "n_training": n_train,
            "probe": {
                "tp": tp,
                "fp": fp,
                "n_heldout_pos": n_pos,
                "n_heldout_neg": n_neg,
                "tpr": tp / n_pos,
                "fpr": fp / n_neg,
            },
        }
        q0, draws, _ = omissions.null_classified_rate(row, "labels", rng, 1000)
        for gen_rate, out in ((r, pvals), (r / 3, under)):
            y = rng.random(n) < gen_rate
            k = int(np.where(y, rng.random(n) < tpr, rng.random(n) < fpr).sum())
            out.append(omissions.rate_test(k, n, draws))
    pvals = np.array(pvals)
    assert np.mean(pvals < 0.05) < 0.07 and np.mean(pvals < 0.2) > 0.1  # calibrated, not degenerate
    assert np.mean(np.array(under) < 0.05) > 0.9  # a third of the training rate is found


def test_label_shift_diagnostic():
    rng = np.random.default_rng(3)
    neg, pos = rng.beta(2, 8, 800), rng.beta(8, 2, 400)
    same = np.concatenate([rng.beta(2, 8, 700), rng.beta(8, 2, 300)])
    res = omissions.label_shift(same, {"neg": neg.tolist(), "pos": pos.tolist()})
    assert res["p_value"] > 0.01 and abs(res["mixture_rate"] - 0.3) < 0.06
    shifted = rng.beta(5, 5, 1000)  # scores piled in the middle: not a mixture of the two classes
    assert omissions.label_shift(shifted, {"neg": neg.tolist(), "pos": pos.tolist()})["p_value"] < 1e-6


def test_cluster_counts_collapse_identities_to_distinct_rows():
    from indexer.clusters import cluster_counts

    groups = np.array(["a", "a", "b", "b", "c", "d", "d", "d"], dtype=object)
    hit = np.array([1, 0, 1, 0, 0, 1, 1, 1], bool)
    rows = cluster_counts([np.ones(8, bool), hit], groups)
    assert sorted(map(tuple, rows)) == [(1, 0, 1), (2, 1, 2), (3, 3, 1)]  # a and b share [2, 1]
    sums = omissions.identity_sums(np.asarray(rows), np.random.default_rng(0), 500)
    assert sums.shape == (500, 2) and (sums[:, 0] >= 4).all()  # 4 identities drawn, 1–3 faces each


def _clustered_heldout(rng, m_pos, m_neg, photos, tpr, fpr, spread):
    """Held-out faces of m_pos positive and m_neg negative identities, ``photos`` each, whose calls
    cluster: each identity has its own call rate, Beta around the population's TPR / FPR."""
    a = 1 / spread - 1
    t_i = rng.beta(tpr * a, (1 - tpr) * a, m_pos)
    f_i = rng.beta(fpr * a, (1 - fpr) * a, m_neg)
    tp_i, fp_i = rng.binomial(photos, t_i), rng.binomial(photos, f_i)
    rows = [[photos, int(t), 0, 0, 1] for t in tp_i] + [[0, 0, photos, int(f), 1] for f in fp_i]
    return rows, int(tp_i.sum()), m_pos * photos, int(fp_i.sum()), m_neg * photos


def test_identities_are_resampled_not_faces():
    """20 photos a person whose calls cluster: resampling the held-out identities covers the true rate
    about 95% of the time; the same counts drawn as independent faces (no per-identity counts, design
    effects 1) are far too narrow. Without the counts, the fallback is exactly the design-effect draw."""
    rng = np.random.default_rng(5)
    rate, tpr, fpr, n, photos = 0.3, 0.85, 0.1, 3000, 20
    hits = {"identities": 0, "faces": 0}
    sims = 300  # measured over 1,000: 95.5% by identity, 77.1% as faces
    for _ in range(sims):
        rows, tp, n_pos, fp, n_neg = _clustered_heldout(rng, 40, 100, photos, tpr, fpr, 0.3)
        y = rng.random(n) < rate
        k = int(np.where(y, rng.random(n) < tpr, rng.random(n) < fpr).sum())
        for how, counts in (("identities", rows), ("faces", None)):
            reps = omissions.acc_bootstrap(k, n, tp, n_pos, fp, n_neg, rng, 1000, counts=counts)
            iv, _ = omissions.rate_interval(reps)
            hits[how] += iv[0] <= rate <= iv[1]
    assert hits["identities"] / sims >= 0.91 and hits["faces"] / sims < 0.85, hits
    assert hits["identities"] >= hits["faces"] + 0.08 * sims, hits
    probe = {"tp": 30, "n_heldout_pos": 40, "fp": 5, "n_heldout_neg": 60, "design_effect_pos": 3.0}
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    tpr_d, fpr_d, how = omissions.heldout_rates(probe, a, 100)
    assert how == {"heldout_pos": "design_effect", "heldout_neg": "design_effect"}
    assert np.array_equal(tpr_d, omissions.draw_rate(30, 40, b, 100, 3.0))
    assert np.array_equal(fpr_d, omissions.draw_rate(5, 60, b, 100, 1.0))


def test_too_few_identities_with_an_outcome_fall_back_to_the_design_effect():
    """No false positive among the held-out negatives (or in only a few people): a bootstrap over
    identities would be certain of FPR = 0, so that rate keeps the Jeffreys draw."""
    rows = [[10, 8, 0, 0, 30], [10, 10, 0, 0, 10], [0, 0, 10, 0, 97], [0, 0, 10, 2, 3]]
    probe = {"tp": 340, "n_heldout_pos": 400, "fp": 6, "n_heldout_neg": 1000, "heldout_identity_counts": rows}
    tpr, fpr, how = omissions.heldout_rates(probe, np.random.default_rng(0), 2000)
    assert how == {"heldout_pos": "identities", "heldout_neg": "design_effect"}
    assert fpr.std() > 0 and abs(np.median(tpr) - 0.85) < 0.02
