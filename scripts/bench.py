#!/usr/bin/env python
"""facemem benchmark harness: facemem against the baselines, measured in the same run on the same inputs.

Prints one table (facemem | baseline | ratio per row) and writes every measurement to JSON (--json).
This is a script, not a timed test: numbers depend on the machine and on what else runs on it, so
the load average is recorded before and after every row, and facemem and the baseline are
interleaved (facemem before, between and after the baseline halves) so that load from other
processes hits both alike.

Rows (select with --only):

  indexing  Throughput on the first --index-images celeba10k images, images/s, end to end
            (decode -> faces -> vectors). facemem: `python -m indexer build` (aligned mode) in a fresh
            subprocess, timed from process start to exit (interpreter start, imports, worker start,
            model load, calibration and index write included); median of 3 runs. Baseline: the naive
            face_recognition loop in this process (load_image_file -> face_locations ->
            face_encodings), models loaded before timing (in the baseline's favour).
  semantic  Exact top-k semantic search, queries/s, at each --semantic-sizes N. facemem:
            service.search.Searcher.semantic_search (FAISS IndexFlatL2 + exact float64 re-rank) in
            batches of 64. Baseline: face_recognition.face_distance over all N encodings (a stacked
            float64 array, in the baseline's favour) + argpartition top-k, one query at a time.
            N = the real celeba10k index size uses the real descriptors; other N use the synthetic
            CelebA-size index described below.
  pixel     Exact top-k pixel L1 search, queries/s, at N = --pixel-n on the synthetic index's 64x64x3
            crops. facemem: Searcher.pixel_search (indexer.l1.L1Index over uint8, memory-mapped).
            Baseline: faiss.IndexFlat(d, METRIC_L1) over float32. Queries: held-out real faces (not in
            the index) and near-duplicates (fresh augmentations of indexed faces). Memory of each.
  service   POST /neighbors latency p50/p95 for batches of 1, 16, 64 against a live server
            (`python -m service`, defaults: hog detector, k=5, both channels) on the real celeba10k
            index. Queries: celeba_test photos (unaligned, ~200 px, people not in the index).
            Baseline: the naive face_recognition loop on the same bytes (decode -> face_locations ->
            face_encodings -> face_distance over the 10k encodings -> top-k), semantic channel only.
  rss       Peak RSS (VmHWM) of a live server on the synthetic CelebA-size index, after requests of
            1, 16 and 64 images; server process and its worker processes. Baseline (computed, not
            run): what the naive stack must hold for the same index: float64 encodings (N x 128 x 8 B)
            + a float32 IndexFlat L1 over the pixel crops (N x D x 4 B).

Synthetic CelebA-size index (rows semantic N != 10k, pixel, rss): the real celeba10k index (built
here with `python -m indexer build` unless --celeba-index is given) minus its last --heldout faces
(kept as queries) gives m real faces. Row j < m is real face j unchanged; row j >= m is a perturbed
copy of real face j mod m: its pixel crop by indexer.augment.expand_real_crops (horizontal flip
p=0.5, shift 0-3 px, brightness/colour gain, offset; no random noise), its descriptor = the real
descriptor + N(0, --desc-sigma^2) per dimension (sigma 0.01: ||noise|| ~ 0.11, well under the
~0.6 same-person distance). Calibration arrays are the real index's, tiled (not recomputed). It is
written with indexer.store.write_index, so the service loads it like any index.

Example (the full run recorded in BENCHMARKS.md):
    .venv/bin/python scripts/bench.py --json build/bench/bench.json
Quick smoke run (~2 min):
    .venv/bin/python scripts/bench.py --quick
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.augment import augment, expand_real_crops

REPO = Path(__file__).resolve().parent.parent
CELEBA_N = 202_599  # images in CelebA: the size the synthetic index is expanded to

log = logging.getLogger("bench")


def default_data_root() -> Path:
    """Shared data folder, overridable with $FACEMEM_DATA (benchmarks must not hard-code it)."""
    return Path(os.environ.get("FACEMEM_DATA", REPO.parent / "shared" / "data"))


ROWS = ("indexing", "semantic", "pixel", "service", "rss")
EXTRA_ROWS = ("build-modes",)  # run only when named in --only
SEMANTIC_BATCH = 64  # facemem queries per call (the service's batch limit)


# ----------------------------------------------------------------------------- helpers


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    """CPU, memory and library versions, for the record."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import faiss
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "cuda": bool(torch.cuda.is_available()),
    }


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def busy_processes(limit: int = 6) -> list[str]:
    """The top CPU users right now (other people's jobs on a shared machine), for the record."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1 : limit + 1]
        return [line.strip()[:140] for line in out]
    except (OSError, subprocess.SubprocessError):
        return []


def start_run(**extra: Any) -> tuple[dict[str, Any], Callable[[], None]]:
    """The record every benchmark's JSON starts with (command, machine, load, busy processes), and
    the function that closes it: the 1-min load average sampled every 15 s while the run lasts, the
    load and busy processes at the end, and the run's seconds. Why: a figure from a shared machine
    means little without the load it was measured under."""
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_start": loadavg(),
        **extra,
        "busy_at_start": busy_processes(),
    }
    samples: list[tuple[float, float]] = []  # (seconds since start, 1-min load average)
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample_load() -> None:
        while not stop.wait(15.0):
            samples.append((round(time.perf_counter() - t0, 1), loadavg()[0]))

    threading.Thread(target=sample_load, name="load-sampler", daemon=True).start()

    def finish() -> None:
        stop.set()
        res["load_samples"] = samples
        res["load_end"] = loadavg()
        res["busy_at_end"] = busy_processes()
        res["seconds"] = time.perf_counter() - t0

    return res, finish


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def fmt_rate(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, **kw)


# ----------------------------------------------------------------------------- indexes


def celeba_build_args(a: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    """``-m indexer build`` of celeba10k under --data into ``out`` (overwritten, no progress bar), then ``extra``."""
    cmd = ["-m", "indexer", "build", "--dataset", "celeba", "--root", str(a.data / "celeba10k")]
    return [*cmd, "--out", str(out), "--overwrite", "--no-progress", *extra]


def ensure_celeba_index(a: argparse.Namespace, work: Path) -> Path:
    """The real celeba10k index (aligned mode): --celeba-index, or built once into the work folder."""
    if a.celeba_index:
        return Path(a.celeba_index)
    from indexer import store

    out = work / "celeba10k"
    if (out / "manifest.json").exists():
        try:
            store.check_manifest(out, store.read_manifest(out))
            return out
        except store.IndexLoadError as e:
            log.info("rebuilding %s: %s", out, e)
    log.info("building the celeba10k index into %s (once; reused by later runs)", out)
    r = run_cli(celeba_build_args(a, out, "--device", a.device))
    if r.returncode != 0:
        raise SystemExit(f"building the celeba10k index failed:\n{r.stderr[-3000:]}")
    log.info("%s", r.stdout.strip().splitlines()[-1])
    return out


def synthetic_recipe(a: argparse.Namespace, real_dir: Path, n: int, **more) -> dict:
    """What a synthetic index is made from (stored in its manifest; a cached one is reused only if it matches)."""
    from indexer import store

    return {
        "source_index": str(real_dir.resolve()),
        "source_written_at": store.read_manifest(real_dir).get("written_at"),
        "n": n,
        "heldout": a.heldout,
        "desc_sigma": a.desc_sigma,
        "seed": a.seed,
        **more,
    }


def synthetic_index(a: argparse.Namespace, work: Path, n: int) -> Path:
    """A CelebA-size index synthesised from the real celeba10k index (see the module docstring)."""
    from indexer import store

    real_dir = ensure_celeba_index(a, work)
    recipe = synthetic_recipe(a, real_dir, n, pixels="indexer.augment.expand_real_crops", version=1)
    out = work / f"celeba-size-{n}"
    if (out / "manifest.json").exists():
        have = store.read_manifest(out).get("dataset", {}).get("synthetic")
        if have == recipe:
            return out
    log.info("writing the synthetic %d-face index %s", n, out)
    t0 = time.perf_counter()
    idx = store.load_index(real_dir)
    m = idx.n_faces - a.heldout
    if m < 1:
        raise SystemExit(f"--heldout {a.heldout} leaves no faces of {idx.n_faces}")
    pix = expand_real_crops(np.asarray(idx.pixels[:m]), n, seed=a.seed)
    base = idx.descriptors[:m]
    src = np.arange(n) % m
    desc = base[src].astype(np.float32)
    rng = np.random.default_rng(a.seed + 2)
    if n > m:
        desc[m:] += rng.normal(0.0, a.desc_sigma, (n - m, base.shape[1])).astype(np.float32)
    rows = []
    for j in range(n):
        r = idx.rows[int(idx.face_rows[src[j]])]
        row = {k: v for k, v in r.items() if k not in ("row", "face", "extra")}
        if j >= m:
            row["file"] = f"synthetic/{j:06d}.jpg"
            row["extra"] = {"synthetic_of": r["file"]}
        rows.append({"row": j, **row, "face": j})
    calib = {}
    for k, v in idx.calibration.items():
        calib[k] = np.resize(v[:m], n) if k.startswith("sem_") else v
    man = json.loads(json.dumps(idx.manifest))
    for k in ("format_version", "model_sha256", "files", "libraries", "written_at"):
        man.pop(k, None)
    man["dataset"] = dict(man["dataset"], items=n, synthetic=recipe)
    man["counts"] = {"ok": n, "no_face": 0, "unreadable": 0}
    man["faces"] = n
    man["build"] = {"seconds": None, "synthetic": True}
    del idx
    store.write_index(out, rows, desc, pix, calib, man, overwrite=True)
    log.info("synthetic index written in %.1f s", time.perf_counter() - t0)
    return out


class Searchers:
    """Loaded indexes + Searchers, shared by the semantic and pixel rows (building an L1Index over
    202k crops takes seconds, so each is built once)."""

    def __init__(self, device: str):
        self.device = device
        self._cache: dict[str, Any] = {}

    def get(self, path: Path):
        key = str(Path(path).resolve())
        if key not in self._cache:
            from indexer.store import load_index
            from service.search import Searcher

            t0 = time.perf_counter()
            s = Searcher(load_index(Path(path)), device=self.device)
            log.info("searcher over %s (%d faces) ready in %.1f s", path, s.index.n_faces, time.perf_counter() - t0)
            self._cache[key] = s
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()
        gc.collect()


# ----------------------------------------------------------------------------- row 1: indexing


def bench_indexing(a: argparse.Namespace, work: Path) -> dict:
    from indexer.datasets import read_dataset

    n = a.index_images
    root = a.data / "celeba10k"
    items = read_dataset("celeba", root, "all", n, False)
    paths = [str(it.path) for it in items]
    out_dir = work / f"index-{n}"

    def facemem_once() -> dict:
        r = timed_build(a, root, n, out_dir)
        log.info(
            "facemem: %d images: decode->vectors %.2f s (%.1f img/s), build() %.2f s, CLI process %.2f s, load %.2f",
            n,
            r["pipeline_s"],
            r["img_per_s"],
            r["build_s"],
            r["process_s"],
            r["load1"],
        )
        return r

    with _quiet_warnings():
        import face_recognition as fr
    fr.face_encodings(fr.load_image_file(paths[0]))  # models loaded and warm before timing

    def baseline(part: list[str]) -> tuple[float, int]:
        t0 = time.perf_counter()
        faces_found = 0
        for p in part:
            img = fr.load_image_file(p)
            locs = fr.face_locations(img)
            faces_found += len(fr.face_encodings(img, locs))
        return time.perf_counter() - t0, faces_found

    runs = [facemem_once()]
    t_base, f_base = 0.0, 0
    halves = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
    for half in halves:
        dt, f = baseline(half)
        log.info("baseline: %d images in %.1f s (%.2f img/s), load %s", len(half), dt, len(half) / dt, loadavg())
        t_base += dt
        f_base += f
        runs.append(facemem_once())
    med = sorted(runs, key=lambda r: r["img_per_s"])[len(runs) // 2]
    base_rate = n / t_base
    return {
        "images": n,
        "facemem_img_per_s": med["img_per_s"],
        "facemem_build_img_per_s": n / med["build_s"],
        "facemem_process_img_per_s": n / med["process_s"],
        "facemem_runs": runs,
        "facemem_faces": runs[-1]["faces"],
        "baseline_img_per_s": base_rate,
        "baseline_s": t_base,
        "baseline_faces": f_base,
        "ratio": med["img_per_s"] / base_rate,
        "ratio_build": n / med["build_s"] / base_rate,
        "ratio_process": n / med["process_s"] / base_rate,
    }


_BUILD_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
from indexer.__main__ import main
from indexer.build import BuildConfig, build
t1 = time.perf_counter()
cfg = BuildConfig(**json.loads(sys.argv[1]))
build(cfg)
t2 = time.perf_counter()
print("BENCH " + json.dumps({"import_s": t1 - t0, "build_s": t2 - t1}))
"""


