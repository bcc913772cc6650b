#!/usr/bin/env python
"""Descriptor precision benchmark: the flip-averaged descriptor in fp32 (dlib's numbers) beside bf16,
for speed and for fidelity, in the same run on the same real faces.

Speed: core-milliseconds per face for the flip-averaged descriptor (chip + mirror, one batched pass),
on --threads torch threads with the build workers' batch (--batch), best of --repeats over --speed-faces
chips, after a warm-up. Fidelity against fp32, over the first --images celeba10k faces (aligned mode):

* the largest descriptor error and the largest change of a pair distance;
* verification accuracy with LFW's protocol (10 folds of --pairs same-person and as many
  different-person pairs, threshold chosen on 9 folds, scored on the 10th); LFW is not shipped, so
  celeba10k's identities stand in for it;
* the calibrated thresholds an index of these faces gets (identity at a 1% false-match rate, the
  semantic copy threshold, the collision threshold), from each precision's own calibration.

With --compile, torch.compile'd variants are timed too (speed and descriptor error only).

Example (the run in BENCHMARKS.md, "Descriptor precision"):
    .venv/bin/python scripts/bench_descriptor.py --images 10000 --compile
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from bench import default_data_root  # the sibling script (this folder is on sys.path when a script runs)

log = logging.getLogger("bench_descriptor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data_root(), help="shared data folder (env FACEMEM_DATA)")
    ap.add_argument("--images", type=int, default=10000, help="celeba10k images for the fidelity measures")
    ap.add_argument(
        "--pairs", type=int, default=3000, help="same-person pairs (and as many different) for LFW's protocol"
    )
    ap.add_argument("--speed-faces", type=int, default=512, help="faces timed per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as each build worker runs)")
    ap.add_argument("--batch", type=int, default=32, help="chips per forward pass (the build workers' batch)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    return ap.parse_args(argv)


def celeba_chips(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Chips (aligned mode, as the build cuts them) and identity codes of the first n images."""
    from indexer import faces
    from indexer.datasets import read_dataset

    chips, idents = [], []
    for item in read_dataset("celeba", root, "all", n, False):
        f = faces.process_file(item.path, "aligned")
        if f.ok:
            chips.append(f.chip)
            idents.append(int(item.identity))
    return np.stack(chips), np.array(idents, np.int64)


def timed(embedder, chips: np.ndarray, repeats: int) -> float:
    """Best wall seconds per face of the flip-averaged descriptor (one thread: core-seconds)."""
    from indexer import faces

    faces.describe(embedder, chips[: embedder.batch_size], True)  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        faces.describe(embedder, chips, True)
        best = min(best, time.perf_counter() - t0)
    return best / len(chips)


def thresholds_of(desc: np.ndarray, idents: np.ndarray) -> dict[str, float]:
    """The thresholds an index of these faces would serve (its own calibration)."""
    from indexer.calibrate import semantic_calibration
    from service.stats.thresholds import calibrate

    t = calibrate(semantic_calibration(desc, idents))
    return {
        "identity": t.identity,
        "semantic_copy": t.semantic_copy,
        "collision_semantic": t.collision_semantic.threshold if t.collision_semantic else float("nan"),
    }


def measure(a: argparse.Namespace) -> dict:
    import torch

    from indexer import faces, fidelity
    from indexer.resnet import TorchEmbedder

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    chips, idents = celeba_chips(a.data / "celeba10k", a.images)
    log.info("%d chips cut in %.1f s", len(chips), time.perf_counter() - t0)
    pairs = fidelity.verification_pairs(idents, a.pairs)
    speed_chips = chips[: a.speed_faces]
    rows: dict[str, dict] = {}
    ref = None
    variants = [("fp32", False), ("bf16", False)] + ([("fp32", True), ("bf16", True)] if a.compile else [])
    for precision, compiled in variants:
        name = precision + (" + torch.compile" if compiled else "")
        emb = TorchEmbedder("cpu", batch_size=a.batch, precision=precision)
        if compiled:
            emb.model = torch.compile(emb.model)
        row: dict = {"ms_per_face": timed(emb, speed_chips, a.repeats) * 1e3}
        if compiled:  # speed, and the error on the timed faces only (a full pass would double the run)
            desc = faces.describe(emb, speed_chips, True)
            row["max_descriptor_error"] = float(np.abs(desc - ref[: len(desc)]).max())
        else:
            desc = faces.describe(emb, chips, True)
            ref = desc if ref is None else ref
            row.update(fidelity.descriptor_errors(ref, desc, pairs))
            acc, cuts = fidelity.verification_accuracy(desc, pairs)
            row.update(lfw_protocol_accuracy=acc, fold_thresholds=cuts.tolist(), **thresholds_of(desc, idents))
        rows[name] = row
        log.info("%s: %s", name, {k: v for k, v in row.items() if k != "fold_thresholds"})
    return {
        "faces": int(len(chips)),
        "identities": int(len(np.unique(idents))),
        "pairs": [int(len(pairs.same)), int(len(pairs.diff))],
        "threads": a.threads,
        "batch": a.batch,
        "load_before": os.getloadavg()[0],
        "rows": rows,
    }


def print_table(r: dict) -> None:
    rows = r["rows"]
    base = rows["fp32"]
    same, diff = r["pairs"]
    print(f"{r['faces']} celeba10k faces, {r['identities']} identities; LFW protocol on {same} + {diff} pairs")
    print(
        f"{'variant':24s} {'ms/face':>8s} {'speed-up':>8s} {'max|Δdesc|':>10s} {'max|Δdist|':>10s} "
        f"{'accuracy %':>10s} {'identity':>9s} {'copy':>8s} {'collision':>9s}"
    )
    for name, row in rows.items():
        acc = f"{100 * row['lfw_protocol_accuracy']:.2f}" if "lfw_protocol_accuracy" in row else "-"
        dist = f"{row['max_distance_change']:10.2e}" if "max_distance_change" in row else f"{'-':>10s}"
        th = [f"{row[k]:.4f}" if k in row else "-" for k in ("identity", "semantic_copy", "collision_semantic")]
        print(
            f"{name:24s} {row['ms_per_face']:8.2f} {base['ms_per_face'] / row['ms_per_face']:7.2f}x "
            f"{row['max_descriptor_error']:10.2e} {dist} {acc:>10s} "
            f"{th[0]:>9s} {th[1]:>8s} {th[2]:>9s}"
        )
    if "bf16" in rows:
        b = rows["bf16"]
        print(
            "bf16 - fp32: accuracy {:+.2f} pt; thresholds identity {:+.4f}, copy {:+.4f}, collision {:+.4f}".format(
                100 * (b["lfw_protocol_accuracy"] - base["lfw_protocol_accuracy"]),
                b["identity"] - base["identity"],
                b["semantic_copy"] - base["semantic_copy"],
                b["collision_semantic"] - base["collision_semantic"],
            )
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    r = measure(a)
    r["load_after"] = os.getloadavg()[0]
    print_table(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
