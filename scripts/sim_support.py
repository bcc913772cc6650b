"""Simulation study of the audit's statistics with known truth (descriptor level, no images).

    python scripts/sim_support.py [--seeds 200] [--json OUT]

Prints two tables: (1) the coverage of the support estimate's 95% interval for uniform, Zipf and
single-mode generators of known effective support 1/Σp², next to the Poisson (Garwood) interval of
the first version; (2) the detection rates of the copy test, the same-person test and C_T for a
generator of new people that copies 1% of its faces, one that copies nothing, and one that copies
a little everywhere. Everything runs the audit's own functions (service.audit.simulate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from service.audit import simulate
from service.stats import support


def garwood_covers(r: dict, f: float, sc: simulate.Scenario) -> bool:
    """The first version's interval: the exact Poisson interval on the count, no chance correction."""
    pairs = sum(n * (n - 1) / 2 for n in sc.batches)
    lo, hi = support.garwood(r["pairs"])
    m_lo = pairs / hi
    m_hi = pairs / lo if lo > 0 else np.inf
    return m_lo <= r["truth"] <= m_hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--seeds", type=int, default=200, help="simulated audits per row")
    p.add_argument("--copy-n", type=int, default=1000, help="generated faces per copy-test audit")
    p.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    a = p.parse_args(argv)
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
