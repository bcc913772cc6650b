"""Benchmark: the audit at scale (issue 23), per stage, peak RSS and output sizes, for several n.

Each n runs in a fresh child process (so its peak RSS is its own): a DCGAN audit in-process against
an index, then the HTML, JSON and CSV written. ``--baseline DIR`` runs the same children with another
checkout's code first (e.g. ``git archive <base> | tar -x -C /tmp/facemem-base``), printed beside
this checkout's. Peak RSS: ``resource.getrusage`` of the child itself and of its own children (the
detection processes when they are spawned), reported separately and summed; and the peak PSS of the
whole process tree (the forkserver's workers included), sampled every second.

    flock /tmp/facemem-cpu.lock env PYTHONPATH=. .venv/bin/python scripts/bench_audit_scale.py \\
        --index build/celeba10k --n 2000,10000 --trials 20,2 --out build/bench-audit-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DCGAN = REPO.parent / "shared" / "data" / "generated" / "dcgan32_celeba" / "checkpoint_G.pth"
STAGES = ("startup_s", "main_pass_s", "trials_s", "training_side_s", "statistics_s", "thumbnails_plots_s")
WRITES = ("html", "json", "csv")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class RssSampler(threading.Thread):
    """This process's resident set (VmRSS) every ``every`` seconds, for the peak within each stage, and
    every ``tree_every`` seconds the proportional set size (PSS) of it and all its descendants: the
    detection workers are the forkserver's children, so ``getrusage`` does not see them, and PSS
    counts the pages they share with it once."""

    def __init__(self, every: float = 0.2, tree_every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()
        self.tree_every, self.tree_peak_gb, self.tree_procs = tree_every, 0.0, 0

    def run(self) -> None:
        from service.loadgen import descendants

        last_tree = 0.0
        while not self.stop.is_set():
            now = time.perf_counter()
            self.samples.append((now, _rss_gb()))
            if now - last_tree >= self.tree_every:
                pids = [os.getpid(), *descendants(os.getpid())]
                self.tree_peak_gb = max(self.tree_peak_gb, sum(_pss_gb(p) for p in pids))
                self.tree_procs, last_tree = max(self.tree_procs, len(pids)), now
            self.stop.wait(self.every)

    def peak(self, t0: float, t1: float) -> float:
        inside = [r for t, r in self.samples if t0 <= t <= t1]
        return max(inside) if inside else float("nan")


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 2**20


def _pss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 2**20
    except (OSError, StopIteration):
        return 0.0


def stage_peaks(sampler: RssSampler, t_start: float, t_end: float, timing: dict) -> dict:
    """Peak RSS per stage: the stages in run order, from the audit's start (startup first) to its end."""
    out, t = {}, t_start + (t_end - t_start - timing["total_s"])
    out["rss:startup"] = sampler.peak(t_start, t)
    for k in ("main_pass_s", "trials_s", "reference_real_s", "training_side_s", "statistics_s", "thumbnails_plots_s"):
        if k in timing:
            out[f"rss:{k[:-2]}"] = sampler.peak(t, t + timing[k])
            t += timing[k]
    return out


def one(a: argparse.Namespace) -> dict:
    """One audit in this process: stage times, peak RSS and output sizes as a dict."""
    from service.audit import audit

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    res = audit(
        generator=f"dcgan32:{a.generator}",
        index=a.index,
        n=a.one,
        trials=a.one_trials,
        detector="aligned",
        seed=a.seed,
        progress=False,
    )
    wall = time.perf_counter() - t0
    timing = res.data["timing"]
    peaks = stage_peaks(sampler, t0, t0 + wall, timing)
    out = {"n": a.one, "trials": a.one_trials, "faces": res.data["summary"]["faces"], "audit_s": wall}
    out |= {k: timing.get(k) for k in STAGES if k in timing}
    out["startup_s"] = wall - timing["total_s"]
    for sub, value in (timing.get("statistics_stages") or {}).items():
        out[f"stat:{sub}"] = value
    stem = Path(a.out) / f"{a.label}-n{a.one}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    t_w = time.perf_counter()
    for kind in ("csv", "html", "json"):  # the CSV first: the HTML and the JSON link it
        path = stem.with_suffix("." + kind)
        t0 = time.perf_counter()
        getattr(res, f"to_{kind}")(path)
        out[f"write_{kind}_s"] = time.perf_counter() - t0
        out[f"{kind}_mb"] = path.stat().st_size / 1e6
    peaks["rss:write"] = sampler.peak(t_w, time.perf_counter())
    out |= peaks
    out["csv_rows"] = sum(1 for _ in open(stem.with_suffix(".csv"), encoding="utf-8")) - 1
    out["total_s"] = sum(v for k, v in out.items() if k.endswith("_s") and k != "audit_s" and ":" not in k)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out |= {"rss_self_gb": self_kb / 2**20, "rss_children_gb": kids_kb / 2**20}
    out["rss_sum_gb"] = (self_kb + kids_kb) / 2**20
    out["pss_tree_peak_gb"], out["tree_processes"] = sampler.tree_peak_gb, sampler.tree_procs
    return out


def child(code: Path, label: str, n: int, trials: int, a: argparse.Namespace) -> dict:
    """Run :func:`one` in a fresh interpreter with ``code`` first on the path."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--index", a.index, "--generator", a.generator]
    cmd += ["--out", a.out, "--seed", str(a.seed), "--one", str(n), "--one-trials", str(trials), "--label", label]
    env = {**os.environ, "PYTHONPATH": str(code)}
    p = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{label} n={n} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]) | {"code": label}


def table(results: list[dict]) -> str:
    keys = ["code", "n", "trials", "faces", *STAGES]
    keys += sorted({k for r in results for k in r if k.startswith("stat:")})
    keys += [f"write_{k}_s" for k in WRITES] + ["total_s", "rss_self_gb", "rss_children_gb", "rss_sum_gb"]
    keys += ["pss_tree_peak_gb", "tree_processes"]
    keys += [f"{k}_mb" for k in WRITES] + ["csv_rows"]
    keys += sorted({k for r in results for k in r if k.startswith("rss:")})
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in results:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", default="build/celeba10k", help="index directory (celeba10k)")
    p.add_argument("--generator", default=str(DCGAN), help="the DCGAN checkpoint (dcgan32 adapter)")
    p.add_argument("--n", type=_ints, default=[2000], help="comma list of sample sizes")
    p.add_argument("--trials", type=_ints, default=[20], help="birthday trials per n (one value, or one per n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", metavar="DIR", help="another checkout to run first (the old code)")
    p.add_argument("--baseline-n", type=_ints, default=None, help="the n for the baseline (default: --n)")
    p.add_argument("--baseline-only", action="store_true", help="run only the baseline rows")
    p.add_argument("--out", default="build/bench-audit-scale", help="folder for the reports and results.json")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--one-trials", type=int, help=argparse.SUPPRESS)
    p.add_argument("--label", default="facemem", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(one(a)))
        return
    a.index, a.out = str(Path(a.index).resolve()), str(Path(a.out).resolve())
    trials = a.trials if len(a.trials) == len(a.n) else [a.trials[0]] * len(a.n)
    plan = []
    if a.baseline:
        for n in a.baseline_n or a.n:
            plan.append((Path(a.baseline).resolve(), "baseline", n, trials[a.n.index(n)] if n in a.n else trials[0]))
    if not a.baseline_only:
        plan += [(REPO, "facemem", n, t) for n, t in zip(a.n, trials)]
    results = []
    for code, label, n, t in plan:
        results.append(child(code, label, n, t, a))
        print(json.dumps(results[-1]), flush=True)
    Path(a.out, "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
