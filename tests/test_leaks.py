"""Which training people leak (service.stats.leaks): known-truth worlds, pure NumPy, no index.

Each world has training identities with image counts and per-stranger same-person rates that vary
beyond the image counts (a Gamma multiplier, plus a few "hub" identities with many images and ten
times the rate). The stranger null and the generated faces are drawn from those rates; planted leaks
add generated hits on a few identities. The records have the shape the audit hands to
:func:`service.stats.leaks.leaks`.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats as sps

from service.stats import baselines, leaks

log = logging.getLogger(__name__)

IDENTITIES = 2000
HUBS = 20
N_GEN = 1000
N_NULL = 3000
RATE = 0.01  # strangers under the identity threshold (the threshold's calibrated false-match rate)
SEEDS = 200


def world(seed: int) -> dict:
    """Identities (names, image counts, per-stranger hit rates; the first HUBS are hubs)."""
    rng = np.random.default_rng([seed, 1])
    images = 1 + rng.geometric(0.3, IDENTITIES)
    images[:HUBS] = rng.integers(30, 50, HUBS)
    weight = images * rng.gamma(2.0, 0.5, IDENTITIES)
    weight[:HUBS] *= 10
    return {
        "names": [f"id{i}" for i in range(IDENTITIES)],
        "images": images,
        "rates": RATE * weight / weight.sum(),
    }


def draw(w: dict, n: int, rng: np.random.Generator, extra: dict[int, float] | None = None) -> list[tuple]:
    """n faces: (top-1 identity, same person) drawn from the identities' rates (plus ``extra`` expected
    hits per planted identity); a face that is no hit has a random top-1 identity."""
    rates = w["rates"].copy()
    for i, hits in (extra or {}).items():
        rates[i] += hits / n
    counts = rng.multinomial(n, np.append(rates, max(0.0, 1 - rates.sum())))
    faces = [(w["names"][i], True) for i in np.repeat(np.arange(IDENTITIES), counts[:-1])]
    faces += [(w["names"][i], False) for i in rng.integers(0, IDENTITIES, counts[-1])]
    rng.shuffle(faces)
    return faces


def run(w: dict, seed: int, extra: dict[int, float] | None = None, n_gen: int = N_GEN, n_null: int = N_NULL) -> dict:
    rng = np.random.default_rng([seed, 2])
    null = draw(w, n_null, rng)
    gen = [
        {"image": f"g{k}.png", "identity": ident, "file": f"{ident}_0.jpg", "same_person": same}
        for k, (ident, same) in enumerate(draw(w, n_gen, rng, extra))
    ]
    return leaks.leaks(
        gen,
        [i for i, _ in null],
        [s for _, s in null],
        dict(zip(w["names"], w["images"].tolist())),
    )


def test_null_worlds_rarely_give_any_discovery():
    """Generated faces hit identities at the null's own rates: under this global null the FDR is the
    chance of any discovery, which must stay near 5% or below."""
    any_discovery, tested = 0, []
    for seed in range(SEEDS):
        res = run(world(seed), seed)
        any_discovery += res["count"] > 0
        tested.append(res["identities_tested"])
    share = any_discovery / SEEDS
    log.info(
        "null worlds: any discovery in %d of %d (%.1f%%); identities tested median %d",
        any_discovery,
        SEEDS,
        100 * share,
        np.median(tested),
    )
    assert share <= 0.07
    assert np.median(tested) >= 1  # the test did run: hubs and look-alikes give testable identities


def test_planted_leaks_are_found_and_dominate_the_discoveries():
    """Five ordinary identities with ~8 extra generated same-person hits each (of 1,000 faces)."""
    planted_found, discoveries, true_discoveries = [], 0, 0
    for seed in range(SEEDS // 2):
        w = world(seed)
        rng = np.random.default_rng([seed, 3])
        planted = rng.choice(np.arange(HUBS, IDENTITIES), 5, replace=False)
        res = run(w, seed, {int(i): 8.0 for i in planted})
        names = {w["names"][i] for i in planted}
        found = {r["identity"] for r in res["rows"]}
        planted_found.append(len(found & names) / len(names))
        discoveries += len(found)
        true_discoveries += len(found & names)
        for r in res["rows"]:
            assert r["q"] <= leaks.FDR and r["generated"] == len(r["generated_images"]) >= 1
    power = float(np.mean(planted_found))
    precision = true_discoveries / max(discoveries, 1)
    log.info(
        "planted leaks: power %.1f%%, %d discoveries of which %.1f%% planted", 100 * power, discoveries, 100 * precision
    )
    assert power >= 0.8
    assert precision >= 0.9


def test_hubs_are_not_flagged_for_being_hubs():
    """Hubs (many images, ten times the null rate of their image share) get more generated hits than
    their images predict in null worlds, so a test against the image-based expectation flags them;
    the conditional test does not. A large audit (5,000 faces and strangers) so that hubs pile up."""
    n, worlds = 5000, SEEDS // 2
    hub_flagged, naive_flagged, others = 0, 0, 0
    for seed in range(worlds):
        w = world(seed)
        res = run(w, seed, n_gen=n, n_null=n)
        hubs = set(w["names"][:HUBS])
        hub_flagged += any(r["identity"] in hubs for r in res["rows"])
        others += any(r["identity"] not in hubs for r in res["rows"])
        # The image-share model: Poisson(n · rate · share of images), BH over every identity.
        rng = np.random.default_rng([seed, 2])
        draw(w, n, rng)
        g = np.bincount([int(i[2:]) for i, s in draw(w, n, rng) if s], minlength=IDENTITIES)
        mu = n * RATE * w["images"] / w["images"].sum()
        q = baselines.bh(sps.poisson.sf(g - 1, mu))
        naive_flagged += bool(np.any(q[:HUBS] <= leaks.FDR))
    log.info(
        "hubs, %d worlds: a hub flagged in %d (another identity in %d); the image-share model flags a hub in %d",
        worlds,
        hub_flagged,
        others,
        naive_flagged,
    )
    assert hub_flagged <= 0.05 * worlds
    assert naive_flagged >= 0.3 * worlds  # the hubs are a real trap (measured: 50 of 100)


def test_no_same_person_hit_and_an_empty_null():
    w = world(0)
    images = dict(zip(w["names"], w["images"].tolist()))
    gen = [{"image": f"g{k}", "identity": f"id{k}", "file": "f", "same_person": False} for k in range(50)]
    res = leaks.leaks(gen, ["id1", "id2"], [True, False], images)
    assert res["count"] == 0 and res["rows"] == [] and res["generated_hits"] == 0 and "note" in res
    assert res["identities"] == IDENTITIES and res["null_hits"] == 1
    # An empty null: nothing can be tested, whatever the generated faces do.
    gen = [{"image": f"g{k}", "identity": "id5", "file": "f", "same_person": True} for k in range(50)]
    res = leaks.leaks(gen, [], [], images)
    assert res["count"] == 0 and res["identities_tested"] == 0 and "no stranger null" in res["note"]
    # No generated faces at all, and no identities known.
    res = leaks.leaks([], [], [], None)
    assert res["count"] == 0 and res["identities"] == 0 and res["rows"] == []


def test_one_strong_leak_against_a_real_sized_null_and_its_row():
    """50 of 200 generated faces are one person whom no stranger matched: found, with its images."""
    gen = [{"image": f"g{k}", "identity": "star", "file": f"star_{k % 3}.jpg", "same_person": True} for k in range(50)]
    gen += [{"image": f"h{k}", "identity": f"p{k}", "file": "x", "same_person": False} for k in range(150)]
    null_ids = [f"p{k % 40}" for k in range(1000)]
    null_same = [k % 50 == 0 for k in range(1000)]
    res = leaks.leaks(gen, null_ids, null_same, {"star": 2, **{f"p{k}": 3 for k in range(40)}})
    assert res["count"] == 1 and res["rows"][0]["identity"] == "star"
    row = res["rows"][0]
    assert row["generated"] == 50 and row["null_hits"] == 0 and row["training_images"] == 2
    assert row["training_examples"] == ["star_0.jpg", "star_1.jpg", "star_2.jpg"]
    assert len(row["generated_images"]) == 50 and row["p"] <= row["q"] <= leaks.FDR
    assert 0 < row["expected"] < 1  # never hit by the null, yet not expected 0


@pytest.mark.parametrize("g,r", [(3, 0), (5, 2), (1, 4)])
def test_conditional_p_is_the_hypergeometric_tail(g, r):
    """The p-value against its definition: Fisher's one-sided exact test on the 2×2 table."""
    p = leaks.conditional_p(np.array([g]), np.array([r]), N_GEN, N_NULL)[0]
    table = [[g, N_GEN - g], [r, N_NULL - r]]
    assert p == pytest.approx(sps.fisher_exact(table, alternative="greater")[1], rel=1e-9)
