"""Known-truth study of the audit's v3 support statistics in worlds they were not designed on.

Two experiments (issue "Audit v3"), each run in a fresh world per seed (its own training set,
thresholds, generator faces and reference strangers), so that coverage is over worlds, not one world:

* :func:`domain_run`: a *generated domain* where faces of different people collide by chance at
  c·f (c = 1, 10, 50), made by contracting descriptors toward the training mean, x' = μ + λ(x − μ),
  for a generator's samples and for a same-domain reference of real strangers alike. The audit's
  v3 support (:func:`service.stats.support.rebased`, chance rate from the reference) and, for
  contrast, the v2 f-based :func:`service.stats.support.estimate` are scored against the known
  effective support 1/Σp² (continuum-only generator: infinite).
* :func:`crossing_run`: the model-free s50 interval of :func:`service.stats.support.crossing_fit`
  from independent generator trials at s = 16, 32, 64, 128, against the true s50 found by Monte
  Carlo from the same generator in the same world (:func:`true_s50`).

Both return plain per-run records; :func:`summarize_domain` and :func:`summarize_crossing` turn
them into table rows with Clopper–Pearson intervals on every share. ``scripts/sim_support.py
--study domain|crossing`` is the CLI; BENCHMARKS.md records the full run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..stats import collisions, support
from ..stats.baselines import clopper_pearson
from . import simulate

# Contraction λ per chance multiple c: the ratio of the stranger-pair distance quantiles at f and c·f
# (3 calibration worlds × 8,000 strangers, 3.2·10⁷ pairs each: 0.9392/0.9417/0.9419 and
# 0.8940/0.8958/0.8970). The achieved chance rate is measured in every run (the reference's own r)
# and reported beside the nominal c.
CHANCE_MULTIPLES = (1, 10, 50)
CONTRACTION = {1: 1.0, 10: 0.941, 50: 0.896}
BODY = 5000  # faces in the uniform body of every finite generator
DOMAIN_GENERATORS = ("uniform 5,000", "50 modes of 1% + 5,000", "continuum only")
CROSSING_GENERATORS = ("one 3% mode + 5,000", "one 10% mode + 5,000")
CROSSING_SIZES = (16, 32, 64, 128)
CROSSING_TRIALS = (10, 50)


def generator_probabilities(name: str) -> np.ndarray | None:
    """The face probabilities p of a named generator (None: continuum only, every sample a new face).

    ``50 modes of 1% + 5,000``: 50 faces carrying 1% each over a uniform body of 5,000 faces that
    carries the other half, so 1/Σp² ≈ 198 while the body alone would give 20,000."""
    if name == "uniform 5,000":
        return simulate.mode_probabilities("uniform", BODY)
    if name == "50 modes of 1% + 5,000":
        return np.concatenate([np.full(50, 0.01), np.full(BODY, 0.5 / BODY)])
    if name == "continuum only":
        return None
    for mass in (0.03, 0.10):
        if name == f"one {mass:.0%} mode + 5,000":
            return simulate.mode_probabilities("mode", BODY + 1, mode_mass=mass)
    raise ValueError(f"unknown generator {name!r}")


def truth_support(p: np.ndarray | None) -> float:
    """Effective support 1/Σp²; infinite for a continuum."""
    return math.inf if p is None else simulate.effective_support(p)


def contract(x: np.ndarray, mu: np.ndarray, lam: float) -> np.ndarray:
    """x' = μ + λ(x − μ): every pair distance times λ, so chance pairs under a fixed threshold multiply."""
    return (mu + lam * (x.astype(np.float64) - mu)).astype(np.float32)


@dataclass
class StudyWorld:
    """One seed's world, its collision threshold (the audit's, from the index calibration functions)
    and the contraction centre μ (the training mean)."""

    world: simulate.World
    pt: object  # service.stats.thresholds.PairThreshold
    mu: np.ndarray


IDENTITIES = 1000


def study_world(seed: int, identities: int = IDENTITIES, pair_sample: int = 1000) -> StudyWorld:
    """A fresh world per seed: its own training set (``identities`` × 2 photos) and thresholds.

    ``pair_sample`` rows calibrate the pair threshold (1,000 rows × 1,998 other faces = 2·10⁶ pairs at
    1,000 identities: 20 under the threshold at f = 10⁻⁵, so f itself varies from world to world as the
    index's does)."""
    world = simulate.make_world(identities, 2, seed=10_000 + seed)
    _, th = simulate.world_thresholds(world, pair_sample=pair_sample)
    return StudyWorld(world, th.collision_semantic, world.train.mean(axis=0).astype(np.float64))