def timed_build(a: argparse.Namespace, root: Path, n: int, out_dir: Path, **cfg_extra: Any) -> dict:
    """One facemem build of the first n images in a fresh process, as `python -m indexer build` runs it.

    Three clocks: the face pipeline (decode -> faces -> vectors, from the workers' start-up to the last
    vector, as the build records it), build() (everything, calibration and index write included), and
    the whole process (interpreter start and imports too).
    """
    import resource

    from indexer.store import read_manifest

    cfg = {
        "dataset": "celeba",
        "root": str(root),
        "out": str(out_dir),
        "limit": n,
        "overwrite": True,
        "progress": False,
        "device": a.device,
        **cfg_extra,
    }
    la = loadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = run_cli(["-c", _BUILD_SNIPPET, json.dumps(cfg)])
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"indexer build failed:\n{r.stderr[-3000:]}")
    info = json.loads(r.stdout.split("BENCH ", 1)[1])
    man = read_manifest(out_dir)
    pipe = man["build"]["face_pipeline_seconds"]
    line = [x for x in r.stdout.splitlines() if x.startswith("built ")][-1]
    return {
        "pipeline_s": pipe,
        "img_per_s": n / pipe,
        "build_s": info["build_s"],
        "process_s": wall,
        "faces": man["faces"],
        "load1": la,
        "build_line": line,
        "cpu_s_waited_children": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "stage_seconds": man["build"].get("stage_seconds"),
        "config": cfg_extra,
    }


