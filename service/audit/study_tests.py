"""Known-truth simulation study of the audit's v3 tests, in worlds unlike the ones they were built on.

Why: the v3 tests (identity concentration as a permutation test, the primary same-person test with
its null sample at its effective size, one graphical procedure over all five tests, omission rates
with identity-cluster design effects) were designed on worlds of two photos per identity. Real
indexes have many photos of each person (CelebA: about 20), look-alike hubs, and attributes shared
by all of a person's photos: the dependence the v3 changes are meant to absorb. Each run here draws
its own world (training set, identities, probe) and its own generated sample, so every rate is over
worlds, as an audit's error rate is.

Four experiments, each a function returning one row per setting:

* :func:`identity_study`: identity concentration under H0 (generated and pool top-1 labels i.i.d.
  from one hub-shaped distribution) at n / identities ∈ {0.1, 0.5, 1, 2}, and its power against a
  generator stuck on a few people.
* :func:`primary_study`: the same-person test against the training side's stranger null, plain
  (faces independent) and v3 (clusters + look-alike neighbours), at 2, 1–10 and 10 photos per identity.
* :func:`verdict_study`: the whole verdict (:func:`service.stats.verdict.decide`) on clean generators.
* :func:`omissions_study`: coverage and type-I error of the omission statistics, v3 against design
  effects forced to 1 (v2).
* :func:`ct_null_study` (a diagnostic of the verdict's C_T findings): the spread of C_T's z on clean
  generators, with the audit's held-out sample and with one face per identity.

The descriptor worlds are :mod:`service.audit.simulate`'s; the statistics are called as
:mod:`service.audit.analysis` and :mod:`service.audit.strangers` call them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from indexer.clusters import design_effect

from ..stats import baselines, ct, identities, memorization, omissions, thresholds, verdict
from ..stats.training_side import one_per_identity
from . import simulate
from .strangers import TrainingStrangers

ALPHA = 0.05
PRIMARY_ALPHA = verdict.PRIMARY_WEIGHT * ALPHA  # the level the verdict first decides the primary test at


def cp(k: int, n: int) -> list[float] | None:
    """95% Clopper–Pearson interval of k of n (so that 5% and 8% can be told apart)."""
    return baselines.clopper_pearson(int(k), int(n))


def rate_row(hits: Iterable[bool]) -> dict:
    """A rate over runs with its exact interval."""
    h = np.asarray(list(hits), bool)
    return {
        "rate": float(h.mean()) if len(h) else None,
        "k": int(h.sum()),
        "runs": int(len(h)),
        "ci": cp(h.sum(), len(h)),
    }


# ----------------------------------------------------------------------------- 1. identity concentration


def hub_probabilities(identities_: int, zipf_a: float, rng: np.random.Generator) -> np.ndarray:
    """Stranger → top-1 identity probabilities with hubs: Zipf (p ∝ 1/rank^a) over the identities, in a
    random order (which people are hubs is a property of the world)."""
    p = 1.0 / np.arange(1, identities_ + 1) ** zipf_a
    return rng.permutation(p / p.sum())


def _entries(labels: np.ndarray) -> list[dict]:
    """The service's per-image entries for generated faces whose top-1 identity is ``labels``."""
    return [
        {"image": f"g{i}", "status": "ok", "semantic": [{"identity": str(c), "file": f"t{c}", "same_person": False}]}
        for i, c in enumerate(labels.tolist())
    ]


