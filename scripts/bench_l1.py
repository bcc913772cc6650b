#!/usr/bin/env python
"""Exact L1 search benchmark: this checkout's ``indexer.l1.L1Index`` beside another checkout's, in the
same process, interleaved, on the same real pixel crops; results must be equal.

Three workloads, each the way facemem runs it:

* ``calibration``: the build's pixel leave-one-out, every face of a --calib-faces index against the
  others (self excluded), at k = 4 (``calibrate.PIXEL_FIRST_K``) and at k = 16 (the old first k);
* ``collisions``: the audit's colliding pixel pairs (``collisions._close_pairs_l1``) among the
  crops of a folder index of generated faces (--samples), at the --index's collision threshold;
* ``celeba-size``: held-out and near-duplicate queries (top-5, batches of 64 and of 1) against a
  --big-faces index synthesised from the real crops as ``scripts/bench.py``'s pixel row does.

The baseline is another checkout's ``indexer/l1.py`` (e.g. ``git worktree add /tmp/l1-base <commit>``).

Example (the run in BENCHMARKS.md, "Indexing: what was tried"):
    .venv/bin/python scripts/bench_l1.py --baseline-checkout /tmp/l1-base \\
        --index build/celeba10k --samples build/bench-audit/idx-samples
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-checkout", type=Path, required=True, help="another checkout (its indexer/l1.py)")
    ap.add_argument("--index", type=Path, required=True, help="a real index (celeba10k): crops and thresholds")
    ap.add_argument("--samples", type=Path, help="a folder index of generated faces (the collisions workload)")
    ap.add_argument("--calib-faces", type=int, default=3000, help="faces of the calibration workload")
    ap.add_argument("--big-faces", type=int, default=202_599, help="rows of the CelebA-size workload (0: skip)")
    ap.add_argument("--queries", type=int, default=1000, help="CelebA-size queries (half held-out, half near-dup)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    return ap.parse_args(argv)


def load_baseline(checkout: Path, module: str = "l1"):
    """The other checkout's ``indexer/<module>.py`` as a module of its own (its relative imports
    resolve to this package). ``scripts/bench_faces.py`` loads its ``faces`` with this too."""
    spec = importlib.util.spec_from_file_location(f"indexer._{module}_baseline", checkout / "indexer" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> None:
    import indexer.l1 as new
    from indexer import store
    from indexer.augment import augment, expand_real_crops
    from service.stats import collisions, thresholds

    a = parse_args(argv)
    old = load_baseline(a.baseline_checkout)
    real = store.load_index(a.index)
    rows: dict[str, dict] = {}

    def record(name: str, version: str, seconds: float, units: int, unit: str) -> None:
        r = rows.setdefault(name, {"unit": unit, "facemem": [], "baseline": []})
        r[version].append(units / seconds)

    crops = np.ascontiguousarray(real.pixels[: a.calib_faces])
    me = np.arange(len(crops))
    for _ in range(a.repeats):
        for version, mod in (("baseline", old), ("facemem", new)):
            for k in (4, 16):
                dt, res = timed(lambda m=mod, k=k: m.L1Index(crops).search(crops, k, exclude_self=me))
                record(f"calibration, {len(crops)} faces, k={k}", version, dt, len(crops), "queries/s")
                rows[f"calibration, {len(crops)} faces, k={k}"].setdefault("results", {})[version] = res
    if a.samples:
        th = thresholds.calibrate(real.calibration).collision_pixel.threshold
        x = np.ascontiguousarray(store.load_index(a.samples).pixels)
        for _ in range(a.repeats):
            for version, mod in (("baseline", old), ("facemem", new)):
                keep, new.L1Index = new.L1Index, mod.L1Index  # _close_pairs_l1 imports it from indexer.l1
                try:
                    dt, res = timed(lambda x=x: collisions._close_pairs_l1(x, th))
                finally:
                    new.L1Index = keep
                record(f"collisions, {len(x)} generated faces", version, dt, len(x), "faces/s")
                rows[f"collisions, {len(x)} generated faces"].setdefault("results", {})[version] = (res.i, res.j, res.d)
    if a.big_faces:
        m = real.n_faces - 500
        big = expand_real_crops(np.asarray(real.pixels[:m]), a.big_faces, seed=0)
        rng = np.random.default_rng(1)
        half = a.queries // 2
        q = np.concatenate(
            [np.asarray(real.pixels[m : m + half]), augment(np.asarray(real.pixels[rng.choice(m, half)]), rng)]
        )
        idx = {"baseline": old.L1Index(big), "facemem": new.L1Index(big)}
        for _ in range(a.repeats):
            for version in ("baseline", "facemem"):
                dt, res = timed(lambda v=version: [idx[v].search(q[s : s + 64], 5) for s in range(0, len(q), 64)])
                record(f"celeba-size {a.big_faces:,}, top-5, batch 64", version, dt, len(q), "queries/s")
                name = f"celeba-size {a.big_faces:,}, top-5, batch 64"
                rows[name].setdefault("results", {})[version] = tuple(np.concatenate(z) for z in zip(*res))
                dt, _ = timed(lambda v=version: [idx[v].search(q[j : j + 1], 5) for j in range(0, len(q), 10)])
                record(
                    f"celeba-size {a.big_faces:,}, top-5, batch 1", version, dt, len(range(0, len(q), 10)), "queries/s"
                )
    print(f"load average {os.getloadavg()}; repeats {a.repeats}, interleaved; median of each")
    print("| workload | facemem | baseline | ratio | same results |")
    print("|---|---|---|---|---|")
    out = {}
    for name, r in rows.items():
        f, b = float(np.median(r["facemem"])), float(np.median(r["baseline"]))
        res = r.get("results")
        eq = same(res["facemem"], res["baseline"]) if res else "— (the batch-64 queries)"
        print(f"| {name} ({r['unit']}) | {f:,.1f} | {b:,.1f} | {f / b:.2f}x | {eq} |")
        out[name] = {"unit": r["unit"], "facemem": r["facemem"], "baseline": r["baseline"], "same": eq}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