def bench_build_modes(a: argparse.Namespace, work: Path) -> dict:
    """Optional row: the build layouts that were tried, on the same images, in rounds."""
    layouts = {
        "main process embeds, torch 2 threads, 2 face workers (first layout)": {"embed_in": "main"},
        "main process embeds, torch 1 thread, 1 face worker": {"embed_in": "main", "workers": 1, "_torch_threads": 1},
        "workers embed, 1 thread each, spawned workers": {"embed_in": "workers", "preload_workers": False},
        "workers embed, 1 thread each, pre-loaded forkserver workers (default)": {},
    }
    n = a.index_images
    root = a.data / "celeba10k"
    out: dict[str, list[dict]] = {k: [] for k in layouts}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.modes_load)]
    if hogs:
        log.info("build-modes under contention: %d busy-loop process(es) running", len(hogs))
    try:
        _modes_rounds(a, layouts, root, n, work, out)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return {
        "images": n,
        "rounds": a.modes_rounds,
        "busy_loops": a.modes_load,
        "layouts": {
            k: {
                "median_img_per_s": statistics.median(r["img_per_s"] for r in v),
                "median_build_s": statistics.median(r["build_s"] for r in v),
                "runs": v,
            }
            for k, v in out.items()
        },
    }


def _modes_rounds(
    a: argparse.Namespace, layouts: dict, root: Path, n: int, work: Path, out: dict[str, list[dict]]
) -> None:
    for _ in range(a.modes_rounds):
        for name, extra in layouts.items():
            extra = dict(extra)
            threads = extra.pop("_torch_threads", None)
            if threads:  # the main process's torch threads: only settable through the environment
                os.environ["OMP_NUM_THREADS"] = str(threads)
            try:
                r = timed_build(a, root, n, work / "index-modes", **extra)
            finally:
                os.environ.pop("OMP_NUM_THREADS", None)
            log.info("%s: decode->vectors %.1f img/s, build() %.2f s", name, r["img_per_s"], r["build_s"])
            out[name].append(r)


