"""Do audits catch generators that really memorize, and stay silent on controls? Known-membership benchmark.

Audits every checkpoint of each training run (``scripts/train_generator.py``; its manifest names the
members) in one series call against one index and one reference, then scores the last checkpoint
against the truth (:mod:`service.audit.study_memorization`) and prints one row per run:

    python scripts/bench_memorization.py --runs build/mem/dcgan_S build/mem/dcgan_Sprime \\
        --index build/mem/index-noSprime --reference-real ../shared/data/celeba_test \\
        --reference-downscale 32 --n 300 --json build/mem/bench.json

A memorizing run trains on people in the index; a control run on people the index leaves out
(``python -m indexer build --exclude-identities MEMBERS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from indexer.store import load_index
from service.audit import audit
from service.audit.study_memorization import adapter_spec, members_of, membership_scores
from service.generators.train import hold_out, untrained


def _pct(block: dict | None) -> str:
    if not block or block.get("share") is None:
        return "–"
    lo, hi = block["interval"]
    return f"{100 * block['share']:.0f}% ({block['count']}/{block['faces']}; {100 * lo:.0f}–{100 * hi:.0f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="training-run folders (each with manifest.json)")
    ap.add_argument("--index", required=True, help="the audited index")
    ap.add_argument("--reference-real", help="real faces of people not in the index, in the generators' domain")
    ap.add_argument("--reference-downscale", type=int, help="render the reference at this size (32 for 32 px)")
    ap.add_argument("--reference-detector", default="aligned", help="detector for the reference faces")
    ap.add_argument("--n", type=int, default=300, help="samples audited per checkpoint")
    ap.add_argument("--trials", type=int, default=5, help="birthday trials per batch size")
    ap.add_argument("--batch-sizes", default="16,32", help="birthday batch sizes")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps for the diffusers runs")
    ap.add_argument("--reports", default="build/mem/reports", help="folder for each run's HTML and JSON report")
    held = ap.add_mutually_exclusive_group()
    held.add_argument(
        "--held-out-share",
        type=float,
        help="hold out this share of the index's people (never a run's members) and decide with the held-out "
        "split (--held-out-identities; the list is written beside each report)",
    )
    held.add_argument(
        "--held-out-untrained",
        action="store_true",
        help="decide with the split the run really made: every indexed person but its members is held out (a run "
        "without members in the index: as many random people stand in for them)",
    )
    ap.add_argument(
        "--last-only", action="store_true", help="audit only each run's last checkpoint (no trend across training)"
    )
    ap.add_argument("--json", help="write the table's numbers here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    index = load_index(Path(args.index))
    identity_of = {r["file"]: r["identity"] for r in index.rows}
    reports = Path(args.reports)
    results = []
    for run in map(Path, args.runs):
        manifest = json.loads((run / "manifest.json").read_text())
        series = [(c["step"], adapter_spec(run, manifest, c)) for c in manifest["checkpoints"]]
        series = series[-1:] if args.last_only else series
        held = None
        if args.held_out_share or args.held_out_untrained:
            people, members = {i for i in identity_of.values() if i}, members_of(manifest)
            listed = (
                untrained(people, members, 0)
                if args.held_out_untrained
                else hold_out(people, args.held_out_share, 0, members)
            )
            held = reports / f"{run.name}.held_out.txt"
            held.parent.mkdir(parents=True, exist_ok=True)
            held.write_text("\n".join(listed) + "\n")
        t0 = time.perf_counter()
        res = audit(
            generator=series,
            index=args.index,
            n=args.n,
            trials=args.trials,
            batch_sizes=tuple(int(s) for s in args.batch_sizes.split(",")),
            detector="aligned",
            steps=args.steps,
            reference_real=args.reference_real,
            reference_downscale=args.reference_downscale,
            reference_detector=args.reference_detector,
            held_out_identities=str(held) if held else None,
            progress=False,
        )
        res.to_html(reports / f"{run.name}.html")
        res.to_json(reports / f"{run.name}.json")
        scores = membership_scores(res.data, identity_of, members_of(manifest))
        trend = res.data["trend"]
        results.append(
            {
                "run": str(run),
                "family": manifest["family"],
                "training_steps": manifest["steps"],
                "seconds": time.perf_counter() - t0,
                "final": scores,
                "trend": trend,
            }
        )
        print(_row(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print("\n" + markdown(results))
    return 0


def markdown(results: list[dict]) -> str:
    """The README's table: one row per run, the last checkpoint scored against the truth."""
    head = (
        "| run | members in index | primary p, last checkpoint | any finding (all checkpoints) | same-person matches "
        "naming a member | copies naming a member | leaking people who are members | pixel copies, first → last "
        "checkpoint | first detected (step) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        f, cks = r["final"], r["trend"]["checkpoints"]
        any_finding = [c["step"] for c in cks if "no evidence" not in (c.get("verdict") or "")]
        pix = [(c.get("copies") or {}).get("pixel") for c in cks]
        lines.append(
            f"| {r['family']} {Path(r['run']).name} ({r['training_steps']} steps) "
            f"| {f['members_in_index']}/{f['members']} "
            f"| {f['primary_p']:.2g} | {', '.join(map(str, any_finding)) or 'none'} | {_pct(f['same_person'])} "
            f"| {_pct(f['copies'])} | {_pct(f['leaks'])} | {_share(pix[0])} → {_share(pix[-1])} "
            f"| {(r['trend'].get('first_detected') or {}).get('step', 'none')} |"
        )
    return "\n".join(lines)


def _row(r: dict) -> str:
    f, t = r["final"], r["trend"]
    first = (t.get("first_detected") or {}).get("step")
    by_step = ", ".join(
        f"{c['step']}: same {_share(c.get('same_person'))} copies {_share((c.get('copies') or {}).get('pixel'))}"
        for c in t["checkpoints"]
    )
    return "\n  ".join(
        [
            f"{r['family']} {Path(r['run']).name} ({r['seconds']:.0f} s): members in index "
            f"{f['members_in_index']}/{f['members']}, chance {100 * f['chance']:.2f}%",
            f"final: primary p {f['primary_p']:.3g}, rejects {f['primary_rejects']}, any finding {f['any_finding']}",
            f"naming a member: copies {_pct(f['copies'])}; same person {_pct(f['same_person'])}; "
            f"leaks {_pct(f['leaks'])}",
            f"first detected at step {first}; by step (share same person, pixel copies): {by_step}",
        ]
    )


def _share(block: dict | None) -> str:
    return "–" if not block or block.get("share") is None else f"{100 * block['share']:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
