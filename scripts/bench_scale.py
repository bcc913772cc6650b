#!/usr/bin/env python
"""Scale benchmark: search over an index of millions of faces, facemem against the baselines in one run.

Prints one table (facemem | baseline | ratio per row) with the load average, and writes every
measurement to JSON (--json). A script, not a timed test.

Rows (select with --only):

  build    The same --build-images celeba10k images indexed by `python -m indexer build` with
           --engine local and with --engine ray (a local Ray instance, one actor per core), in
           fresh processes, alternating, --build-rounds rounds: img/s through the face pipeline
           (manifest build.face_pipeline_seconds, actor start-up included) and the whole process.
           On one machine this shows Ray's overhead, not a cluster's speed-up.
  flat     Exact semantic top-5, queries/s at batch 1, 16, 64, at each --flat-sizes N. facemem:
           indexer.flat.ExactL2 (the service's exact channel: matrix product with a proven float32
           error bound + float64 re-rank) over the index's memory-mapped shards. Baseline: bare FAISS
           IndexFlatL2 over the same rows, in RAM, at the same batch sizes, interleaved with facemem.
           Both return the same ids on every query (checked).
  ivf      Approximate semantic top-5 at N = --n: the index's IVF (faiss.index_factory, trained on a
           seeded sample at write time) at each --nprobe, candidates re-ranked in float64, as the
           service runs it. Recall@5 against the exact top-5 on the same queries, and queries/s
           against the exact flat search (batch 64 and 1).
  pixel    The exact L1 cascade per shard, merged (indexer.shards.ShardedL1) at N = --n: memory per
           row of its bound tables, start-up time, queries/s for held-out and near-duplicate crops
           (batch 64). Next to it: the fallback used above --pixel-exact-max-faces (exact L1 over
           the --pixel-candidates semantic neighbours) with its recall@5 against exact L1.
  service  A live `python -m service` on the N-face index, twice in this run: facemem's defaults
           (auto: IVF above --exact-max-faces, exact pixel L1) and the flat baseline
           (--semantic-search exact). POST /neighbors p50/p95 latency at batch 1, 16, 64
           (celeba_test photos, hog), server peak RSS (VmHWM, anon/file), start-up time, and the
           recall@5 of the default server's semantic answers against the flat server's.

The N-face index is synthesised from the real celeba10k index (built once with `python -m indexer
build` unless --celeba-index is given): its last --heldout faces are the held-out queries; the
other m real faces are expanded to N rows exactly as scripts/bench.py describes (row j >= m:
indexer.augment.iter_expanded_crops of crop j mod m, descriptor + N(0, --desc-sigma^2)), and
written as a sharded index (--shard-size rows per shard) with an IVF, shard by shard, so that an
index larger than memory (2M crops = 24.6 GB) never has to be in memory. Calibration arrays are
the real index's, tiled. Disk: ~12.9 kB per face (27 GB at 2M); memory while writing: one piece.

Examples:
    .venv/bin/python scripts/bench_scale.py --n 200000 --json build/bench/scale-200k.json
    .venv/bin/python scripts/bench_scale.py --n 2000000 --json build/bench/scale-2m.json   (the recorded run)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench import (  # the sibling script (this folder is on sys.path when a script runs)
    REPO,
    Server,
    add_common_args,
    celeba_build_args,
    ensure_celeba_index,
    fmt_bytes,
    fmt_rate,
    loadavg,
    mem_available,
    pct,
    query_images,
    selected_rows,
    setup_logging,
    start_run,
    synthetic_recipe,
    write_json,
)

from indexer.augment import augment, iter_expanded_crops

log = logging.getLogger("bench_scale")

ROWS = ("build", "flat", "ivf", "pixel", "service")
BATCHES = (1, 16, 64)


# ----------------------------------------------------------------------------- the index


def synthetic_sharded_index(a: argparse.Namespace, n: int) -> Path:
    """The N-face sharded index (see the module docstring), written once and reused by later runs."""
    from indexer import ivf, store
    from indexer.shards import write_sharded_index

    real_dir = ensure_celeba_index(a, a.work)
    recipe = synthetic_recipe(
        a, real_dir, n, shard_size=a.shard_size, ivf_spec=a.ivf_spec, pixels="indexer.augment.iter_expanded_crops"
    )
    recipe["version"] = 2
    out = a.work / f"scale-{n}"
    if (out / "manifest.json").exists():
        if store.read_manifest(out).get("dataset", {}).get("synthetic") == recipe:
            return out
    need = n * (128 * 4 + 12288 + 8 + 150) * 1.1
    import shutil

    free = shutil.disk_usage(a.work).free
    if free < need:
        raise SystemExit(f"writing {n:,} faces needs ~{fmt_bytes(need)} of disk; {fmt_bytes(free)} free in {a.work}")
    log.info("writing the synthetic %d-face sharded index %s (~%s)", n, out, fmt_bytes(need))
    t0 = time.perf_counter()
    idx = store.load_index(real_dir)
    m = idx.n_faces - a.heldout
    crops = np.asarray(idx.pixels[:m])
    base = idx.descriptors[:m]
    real_rows = [idx.rows[int(idx.face_rows[i])] for i in range(m)]

    def rows():
        for j in range(n):
            r = real_rows[j % m]
            row = {k: v for k, v in r.items() if k not in ("row", "face", "extra")}
            if j >= m:
                row["file"] = f"synthetic/{j:07d}.jpg"
                row["extra"] = {"synthetic_of": r["file"]}
            yield {"row": j, **row, "face": j}

    def pieces():
        rng = np.random.default_rng(a.seed + 2)
        start = 0
        for pix in iter_expanded_crops(crops, n, seed=a.seed):
            src = np.arange(start, start + len(pix)) % m
            desc = base[src].astype(np.float32)
            fresh = np.arange(start, start + len(pix)) >= m
            if fresh.any():
                desc[fresh] += rng.normal(0.0, a.desc_sigma, (int(fresh.sum()), 128)).astype(np.float32)
            start += len(pix)
            yield desc, pix

    calib = {k: (np.resize(v[:m], n) if k.startswith("sem_") else v) for k, v in idx.calibration.items()}
    man = json.loads(json.dumps(idx.manifest))
    # no geometry.npy / attributes.npz in the synthetic index: drop their manifest blocks too
    for k in (
        "format_version",
        "model_sha256",
        "files",
        "libraries",
        "written_at",
        "layout",
        "shards",
        "attributes",
        "geometry",
    ):
        man.pop(k, None)
    man["dataset"] = dict(man["dataset"], items=n, synthetic=recipe)
    man["counts"] = {"ok": n, "no_face": 0, "unreadable": 0}
    man["build"] = {"seconds": None, "synthetic": True}
    man["semantic_ivf"] = {"spec": ivf.spec_for(n, a.ivf_spec)}
    write_sharded_index(
        out,
        rows(),
        pieces(),
        a.shard_size,
        calib,
        man,
        overwrite=True,
        ivf=lambda desc: ivf.build(desc.blocks, a.ivf_spec, seed=a.seed),
    )
    log.info("synthetic index written in %.1f s", time.perf_counter() - t0)
    return out


def queries(a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out descriptors, held-out crops, near-duplicate crops of indexed faces)."""
    from indexer import store

    real = store.load_index(ensure_celeba_index(a, a.work))
    m = real.n_faces - a.heldout
    rng = np.random.default_rng(a.seed + 1)
    pick = rng.choice(m, size=a.pixel_queries // 2, replace=False)
    return (
        np.ascontiguousarray(real.descriptors[m:]),
        np.asarray(real.pixels[m : m + a.pixel_queries // 2]),
        augment(np.asarray(real.pixels[pick]), rng),
    )


def rate(fn, q: np.ndarray, batch: int, min_s: float) -> float:
    """Queries/s of ``fn`` over ``q`` in batches, repeated for at least ``min_s`` seconds."""
    fn(q[:batch])  # warm-up
    t0, done = time.perf_counter(), 0
    while True:
        for s in range(0, len(q) - batch + 1, batch):
            fn(q[s : s + batch])
            done += batch
            if time.perf_counter() - t0 >= min_s and done >= 2 * batch:
                return done / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- rows


def bench_build(a: argparse.Namespace) -> dict:
    import subprocess

    from indexer.store import read_manifest

    out: dict[str, list[dict]] = {"local": [], "ray": []}
    for _ in range(a.build_rounds):
        for engine in ("local", "ray"):
            dest = a.work / f"build-{engine}"
            cmd = [sys.executable, *celeba_build_args(a, dest, "--limit", str(a.build_images), "--device", "cpu")]
            cmd += ["--engine", engine]
            la = loadavg()[0]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"--engine {engine} build failed:\n{r.stderr[-3000:]}")
            b = read_manifest(dest)["build"]
            run = {"pipeline_img_per_s": a.build_images / b["face_pipeline_seconds"], "process_s": wall, "load1": la}
            out[engine].append(run)
            log.info("build --engine %s: %.1f img/s through the pipeline, %.1f s process", engine, *run.values())
    med = {e: statistics.median(x["pipeline_img_per_s"] for x in v) for e, v in out.items()}
    return {"images": a.build_images, "runs": out, "median_img_per_s": med, "ratio": med["ray"] / med["local"]}


def bench_flat(a: argparse.Namespace) -> list[dict]:
    qd, _, _ = queries(a)
    return [_flat_at(a, n, qd) for n in a.flat_sizes]


def _flat_at(a: argparse.Namespace, n: int, qd: np.ndarray) -> dict:
    import faiss

    from indexer import store
    from indexer.flat import ExactL2

    idx = store.load_index(synthetic_sharded_index(a, n))
    blocks = idx.descriptor_blocks()
    t0 = time.perf_counter()
    fm = ExactL2(blocks)
    t_fm = time.perf_counter() - t0
    flat = faiss.IndexFlatL2(128)
    for b in blocks:
        flat.add(np.ascontiguousarray(b, np.float32))
    k = a.k
    _, ids_fm = fm.search(qd, k)
    _, ids_fx = flat.search(qd, k)
    same = float((ids_fm == ids_fx).all(axis=1).mean())
    row: dict[str, Any] = {"n": n, "k": k, "queries": len(qd), "same_ids_share": same, "facemem_setup_s": t_fm}
    la0 = loadavg()
    for batch in BATCHES:  # facemem, FAISS, facemem: load from other jobs hits both alike
        f1 = rate(lambda q: fm.search(q, k), qd, batch, a.min_s / 2)
        b1 = rate(lambda q: flat.search(q, k), qd, batch, a.min_s)
        f2 = rate(lambda q: fm.search(q, k), qd, batch, a.min_s / 2)
        fq = statistics.mean([f1, f2])
        row[f"b{batch}"] = {"facemem_q_per_s": fq, "faiss_q_per_s": b1, "ratio": fq / b1, "runs": [f1, b1, f2]}
        log.info("flat N=%d batch %d: facemem %.0f q/s, faiss flat %.0f q/s", n, batch, fq, b1)
    row.update(load_before=la0, load_after=loadavg(), facemem_state_bytes=fm.nbytes, faiss_bytes=n * 128 * 4)
    return row


def bench_ivf(a: argparse.Namespace) -> dict:
    from indexer import ivf, store
    from service.search import Searcher

    idx = store.load_index(synthetic_sharded_index(a, a.n))
    qd, _, _ = queries(a)
    k = a.k
    t0 = time.perf_counter()
    ivf_index = ivf.load(idx.ivf_path)
    t_load = time.perf_counter() - t0
    del ivf_index
    s = Searcher(idx, device=a.device, semantic="ivf", pixel_exact_max_faces=0)  # the service's code path
    assert s.ivf is not None
    exact_d, exact_i = s.flat.search(qd, k)
    la0 = loadavg()
    exact_rate = {b: rate(lambda q: s.flat.search(q, k), qd, b, a.min_s) for b in (1, 64)}
    rows = _ivf_sweep(s, qd, exact_i, a.nprobe, k, a.min_s, exact_rate)
    info = ivf.describe(s.ivf)
    extra = []
    for spec in a.ivf_extra:  # other index_factory strings, trained in memory on the same shards
        t0 = time.perf_counter()
        s.ivf = ivf.build(idx.descriptor_blocks(), spec, seed=a.seed)
        t_build = time.perf_counter() - t0
        sweep = _ivf_sweep(s, qd, exact_i, a.nprobe, k, a.min_s, exact_rate)
        extra.append({"spec": spec, "build_s": t_build, "nprobe": sweep})
    return {
        "n": a.n,
        "k": k,
        "queries": len(qd),
        "spec": idx.manifest.get("semantic_ivf", {}).get("spec"),
        "nlist": info["nlist"],
        "ivf_file_bytes": idx.ivf_path.stat().st_size,
        "load_s": t_load,
        "exact_q_per_s": exact_rate,
        "nprobe": rows,
        "extra_specs": extra,
        "load_before": la0,
        "load_after": loadavg(),
    }


def _ivf_sweep(s, qd: np.ndarray, exact_i: np.ndarray, nprobes: list[int], k: int, min_s: float, exact_rate: dict):
    rows = []
    for nprobe in nprobes:
        s.ivf_nprobe = nprobe
        _, got = s.semantic_search(qd, k)
        recall = float(np.mean([len(set(g) & set(e)) / k for g, e in zip(got, exact_i)]))
        r = {b: rate(lambda q: s.semantic_search(q, k), qd, b, min_s) for b in (1, 64)}
        rows.append(
            {
                "nprobe": nprobe,
                "recall_at_k": recall,
                "q_per_s": r,
                "speedup_vs_exact": {b: r[b] / exact_rate[b] for b in r},
            }
        )
        log.info("ivf nprobe %d: recall@%d %.4f, %s q/s (exact %s)", nprobe, k, recall, r, exact_rate)
    return rows


def bench_pixel(a: argparse.Namespace) -> dict:
    from indexer import store
    from indexer.shards import ShardedL1
    from service.search import Searcher

    idx = store.load_index(synthetic_sharded_index(a, a.n))
    qd, held, near = queries(a)
    k = a.k
    la0 = loadavg()
    t0 = time.perf_counter()
    l1 = ShardedL1(idx.pixel_blocks())
    t_build = time.perf_counter() - t0
    rss_after_build = _rss()
    res = {}
    for name, q in (("heldout", held), ("neardup", near)):
        t0 = time.perf_counter()
        d, i = [], []
        for s in range(0, len(q), 64):
            dd, ii = l1.search(q[s : s + 64], k)
            d.append(dd)
            i.append(ii)
        dt = time.perf_counter() - t0
        res[name] = {"q_per_s": len(q) / dt, "ids": np.concatenate(i), "stats": dict(l1.last_stats)}
        log.info("pixel exact N=%d %s: %.1f q/s", a.n, name, len(q) / dt)
    t1 = time.perf_counter()
    one = [l1.search(held[j : j + 1], k) for j in range(min(16, len(held)))]
    res["batch1_q_per_s"] = len(one) / (time.perf_counter() - t1)
    # The fallback above --pixel-exact-max-faces: exact L1 over the semantic (IVF) candidates.
    fb = Searcher(idx, device=a.device, semantic="ivf", pixel_exact_max_faces=0, pixel_candidates=a.pixel_candidates)
    real = store.load_index(ensure_celeba_index(a, a.work))
    m = real.n_faces - a.heldout
    rng = np.random.default_rng(a.seed + 1)
    pick = rng.choice(m, size=a.pixel_queries // 2, replace=False)
    near_desc = real.descriptors[pick]  # the near-duplicates' descriptors: those of the faces they copy
    out = {}
    for name, q, dq in (("heldout", held, qd[: len(held)]), ("neardup", near, near_desc)):
        t0 = time.perf_counter()
        _, got = fb.pixel_search(q, k, desc=dq)
        dt = time.perf_counter() - t0
        want = res[name]["ids"]
        recall = float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want)]))
        top1 = float(np.mean(got[:, 0] == want[:, 0]))
        out[name] = {"q_per_s": len(q) / dt, "recall_at_k": recall, "top1_agreement": top1}
        if name == "neardup":  # is the top-1 a copy of the face the query was made from (row j, j mod m = source)?
            out[name]["top1_is_source_copy"] = float(np.mean(got[:, 0] % m == pick))
            out[name]["exact_top1_is_source_copy"] = float(np.mean(want[:, 0] % m == pick))
        log.info("pixel fallback %s: %.1f q/s, recall@%d %.3f, top-1 %.3f", name, len(q) / dt, k, recall, top1)
    return {
        "n": a.n,
        "k": k,
        "shards": len(idx.pixel_blocks()),
        "bound_bytes": l1.nbytes,
        "bound_bytes_per_row": l1.nbytes / a.n,
        "crop_bytes_per_row": idx.pixels.shape[1],
        "build_s": t_build,
        "rss_after_build": rss_after_build,
        "exact": {name: {kk: v for kk, v in res[name].items() if kk != "ids"} for name in ("heldout", "neardup")},
        "exact_batch1_q_per_s": res["batch1_q_per_s"],
        "fallback_candidates": a.pixel_candidates,
        "fallback": out,
        "load_before": la0,
        "load_after": loadavg(),
    }