class _quiet_warnings:
    """face_recognition_models imports pkg_resources, which warns on import."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


# ----------------------------------------------------------------------------- row 2: semantic


def interleaved(facemem: Callable[[], float], baseline_parts: list[Callable[[], float]]) -> tuple[list[float], float]:
    """facemem, baseline part, facemem, ..., facemem: returns (facemem times, total baseline time)."""
    fm = [facemem()]
    tb = 0.0
    for part in baseline_parts:
        tb += part()
        fm.append(facemem())
    return fm, tb


def bench_semantic(a: argparse.Namespace, work: Path, searchers: Searchers) -> list[dict]:
    from indexer.store import read_manifest

    with _quiet_warnings():
        import face_recognition as fr
    real_dir = ensure_celeba_index(a, work)
    real_n = read_manifest(real_dir)["faces"]
    out = []
    k = a.k
    for n in a.semantic_sizes:
        path = real_dir if n == real_n else synthetic_index(a, work, n)
        s = searchers.get(path)
        desc = s.index.descriptors
        nq = min(a.semantic_queries, len(desc))
        qids = np.linspace(0, len(desc) - 1, nq).astype(np.int64)
        queries = np.ascontiguousarray(desc[qids])
        known = desc.astype(np.float64)  # face_recognition's encodings are float64 arrays
        nb = min(a.semantic_baseline_queries, nq)

        fm_ids = []

        def facemem() -> float:
            fm_ids.clear()
            t0 = time.perf_counter()
            for st in range(0, nq, SEMANTIC_BATCH):
                fm_ids.append(s.semantic_search(queries[st : st + SEMANTIC_BATCH], k)[1])
            return time.perf_counter() - t0

        base_ids: list[np.ndarray] = []

        def base_part(lo: int, hi: int) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                for j in range(lo, hi):
                    d = fr.face_distance(known, queries[j].astype(np.float64))
                    top = np.argpartition(d, k)[:k] if k < len(d) else np.arange(len(d))
                    base_ids.append(top[np.lexsort((top, d[top]))])
                return time.perf_counter() - t0

            return run

        facemem()  # warm-up
        la0 = loadavg()
        fm_times, tb = interleaved(facemem, [base_part(0, nb // 2), base_part(nb // 2, nb)])
        ids = np.concatenate(fm_ids)[:nb]
        same = bool(np.array_equal(ids, np.stack(base_ids)))
        fm_rate = nq / statistics.median(fm_times)
        base_rate = nb / tb
        row = {
            "n": int(len(desc)),
            "real": path == real_dir,
            "k": k,
            "facemem_queries": nq,
            "facemem_q_per_s": fm_rate,
            "facemem_times_s": fm_times,
            "baseline_queries": nb,
            "baseline_q_per_s": base_rate,
            "ratio": fm_rate / base_rate,
            "same_top_k_ids": same,
            "load_before": la0,
            "load_after": loadavg(),
        }
        log.info(
            "semantic N=%d: facemem %.0f q/s, baseline %.1f q/s, %.0fx, same top-%d: %s",
            len(desc),
            fm_rate,
            base_rate,
            fm_rate / base_rate,
            k,
            same,
        )
        out.append(row)
    return out


# ----------------------------------------------------------------------------- row 3: pixel


def bench_pixel(a: argparse.Namespace, work: Path, searchers: Searchers) -> dict:
    import faiss

    from indexer.store import load_index

    n = a.pixel_n
    path = synthetic_index(a, work, n)
    s = searchers.get(path)
    vectors = s.index.pixels  # uint8 memmap (n, D)
    d = vectors.shape[1]
    real = load_index(ensure_celeba_index(a, work))
    m = real.n_faces - a.heldout
    half = a.pixel_queries // 2
    heldout = np.asarray(real.pixels[m : m + min(half, a.heldout)])
    rng = np.random.default_rng(a.seed + 1)
    pick = rng.choice(min(m, n), size=a.pixel_queries - len(heldout), replace=False)
    neardup = augment(np.asarray(real.pixels[pick]), rng)
    del real
    k = a.k

    def run_fm(q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        dd, ii = [], []
        for st in range(0, len(q), SEMANTIC_BATCH):
            di, ix = s.pixel_search(q[st : st + SEMANTIC_BATCH], k)
            dd.append(di)
            ii.append(ix)
        return time.perf_counter() - t0, np.concatenate(dd), np.concatenate(ii)

    run_fm(heldout[:8])  # warm-up: page cache, thread pools
    la0 = loadavg()

    # Baseline: faiss IndexFlat METRIC_L1 over float32 (4 bytes per dimension), on the first
    # --pixel-baseline-queries queries (half held-out, half near-duplicates).
    nb = a.pixel_baseline_queries
    bq = np.concatenate([heldout[: nb // 2], neardup[: nb - nb // 2]])
    need = n * d * 4
    avail = mem_available()
    shard = n if need < 0.8 * avail else max(1, int(0.4 * avail // (d * 4)))
    t0 = time.perf_counter()
    whole = None
    if shard >= n:
        whole = faiss.IndexFlat(d, faiss.METRIC_L1)
        for st in range(0, n, 16384):
            whole.add(np.asarray(vectors[st : st + 16384], dtype=np.float32))
    t_build = time.perf_counter() - t0
    log.info(
        "faiss IndexFlat L1 float32: %s (%s), built in %.1f s",
        fmt_bytes(need),
        "one index" if whole is not None else f"shards of {shard} rows (MemAvailable {fmt_bytes(avail)})",
        t_build,
    )

    def flat_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The flat search; when the float32 copy does not fit in RAM, the same scan shard by shard."""
        qf = q.astype(np.float32)
        if whole is not None:
            return whole.search(qf, k)
        res_d, res_i = [], []
        for lo in range(0, n, shard):
            f = faiss.IndexFlat(d, faiss.METRIC_L1)
            f.add(np.asarray(vectors[lo : lo + shard], dtype=np.float32))
            dd, ii = f.search(qf, k)
            res_d.append(dd)
            res_i.append(np.where(ii >= 0, ii + lo, -1))
            del f
        dd, ii = np.concatenate(res_d, 1), np.concatenate(res_i, 1)
        o = np.argsort(dd, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dd, o, 1), np.take_along_axis(ii, o, 1)

    flat_search(bq[:2])  # warm-up: first touch of the float32 array
    # facemem (all queries: held-out, then near-duplicates), baseline half, facemem, baseline half,
    # facemem: the median facemem run is reported.
    fm_runs: list[tuple[float, float]] = []
    base_d: list[np.ndarray] = []
    t_flat = 0.0

    def facemem_all() -> None:
        t_h, _, _ = run_fm(heldout)
        t_n, _, _ = run_fm(neardup)
        fm_runs.append((t_h, t_n))

    facemem_all()
    for part in np.array_split(np.arange(nb), 2):
        t1 = time.perf_counter()
        dd, _ = flat_search(bq[part])
        t_flat += time.perf_counter() - t1
        base_d.append(dd)
        facemem_all()
    whole = None  # free the 9 GB float32 copy before the next rows
    gc.collect()
    _, fm_d, _ = run_fm(bq)
    same = bool(np.array_equal(np.concatenate(base_d).astype(np.int64), fm_d))
    t_h, t_n = sorted(fm_runs, key=sum)[len(fm_runs) // 2]
    fm_rate = (len(heldout) + len(neardup)) / (t_h + t_n)
    base_rate = nb / t_flat
    mem_fm = int(vectors.nbytes + s.l1.nbytes)
    row = {
        "n": n,
        "d": d,
        "k": k,
        "facemem_queries": len(heldout) + len(neardup),
        "facemem_q_per_s": fm_rate,
        "facemem_heldout_q_per_s": len(heldout) / t_h,
        "facemem_neardup_q_per_s": len(neardup) / t_n,
        "facemem_runs_s": fm_runs,
        "facemem_stats_last_batch": dict(s.l1.last_stats),
        "baseline_queries": nb,
        "baseline_q_per_s": base_rate,
        "ratio": fm_rate / base_rate,
        "same_top_k_distances": same,
        "facemem_bytes": mem_fm,
        "facemem_bytes_per_dim": mem_fm / (n * d),
        "facemem_vectors_bytes": int(vectors.nbytes),
        "facemem_bound_bytes": int(s.l1.nbytes),
        "baseline_bytes": need,
        "baseline_sharded_rows": None if shard >= n else shard,
        "baseline_build_s": t_build,
        "load_before": la0,
        "load_after": loadavg(),
    }
    log.info(
        "pixel N=%d: facemem %.1f q/s (held-out %.1f, near-dup %.1f), faiss flat L1 %.3f q/s, %.0fx, "
        "same distances on the baseline's %d queries: %s",
        n,
        fm_rate,
        row["facemem_heldout_q_per_s"],
        row["facemem_neardup_q_per_s"],
        base_rate,
        fm_rate / base_rate,
        nb,
        same,
    )
    return row


# ----------------------------------------------------------------------------- server helpers


class Server:
    """`python -m service` in a subprocess, on a free port; stopped with SIGTERM."""

    def __init__(self, index: Path, work: Path, device: str, name: str, extra: list[str] | tuple[str, ...] = ()):
        self.log_path = work / f"server-{name}.log"
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--index",
                str(index),
                "--port",
                "0",
                "--log-level",
                "WARNING",
                "--device",
                device,
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            m = re.search(r"on (http://\S+?:\d+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            raise SystemExit(f"the server did not start; see {self.log_path}")
        threading.Thread(target=self._drain, daemon=True).start()
        import requests

        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {self.log_path}")
            time.sleep(0.1)
        self.startup_s = time.perf_counter() - t0
        log.info("server on %s ready in %.1f s (pid %d)", self.url, self.startup_s, self.proc.pid)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)

    def post(self, images: list[tuple[str, bytes]], params: dict | None = None) -> tuple[float, dict]:
        import requests

        files = [("images", (name, data, "image/jpeg")) for name, data in images]
        t0 = time.perf_counter()
        r = requests.post(self.url + "/neighbors", files=files, params=params or {}, timeout=600)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"POST /neighbors -> {r.status_code}: {r.text[:500]}")
        return dt, r.json()

    def peak_rss(self) -> dict:
        """VmHWM / VmRSS (and the anon/file split) of the server and each of its child processes."""

        def status(pid: int) -> dict:
            out = {}
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key = line.split(":")[0]
                    if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                        out[key] = int(line.split()[1]) * 1024
            except OSError:
                pass
            return out

        kids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    kids.append(int(p.name))
        return {"server": status(self.proc.pid), "children": {str(k): status(k) for k in sorted(kids)}}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def query_images(a: argparse.Namespace) -> list[tuple[str, bytes]]:
    folder = Path(a.latency_images) if a.latency_images else a.data / "celeba_test"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no query images in {folder}")
    return [(p.name, p.read_bytes()) for p in files]