def modal_faces(world: simulate.World, p: np.ndarray, seed: int) -> tuple[np.ndarray, Callable]:
    """The generator's fixed faces (one photo each of len(p) new people) and ``sample(n, rng)`` →
    (descriptors, face index) — :func:`simulate.modal_sampler` with its faces exposed."""
    faces = world.strangers(len(p), np.random.default_rng([seed, 1]))

    def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.choice(len(p), n, p=p)
        x = faces[pick] + rng.normal(scale=simulate.JITTER, size=(n, simulate.DIM))
        return x.astype(np.float32), pick

    return faces, sample


def _batch(x: np.ndarray, threshold: float) -> support.Batch:
    return support.Batch.from_pairs(len(x), collisions.close_pairs(x, threshold, "euclidean"))


def _covers(res: dict, truth: float) -> bool:
    """Whether the printed statement holds: the two-sided interval contains the truth, or the one-sided
    lower bound is below it (nothing printed: nothing wrong)."""
    if res.get("interval") is not None:
        lo, hi = res["interval"]
        return bool(lo <= truth <= hi)
    return res.get("lower_bound") is None or bool(res["lower_bound"] <= truth)


# ----------------------------------------------------------------------------- experiment 1


def domain_run(
    seed: int,
    chances: Sequence[int] = CHANCE_MULTIPLES,
    generators: Sequence[str] = DOMAIN_GENERATORS,
    n: int = 1000,
    reference: int = 1000,
    sw: StudyWorld | None = None,
    v2_boot: int = 500,
) -> list[dict]:
    """One world (``sw``, else :func:`study_world` of ``seed``), one audit per (chance multiple,
    generator): n generated faces in one batch and a same-domain reference of ``reference`` real
    strangers, both contracted by λ_c.

    Paired design: within a seed, the same generated samples and the same strangers are contracted
    by each λ, so rows differ only in the domain; across seeds everything is new. ``v2_boot``: bootstrap
    draws of the v2 contrast (its upper end only); the v3 call runs as the audit does."""
    sw = sw or study_world(seed)
    world, pt, mu = sw.world, sw.pt, sw.mu
    rng = np.random.default_rng([seed, 7])
    ref_x = world.strangers(reference, rng)
    samples = {}
    for g in generators:
        p = generator_probabilities(g)
        if p is None:
            samples[g] = (world.strangers(n, rng), math.inf)
        else:
            _, sample = modal_faces(world, p, seed)
            samples[g] = (sample(n, rng)[0], truth_support(p))
    out = []
    for c in chances:
        lam = CONTRACTION[c]
        ref = [_batch(contract(ref_x, mu, lam), pt.threshold)]
        for g, (x, truth) in samples.items():
            gen = [_batch(contract(x, mu, lam), pt.threshold)]
            v3 = support.rebased(gen, ref, seed=seed)
            v2 = support.estimate(gen, pt.per_pair_false_match_rate, n_boot=v2_boot, seed=seed)
            out.append(
                {
                    "seed": seed,
                    "chance": c,
                    "generator": g,
                    "truth": truth,
                    "f": pt.per_pair_false_match_rate,
                    "reference_rate": v3["chance_rate"],
                    "reference_colliding": v3["reference_colliding_pairs"],
                    "colliding": v3["colliding_pairs"],
                    "resolvable": v3["resolvable"],
                    "v3_estimate": v3["estimate"],
                    "v3_interval": v3["interval"],
                    "v3_lower_bound": v3["lower_bound"],
                    "v3_covered": _covers(v3, truth) if v3["resolvable"] else None,
                    "v2_estimate": v2["estimate"],
                    "v2_interval": v2["interval"],
                    "v2_lower_bound": v2["lower_bound"],
                    "v2_covered": _covers(v2, truth),
                }
            )
    return out


def _share(k: int, n: int) -> dict:
    return {"k": int(k), "n": int(n), "share": k / n if n else None, "ci95": clopper_pearson(int(k), int(n))}


