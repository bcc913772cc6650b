"""Simulation study of the audit's statistics with known truth (descriptor level, no images).

    python scripts/sim_support.py [--study v2|domain|crossing|v3] [--seeds 200] [--json OUT]

--study v3 (= domain and crossing on one world per seed): the audit v3 support statistics in worlds
they were not designed on (service.audit.study_support): (domain) a generated domain where faces of
different people collide by chance at 1, 10, 50 × f, with a same-domain reference of real strangers:
coverage of the re-based support interval against 1/Σp² (uniform, 50 small modes) and the share of
finite intervals for a continuum-only generator, beside the v2 f-based estimate; (crossing) coverage
of the model-free s50 interval from trials at s = 16, 32, 64, 128 against the Monte Carlo s50.

--study v2 (the default): prints two tables: (1) the coverage of the support estimate's 95%
interval for uniform, Zipf and single-mode generators of known effective support 1/Σp², next to
the Poisson (Garwood) interval of the first version; (2) the detection rates of the copy test, the
same-person test and C_T for a generator of new people that copies 1% of its faces, one that
copies nothing, and one that copies a little everywhere. Everything runs the audit's own
functions (service.audit.simulate).

The path insert below is kept: the shared .venv's editable install points at one checkout (main),
so a script run from another worktree would otherwise import that checkout's service package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from service.audit import simulate, study_support
from service.stats import support


def garwood_covers(r: dict, f: float, sc: simulate.Scenario) -> bool:
    """The first version's interval: the exact Poisson interval on the count, no chance correction."""
    pairs = sum(n * (n - 1) / 2 for n in sc.batches)
    lo, hi = support.garwood(r["pairs"])
    m_lo = pairs / hi
    m_hi = pairs / lo if lo > 0 else np.inf
    return m_lo <= r["truth"] <= m_hi


def _pct(s: dict) -> str:
    """A share with its 95% Clopper–Pearson interval, e.g. ``95.3% (92.3–97.4) 286/300``."""
    if not s["n"]:
        return "–"
    lo, hi = s["ci95"]
    return f"{s['share']:.1%} ({lo:.1%}–{hi:.1%}) {s['k']}/{s['n']}"


def print_domain(rows: list[dict]) -> None:
    print(
        f"\n{'c':>3} {'r/f':>5} {'generator':24} {'truth':>6} {'v3 covered (95% CP)':>28} {'unresolvable':>14} "
        f"{'v3 median':>9} {'v2 covered (95% CP)':>28} {'v2 median':>9}"
    )
    for r in rows:
        kind = "v3_coverage" if r["truth"] is not None else "v3_finite_interval"
        v2 = "v2_coverage" if r["truth"] is not None else "v2_finite_interval"
        truth = f"{r['truth']:6.0f}" if r["truth"] is not None else "   inf"
        label = "" if r["truth"] is not None else " finite:"
        print(
            f"{r['chance']:>3} {r['achieved_chance_over_f']:5.1f} {r['generator']:24} {truth} "
            f"{label + _pct(r[kind]):>28} {r['unresolvable']['k']:>8}/{r['unresolvable']['n']:<5} "
            f"{r['v3_median_estimate'] or float('nan'):9.0f} {label + _pct(r[v2]):>28} "
            f"{r['v2_median_estimate'] or float('nan'):9.0f}"
        )


def print_crossing(rows: list[dict]) -> None:
    print(
        f"\n{'generator':22} {'trials':>6} {'true s50':>9} {'two-sided covered (95% CP)':>28} "
        f"{'one-sided holds':>26} {'no interval':>24} {'median width':>12}"
    )
    for r in rows:
        print(
            f"{r['generator']:22} {r['trials_per_size']:>6} {r['true_s50_median']:9.1f} {_pct(r['coverage']):>28} "
            f"{_pct(r['one_sided_holds']):>26} {_pct(r['no_interval']):>24} {r['median_width'] or float('nan'):12.1f}"
        )