def identity_run(
    identities_: int,
    n: int,
    seed: int,
    zipf_a: float = 0.5,
    photos: int = 2,
    stuck: int = 0,
    stuck_share: float = 0.0,
) -> dict:
    """One audit of identity concentration at the label level.

    The pool comes from :func:`service.stats.identities.pool_from_training` over a training set of
    ``photos`` faces per identity, each face's nearest other-identity face drawn from the hub
    distribution (excluding its own identity). Generated top-1 labels are i.i.d. from the same
    distribution (H0), except that a share ``stuck_share`` goes to ``stuck`` random people (H1)."""
    rng = np.random.default_rng([seed, 101])
    p = hub_probabilities(identities_, zipf_a, rng)
    face_id = np.repeat(np.arange(identities_), photos)
    nb = rng.choice(identities_, len(face_id), p=p)
    while (bad := nb == face_id).any():  # a stranger's nearest face is never their own
        nb[bad] = rng.choice(identities_, int(bad.sum()), p=p)
    diff_face = nb * photos  # the first photo of that identity
    pool = identities.pool_from_training(diff_face, face_id, [str(i) for i in range(identities_)], n, seed=seed)
    gen = rng.choice(identities_, n, p=p)
    if stuck:
        few = rng.choice(identities_, stuck, replace=False)
        on = rng.random(n) < stuck_share
        gen[on] = rng.choice(few, int(on.sum()))
    c = identities.concentration(_entries(gen), pool, seed=seed)
    return {
        "p": c["p_value_max"],
        "max_count": c["max_count"],
        "distinct": c["distinct_top1"],
        "pool": pool["pool_size"],
    }


IDENTITY_RATIOS = (0.1, 0.5, 1.0, 2.0)
IDENTITY_POWER = ((3, 0.03), (3, 0.06))  # (people, their share of the faces)


def identity_runs(
    seeds: int,
    identities_: int = 2000,
    ratios: tuple[float, ...] = IDENTITY_RATIOS,
    zipf_a: float = 0.5,
    power: tuple[tuple[int, float], ...] = IDENTITY_POWER,
    power_ratio: float = 0.5,
    first_seed: int = 0,
) -> list[dict]:
    """Raw runs: H0 at each n / identities, then ``stuck`` people taking a share of the faces (at
    n = ``power_ratio`` × identities)."""
    out = []
    for ratio, stuck, share in [(r, 0, 0.0) for r in ratios] + [(power_ratio, k, s) for k, s in power]:
        n = max(1, int(round(ratio * identities_)))
        setting = "H0" if not stuck else f"{stuck} people x {share / stuck:.0%} each"
        for s in range(first_seed, first_seed + seeds):
            r = identity_run(identities_, n, s, zipf_a, stuck=stuck, stuck_share=share)
            out.append({"setting": setting, "n": n, "ratio": ratio, "identities": identities_, "zipf_a": zipf_a, **r})
    return out


def identity_rows(runs: list[dict]) -> list[dict]:
    """Rejection rate (at α, and at a secondary test's initial level α/20) per setting."""
    rows = []
    for key in dict.fromkeys((r["setting"], r["n"]) for r in runs):
        rs = [r for r in runs if (r["setting"], r["n"]) == key]
        rows.append(
            {
                "study": "identity",
                "setting": key[0],
                "n": key[1],
                "ratio": rs[0]["ratio"],
                "identities": rs[0]["identities"],
                "zipf_a": rs[0]["zipf_a"],
                "reject": rate_row(r["p"] <= ALPHA for r in rs),
                "reject_secondary_level": rate_row(r["p"] <= ALPHA * (1 - verdict.PRIMARY_WEIGHT) / 4 for r in rs),
                "max_count_median": float(np.median([r["max_count"] for r in rs])),
                "distinct_median": float(np.median([r["distinct"] for r in rs])),
            }
        )
    return rows


def identity_study(seeds: int, **kw) -> list[dict]:
    return identity_rows(identity_runs(seeds, **kw))


# ----------------------------------------------------------------------------- descriptor worlds


@dataclass(frozen=True)
class WorldSpec:
    """A training set: ``identities`` people with ``photos`` photos each, or (lo, hi) photos drawn
    uniformly per person."""

    name: str
    identities: int
    photos: int | tuple[int, int]


SPECS = {
    "2": WorldSpec("2 photos/identity", 1000, 2),
    "1-10": WorldSpec("1-10 photos/identity", 1000, (1, 10)),
    "10": WorldSpec("10 photos/identity", 1000, 10),
    # a larger index, to show how the primary test's power grows with its null's effective size
    "2x5000": WorldSpec("2 photos/identity, 5,000 identities", 5000, 2),
}