def summarize_domain(runs: Iterable[dict]) -> list[dict]:
    """One row per (chance multiple, generator). Finite truth: v3 coverage among resolvable runs (the
    criterion, ≥ 93%) and the unresolvable count beside it; continuum: the share of runs with a finite
    two-sided interval (criterion ≤ 5%). The v2 figures are over all runs. Shares carry 95%
    Clopper–Pearson intervals."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["chance"], r["generator"]), []).append(r)
    rows = []
    for (c, g), rs in groups.items():
        n = len(rs)
        truth = rs[0]["truth"]
        res = [r for r in rs if r["resolvable"]]
        est = [r["v3_estimate"] for r in res if r["v3_estimate"] is not None]
        row = {
            "chance": c,
            "generator": g,
            "truth": None if math.isinf(truth) else truth,
            "runs": n,
            "achieved_chance_over_f": float(np.mean([r["reference_rate"] / r["f"] for r in rs])),
            "unresolvable": _share(n - len(res), n),
            "v3_one_sided": _share(sum(r["v3_interval"] is None and r["v3_lower_bound"] is not None for r in res), n),
            "v3_median_estimate": float(np.median(est)) if est else None,
            "v2_median_estimate": float(np.median([r["v2_estimate"] for r in rs if r["v2_estimate"] is not None]))
            if any(r["v2_estimate"] is not None for r in rs)
            else None,
        }
        if math.isinf(truth):
            row["v3_finite_interval"] = _share(sum(r["v3_interval"] is not None for r in rs), n)
            row["v2_finite_interval"] = _share(sum(r["v2_interval"] is not None for r in rs), n)
        else:
            row["v3_coverage"] = _share(sum(bool(r["v3_covered"]) for r in res), len(res))
            row["v2_coverage"] = _share(sum(r["v2_covered"] for r in rs), n)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- experiment 2


def chance_edges(faces: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """Pairs (a, b), a < b, of distinct generator faces closer than ``threshold`` ((E, 2) int64): GEMM
    blocks for the candidates, exact float64 distances to decide."""
    x = faces.astype(np.float64)
    x32 = faces.astype(np.float32)
    sq = (x32 * x32).sum(axis=1)
    found = []
    for s in range(0, len(x), block):
        d2 = sq[s : s + block, None] + sq[None, :] - 2.0 * (x32[s : s + block] @ x32.T)
        a, b = np.nonzero(d2 < (threshold * 1.02) ** 2)
        a = a + s
        found.append(np.stack([a[a < b], b[a < b]], axis=1))
    ab = np.concatenate(found).astype(np.int64)
    keep = np.linalg.norm(x[ab[:, 0]] - x[ab[:, 1]], axis=1) < threshold
    return ab[keep]


def first_collision(picks: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per sequence of face picks (rows), the 1-based position at which the first collision appears:
    a face drawn again, or the second face of a chance edge; len + 1 where none does.

    Why per face and not per descriptor: a repeat differs by jitter (~0.02) and a distinct pair by
    ~0.96, so whether two samples collide is decided by their faces, and one pass over sequences of
    128 picks gives P(≥ 1 collision in a batch of s) = P(T ≤ s) at every s at once."""
    b, s = picks.shape
    t = np.full(b, s + 1, np.int64)
    order = np.argsort(picks, axis=1, kind="stable")
    srt = np.take_along_axis(picks, order, axis=1)
    later = np.where(srt[:, 1:] == srt[:, :-1], order[:, 1:] + 1, s + 1)
    t = np.minimum(t, later.min(axis=1))
    if len(edges):
        ends, slot = np.unique(edges, return_inverse=True)
        slot = slot.reshape(edges.shape)
        lookup = np.full(int(max(picks.max(), ends.max())) + 1, -1, np.int64)
        lookup[ends] = np.arange(len(ends))
        at = lookup[picks]
        rows, cols = np.nonzero(at >= 0)
        first = np.full((b, len(ends)), s + 1, np.int64)  # first position of each edge face (s + 1: absent)
        np.minimum.at(first, (rows, at[rows, cols]), cols + 1)
        both = np.maximum(first[:, slot[:, 0]], first[:, slot[:, 1]])
        t = np.minimum(t, both.min(axis=1))
    return t


