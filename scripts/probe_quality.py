"""Measure the attribute probes: held-out AUC, TPR and FPR of each of the 40 CelebA attributes.

``--index DIR`` prints the probes an index stores (fitted at build time, measured on held-out
identities) as a Markdown table, the README's table. ``--compare-features`` runs the face pipeline on a
CelebA root (the build's own per-task function) and fits probes on each feature set alone and on all of
them, on the same identity-disjoint splits, to show which features measure best.

    python scripts/probe_quality.py --index build/celeba10k
    python scripts/probe_quality.py --compare-features --root ../shared/data/celeba10k --limit 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from indexer import attributes, chunks
from indexer.datasets import celeba_attribute_names, read_celeba
from indexer.store import IndexLoadError, load_index


def _f(v, pct: bool = False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def table(metrics: list[dict]) -> str:
    lines = [
        "| attribute | AUC | TPR | FPR | held-out +/− | status |",
        "|---|---|---|---|---|---|",
    ]
    for m in metrics:
        lines.append(
            f"| {m['name']} | {_f(m['auc'])} | {_f(m['tpr'], True)} | {_f(m['fpr'], True)} | "
            f"{m['n_heldout_pos']} / {m['n_heldout_neg']} | {m['status']} |"
        )
    aucs = [m["auc"] for m in metrics if m["auc"] is not None]
    lines.append(f"\nmean AUC {np.mean(aucs):.3f} over {len(aucs)} probes")
    return "\n".join(lines)


def features_of(root: Path, limit: int | None, workers: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Probe features of a CelebA root through the build's per-task function (real pipeline)."""
    items = read_celeba(root, "all", limit)
    names = celeba_attribute_names(root)
    tasks = [items[i : i + chunks.TASK_SIZE] for i in range(0, len(items), chunks.TASK_SIZE)]
    args = [([(str(it.path), it.file) for it in t], "aligned", "torch") for t in tasks]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(chunks.process_task, args))
    rows = [(it, r) for t, res in zip(tasks, results) for it, r in zip(t, res["rows"])]
    ok = [it for it, r in rows if r["status"] == "ok"]
    desc = np.concatenate([r["descriptors"] for r in results])
    ex = attributes.concat_extras([r["face_extras"] for r in results])
    x = attributes.feature_matrix(desc, ex["attr_crops"], ex["landmarks68"])
    y = np.array([[n in it.extra.get("attrs", []) for n in names] for it in ok], bool)
    groups = attributes.identity_groups([it.identity for it in ok], [it.file for it in ok])
    return x, y, names, groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", help="print the probes stored in this index")
    ap.add_argument("--compare-features", action="store_true", help="fit probes per feature set on --root")
    ap.add_argument("--root", help="CelebA root (with list_attr_celeba.txt) for --compare-features")
    ap.add_argument("--limit", type=int, help="first N images of --root")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write the metrics here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if bool(args.index) == bool(args.compare_features):
        ap.error("give --index DIR or --compare-features --root DIR")
    if args.index:
        try:
            idx = load_index(Path(args.index))
        except IndexLoadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        block = idx.manifest.get("attributes") or {}
        if not block.get("available"):
            print(f"error: {args.index} has no attribute probes: {block.get('reason', 'built before probes')}")
            return 2
        print(
            f"probes of {args.index} ({block.get('source')}), measured on held-out identities "
            f"({100 * block.get('heldout_fraction', 0):.0f}% of them)\n"
        )
        print(table(block["probes"]))
        if args.json:
            Path(args.json).write_text(json.dumps(block["probes"], indent=1))
        return 0
    if not args.root:
        ap.error("--compare-features needs --root")
    t0 = time.perf_counter()
    x, y, names, groups = features_of(Path(args.root), args.limit, args.workers)
    t1 = time.perf_counter()
    res = attributes.compare_feature_sets(x, y, names, groups)
    print(
        f"{len(x)} faces: features {t1 - t0:.1f} s, fits {time.perf_counter() - t1:.1f} s; "
        f"load average {os.getloadavg()}\n"
    )
    sets = list(res)
    print("| attribute | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for j, n in enumerate(names):
        print(f"| {n} | " + " | ".join(_f(res[s][j]["auc"]) for s in sets) + " |")
    means = [np.mean([m["auc"] for m in res[s] if m["auc"] is not None]) for s in sets]
    print("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