def build_world(spec: WorldSpec, seed: int) -> simulate.World:
    """:func:`service.audit.simulate.make_world`, with a variable number of photos per person when asked."""
    if isinstance(spec.photos, int):
        return simulate.make_world(spec.identities, spec.photos, seed=seed)
    w = simulate.make_world(1, 1, seed=seed)  # the world's basis; its training set is replaced
    rng = np.random.default_rng([seed, 17])
    lo, hi = spec.photos
    count = rng.integers(lo, hi + 1, spec.identities)
    w.train = w.photos(np.repeat(w.centres(spec.identities, rng), count, axis=0), rng)
    w.train_ids = np.repeat(np.arange(spec.identities, dtype=np.int64), count)
    return w


def fast_calibration(train: np.ndarray, ids: np.ndarray, k: int = 64) -> dict[str, np.ndarray]:
    """The per-face arrays of :func:`indexer.calibrate.semantic_calibration` (``sem_loo``,
    ``sem_diff_id``, ``sem_same_id``, ``sem_diff_id_face``) by the indexer's own
    :func:`indexer.calibrate.nearest_kinds`, without the pair tails the studies do not read."""
    import faiss

    from indexer.calibrate import nearest_kinds

    x = np.ascontiguousarray(train, np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    loo, diff, same, face, _ = nearest_kinds(x, np.asarray(ids, np.int64), np.arange(len(x)), index, k)
    return {"sem_loo": loo, "sem_diff_id": diff, "sem_same_id": same, "sem_diff_id_face": face}


def training_nulls(world: simulate.World, cal: dict[str, np.ndarray]) -> dict[str, list]:
    """The null arrays of :func:`service.stats.training_side.training_side` (semantic channel): each
    training face's nearest other-identity distance, its identity, and its neighbour's identity."""
    face = cal["sem_diff_id_face"]
    neighbour = np.where(face >= 0, world.train_ids[np.clip(face, 0, None)], -1)
    return {
        "sem_diff_id": cal["sem_diff_id"].astype(np.float64).tolist(),
        "sem_diff_id_identity": world.train_ids.tolist(),
        "sem_diff_id_neighbour": neighbour.tolist(),
        "sem_loo": cal["sem_loo"].astype(np.float64).tolist(),
    }


def world_setup(spec: WorldSpec, seed: int) -> tuple[simulate.World, dict, thresholds.Thresholds, dict, object]:
    """A world of ``spec`` and what every audit in it shares: its calibration, thresholds, training-side
    nulls and an exact FAISS index of its training faces."""
    import faiss

    world = build_world(spec, seed)
    cal = fast_calibration(world.train, world.train_ids)
    index = faiss.IndexFlatL2(simulate.DIM)
    index.add(world.train)
    return world, cal, thresholds.calibrate(cal), training_nulls(world, cal), index


def nearest(world: simulate.World, index, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's exact distance to its nearest training photo and that photo's row."""
    x = np.ascontiguousarray(x, np.float32)
    _, ids = index.search(x, 4)
    d = np.linalg.norm(world.train[ids].astype(np.float64) - x[:, None, :].astype(np.float64), axis=2)
    j = np.argmin(d, axis=1)
    r = np.arange(len(x))
    return d[r, j], ids[r, j]


def _same_person(top1: np.ndarray, th: thresholds.Thresholds, nulls: dict, with_clusters: bool) -> dict:
    """The same-person block of :func:`service.stats.memorization.memorization`, as the audit calls it
    (``with_clusters=False``: the null without its clusters, i.e. faces taken as independent)."""
    cal = {k: np.asarray(v, np.float64) for k, v in nulls.items()}
    if not with_clusters:
        cal = {k: v for k, v in cal.items() if k in ("sem_diff_id", "sem_loo")}
    names = [f"g{i}" for i in range(len(top1))]
    return memorization.memorization(names, top1, None, None, None, th, 1, calibration=cal)


def world_run(
    spec: WorldSpec,
    seed: int,
    sizes: tuple[int, ...] = (200, 1000, 3000),
    copy_rate: float = 0.01,
    power_n: int = 1000,
    verdict_n: int | None = None,
) -> dict:
    """One world and its audits: the primary test (plain and v3) on clean samples of each size (the
    smaller ones are prefixes of the largest: one world serves every size), on a copier's sample of
    ``power_n``, and (``verdict_n``) the whole verdict on the clean sample of that size."""
    world, cal, th, nulls, index = world_setup(spec, 5000 + seed)
    rng = np.random.default_rng([seed, 31])
    clean = world.strangers(max(sizes), rng)
    d_clean, row_clean = nearest(world, index, clean)
    copies, _ = simulate.copying_sampler(world, copy_rate)(power_n, rng)
    d_copy, _ = nearest(world, index, copies)
    out: dict = {"faces": len(world.train), "threshold": th.identity, "null": {}, "copier": {}}
    for n in sizes:
        plain = _same_person(d_clean[:n], th, nulls, False)["same_person"]["baseline"]
        v3 = _same_person(d_clean[:n], th, nulls, True)["same_person"]["baseline"]
        out["null"][str(n)] = {"plain": plain["p_value"], "v3": v3["p_value"], "deff": v3["design_effect"]}
    plain = _same_person(d_copy, th, nulls, False)["same_person"]["baseline"]
    v3 = _same_person(d_copy, th, nulls, True)["same_person"]["baseline"]
    out["copier"] = {"plain": plain["p_value"], "v3": v3["p_value"], "deff": v3["design_effect"]}
    if verdict_n is not None:
        out["verdict"] = verdict_run(
            world, cal, th, nulls, clean[:verdict_n], d_clean[:verdict_n], row_clean[:verdict_n], seed
        )
    return out


def verdict_run(
    world: simulate.World,
    cal: dict[str, np.ndarray],
    th: thresholds.Thresholds,
    nulls: dict,
    x: np.ndarray,
    top1: np.ndarray,
    top1_row: np.ndarray,
    seed: int,
) -> dict:
    """The audit's decisions for generated faces ``x`` (nearest training distance ``top1``, photo
    ``top1_row``), against the training side's strangers, as :func:`service.audit.analysis.report_data`
    makes them: memorization + the null's p-values, C_T on the training side's cells, identity
    concentration against the training pool, then :func:`service.stats.verdict.decide`."""
    n = len(x)
    names = [str(i) for i in range(int(world.train_ids.max()) + 1)]
    k = ct.cell_count(n)
    held = np.asarray(cal["sem_diff_id"], np.float64)
    # one held-out face per training identity, as training_side.build gives C_T (one_per_identity)
    rows = one_per_identity(np.arange(len(held)), world.train_ids, seed)
    rows = rows[np.isfinite(held[rows])]
    centroids = ct.kmeans_cells(world.train, k, seed)
    training = {
        "nulls": nulls,
        "identity_null": identities.pool_from_training(cal["sem_diff_id_face"], world.train_ids, names, n, seed=seed),
        "ct": {
            "cells": k,
            "held_out_distance": held[rows].tolist(),
            "held_out_cells": ct.assign(world.train[rows], centroids).tolist(),
            "held_out_source": "one face per training identity: its nearest other-identity distance",
        },
    }
    null = TrainingStrangers(training)
    ident = world.train_ids[top1_row]
    sem_train = [{"file": f"t{r}", "identity": str(i)} for r, i in zip(top1_row.tolist(), ident.tolist())]
    gen_names = [f"g{i}" for i in range(n)]
    mem = memorization.memorization(gen_names, top1, sem_train, None, None, th, 1, calibration=null.nulls)
    null.test_rates(mem, {"semantic": top1, "pixel": None}, th)
    held_d, held_c, _ = null.held_out(centroids)
    ct_block = ct.ct_test(top1, ct.assign(x, centroids), held_d, held_c, k)
    entries = [
        {"image": g, "status": "ok", "semantic": [{**t, "same_person": bool(d < th.identity)}]}
        for g, t, d in zip(gen_names, sem_train, top1.tolist())
    ]
    pool, _ = null.identity_null(n, seed)
    idents = identities.concentration(entries, pool, seed=seed)
    dec = verdict.decide(mem, ct_block, idents, ALPHA, null.name)["decisions"]
    rejected = [d["name"] for d in [dec["primary"], *dec["secondary"]] if d["reject"]]
    p = dict(mem["p_values"], ct_copying=ct_block["p_value_copying"], identity_concentration=idents["p_value_max"])
    return {"rejected": rejected, "p_values": p}


def ct_null_run(spec: WorldSpec, seed: int, n: int = 1000) -> dict:
    """C_T's z for a clean generator, with the audit's held-out sample (every training face's nearest
    other-identity distance) and with one face per identity (a seeded pick), in the same world.

    Why: C_T's normal null takes the held-out distances as independent; several photos of one person
    (and two look-alike people, who are each other's nearest stranger) give nearly the same distance.
    If that dependence is what widens the null, z's spread shrinks back towards 1 with one face per
    identity."""
    import faiss

    world = build_world(spec, 5000 + seed)
    cal = fast_calibration(world.train, world.train_ids)
    index = faiss.IndexFlatL2(simulate.DIM)
    index.add(world.train)
    rng = np.random.default_rng([seed, 31])
    x = world.strangers(n, rng)
    top1, _ = nearest(world, index, x)
    k = ct.cell_count(n)
    centroids = ct.kmeans_cells(world.train, k, seed)
    held = np.asarray(cal["sem_diff_id"], np.float64)
    cells = ct.assign(world.train, centroids)
    gen_cells = ct.assign(x, centroids)
    perm = np.random.default_rng([seed, 37]).permutation(len(held))
    one = np.sort(perm[np.unique(world.train_ids[perm], return_index=True)[1]])
    out = {}
    for name, rows in (("all faces", np.arange(len(held))), ("one face per identity", one)):
        ok = rows[np.isfinite(held[rows])]
        out[name] = ct.ct_test(top1, gen_cells, held[ok], cells[ok], k)["z"]
    return out


def ct_null_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Spread of C_T's z under H0 (1 if its normal null is right) and its rejection rates."""
    rows = []
    for world_name, rs in runs.items():
        for held in rs[0]:
            z = np.asarray([r[held] for r in rs], np.float64)
            p = norm.cdf(z)
            rows.append(
                {
                    "study": "ct",
                    "world": world_name,
                    "held_out": held,
                    "z_mean": float(z.mean()),
                    "z_sd": float(z.std(ddof=1)),
                    "reject": rate_row(p <= ALPHA),
                    "reject_secondary_level": rate_row(p <= ALPHA * (1 - verdict.PRIMARY_WEIGHT) / 4),
                }
            )
    return rows


def ct_null_study(seeds: int, specs: Iterable[str] = ("2", "10"), first_seed: int = 0) -> list[dict]:
    """C_T's null spread with the audit's held-out sample and with one face per identity (:func:`ct_null_run`)."""
    runs = {SPECS[s].name: [ct_null_run(SPECS[s], i) for i in range(first_seed, first_seed + seeds)] for s in specs}
    return ct_null_rows(runs)


def null_share_run(spec: WorldSpec, seed: int, strangers: int = 20_000) -> dict:
    """The training side's null share under the identity threshold (m/N) beside the world's own
    stranger rate (measured on ``strangers`` new people), and v3's design effect of that share.

    Why: the same-person test is right when the null share's error around the world's stranger rate
    has the variance v3 assumes, p(1 − p)·D/N. Across worlds, Var(m/N − rate) / (p(1 − p)/N) is the
    design effect the test needs; comparing it with v3's median D says whether D is too small (the
    test rejects too often) or too large (it loses power)."""
    world, cal, th, nulls, index = world_setup(spec, 5000 + seed)
    held = np.asarray(nulls["sem_diff_id"], np.float64)
    hit = held < th.identity
    deff = design_effect(hit, nulls["sem_diff_id_identity"], neighbours=nulls["sem_diff_id_neighbour"])
    d, _ = nearest(world, index, world.strangers(strangers, np.random.default_rng([seed, 43])))
    return {
        "null_share": float(hit.mean()),
        "faces": int(len(hit)),
        "deff": deff,
        "stranger_rate": float(np.mean(d < th.identity)),
        "strangers": strangers,
    }


def null_share_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per training set: the design effect the null share's errors show across worlds, beside v3's."""
    rows = []
    for name, rs in runs.items():
        share = np.asarray([r["null_share"] for r in rs])
        rate = np.asarray([r["stranger_rate"] for r in rs])
        p = float(share.mean())
        binom_null = p * (1 - p) / np.mean([r["faces"] for r in rs])
        binom_strangers = p * (1 - p) / rs[0]["strangers"]  # the measured rate's own noise, taken out
        var = float(np.var(share - rate, ddof=1)) - binom_strangers
        boot = np.random.default_rng(0).integers(0, len(rs), (2000, len(rs)))
        vb = np.var((share - rate)[boot], axis=1, ddof=1) - binom_strangers
        rows.append(
            {
                "study": "deff",
                "world": name,
                "worlds": len(rs),
                "null_share_mean": p,
                "stranger_rate_mean": float(rate.mean()),
                "empirical_deff": var / binom_null,
                "empirical_deff_ci": [
                    float(np.quantile(vb, 0.025) / binom_null),
                    float(np.quantile(vb, 0.975) / binom_null),
                ],
                "v3_deff_median": float(np.median([r["deff"] for r in rs])),
            }
        )
    return rows


def run_worlds(
    specs: Iterable[WorldSpec],
    seeds: int,
    verdict_specs: Iterable[str] = (),
    first_seed: int = 0,
    progress: Callable[[str], None] | None = None,
    verdict_n: int = 1000,
    **kw,
) -> dict[str, list[dict]]:
    """``seeds`` worlds of each spec (:func:`world_run`), the verdict run in those named in ``verdict_specs``."""
    out = {}
    want = set(verdict_specs)
    for spec in specs:
        out[spec.name] = [
            world_run(spec, s, verdict_n=verdict_n if spec.name in want else None, **kw)
            for s in range(first_seed, first_seed + seeds)
        ]
        if progress:
            progress(f"{spec.name}: {seeds} worlds")
    return out


def primary_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Type-I error of the plain and v3 same-person tests per world and size, and their power against
    the copier (at α and at the verdict's primary level 0.8α)."""
    rows = []
    for name, rs in runs.items():
        for n in rs[0]["null"]:
            vals = [r["null"][n] for r in rs]
            rows.append(
                {
                    "study": "primary",
                    "world": name,
                    "setting": "H0 (new people)",
                    "n": int(n),
                    "plain": rate_row(_reject(v["plain"], ALPHA) for v in vals),
                    "v3": rate_row(_reject(v["v3"], ALPHA) for v in vals),
                    "v3_at_primary_level": rate_row(_reject(v["v3"], PRIMARY_ALPHA) for v in vals),
                    "deff_median": float(np.median([v["deff"] for v in vals])),
                    "faces_median": float(np.median([r["faces"] for r in rs])),
                }
            )
        vals = [r["copier"] for r in rs]
        rows.append(
            {
                "study": "primary",
                "world": name,
                "setting": "1% re-rendered copies",
                "n": 1000,
                "plain": rate_row(_reject(v["plain"], ALPHA) for v in vals),
                "v3": rate_row(_reject(v["v3"], ALPHA) for v in vals),
                "v3_at_primary_level": rate_row(_reject(v["v3"], PRIMARY_ALPHA) for v in vals),
                "deff_median": float(np.median([v["deff"] for v in vals])),
                "faces_median": float(np.median([r["faces"] for r in rs])),
            }
        )
    return rows


def verdict_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Share of clean audits with any finding, and which tests gave them."""
    rows = []
    for name, rs in runs.items():
        vs = [r["verdict"] for r in rs if "verdict" in r]
        if not vs:
            continue
        which = {t: rate_row(t in v["rejected"] for v in vs) for t in (verdict.PRIMARY, *verdict.SECONDARY)}
        unadjusted = {
            t: rate_row(_reject(v["p_values"].get(t), ALPHA) for v in vs) for t in (verdict.PRIMARY, *verdict.SECONDARY)
        }
        rows.append(
            {
                "study": "verdict",
                "world": name,
                "setting": "clean generator (new people)",
                "n": 1000,
                "any_finding": rate_row(bool(v["rejected"]) for v in vs),
                "primary": which[verdict.PRIMARY],
                "by_test": which,
                "unadjusted_at_alpha": unadjusted,
            }
        )
    return rows


def _reject(p: float | None, level: float) -> bool:
    return p is not None and p <= level


def primary_study(seeds: int, specs: Iterable[str] = ("2", "1-10", "10"), **kw) -> list[dict]:
    return primary_rows(run_worlds([SPECS[s] for s in specs], seeds, **kw))


def verdict_study(seeds: int, specs: Iterable[str] = ("2", "10"), **kw) -> list[dict]:
    return verdict_rows(
        run_worlds([SPECS[s] for s in specs], seeds, verdict_specs=[SPECS[s].name for s in specs], **kw)
    )


# ----------------------------------------------------------------------------- 4. omissions


@dataclass(frozen=True)
class ProbeWorld:
    """An identity-level binary attribute and a probe whose score = identity effect + photo noise:
    score = SHIFT·attribute + N(0, identity_sd²) per person + N(0, photo_sd²) per photo, called positive
    at ``cut``. Photos of one person share their label and most of their score."""

    training_faces: int = 10_000
    prevalence: float = 0.3
    shift: float = 2.5
    identity_sd: float = 0.8
    photo_sd: float = 0.6
    cut: float = 1.25
    heldout_fraction: float = 0.3  # of identities, as indexer.attributes.HELDOUT_FRACTION


def _scores(attr: np.ndarray, person: np.ndarray, pw: ProbeWorld, rng: np.random.Generator) -> np.ndarray:
    return pw.shift * attr + person + rng.normal(scale=pw.photo_sd, size=len(attr))


VERSIONS = ("v3", "v3_deff", "v2")  # identities resampled (the audit); design-effect fallback; faces independent


def omission_training_side(pw: ProbeWorld, photos: int, rng: np.random.Generator) -> dict[str, dict]:
    """The training side of :func:`indexer.attributes.training_side` for one synthetic world, per version:
    ``v3`` as the index gives it (per-identity counts from :func:`indexer.attributes.heldout_clusters`
    and :func:`indexer.attributes.training_clusters`, which the statistics resample by identity);
    ``v3_deff`` without the counts (an index from before them: the design-effect fallback); ``v2``
    without counts and with design effects 1 (faces independent)."""
    from indexer.attributes import heldout_clusters, training_clusters

    people = pw.training_faces // photos
    attr_id = rng.random(people) < pw.prevalence
    effect = rng.normal(scale=pw.identity_sd, size=people)
    groups = np.repeat(np.arange(people), photos)
    labels = attr_id[groups]
    calls = _scores(labels, effect[groups], pw, rng) >= pw.cut
    held = np.isin(groups, rng.permutation(people)[: int(round(pw.heldout_fraction * people))])
    yh, ch = labels[held], calls[held]
    tp, fp, n_pos, n_neg = int((ch & yh).sum()), int((ch & ~yh).sum()), int(yh.sum()), int((~yh).sum())
    probe = {
        "auc": None,
        "tpr": tp / n_pos,
        "fpr": fp / n_neg,
        "tp": tp,
        "fp": fp,
        "n_heldout_pos": n_pos,
        "n_heldout_neg": n_neg,
        "threshold": 0.5,
        **heldout_clusters(ch, yh, groups[held]),
    }
    row = {
        "name": "attribute",
        "status": "ok",
        "probe": probe,
        "n_training": len(labels),
        "n_training_pos": int(labels.sum()),
        "training_rate": float(labels.mean()),
        **training_clusters(labels, groups),
        "examples": [],
        "heldout_p": None,
    }
    no_counts = {k: v for k, v in row.items() if k != "training_identity_counts"}
    no_counts["probe"] = {k: v for k, v in probe.items() if k != "heldout_identity_counts"}
    flat = {**no_counts, "design_effect_training": 1.0}
    flat["probe"] = {**no_counts["probe"], "design_effect_pos": 1.0, "design_effect_neg": 1.0}

    def side(r: dict) -> dict:
        return {"attributes": {"available": True, "source": "fitted", "training_rate_source": "labels", "rows": [r]}}

    return {"v3": side(row), "v3_deff": side(no_counts), "v2": side(flat)}


def omission_run(
    photos: int,
    seed: int,
    generated_rate: float | None = None,
    n: int = 1000,
    pw: ProbeWorld = ProbeWorld(),
    n_boot: int = 1000,
    versions: tuple[str, ...] = VERSIONS,
) -> dict:
    """One world: the training side, ``n`` generated faces (one photo each of new people) with the
    attribute at ``generated_rate`` (None: the population's prevalence, H0), and the omission row of
    each of ``versions`` (:func:`omission_training_side`)."""
    rng = np.random.default_rng([seed, 41, photos])
    sides = omission_training_side(pw, photos, rng)
    rate = pw.prevalence if generated_rate is None else generated_rate
    attr = rng.random(n) < rate
    score = _scores(attr, rng.normal(scale=pw.identity_sd, size=n), pw, rng)
    prob = 1.0 / (1.0 + np.exp(-(score - pw.cut)))  # a probability, ≥ 0.5 exactly where the score is called
    entries = [{"image": f"g{i}", "status": "ok", "attributes": {"attribute": float(v)}} for i, v in enumerate(prob)]
    out: dict = {"truth": rate}
    for version in versions:
        r = omissions.analyse_attributes(entries, sides[version], seed=seed, n_boot=n_boot)["rows"][0]
        lo, hi = r["interval"] if r["interval"] else (np.nan, np.nan)
        out[version] = {
            "p": r["p_value"],
            "covered": bool(lo <= rate <= hi),
            "estimate": r["generated_rate"],
            "half_width": (hi - lo) / 2,
            "resampled": r.get("resampled"),
        }
    row = sides["v3"]["attributes"]["rows"][0]
    out["deff"] = {
        "pos": row["probe"]["design_effect_pos"],
        "neg": row["probe"]["design_effect_neg"],
        "training": row["design_effect_training"],
    }
    return out


def omission_runs(
    seeds: int,
    photos: tuple[int, ...] = (10, 20),
    shifted: float = 0.2,
    n: int = 1000,
    pw: ProbeWorld = ProbeWorld(),
    first_seed: int = 0,
    n_boot: int = 1000,
) -> list[dict]:
    """Raw runs at each number of photos per identity: H0 (the population's rate) and a shifted rate."""
    out = []
    for ppi in photos:
        for rate in (None, shifted):
            setting = "H0 (training rate)" if rate is None else f"generated rate {rate:g}"
            for s in range(first_seed, first_seed + seeds):
                out.append(
                    {
                        "world": f"{ppi} photos/identity",
                        "setting": setting,
                        "n": n,
                        **omission_run(ppi, s, rate, n, pw, n_boot),
                    }
                )
    return out


def omission_rows(runs: list[dict]) -> list[dict]:
    """Coverage (of the generator's true rate) and rejection rate of each version per setting, the
    median interval half-width, and the spread of v3's estimate across worlds (what the half-width
    should be about 1.96 times)."""
    rows = []
    for key in dict.fromkeys((r["world"], r["setting"]) for r in runs):
        rs = [r for r in runs if (r["world"], r["setting"]) == key]
        row = {
            "study": "omissions",
            "world": key[0],
            "setting": key[1],
            "n": rs[0]["n"],
            "truth": rs[0]["truth"],
            "deff_median": {k: float(np.median([r["deff"][k] for r in rs])) for k in ("pos", "neg", "training")},
        }
        for version in (v for v in VERSIONS if v in rs[0]):
            row[version] = {
                "coverage": rate_row(r[version]["covered"] for r in rs),
                "reject": rate_row(_reject(r[version]["p"], ALPHA) for r in rs),
                "half_width_median": float(np.median([r[version].get("half_width", np.nan) for r in rs])),
            }
        est = np.array([r["v3"]["estimate"] for r in rs], np.float64)
        row["estimate_sd"] = float(np.nanstd(est, ddof=1)) if len(est) > 1 else None
        rows.append(row)
    return rows


def omissions_study(seeds: int, **kw) -> list[dict]:
    """Coverage and type-I error of v3, its design-effect fallback and v2 (see :func:`omission_runs`)."""
    return omission_rows(omission_runs(seeds, **kw))