def _rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) * 1024
    return out


def bench_service(a: argparse.Namespace) -> dict:
    path = synthetic_sharded_index(a, a.n)
    images = query_images(a)
    reps = {1: a.reps, 16: max(2, a.reps // 4), 64: max(2, a.reps // 8)}
    runs = {}
    answers: dict[str, list] = {}
    for name, extra in (
        ("facemem (auto: IVF semantic, exact pixel)", []),
        ("flat baseline (--semantic-search exact)", ["--semantic-search", "exact"]),
    ):
        la0 = loadavg()
        server = Server(path, a.work, a.device, f"scale-{a.n}-{len(runs)}", extra=["--no-verify", *extra])
        try:
            search = server.post(images[:1])[1]["search"]
            lat, ans = {}, []
            for b, r in reps.items():
                server.post(images[:b])  # warm-up per size
                times = []
                for j in range(r):
                    batch = [images[(j * b + i) % len(images)] for i in range(b)]
                    dt, body = server.post(batch)
                    times.append(dt)
                    if b == 16:
                        ans.extend([e["file"] for e in im["semantic"]] for im in body["images"])
                lat[b] = {"p50_s": pct(times, 50), "p95_s": pct(times, 95), "requests": r}
                log.info("%s batch %d: p50 %.3f s", name, b, lat[b]["p50_s"])
            rss = server.peak_rss()
        finally:
            server.stop()
        answers[name] = ans
        runs[name] = {
            "search": search,
            "latency": lat,
            "startup_s": server.startup_s,
            "server_rss": rss["server"],
            "children_vmhwm": sum(c.get("VmHWM", 0) for c in rss["children"].values()),
            "load_before": la0,
            "load_after": loadavg(),
        }
    fm, base = answers.values()
    recall = float(np.mean([len(set(x) & set(y)) / max(1, len(y)) for x, y in zip(fm, base)])) if fm else None
    return {"n": a.n, "runs": runs, "semantic_recall_at_k_vs_flat": recall, "images_compared": len(fm)}


# ----------------------------------------------------------------------------- table


def table(res: dict) -> str:
    lines = ["| row | benchmark | facemem | baseline | ratio |", "|---|---|---|---|---|"]
    bd = res.get("build")
    if bd:
        proc = {e: statistics.median(x["process_s"] for x in v) for e, v in bd["runs"].items()}
        lines.append(
            f"| build | {bd['images']:,} celeba10k images, --engine ray (local Ray instance) vs --engine local: img/s "
            f"through the face pipeline (median of {len(bd['runs']['ray'])}; whole process "
            f"{proc['ray']:.1f} s vs {proc['local']:.1f} s) | {fmt_rate(bd['median_img_per_s']['ray'])} | "
            f"{fmt_rate(bd['median_img_per_s']['local'])} (local) | {bd['ratio']:.2f}x |"
        )
    for r in res.get("flat", []):
        for b in BATCHES:
            x = r[f"b{b}"]
            lines.append(
                f"| flat | exact semantic top-{r['k']}, N={r['n']:,}, batch {b} (q/s; same ids on "
                f"{r['same_ids_share']:.0%} of {r['queries']} queries) | {fmt_rate(x['facemem_q_per_s'])} | "
                f"{fmt_rate(x['faiss_q_per_s'])} (FAISS IndexFlatL2) | {x['ratio']:.2f}x |"
            )
    v = res.get("ivf")
    if v:
        for spec, sweep in [(v["spec"], v["nprobe"]), *((e["spec"], e["nprobe"]) for e in v.get("extra_specs", []))]:
            for r in sweep:
                lines.append(
                    f"| ivf | {spec} N={v['n']:,}, nprobe {r['nprobe']}: recall@{v['k']} {r['recall_at_k']:.4f} "
                    f"(q/s at batch 64 / 1) | {fmt_rate(r['q_per_s'][64])} / {fmt_rate(r['q_per_s'][1])} | "
                    f"{fmt_rate(v['exact_q_per_s'][64])} / {fmt_rate(v['exact_q_per_s'][1])} (exact flat) | "
                    f"{r['speedup_vs_exact'][64]:.1f}x / {r['speedup_vs_exact'][1]:.1f}x |"
                )
    p = res.get("pixel")
    if p:
        e, f = p["exact"], p["fallback"]
        lines.append(
            f"| pixel | exact L1 over {p['shards']} shards, N={p['n']:,}: held-out / near-dup q/s at batch 64 "
            f"(batch 1: {fmt_rate(p['exact_batch1_q_per_s'])}); bound tables {p['bound_bytes_per_row']:,.0f} B/row "
            f"= {fmt_bytes(p['bound_bytes'])} in RAM, built in {p['build_s']:.0f} s | "
            f"{fmt_rate(e['heldout']['q_per_s'])} / {fmt_rate(e['neardup']['q_per_s'])} | | |"
        )
        lines.append(
            f"| pixel | fallback: exact L1 over the {p['fallback_candidates']} semantic neighbours: held-out / "
            f"near-dup q/s; recall@{p['k']} vs exact {f['heldout']['recall_at_k']:.3f} / "
            f"{f['neardup']['recall_at_k']:.3f} (top-1 {f['heldout']['top1_agreement']:.3f} / "
            f"{f['neardup']['top1_agreement']:.3f}); near-dup top-1 is a copy of its source face: "
            f"{f['neardup']['top1_is_source_copy']:.3f} (exact: {f['neardup']['exact_top1_is_source_copy']:.3f}) | "
            f"{fmt_rate(f['heldout']['q_per_s'])} / {fmt_rate(f['neardup']['q_per_s'])} | | |"
        )
    s = res.get("service")
    if s:
        (fm_name, fm), (b_name, bs) = s["runs"].items()
        for b in BATCHES:
            x, y = fm["latency"][b], bs["latency"][b]
            lines.append(
                f"| service | POST /neighbors N={s['n']:,}, batch {b}, p50 / p95 ms "
                f"({fm['search']['semantic']['method']} vs {bs['search']['semantic']['method']}) | "
                f"{x['p50_s'] * 1e3:,.0f} / {x['p95_s'] * 1e3:,.0f} | "
                f"{y['p50_s'] * 1e3:,.0f} / {y['p95_s'] * 1e3:,.0f} | {y['p50_s'] / x['p50_s']:.1f}x |"
            )
        lines.append(
            f"| service | server peak RSS (VmHWM; anon + file) / start-up s; semantic recall@5 of the default "
            f"server vs the flat one: {s['semantic_recall_at_k_vs_flat']:.4f} on {s['images_compared']} faces | "
            f"{fmt_bytes(fm['server_rss'].get('VmHWM', 0))} ({fmt_bytes(fm['server_rss'].get('RssAnon', 0))} + "
            f"{fmt_bytes(fm['server_rss'].get('RssFile', 0))}) / {fm['startup_s']:.0f} s | "
            f"{fmt_bytes(bs['server_rss'].get('VmHWM', 0))} ({fmt_bytes(bs['server_rss'].get('RssAnon', 0))} + "
            f"{fmt_bytes(bs['server_rss'].get('RssFile', 0))}) / {bs['startup_s']:.0f} s | |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/bench_scale.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {','.join(ROWS)}")
    ap.add_argument("--n", type=int, default=2_000_000, help="faces in the synthetic index (ivf, pixel, service)")
    ap.add_argument("--build-images", type=int, default=1000, help="build row: celeba10k images indexed")
    ap.add_argument("--build-rounds", type=int, default=3, help="build row: rounds (local then ray)")
    ap.add_argument("--flat-sizes", default="202599,N", help="index sizes for the flat row (N = --n)")
    ap.add_argument("--shard-size", type=int, default=250_000, help="rows per shard of the synthetic index")
    ap.add_argument("--ivf-spec", default="IVF{nlist},Flat", help="faiss.index_factory string of the index's IVF")
    ap.add_argument("--nprobe", default="16,32,64,128", help="ivf row: nprobe values")
    ap.add_argument(
        "--ivf-extra",
        default="",
        help="ivf row: more index_factory strings to train in memory on the same shards and sweep "
        "(';'-separated, e.g. 'IVF8192,Flat;IVF4096,SQ8'), beside the index's own IVF",
    )
    ap.add_argument("--pixel-queries", type=int, default=256, help="pixel row: queries (half held-out, half near-dup)")
    ap.add_argument("--pixel-candidates", type=int, default=1000, help="pixel row: the fallback's semantic neighbours")
    ap.add_argument("--reps", type=int, default=24, help="service row: requests of one image (fewer for 16 and 64)")
    ap.add_argument("--min-s", type=float, default=3.0, help="seconds per speed measurement")
    ap.add_argument("--latency-images", help="service row: query image folder (default DATA/celeba_test)")
    add_common_args(ap, device="cpu")
    a = ap.parse_args(argv)
    a.only = selected_rows(ap, a.only, ROWS)
    a.flat_sizes = [a.n if x.strip() == "N" else int(x) for x in a.flat_sizes.split(",")]
    a.nprobe = [int(x) for x in a.nprobe.split(",")]
    a.ivf_extra = [x.strip() for x in a.ivf_extra.split(";") if x.strip()]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    setup_logging()
    a.work.mkdir(parents=True, exist_ok=True)
    res, finish = start_run(mem_available_start=mem_available())
    if set(a.only) - {"build"}:
        t_idx = time.perf_counter()
        synthetic_sharded_index(a, a.n)
        res["index_write_s"] = time.perf_counter() - t_idx
    rows = (("build", bench_build), ("flat", bench_flat), ("ivf", bench_ivf), ("pixel", bench_pixel))
    for row, fn in (*rows, ("service", bench_service)):
        if row in a.only:
            res[row] = fn(a)
    finish()
    samples = res["load_samples"]
    res["table"] = table(res)
    print()
    print(
        f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, {res['machine']['mem_gib']} GiB; "
        f"load average at start {res['load_start']}, at end {res['load_end']}, max 1-min sample "
        f"{max([x for _, x in samples], default=None)}; {res['seconds']:.0f} s"
    )
    print(res["table"])
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