def true_s50(p: np.ndarray, edges: np.ndarray, rng: np.random.Generator, sequences: int = 10000, s_max: int = 160):
    """The generator's true 50% crossing: the batch size where P(≥ 1 collision) = ½, interpolated
    linearly between integer sizes, from ``sequences`` Monte Carlo sequences of draws (P(s) = share with
    first collision ≤ s). Also returns P at the CROSSING_SIZES."""
    t = np.concatenate(
        [first_collision(rng.choice(len(p), (2000, s_max), p=p), edges) for _ in range(sequences // 2000)]
    )
    sizes = np.arange(1, s_max + 1)
    prob = np.searchsorted(np.sort(t), sizes, side="right") / len(t)
    j = int(np.argmax(prob >= 0.5))
    if prob[j] < 0.5 or j == 0:
        return math.nan, {}
    s50 = sizes[j - 1] + (0.5 - prob[j - 1]) / (prob[j] - prob[j - 1])
    return float(s50), {int(s): float(prob[s - 1]) for s in CROSSING_SIZES if s <= s_max}


def crossing_run(
    seed: int,
    generators: Sequence[str] = CROSSING_GENERATORS,
    trials: Sequence[int] = CROSSING_TRIALS,
    sizes: Sequence[int] = CROSSING_SIZES,
    sw: StudyWorld | None = None,
    sequences: int = 10000,
) -> list[dict]:
    """One world (``sw``, else :func:`study_world` of ``seed``; chance rate f, no contraction); per
    generator, ``max(trials)`` independent trial batches at each size, and one
    :func:`support.crossing_fit` per design on the first ``t`` trials of each size (so the designs of
    one seed are nested; across seeds everything is new)."""
    sw = sw or study_world(seed)
    world, pt = sw.world, sw.pt
    out = []
    for gi, g in enumerate(generators):
        p = generator_probabilities(g)
        faces, sample = modal_faces(world, p, seed * 100 + gi)
        truth, p_at = true_s50(p, chance_edges(faces, pt.threshold), np.random.default_rng([seed, 11, gi]), sequences)
        rng = np.random.default_rng([seed, 13, gi])
        hit = {s: [len(_batch(sample(s, rng)[0], pt.threshold).pairs) > 0 for _ in range(max(trials))] for s in sizes}
        for t in trials:
            ss = [s for s in sizes for _ in range(t)]
            yy = [y for s in sizes for y in hit[s][:t]]
            fit = support.crossing_fit(ss, yy, pt.per_pair_false_match_rate, sizes=ss, seed=seed)
            iv = fit["interval"]
            two, covered = _score(truth, iv)
            out.append(
                {
                    "seed": seed,
                    "generator": g,
                    "trials": t,
                    "truth_s50": truth,
                    "p_true": p_at,
                    "share_collided": {s: float(np.mean(hit[s][:t])) for s in sizes},
                    "s50_fit": fit["s50"],
                    "s50_empirical": fit.get("empirical_s50"),
                    "interval": iv,
                    "two_sided": two,
                    "covered": covered,
                }
            )
    return out


def _score(truth: float, iv: list | None) -> tuple[bool, bool | None]:
    """(two-sided?, does the printed statement hold?) for an s50 interval; (False, None): none printed."""
    two = iv is not None and iv[0] is not None and iv[1] is not None
    if iv is None:
        return False, None
    return two, bool((iv[0] is None or iv[0] <= truth) and (iv[1] is None or truth <= iv[1]))


def rescore_crossing(runs: Iterable[dict]) -> list[dict]:
    """The runs of :func:`crossing_run` with the s50 interval recomputed by the current
    :func:`support.s50_by_trials` from their per-size collision counts.

    Why this is the same experiment: the model-free interval reads the trials only through the number
    that collided at each size (the bootstrap resamples each size's trials), and the runs record those;
    so a changed interval rule can be scored on the same worlds and trials without redrawing them."""
    out = []
    for r in runs:
        t = r["trials"]
        sizes: list[int] = []
        ys: list[bool] = []
        for s, share in r["share_collided"].items():
            k = int(round(share * t))
            sizes += [int(s)] * t
            ys += [True] * k + [False] * (t - k)
        iv = support.s50_by_trials(sizes, ys, seed=r["seed"])["interval"]
        two, covered = _score(r["truth_s50"], iv)
        out.append(dict(r, interval=iv, two_sided=two, covered=covered))
    return out


def summarize_crossing(runs: Iterable[dict]) -> list[dict]:
    """One row per (generator, trials per size): coverage of the true s50 among runs with a two-sided
    interval (criterion ≥ 93%), the one-sided bounds and how often they hold, every printed statement
    together (``printed_holds``), the share with no interval, and the truth's spread over worlds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["generator"], r["trials"]), []).append(r)
    rows = []
    for (g, t), rs in groups.items():
        n = len(rs)
        two = [r for r in rs if r["two_sided"]]
        one = [r for r in rs if r["interval"] is not None and not r["two_sided"]]
        truth = np.array([r["truth_s50"] for r in rs])
        emp = [r["s50_empirical"] for r in two if r["s50_empirical"] is not None]
        rows.append(
            {
                "generator": g,
                "trials_per_size": t,
                "runs": n,
                "true_s50_median": float(np.median(truth)),
                "true_s50_range": [float(truth.min()), float(truth.max())],
                "coverage": _share(sum(bool(r["covered"]) for r in two), len(two)),
                "no_interval": _share(sum(r["interval"] is None for r in rs), n),
                "one_sided": _share(len(one), n),
                "one_sided_holds": _share(sum(bool(r["covered"]) for r in one), len(one)),
                "printed_holds": _share(sum(bool(r["covered"]) for r in two + one), len(two) + len(one)),
                "median_empirical_s50": float(np.median(emp)) if emp else None,
                "median_width": float(np.median([r["interval"][1] - r["interval"][0] for r in two])) if two else None,
            }
        )
    return rows
