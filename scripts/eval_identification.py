#!/usr/bin/env python
"""Identification quality of a celeba10k index with each descriptor lever on and off.

Prints one table: for each lever combination (none, flip averaging, resolution matching, both),
top-1 and top-5 identity of other photos of indexed people (celeba_wild indexed_person), same-photo
top-1 (enlarged, shifted, re-encoded copies of indexed crops), the share of indexed people flagged
same_person at the calibrated default threshold, and the strangers flagged (celeba_wild
unindexed_person + celeba_test), with the threshold and the embedding cost per face.

Flip averaging is a property of an index (queries follow it), so it needs two indexes of the same
dataset: --index built by default (flip-averaged) and --plain-index built with --no-flip-average.
Without --plain-index only the flip-averaged rows are printed. Resolution matching is switched per
query (service parameter resolution_match).

Example (the table in the README):
    .venv/bin/python -m indexer build --dataset celeba --root ../shared/data/celeba10k --out build/celeba10k
    .venv/bin/python -m indexer build --dataset celeba --root ../shared/data/celeba10k --out build/celeba10k-plain \\
        --no-flip-average
    .venv/bin/python scripts/eval_identification.py --index build/celeba10k --plain-index build/celeba10k-plain
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    data = Path(os.environ.get("FACEMEM_DATA", REPO.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--index", required=True, help="flip-averaged index (built by default)")
    ap.add_argument("--plain-index", help="the same dataset built with --no-flip-average (adds the rows without flip)")
    ap.add_argument("--wild", default=str(data / "celeba_wild"), help="celeba_wild folder with labels.txt")
    ap.add_argument("--strangers", default=str(data / "celeba_test"), help="folder of photos of people not indexed")
    ap.add_argument("--same-photo", type=int, default=300, help="indexed crops turned into same-photo queries")
    ap.add_argument("--seed", type=int, default=0, help="seed of the same-photo sample and placement")
    ap.add_argument("--detector", default="hog", choices=["hog", "cnn"], help="query face detector (default hog)")
    ap.add_argument("--processes", type=int, help="face-detection processes (default: one per core)")
    ap.add_argument("--device", default="cpu", help="embedding device (default cpu)")
    ap.add_argument(
        "--false-match-rates",
        default="0.01,0.02,0.05,0.1,0.2",
        help="also print, for --index with resolution matching (the service default), celeba_wild strangers "
        "and indexed people flagged at these calibrated rates ('' to skip)",
    )
    ap.add_argument(
        "--cost-rounds", type=int, default=3, help="interleaved timing rounds of the query cost per lever (0: skip)"
    )
    ap.add_argument("--json", help="also write every figure to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from indexer.store import IndexLoadError, load_index
    from service import identification as ident
    from service.search import Searcher

    try:
        indexes = {"index": load_index(Path(a.index))}
        if a.plain_index:
            indexes["plain"] = load_index(Path(a.plain_index))
    except IndexLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not indexes["index"].flip_average:
        print(f"error: {a.index} is not flip-averaged; build it without --no-flip-average", file=sys.stderr)
        return 2
    if "plain" in indexes:
        if indexes["plain"].flip_average:
            print(f"error: {a.plain_index} is flip-averaged; build it with --no-flip-average", file=sys.stderr)
            return 2
        if [r["file"] for r in indexes["plain"].rows] != [r["file"] for r in indexes["index"].rows]:
            print("error: --index and --plain-index hold different images", file=sys.stderr)
            return 2
    wild = ident.read_wild(Path(a.wild))
    strangers = ident.read_strangers(Path(a.strangers))
    same = ident.same_photo_set(indexes["index"], a.same_photo, a.seed)
    queries = ident.detect_all(wild, strangers, same, a.detector, a.processes)
    searchers = {name: Searcher(idx, device=a.device) for name, idx in indexes.items()}
    rows = ident.evaluate(searchers, queries)
    print(ident.format_table(rows))
    cost = ident.cost_per_face(searchers, queries, rounds=a.cost_rounds) if a.cost_rounds else None
    if cost:
        ms = ", ".join(f"{k} {v:.2f}" for k, v in cost["ms_per_face"].items())
        print(
            f"\nquery cost, ms per face (degrade + descriptor, {cost['faces']} faces, median of {cost['rounds']} "
            f"interleaved rounds, torch threads {torch_threads()}): {ms}; load average "
            f"{', '.join(f'{x:.2f}' for x in cost['loadavg'])}"
        )
    rates = [float(x) for x in a.false_match_rates.split(",") if x.strip()]
    trade = ident.tradeoff(searchers["index"], queries, rates) if rates else []
    null = None
    if trade:
        print(f"\nceleba_wild at other calibrated rates ({a.index}, resolution matching on):")
        print(ident.format_tradeoff(trade))
        null = ident.strangers_vs_null(searchers["index"], queries)
        print(
            f"celeba_wild strangers' nearest distance: median {null['strangers_median']:.3f} vs the index's null "
            f"{null['null_median']:.3f} (KS p = {null['ks_p']:.2g}, {null['strangers']} faces)"
        )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps(
                {"rows": rows, "tradeoff": trade, "null": null, "cost": cost, "loadavg": os.getloadavg()}, indent=2
            )
        )
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())
