"""Known-truth study of the held-out split's tests (:mod:`service.stats.split`) beside the training-null tests.

Why: the held-out split exists because nulls made of real faces fail when generated faces come from
another domain. So the study puts both in the same descriptor worlds (:mod:`service.audit.simulate`,
2 or 10 photos per identity) where the index's people are split at random into trained and held out
(half each), and audits four generators that never saw the index:

* ``new people``: the training domain's strangers (both nulls should hold);
* ``off-domain``: the same contracted toward the faces' mean, x' = μ + λ(x − μ), λ = 0.896 (the
  50·f chance-rate domain of the support study): every face a little closer to every real person, as
  a blurry or low-resolution generator's;
* ``look-alikes``: faces near 20 people of the index drawn without regard to the split (a generator
  with favourite faces that happen to be indexed people: heavy hubs);

and one that copies: ``1% copies``, a share of re-rendered photos of *trained* people over new people.
Each run records the split tests' p-values, the graph's decisions over them, and the training-null
decisions (:func:`service.audit.study_tests.verdict_run`) on the same faces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..stats import split, verdict
from . import simulate
from .study_tests import ALPHA, SPECS, WorldSpec, nearest, rate_row, world_setup
from .study_tests import verdict_run as training_verdict

GENERATORS = ("new people", "off-domain", "look-alikes", "1% copies")
CONTRACTION = 0.896  # the support study's 50·f domain
LOOKALIKES = 20
HELD_OUT_SHARE = 0.5
TESTS = (verdict.PRIMARY, *verdict.SECONDARY)


def _sample(world: simulate.World, trained: np.ndarray, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` generated descriptors of ``kind`` (see the module docstring)."""
    x = world.strangers(n, rng)
    if kind == "off-domain":
        mu = world.train.mean(axis=0)
        return (mu + CONTRACTION * (x - mu)).astype(np.float32)
    if kind == "look-alikes":
        people = rng.choice(int(world.train_ids.max()) + 1, LOOKALIKES, replace=False)
        rows = np.flatnonzero(np.isin(world.train_ids, people))
        src = rng.choice(rows, n)
        return world.photos(world.train[src], rng)  # another photo's worth of noise around an indexed photo
    if kind == "1% copies":
        copy = rng.random(n) < 0.01
        rows = np.flatnonzero(trained[world.train_ids])
        src = rng.choice(rows, int(copy.sum()))
        x[copy] = world.train[src] + rng.normal(scale=simulate.COPY_NOISE, size=(int(copy.sum()), simulate.DIM))
        return x.astype(np.float32)
    return x


def split_run(
    spec: WorldSpec, seed: int, n: int = 1000, kinds: Iterable[str] = GENERATORS, share: float = HELD_OUT_SHARE
) -> dict:
    """One world, its random split (``share`` of the people held out), and an audit of each generator kind."""
    world, cal, th, nulls, index = world_setup(spec, 7000 + seed)
    rng = np.random.default_rng([seed, 41])
    people = int(world.train_ids.max()) + 1
    held = rng.choice(people, int(round(share * people)), replace=False)
    trained = np.ones(people, bool)
    trained[held] = False
    images = {str(i): int(k) for i, k in enumerate(np.bincount(world.train_ids))}
    out = {}
    for kind in kinds:
        x = _sample(world, trained, kind, n, rng)
        d, row = nearest(world, index, x)
        ident = world.train_ids[row]
        top1 = [{"semantic": (str(i), float(v)), "pixel": None} for i, v in zip(ident, d)]
        rule = {"identity": th.identity, "semantic_copy": th.semantic_copy, "pixel_copy": None}
        res = split.split_tests(
            split.landings(top1, rule), images, {str(h) for h in held}, permutations=1999, seed=seed
        )
        p = {t: res["tests"][t]["p_value"] if t in res["tests"] else None for t in TESTS}
        w, g = verdict.weights_and_graph(TESTS)
        dec = verdict.graphical(p, w, g, ALPHA)
        base = training_verdict(world, cal, th, nulls, x, d, row, seed)
        out[kind] = {
            "split_p": p,
            "split_rejected": [t for t in TESTS if dec[t]["reject"]],
            "training_rejected": base["rejected"],
        }
    return out


def split_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per world and generator: the split's any-finding and primary rates beside the training null's."""
    rows = []
    for name, rs in runs.items():
        for kind in rs[0]:
            vals = [r[kind] for r in rs]
            rows.append(
                {
                    "study": "split",
                    "world": name,
                    "generator": kind,
                    "split_any": rate_row(bool(v["split_rejected"]) for v in vals),
                    "split_primary": rate_row(verdict.PRIMARY in v["split_rejected"] for v in vals),
                    "split_by_test": {t: rate_row(t in v["split_rejected"] for v in vals) for t in TESTS},
                    "training_any": rate_row(bool(v["training_rejected"]) for v in vals),
                    "training_primary": rate_row(verdict.PRIMARY in v["training_rejected"] for v in vals),
                }
            )
    return rows


def split_study(
    seeds: int,
    specs: Iterable[str] = ("2", "10"),
    first_seed: int = 0,
    progress: Callable[[str], None] | None = None,
    n: int = 1000,
    share: float = HELD_OUT_SHARE,
) -> dict[str, list[dict]]:
    """``seeds`` worlds of each spec, ``share`` of their people held out; the raw runs (:func:`split_rows`
    makes the table)."""
    out = {}
    for key in specs:
        spec = SPECS[key]
        name = spec.name + ("" if share == HELD_OUT_SHARE else f", {100 * share:.0f}% held out")
        out[name] = [split_run(spec, s, n, share=share) for s in range(first_seed, first_seed + seeds)]
        if progress:
            progress(f"split, {name}: {seeds} worlds")
    return out