def parse_reps(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        b, r = part.split(":")
        out[int(b)] = int(r)
    return out


# ----------------------------------------------------------------------------- row 4: service latency


def bench_service(a: argparse.Namespace, work: Path) -> dict:
    from indexer.store import load_index

    with _quiet_warnings():
        import face_recognition as fr
    index_dir = ensure_celeba_index(a, work)
    known = load_index(index_dir).descriptors.astype(np.float64)
    images = query_images(a)
    reps, breps = parse_reps(a.latency_reps), parse_reps(a.latency_baseline_reps)
    k = a.k
    cursor = {"i": 0}

    def batch(b: int) -> list[tuple[str, bytes]]:
        out = [images[(cursor["i"] + j) % len(images)] for j in range(b)]
        cursor["i"] += b
        return out

    def naive(imgs: list[tuple[str, bytes]]) -> float:
        t0 = time.perf_counter()
        for _, data in imgs:
            img = fr.load_image_file(io.BytesIO(data))
            for enc in fr.face_encodings(img, fr.face_locations(img)):
                dist = fr.face_distance(known, enc)
                top = np.argpartition(dist, k)[:k]
                top[np.argsort(dist[top])]
        return time.perf_counter() - t0

    fr.face_encodings(fr.load_image_file(io.BytesIO(images[0][1])))  # baseline models warm
    server = Server(index_dir, work, a.device, "celeba10k")
    rows = {}
    try:
        for b in reps:  # warm-up: worker processes, thread pools, page cache
            server.post(batch(b))
        for b, r in reps.items():
            la0 = loadavg()
            fm, base, server_timing, statuses = [], [], [], {}
            nbase = breps.get(b, 0)
            for i in range(r):
                imgs = batch(b)
                dt, body = server.post(imgs)
                fm.append(dt)
                server_timing.append(body.get("timing", {}))
                for st, c in body["counts"].items():
                    statuses[st] = statuses.get(st, 0) + c
                if i < nbase:  # interleaved with facemem, on the same images
                    base.append(naive(imgs))
            row = {
                "batch": b,
                "requests": r,
                "p50_s": pct(fm, 50),
                "p95_s": pct(fm, 95),
                "per_image_p50_ms": 1000 * pct(fm, 50) / b,
                "statuses": statuses,
                "server_timing_p50": {
                    key: pct([t.get(key, 0.0) for t in server_timing], 50)
                    for key in ("detect_s", "embed_s", "search_s", "stats_s", "total_s")
                },
                "baseline_runs": len(base),
                "load_before": la0,
                "load_after": loadavg(),
            }
            if base:
                row.update(
                    baseline_p50_s=pct(base, 50), baseline_p95_s=pct(base, 95), ratio=pct(base, 50) / pct(fm, 50)
                )
            log.info(
                "POST /neighbors batch %d: p50 %.3f s p95 %.3f s (%.1f ms/image)%s",
                b,
                row["p50_s"],
                row["p95_s"],
                row["per_image_p50_ms"],
                f"; naive loop p50 {row['baseline_p50_s']:.3f} s" if base else "",
            )
            rows[b] = row
    finally:
        server.stop()
    return {
        "index_faces": int(len(known)),
        "server_startup_s": server.startup_s,
        "query_images": str(Path(a.latency_images) if a.latency_images else a.data / "celeba_test"),
        "batches": rows,
    }


# ----------------------------------------------------------------------------- row 5: peak RSS


def bench_rss(a: argparse.Namespace, work: Path) -> dict:
    from indexer import pixels

    n = a.rss_n
    path = synthetic_index(a, work, n)
    images = query_images(a)
    la0 = loadavg()
    server = Server(path, work, a.device, f"celeba-size-{n}")
    try:
        for b in (1, 16, 64, 64):
            server.post(images[:b])
        rss = server.peak_rss()
    finally:
        server.stop()
    main = rss["server"].get("VmHWM", 0)
    kids = sum(c.get("VmHWM", 0) for c in rss["children"].values())
    baseline = n * 128 * 8 + n * pixels.PIXEL_DIM * 4
    log.info(
        "server peak RSS with %d faces: %s (+ %s in %d child processes)",
        n,
        fmt_bytes(main),
        fmt_bytes(kids),
        len(rss["children"]),
    )
    return {
        "n": n,
        "server_peak_rss_bytes": main,
        "children_peak_rss_bytes": kids,
        "detail": rss,
        "server_startup_s": server.startup_s,
        "baseline_bytes_computed": baseline,
        "ratio": baseline / main if main else None,
        "load_before": la0,
        "load_after": loadavg(),
    }


# ----------------------------------------------------------------------------- table


def _times_smaller(ratio: float) -> str:
    return f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"


def table(results: dict) -> str:
    lines = ["| # | benchmark | facemem | baseline | ratio |", "|---|---|---|---|---|"]
    bm = results.get("build_modes")
    if bm:
        for name, v in bm["layouts"].items():
            lines.append(
                f"| 0 | build layout: {name}; {bm['images']:,} images, median of {bm['rounds']}"
                f"{', with ' + str(bm['busy_loops']) + ' busy loop(s)' if bm['busy_loops'] else ''} "
                f"(decode->vectors img/s; build() s) | {fmt_rate(v['median_img_per_s'])}; "
                f"{v['median_build_s']:.2f} s | | |"
            )
    r = results.get("indexing")
    if r:
        lines.append(
            f"| 1 | indexing, {r['images']:,} celeba10k images, decode -> faces -> vectors incl. worker "
            f"start-up and model load (img/s; faces: {r['facemem_faces']} vs {r['baseline_faces']}) | "
            f"{fmt_rate(r['facemem_img_per_s'])} | {fmt_rate(r['baseline_img_per_s'])} | {r['ratio']:.1f}x |"
        )
        lines.append(
            f"| 1 | indexing, whole build() incl. calibration + index write / whole `python -m indexer "
            f"build` process (img/s) | {fmt_rate(r['facemem_build_img_per_s'])} / "
            f"{fmt_rate(r['facemem_process_img_per_s'])} | {fmt_rate(r['baseline_img_per_s'])} | "
            f"{r['ratio_build']:.1f}x / {r['ratio_process']:.1f}x |"
        )
    for s in results.get("semantic", []):
        lines.append(
            f"| 2 | semantic top-{s['k']} search, N={s['n']:,} {'real' if s['real'] else 'CelebA-size'} "
            f"(queries/s; same ids: {s['same_top_k_ids']}) | {fmt_rate(s['facemem_q_per_s'])} | "
            f"{fmt_rate(s['baseline_q_per_s'])} | {s['ratio']:.0f}x |"
        )
    p = results.get("pixel")
    if p:
        lines.append(
            f"| 3 | pixel L1 top-{p['k']} search, N={p['n']:,} x 64x64x3 (queries/s; facemem "
            f"{p['facemem_queries']} queries, held-out {fmt_rate(p['facemem_heldout_q_per_s'])} / "
            f"near-dup {fmt_rate(p['facemem_neardup_q_per_s'])}; baseline {p['baseline_queries']} of them; "
            f"same distances: {p['same_top_k_distances']}) | {fmt_rate(p['facemem_q_per_s'])} | "
            f"{p['baseline_q_per_s']:.3f} | {p['ratio']:.0f}x |"
        )
        lines.append(
            f"| 3 | pixel L1 memory ({p['facemem_bytes_per_dim']:.3f} vs 4 bytes/dim) | "
            f"{fmt_bytes(p['facemem_bytes'])} | {fmt_bytes(p['baseline_bytes'])} | "
            f"{_times_smaller(p['baseline_bytes'] / p['facemem_bytes'])} |"
        )
    sv = results.get("service")
    if sv:
        for b, row in sv["batches"].items():
            base = (
                f"{row['baseline_p50_s'] * 1000:,.0f} / {row['baseline_p95_s'] * 1000:,.0f}"
                if "baseline_p50_s" in row
                else "n/a"
            )
            ratio = f"{row['ratio']:.1f}x" if "ratio" in row else ""
            lines.append(
                f"| 4 | POST /neighbors, batch {b}, p50 / p95 ms ({row['per_image_p50_ms']:.0f} ms/image; "
                f"{row['requests']} requests) | {row['p50_s'] * 1000:,.0f} / {row['p95_s'] * 1000:,.0f} | "
                f"{base} | {ratio} |"
            )
    rs = results.get("rss")
    if rs:
        lines.append(
            f"| 5 | server peak RSS, N={rs['n']:,} (+ {fmt_bytes(rs['children_peak_rss_bytes'])} in worker "
            f"processes; baseline computed) | {fmt_bytes(rs['server_peak_rss_bytes'])} | "
            f"{fmt_bytes(rs['baseline_bytes_computed'])} | {_times_smaller(rs['ratio'])} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main (shared with bench_scale.py)


def add_common_args(ap: argparse.ArgumentParser, device: str) -> None:
    """The options both benchmark scripts take: data, work folder, celeba10k index, JSON, device, k, seed,
    the synthetic index's held-out faces and descriptor noise."""
    ap.add_argument("--data", type=Path, default=default_data_root(), help="shared data folder (env FACEMEM_DATA)")
    ap.add_argument(
        "--work", type=Path, default=REPO / "build" / "bench", help="where indexes are built and cached between runs"
    )
    ap.add_argument("--celeba-index", help="an existing celeba10k index to use instead of building one")
    ap.add_argument("--json", type=Path, help="write all measurements here")
    ap.add_argument("--device", default=device, choices=["auto", "cpu", "cuda"], help=f"facemem device ({device})")
    ap.add_argument("--k", type=int, default=5, help="neighbours per query (service default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", type=int, default=500, help="real faces kept out of the synthetic index as queries")
    ap.add_argument("--desc-sigma", type=float, default=0.01, help="descriptor perturbation per dimension")


def selected_rows(ap: argparse.ArgumentParser, only: str, rows: tuple[str, ...]) -> list[str]:
    """--only as a list of row names; an unknown name is a usage error."""
    picked = [r.strip() for r in only.split(",") if r.strip()]
    bad = set(picked) - set(rows)
    if bad:
        ap.error(f"unknown row(s) {sorted(bad)}; choose from {','.join(rows)}")
    return picked


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("faiss.loader", "indexer.l1", "indexer.store", "indexer.calibrate", "indexer.resnet"):
        logging.getLogger(name).setLevel(logging.WARNING)


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"\nwrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        default=",".join(ROWS),
        help=f"comma-separated rows to run, of {','.join(ROWS)} (default: all), and build-modes "
        f"(the build layouts that were tried; not in the default set)",
    )
    ap.add_argument("--modes-rounds", type=int, default=3, help="build-modes: rounds over the layouts")
    ap.add_argument(
        "--modes-load",
        type=int,
        default=0,
        help="build-modes: busy-loop processes to run meanwhile (behaviour under contention)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke run (200 images, N=20,000, few queries and requests)",
    )
    ap.add_argument("--index-images", type=int, default=1000, help="row 1: images indexed")
    ap.add_argument("--semantic-sizes", default=f"10000,{CELEBA_N}", help="row 2: index sizes N")
    ap.add_argument("--semantic-queries", type=int, default=2048, help="row 2: facemem queries")
    ap.add_argument("--semantic-baseline-queries", type=int, default=200, help="row 2: baseline queries")
    ap.add_argument("--pixel-n", type=int, default=CELEBA_N, help="row 3: index size")
    ap.add_argument("--pixel-queries", type=int, default=1000, help="row 3: facemem queries (half held-out)")
    ap.add_argument("--pixel-baseline-queries", type=int, default=32, help="row 3: queries for both sides")
    ap.add_argument("--latency-reps", default="1:40,16:12,64:8", help="row 4: requests per batch size")
    ap.add_argument("--latency-baseline-reps", default="1:12,16:3,64:2", help="row 4: naive-loop runs per batch size")
    ap.add_argument("--rss-n", type=int, default=CELEBA_N, help="row 5: index size")
    add_common_args(ap, device="auto")
    ap.add_argument("--latency-images", help="row 4/5: query image folder (default DATA/celeba_test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.index_images, a.semantic_queries, a.semantic_baseline_queries = 200, 512, 50
        a.semantic_sizes = "10000,20000"
        a.pixel_n = a.rss_n = 20000
        a.pixel_queries, a.pixel_baseline_queries = 200, 8
        a.latency_reps, a.latency_baseline_reps = "1:8,16:3,64:2", "1:2,16:1,64:1"
    a.only = selected_rows(ap, a.only, ROWS + EXTRA_ROWS)
    a.semantic_sizes = [int(x) for x in str(a.semantic_sizes).split(",")]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    setup_logging()
    a.work.mkdir(parents=True, exist_ok=True)
    results, finish = start_run()
    log.info("machine %s; load %s", results["machine"], results["load_start"])
    searchers = Searchers(a.device)
    if "build-modes" in a.only:
        results["build_modes"] = bench_build_modes(a, a.work)
    if "indexing" in a.only:
        results["indexing"] = bench_indexing(a, a.work)
    if "semantic" in a.only:
        results["semantic"] = bench_semantic(a, a.work, searchers)
    if "pixel" in a.only:
        results["pixel"] = bench_pixel(a, a.work, searchers)
    searchers.clear()
    if "service" in a.only:
        results["service"] = bench_service(a, a.work)
    if "rss" in a.only:
        results["rss"] = bench_rss(a, a.work)
    finish()
    samples = results["load_samples"]
    tab = table(results)
    results["table"] = tab
    print()
    print(
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['mem_gib']} GiB; load average at start {results['load_start']}, "
        f"at end {results['load_end']}, max 1-min sample {max([x for _, x in samples], default=None)} "
        f"(this run itself keeps ~2 busy); {results['seconds']:.0f} s"
    )
    print(tab)
    if a.json:
        write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
