"""Known-truth simulation study of the audit's v3 tests (service.audit.study_tests).

    python scripts/sim_tests.py [--study identity primary verdict omissions] [--seeds 300] [--json OUT]
    python scripts/sim_tests.py --seeds 50 --first-seed 50 --json chunk2.json   (one chunk)
    python scripts/sim_tests.py --merge chunk*.json --json all.json            (the chunks' table)

Each run draws its own world (training set, hubs, probe) and generated sample, so every rate is over
worlds. Studies:

  identity   identity concentration (permutation test) under H0 at n / identities = 0.1, 0.5, 1, 2,
             with Zipf hubs over 2,000 identities; power against 3 people taking 3% / 6% of the faces
  primary    the same-person test, plain (faces independent) and v3 (clusters + look-alike neighbours),
             at 2, 1-10 and 10 photos per identity (1,000 identities), n = 200 / 1,000 / 3,000, and
             its power against 1% re-rendered training copies at n = 1,000
  verdict    the whole verdict (verdict.decide over the five tests) on clean generators, n = 1,000,
             2 and 10 photos per identity ("any finding" = the primary or any secondary rejects)
  ct         (diagnostic, not in the default) the spread of C_T's z on clean generators at 2 and 10 photos
             per identity, with the audit's held-out sample and with one face per identity
  deff       (diagnostic, not in the default) the design effect the null share's errors show across worlds
             (against each world's stranger rate on 20,000 new people) beside v3's estimate, 2 / 1-10 / 10
  split      (not in the default) the held-out split's five tests (service.stats.split) beside the training
             null's, at 2 and 10 photos per identity, half the people held out: new people, an off-domain
             generator (faces contracted toward the mean), look-alikes of 20 indexed people, 1% copies
  omissions  the omission rate's coverage and type-I error at 10 and 20 photos per identity (10,000
             training faces): v3 (held-out and training identities resampled, as the audit does), its
             fallback for indexes without per-identity counts (identity design effects), and v2 (faces
             independent)

primary and verdict share their worlds when run together. A run's JSON keeps every simulated audit,
so chunks of seeds (--first-seed) can be run apart and merged (--merge). Rates are printed with 95% Clopper-Pearson
intervals; --json writes every row. FAISS runs on one thread (the study is meant to run niced on a
shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

STUDIES = ("identity", "primary", "verdict", "omissions", "ct", "deff", "split")
DEFAULT = ("identity", "primary", "verdict", "omissions")


def pct(r: dict) -> str:
    """A rate and its 95% Clopper–Pearson interval, in percent."""
    lo, hi = r["ci"]
    return f"{100 * r['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def print_identity(rows: list[dict]) -> None:
    print(
        f"\n{'identity concentration':34} {'n':>6} {'n/ids':>6} {'reject at 5%':>24} {'max count':>9} {'distinct':>8}"
    )
    for r in rows:
        print(
            f"{r['setting']:34} {r['n']:6d} {r['ratio']:6.2g} {pct(r['reject']):>24} "
            f"{r['max_count_median']:9.0f} {r['distinct_median']:8.0f}"
        )


def print_primary(rows: list[dict]) -> None:
    print(f"\n{'same-person test':22} {'setting':22} {'n':>5} {'plain':>24} {'v3':>24} {'v3 at 0.8a':>24} {'deff':>5}")
    for r in rows:
        print(
            f"{r['world']:22} {r['setting']:22} {r['n']:5d} {pct(r['plain']):>24} {pct(r['v3']):>24} "
            f"{pct(r['v3_at_primary_level']):>24} {r['deff_median']:5.2f}"
        )


def print_verdict(rows: list[dict]) -> None:
    print(f"\n{'all-null verdict, n = 1,000':28} {'any finding':>24} {'primary':>24}  secondary findings")
    for r in rows:
        sec = ", ".join(f"{k} {100 * v['rate']:.1f}%" for k, v in r["by_test"].items() if k != "same_person")
        print(f"{r['world']:28} {pct(r['any_finding']):>24} {pct(r['primary']):>24}  {sec}")


def print_omissions(rows: list[dict]) -> None:
    versions = [("v3", "v3 (identities)"), ("v3_deff", "design effects"), ("v2", "v2 (faces)")]
    head = f"\n{'omissions':18} {'setting':20}"
    for _, label in versions:
        head += f" {label + ' coverage':>26} {'type-I / power':>24}"
    print(head + "  half-width v3 / deff / v2, estimate sd; deff pos/neg/train")
    for r in rows:
        d = r["deff_median"]
        line = f"{r['world']:18} {r['setting']:20}"
        for v, _ in versions:
            if v in r:
                line += f" {pct(r[v]['coverage']):>26} {pct(r[v]['reject']):>24}"
        hw = " / ".join(f"{r[v]['half_width_median']:.4f}" for v, _ in versions if v in r)
        sd = r.get("estimate_sd")
        print(f"{line}  {hw}, {sd if sd is None else f'{sd:.4f}'}; {d['pos']:.1f}/{d['neg']:.1f}/{d['training']:.1f}")


def tables(raw: dict) -> dict:
    """The rows of each study from its raw runs (one chunk's, or several chunks' merged); prints them."""
    from service.audit import study_tests as st

    rows: dict = {}
    if raw.get("identity"):
        rows["identity"] = st.identity_rows(raw["identity"])
        print_identity(rows["identity"])
    if raw.get("omissions"):
        rows["omissions"] = st.omission_rows(raw["omissions"])
        print_omissions(rows["omissions"])
    worlds = raw.get("worlds") or {}
    if worlds:
        rows["primary"] = st.primary_rows(worlds)
        print_primary(rows["primary"])
        rows["verdict"] = st.verdict_rows(worlds)
        if rows["verdict"]:
            print_verdict(rows["verdict"])
    if raw.get("ct"):
        rows["ct"] = st.ct_null_rows(raw["ct"])
        print_ct(rows["ct"])
    if raw.get("split"):
        from service.audit.study_split import split_rows

        rows["split"] = split_rows(raw["split"])
        print_split(rows["split"])
    if raw.get("deff"):
        rows["deff"] = st.null_share_rows(raw["deff"])
        for r in rows["deff"]:
            lo, hi = r["empirical_deff_ci"]
            print(
                f"{r['world']:36} {r['worlds']} worlds: null share {r['null_share_mean']:.4f}, stranger rate "
                f"{r['stranger_rate_mean']:.4f}; design effect across worlds {r['empirical_deff']:.2f} "
                f"[{lo:.2f}, {hi:.2f}], v3's median {r['v3_deff_median']:.2f}"
            )
    return rows


def print_split(rows: list[dict]) -> None:
    print(
        f"\n{'held-out split':22} {'generator':12} {'split: any':>24} {'split: primary':>24} {'training null: any':>24}"
    )
    for r in rows:
        print(
            f"{r['world']:22} {r['generator']:12} {pct(r['split_any']):>24} {pct(r['split_primary']):>24} "
            f"{pct(r['training_any']):>24}"
        )


def merge(paths: list[str]) -> dict:
    """Concatenate the raw runs of several chunks (each run is one seed of one setting)."""
    raw: dict = {"identity": [], "omissions": [], "worlds": {}, "ct": {}, "deff": {}, "split": {}}
    for path in paths:
        with open(path) as f:
            r = json.load(f)["raw"]
        raw["identity"] += r.get("identity", [])
        raw["omissions"] += r.get("omissions", [])
        for key in ("worlds", "ct", "deff", "split"):
            for name, runs in (r.get(key) or {}).items():
                raw[key].setdefault(name, []).extend(runs)
    return raw


def print_ct(rows: list[dict]) -> None:
    head = (
        f"\n{'C_T on clean generators':26} {'held-out sample':22} {'z mean':>6} {'z sd':>5} "
        f"{'p <= 5%':>24} {'p <= a/20':>24}"
    )
    lines = [
        f"{r['world']:26} {r['held_out']:22} {r['z_mean']:6.2f} {r['z_sd']:5.2f} {pct(r['reject']):>24} "
        f"{pct(r['reject_secondary_level']):>24}"
        for r in rows
    ]
    print("\n".join([head, *lines]))


def main(argv: list[str] | None = None) -> int:
    summary, _, rest = __doc__.partition("\n\n")
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=summary, epilog=rest.split("\n\n", 1)[1], formatter_class=raw)
    p.add_argument(
        "--study", nargs="+", choices=STUDIES, default=list(DEFAULT), help="which studies (default: all but ct)"
    )
    p.add_argument("--seeds", type=int, default=300, help="simulated worlds (audits) per row")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first world (to run the study in chunks)")
    p.add_argument("--json", metavar="OUT", help="write the rows and every run as JSON (rewritten after each study)")
    p.add_argument(
        "--worlds",
        nargs="+",
        metavar="SPEC",
        help="training sets for primary/verdict (keys of study_tests.SPECS: 2, 1-10, 10, 2x5000); "
        "default 2, 1-10, 10 (verdict: 2 and 10)",
    )
    p.add_argument("--held-out-share", type=float, default=0.5, help="split: the share of each world's people held out")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="no simulation: merge the runs of earlier --json files")
    a = p.parse_args(argv)

    import faiss

    from service.audit import study_tests as st

    faiss.omp_set_num_threads(1)
    t0 = time.time()
    out: dict = {"command": " ".join(sys.argv), "load_start": os.getloadavg(), "raw": {}, "seconds": {}}

    def save() -> None:
        out["seconds"]["total"] = time.time() - t0
        out["load_now"] = os.getloadavg()
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)

    if a.merge:
        out["raw"] = merge(a.merge)
        out["merged"] = a.merge
        out["rows"] = tables(out["raw"])
        save()
        return 0
    print(f"{a.seeds} worlds per row from seed {a.first_seed}; load {os.getloadavg()[0]:.1f} at start")
    want_p, want_v = "primary" in a.study, "verdict" in a.study
    if want_p or want_v:
        t = time.time()
        names = a.worlds or (("2", "1-10", "10") if want_p else ("2", "10"))
        verdict_specs = [st.SPECS[k].name for k in names if k in ("2", "10")] if want_v else []
        specs = [st.SPECS[k] for k in names]
        out["raw"]["worlds"] = st.run_worlds(specs, a.seeds, verdict_specs, first_seed=a.first_seed, progress=log)
        out["seconds"]["primary+verdict"] = time.time() - t
        save()
    if "omissions" in a.study:
        t = time.time()
        out["raw"]["omissions"] = st.omission_runs(a.seeds, first_seed=a.first_seed)
        out["seconds"]["omissions"] = time.time() - t
        save()
        log("omissions done")
    if "identity" in a.study:
        t = time.time()
        out["raw"]["identity"] = st.identity_runs(a.seeds, first_seed=a.first_seed)
        out["seconds"]["identity"] = time.time() - t
        save()
        log("identity done")
    if "ct" in a.study:
        t = time.time()
        out["raw"]["ct"] = {
            st.SPECS[k].name: [st.ct_null_run(st.SPECS[k], s) for s in range(a.first_seed, a.first_seed + a.seeds)]
            for k in ("2", "10")
        }
        out["seconds"]["ct"] = time.time() - t
        save()
        log("ct done")
    if "deff" in a.study:
        t = time.time()
        out["raw"]["deff"] = {
            st.SPECS[k].name: [st.null_share_run(st.SPECS[k], s) for s in range(a.first_seed, a.first_seed + a.seeds)]
            for k in (a.worlds or ("2", "1-10", "10"))
        }
        out["seconds"]["deff"] = time.time() - t
        save()
        log("deff done")
    if "split" in a.study:
        from service.audit.study_split import split_study

        t = time.time()
        out["raw"]["split"] = split_study(
            a.seeds, a.worlds or ("2", "10"), first_seed=a.first_seed, progress=log, share=a.held_out_share
        )
        out["seconds"]["split"] = time.time() - t
        save()
    out["rows"] = tables(out["raw"])
    save()
    print(f"\n{time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