def run_v3(studies: set[str], seeds: int, first: int, out: str | None) -> int:
    """The v3 studies, one world per seed shared by both; the JSON is rewritten every 10 seeds so a cut
    run keeps what it reached."""
    t0 = time.time()
    domain: list[dict] = []
    crossing: list[dict] = []

    def dump(reached: int) -> dict:
        res = {
            "seeds": reached,
            "first_seed": first,
            "wall_s": time.time() - t0,
            "cpu_s": time.process_time(),
            "load_1min": os.getloadavg()[0],
            "contraction": study_support.CONTRACTION,
            "domain": study_support.summarize_domain(domain) if domain else [],
            "crossing": study_support.summarize_crossing(crossing) if crossing else [],
            "domain_runs": domain,
            "crossing_runs": crossing,
        }
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=1, default=float))
        return res

    for i, seed in enumerate(range(first, first + seeds)):
        sw = study_support.study_world(seed)
        if "domain" in studies:
            domain += study_support.domain_run(seed, sw=sw)
        if "crossing" in studies:
            crossing += study_support.crossing_run(seed, sw=sw)
        if (i + 1) % 10 == 0:
            dump(i + 1)
            print(f"{i + 1} seeds, {time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    res = dump(seeds)
    if domain:
        print_domain(res["domain"])
    if crossing:
        print_crossing(res["crossing"])
    print(f"\n{res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU, load {res['load_1min']:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--study",
        choices=("v2", "domain", "crossing", "v3"),
        default="v2",
        help="v2: the v2 support and copy-test tables; domain / crossing: one v3 experiment; v3: both",
    )
    p.add_argument("--seeds", type=int, default=200, help="simulated audits (v3: worlds) per row")
    p.add_argument("--first-seed", type=int, default=0, help="v3 studies: the first world's seed")
    p.add_argument(
        "--rescore",
        metavar="IN",
        help="no new runs: re-score the crossing runs of a --study v3/crossing JSON with the current s50 interval",
    )
    p.add_argument("--copy-n", type=int, default=1000, help="generated faces per copy-test audit")
    p.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    a = p.parse_args(argv)
    if a.rescore:
        runs = study_support.rescore_crossing(json.loads(Path(a.rescore).read_text())["crossing_runs"])
        rows = study_support.summarize_crossing(runs)
        print_crossing(rows)
        if a.json:
            Path(a.json).write_text(json.dumps({"rescored_from": a.rescore, "crossing": rows, "crossing_runs": runs}))
        return 0
    if a.study != "v2":
        studies = {"domain", "crossing"} if a.study == "v3" else {a.study}
        return run_v3(studies, a.seeds, a.first_seed, a.json)
    t0 = time.time()
    world = simulate.make_world(2000, 2, seed=0)
    _, th = simulate.world_thresholds(world)
    f = th.collision_semantic.per_pair_false_match_rate
    print(
        f"world: {len(world.train)} training photos of 2000 identities; collision threshold "
        f"{th.collision_semantic.threshold:.4f} at f = {f:.2e}; load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    print(f"\n{'generator and design':44} {'truth':>8} {'median est.':>12} {'covered':>8} {'v1 Garwood':>10}")
    for sc in simulate.SCENARIOS:
        runs = [simulate.support_run(world, th, sc, seed) for seed in range(a.seeds)]
        cov = float(np.mean([r["covered"] for r in runs]))
        g = float(np.mean([garwood_covers(r, f, sc) for r in runs]))
        est = [r["estimate"] for r in runs if r["estimate"] is not None]
        rows.append(
            {
                "scenario": sc.name,
                "truth": runs[0]["truth"],
                "coverage": cov,
                "garwood_v1": g,
                "median_estimate": float(np.median(est)) if est else None,
                "seeds": a.seeds,
            }
        )
        print(
            f"{sc.name:44} {runs[0]['truth']:8.0f} {rows[-1]['median_estimate'] or float('nan'):12.0f} "
            f"{cov:8.1%} {g:10.1%}",
            flush=True,
        )
    print(f"\n{'generator':44} {'copy test p<.05':>16} {'same person p<.05':>18} {'C_T p<.05':>10} {'median C_T':>11}")
    copy_rows = []
    for name, rate, spread in (
        ("copies 1% of faces (new people otherwise)", 0.01, 0.0),
        ("copies nothing", 0.0, 0.0),
        ("every face a training photo + noise (0.025)", 0.0, 0.025),
    ):
        runs = [simulate.copy_run(rate, a.copy_n, seed, spread) for seed in range(a.seeds)]
        r = {
            "generator": name,
            "copy_test": float(np.mean([x["p_copies"] < 0.05 for x in runs])),
            "same_person": float(np.mean([x["p_same_person"] < 0.05 for x in runs])),
            "ct": float(np.mean([x["p_ct"] is not None and x["p_ct"] < 0.05 for x in runs])),
            "median_ct": float(np.median([x["ct"] for x in runs if x["ct"] is not None])),
            "seeds": a.seeds,
        }
        copy_rows.append(r)
        print(
            f"{name:44} {r['copy_test']:16.1%} {r['same_person']:18.1%} {r['ct']:10.1%} {r['median_ct']:11.2f}",
            flush=True,
        )
    print(f"\n{time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"support": rows, "copies": copy_rows, "n_copy": a.copy_n}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
