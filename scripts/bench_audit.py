#!/usr/bin/env python
"""The in-process audit's main pass beside the index build pipeline, faces/s, in one run on one machine.

Why: both do the same per-face work (decode, detect/align, 68 landmarks and the attribute crop,
a flip-averaged descriptor, a pixel vector); the audit adds a search and the per-request statistics.
Its main pass should run close to the build's rate: what it spends beyond it is overhead.

Rows (each in a fresh subprocess, interleaved ``--repeats`` times so that load from elsewhere hits
all alike; the load average is recorded before and after every run):

  build celeba10k   ``python -m indexer build`` on the first ``--build-images`` celeba10k images
                    (aligned): faces/s over the whole process (start to exit: imports, worker start,
                    calibration and index write included), and the build's own figure through the
                    face pipeline (its report line: workers started to last chunk written).
  build samples     the same command on the audit's own main sample: the generator's ``--n`` samples
                    (the audit's chunk seeds, upscaled as the audit renders them) written as PNG files
                    (``--dataset folder``, the audit's ``--detector``).
  audit             ``scripts/audit.py --generator SPEC --index INDEX --n N --trials T --json``: faces
                    of the main sample / ``timing.main_pass_s`` (from the first request to the last
                    answer; the index load, the workers' start-up and the statistics are outside it),
                    and the trials' faces/s from ``timing.trials_s``.
  audit (baseline)  with ``--baseline-checkout DIR``: the same audit command run from another checkout
                    (e.g. a ``git worktree`` of an older commit): before and after in the same run.

Ratio: audit main pass / build, both whole-process and face-pipeline figures. Example (the run in
BENCHMARKS.md, "Audit main pass vs the pipeline"):

    PYTHONPATH=. .venv/bin/python scripts/bench_audit.py --index build/celeba3k --baseline-checkout ../base \
        --json build/bench-audit/result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
DCGAN = DATA / "generated" / "dcgan32_celeba" / "checkpoint_G.pth"
BUILT = re.compile(r"built .*?: (\d+) images, (\d+) ok.*? in ([\d.]+) s \(([\d.]+) img/s through the face pipeline\)")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform()}


def env(checkout: Path) -> dict:
    """A subprocess of ``checkout``: its packages first (a shared .venv may hold another checkout's)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}


def timed(cmd: list[str], checkout: Path) -> tuple[subprocess.CompletedProcess, float, list[float], list[float]]:
    before = loadavg()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=checkout, env=env(checkout), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p, dt, before, loadavg()


def write_samples(spec: str, n: int, seed: int, chunk: int, upscale: int, out: Path) -> int:
    """The audit's main sample (its chunk seeds and names, :meth:`service.audit.run.Audit.main_plan`)
    as PNG files: what the build row indexes."""
    from service.audit.run import sub_seed
    from service.audit.sources import load_generator, png_bytes

    out.mkdir(parents=True, exist_ok=True)
    src = load_generator(spec)
    for ci, start in enumerate(range(0, n, chunk)):
        for name, im in src.arrays(min(chunk, n - start), sub_seed(seed, 0, ci), f"sample{ci:03d}_", upscale):
            (out / name).write_bytes(png_bytes(im))
    return n


def build_row(args: argparse.Namespace, dataset: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "indexer", "build", *dataset, "--out", str(out), "--overwrite", "--no-progress"]
    p, dt, before, after = timed(cmd, REPO)
    m = BUILT.search(p.stdout)
    if not m:
        sys.exit(f"no build report line in:\n{p.stdout[-2000:]}")
    ok = int(m.group(2))
    return {
        "faces": ok,
        "wall_s": round(dt, 2),
        "faces_per_s": round(ok / dt, 1),
        "pipeline_faces_per_s": float(m.group(4)),
        "load": [before, after],
    }


def audit_row(args: argparse.Namespace, checkout: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        "scripts/audit.py",
        "--generator",
        args.generator,
        "--index",
        str(Path(args.index).resolve()),
        "--n",
        str(args.n),
        "--detector",
        args.detector,
        "--trials",
        str(args.trials),
        "--seed",
        str(args.seed),
        "--no-progress",
        "--json",
        str(out),
    ]
    _, dt, before, after = timed(cmd, checkout)
    data = json.loads(out.read_text())
    t = data["timing"]
    faces = data["summary"]["faces"]
    trial_faces = round(sum(r["faces_mean"] * r["trials"] for r in data["birthday"]["rows"])) if args.trials else 0
    return {
        "faces": faces,
        "main_pass_s": round(t["main_pass_s"], 2),
        "faces_per_s": round(faces / t["main_pass_s"], 1),
        "trials_s": round(t.get("trials_s", 0.0), 2),
        "trial_faces": trial_faces,
        "trials_faces_per_s": round(trial_faces / t["trials_s"], 1) if trial_faces else None,
        "statistics_s": round(t.get("statistics_s", 0.0), 2),
        "total_s": round(t["total_s"], 2),
        "wall_s": round(dt, 2),
        "load": [before, after],
    }


def median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 1) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="the index the audit searches (e.g. a 3,000-image celeba10k)")
    ap.add_argument("--generator", default=f"dcgan32:{DCGAN}", help="audit generator spec")
    ap.add_argument("--n", type=int, default=2000, help="main-sample size")
    ap.add_argument("--trials", type=int, default=1, help="birthday trials per batch size (default sizes)")
    ap.add_argument("--detector", default="aligned")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-images", type=int, default=3000, help="celeba10k images of the build row")
    ap.add_argument("--celeba", default=str(DATA / "celeba10k"))
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every row")
    ap.add_argument("--baseline-checkout", help="another checkout whose audit runs as the 'before' row")
    ap.add_argument("--work", default=str(REPO / "build" / "bench-audit"), help="scratch folder")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()

    from service.audit.defaults import DEFAULTS

    work = Path(args.work)
    samples = work / "samples"
    if not samples.is_dir() or len(list(samples.glob("*.png"))) != args.n:
        write_samples(args.generator, args.n, args.seed, DEFAULTS["chunk"], DEFAULTS["upscale"], samples)
    res: dict = {"machine": machine(), "args": vars(args), "load_start": loadavg(), "runs": []}
    rows = {"build celeba10k": [], "build samples": [], "audit": [], "audit (baseline)": []}
    for r in range(args.repeats):
        celeba = ["--dataset", "celeba", "--root", args.celeba, "--split", "all", "--limit", str(args.build_images)]
        rows["build celeba10k"].append(build_row(args, celeba, work / "idx-celeba"))
        if args.baseline_checkout:
            rows["audit (baseline)"].append(audit_row(args, Path(args.baseline_checkout), work / "baseline.json"))
        rows["audit"].append(audit_row(args, REPO, work / "audit.json"))
        folder = ["--dataset", "folder", "--root", str(samples), "--detector", args.detector]
        rows["build samples"].append(build_row(args, folder, work / "idx-samples"))
        print(f"round {r + 1}/{args.repeats} done, load {loadavg()}", file=sys.stderr)
    res["rows"] = rows
    res["load_end"] = loadavg()

    ref = median(rows["build celeba10k"], "faces_per_s")
    ref_pipe = median(rows["build celeba10k"], "pipeline_faces_per_s")
    same = median(rows["build samples"], "faces_per_s")
    same_pipe = median(rows["build samples"], "pipeline_faces_per_s")
    print(f"{'row':34s} {'faces/s (median)':>17s}  per run")
    for name, key in (
        ("build celeba10k, whole process", ("build celeba10k", "faces_per_s")),
        ("build celeba10k, face pipeline", ("build celeba10k", "pipeline_faces_per_s")),
        ("build samples, whole process", ("build samples", "faces_per_s")),
        ("build samples, face pipeline", ("build samples", "pipeline_faces_per_s")),
        ("audit main pass", ("audit", "faces_per_s")),
        ("audit trials", ("audit", "trials_faces_per_s")),
        ("audit main pass (baseline)", ("audit (baseline)", "faces_per_s")),
        ("audit trials (baseline)", ("audit (baseline)", "trials_faces_per_s")),
    ):
        runs = rows[key[0]]
        if runs:
            print(f"{name:34s} {median(runs, key[1]):>17}  {[r[key[1]] for r in runs]}")
    res["summary"] = {}
    for name in ("audit", "audit (baseline)"):
        rate = median(rows[name], "faces_per_s")
        if rate is None:
            continue
        ratios = {
            "vs build celeba10k, whole process": rate / ref,
            "vs build celeba10k, face pipeline": rate / ref_pipe,
            "vs build samples, whole process": rate / same,
            "vs build samples, face pipeline": rate / same_pipe,
        }
        res["summary"][name] = {k: round(v, 3) for k, v in ratios.items()}
        print(f"{name} main pass: " + ", ".join(f"{v:.0%} {k}" for k, v in ratios.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
