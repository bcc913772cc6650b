#!/usr/bin/env python
"""Face pipeline benchmark (decode → landmarks → chip → 68 landmarks and crop, no embedding), one
core, ms per image: facemem's stage-by-stage pipeline beside image by image, interleaved, same
images; every face must be equal.

Columns:

* ``staged``: ``indexer.faces.process_many``, what a build worker and the in-process audit run on
  each task (every stage over the task's images in a row, so each dlib forest stays in cache);
* ``image by image``: this checkout's ``find_face``, one image at a time (v2's order);
* ``baseline``: with --baseline-checkout, that checkout's ``indexer/faces.py`` image by image
  (e.g. ``git worktree add /tmp/faces-base c33bc5d``: before the refinement skipped repeated passes).

Workloads: the first --aligned celeba10k crops in aligned mode (what ``scripts/bench.py``'s
indexing row builds) and the first --wild in-the-wild photos with the HOG detector.

Example (the run in BENCHMARKS.md, "Indexing: what was tried"):
    .venv/bin/python scripts/bench_faces.py --baseline-checkout /tmp/faces-base
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_l1 import load_baseline  # noqa: E402  (scripts/ is on the path: this file's folder)

from indexer import chunks, faces  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEMEM_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--aligned", type=int, default=2048, help="celeba10k crops, aligned mode (0: skip)")
    ap.add_argument("--wild", type=int, default=256, help="celeba_wild photos, HOG detector (0: skip)")
    ap.add_argument("--baseline-checkout", type=Path, help="another checkout: its faces.py image by image")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    return ap.parse_args(argv)


def staged(paths: list[str], detector: str) -> list:
    """As a build worker runs a task: groups of ``chunks.TASK_SIZE`` images."""
    out = []
    for lo in range(0, len(paths), chunks.TASK_SIZE):
        out += faces.process_many(paths[lo : lo + chunks.TASK_SIZE], faces.read_file, detector, attributes=True)[0]
    return out


def one_by_one(mod, paths: list[str], detector: str) -> list:
    return [mod.find_face(mod.read_file(p), detector, attributes=True) for p in paths]


def key(f) -> tuple:
    if isinstance(f, Exception):
        return ("exception", repr(f))
    arrays = (f.landmarks, f.chip, f.landmarks68, f.attr_crop)
    return (f.status, f.box, f.source_px, *(None if a is None else (a.dtype.str, a.tobytes()) for a in arrays))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as a worker: one core each
    base = load_baseline(a.baseline_checkout, "faces") if a.baseline_checkout else None
    workloads = []
    if a.aligned:
        root = a.data / "celeba10k" / "img_align_celeba"
        workloads.append(("celeba10k aligned", "aligned", sorted(str(p) for p in root.glob("*.jpg"))[: a.aligned]))
    if a.wild:
        root = a.data / "celeba_wild"
        workloads.append(("celeba_wild hog", "hog", sorted(str(p) for p in root.glob("*.jpg"))[: a.wild]))
    ways = {"staged": lambda p, d: staged(p, d), "image by image": lambda p, d: one_by_one(faces, p, d)}
    if base is not None:
        ways["baseline"] = lambda p, d: one_by_one(base, p, d)
    results: dict = {"command": " ".join(sys.argv), "load_start": os.getloadavg(), "workloads": {}}
    for name, detector, paths in workloads:
        if not paths:
            raise SystemExit(f"error: no images for {name} under {a.data} (set --data or FACEMEM_DATA)")
        one_by_one(faces, paths[:8], detector)  # models loaded before timing
        if base is not None:
            one_by_one(base, paths[:8], detector)
        times: dict[str, list[float]] = {w: [] for w in ways}
        keys: dict[str, list] = {}
        for _ in range(a.repeats):
            for w, fn in ways.items():
                t0 = time.perf_counter()
                found = fn(paths, detector)
                times[w].append((time.perf_counter() - t0) / len(paths) * 1000)
                keys.setdefault(w, [key(f) for f in found])
        equal = all(keys[w] == keys["staged"] for w in keys)
        med = {w: float(np.median(v)) for w, v in times.items()}
        results["workloads"][name] = {"images": len(paths), "ms_per_image": times, "median": med, "equal": equal}
        cols = "  ".join(f"{w} {m:.2f}" for w, m in med.items())
        ratios = "  ".join(f"{w}/staged {m / med['staged']:.2f}x" for w, m in med.items() if w != "staged")
        print(f"{name:20s} {len(paths):5d} images  ms/img: {cols}  ({ratios})  faces equal: {equal}")
        if not equal:
            print("error: the ways gave different faces", file=sys.stderr)
            return 1
    results["load_end"] = os.getloadavg()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
