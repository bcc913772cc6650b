"""The parallel, resumable build: dataset → faces (worker processes) → descriptors (batched) → index.

Items are cut into fixed chunks, the unit of checkpointing: each finished chunk is written to
``<out>.partial/chunk-NNNNNN.npz`` (atomic rename), and ``--resume`` skips finished chunks, so an
interrupted build loses at most the chunks in flight. Chunks are cut into tasks of ``TASK_SIZE``
images for the worker processes (finer tasks balance the cores; the task layout is a fixed function
of the chunk layout, so chunk contents never depend on timing and a resumed build equals an
uninterrupted one).

How the CPU is used was measured on a 2-core machine (BENCHMARKS.md, "Indexing: what was tried"):

* On the CPU each worker embeds its own tasks with a single-threaded torch (``cores // workers``
  threads). The first layout (workers for faces plus a 2-thread torch in the main process) ran
  4 busy threads on 2 cores, and torch's OpenMP threads then wait at every layer's barrier for a
  thread the scheduler has parked: under load the descriptor cost 4-10x its idle-machine time.
  One thread per core also makes torch ~20% cheaper per chip than two.
* Importing torch costs ~1 core-second per process, as much as ~120 images of work. The workers
  are therefore forked from a forkserver that imports torch, parses the ResNet weights and loads
  the landmark model once (``_warm_forkserver``), and while it does so the main process, which
  would otherwise wait, runs the face pipeline on the first tasks itself; the workers embed those
  chips first. On a 1,000-image build this is ~0.5 s of ~5.
* On CUDA the main process embeds on the GPU while spawned workers prepare chips; dlib's own
  embedder runs in spawned workers (it is single-threaded).

A build is deterministic: the task layout fixes every embedding batch. Descriptors do not depend
on the thread count or the batch size either, except for tiny batches (a handful of chips), whose
results can differ from a full batch's by ~4e-7 (oneDNN picks other kernels); measured on real chips.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from . import attributes, calibrate, faces, pixels, store, watchdog
from . import ivf as ivf_mod
from .chunks import (
    chunk_ok,
    embed_chips,
    init_worker,
    load_chunk,
    load_chunk_extras,
    merge_parts,
    parts_per_chunk,
    plan_tasks,
    process_task,
    save_chunk,
    task_items,
    worker_ready,
)
from .config import BuildConfig
from .datasets import Item, excluded_identities, read_dataset
from .devices import resolve_device, resolve_precision

log = logging.getLogger(__name__)

PARTIAL_VERSION = 2  # 2: chunks carry the per-face attribute/geometry extras
_WARM_ENV = "_FACEMEM_WARM_FORKSERVER"  # set only while the build starts its forkserver


@dataclass
class _Plan:
    """Where a build's tasks run, decided before any work (and recorded in the manifest)."""

    device: str
    engine: object | None  # a RayEngine, or None for local worker processes
    workers: int
    embed_in: str
    torch_threads: int
    ctx: multiprocessing.context.BaseContext | None
    warm: bool
    t_start: float  # the build's clock
    t_run: float  # the face pipeline's clock: it starts with the workers' start-up


def _chunk_params(cfg: BuildConfig) -> dict:
    """Everything that determines a chunk's content; a resume must match it exactly."""
    return {
        "partial_version": PARTIAL_VERSION,
        "dataset": cfg.dataset,
        "root": str(Path(cfg.root).resolve()),
        "split": cfg.split,
        "limit": cfg.limit,
        "exclude_identities": excluded_identities(cfg.exclude_identities),
        "detector": cfg.detector,
        "embedder": cfg.embedder,
        "chunk_size": cfg.chunk_size,
        "identity_from_folders": cfg.identity_from_folders,
        "chip": [faces.CHIP_SIZE, faces.CHIP_PADDING],
        "pixel_size": pixels.PIXEL_SIZE,
        "refine_passes": faces.REFINE_PASSES,
        "aligned": [faces.ALIGNED_INIT_BOX, faces.ALIGNED_REFINE],
        "models": faces.model_hashes(),
        "flip_average": cfg.flip_average,
        "descriptor_precision": cfg.descriptor_precision,
    }


def _warm_forkserver() -> None:
    """Runs in the build's forkserver only: load, once, what every forked worker needs.

    torch (~1 core-second to import), the parsed ResNet weights and dlib's landmark model. No torch
    op runs here, so no OpenMP thread pool exists to be broken by the fork. ``faces`` keeps dlib
    objects per thread; a forked worker continues in the thread that loaded them.
    """
    import atexit

    from . import resnet

    resnet.parse_dlib_resnet()
    faces.preload(landmarks68=True)  # the 68-point model (~100 MB): loaded once, shared by the forked workers
    # The forkserver exits when its parent does; tearing down torch's modules would keep it (and
    # the stdout it inherited, which callers may be reading to EOF) alive ~0.4 s longer.
    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _prepare_partial(partial: Path, params: dict, resume: bool) -> int | None:
    """Create the checkpoint directory, or check that the one there belongs to this build (``resume``).

    ``params.json`` is written atomically right after the directory is made, so a directory without
    it holds no chunks (the build died at once) and is simply started again. Returns the fd of the
    directory's lock, held for the whole build: a second build on the same output stops with a
    message instead of deleting this one's checkpoints.
    """
    pfile = partial / "params.json"
    if partial.exists():
        try:
            lock = watchdog.lock_dir(partial)
        except watchdog.Busy:
            raise SystemExit(
                f"another build is running on {partial} (its checkpoint directory is locked); "
                f"wait for it to finish or stop it"
            ) from None
        if resume and pfile.exists():
            try:
                same = json.loads(pfile.read_text()) == json.loads(json.dumps(params))  # tuples come back as lists
            except ValueError:
                raise SystemExit(
                    f"cannot resume: {pfile} is damaged; delete {partial} or run without --resume"
                ) from None
            if not same:
                raise SystemExit(
                    f"cannot resume: {partial} was started with other parameters; delete it or run without --resume"
                )
            for debris in partial.glob("*.tmp*"):  # a chunk or params file cut short by a kill
                debris.unlink()
            return lock
        if not resume:
            log.warning("discarding the unfinished build in %s (use --resume to continue it)", partial)
        shutil.rmtree(partial)
        watchdog.unlock_dir(lock)
    partial.mkdir(parents=True)
    lock = watchdog.lock_dir(partial)
    tmp = partial / "params.json.tmp"
    tmp.write_text(json.dumps(params, indent=1))
    os.replace(tmp, pfile)
    return lock


def _resolve_build_device(device: str) -> str:
    """``resolve_device``, minus the ~1 s torch import when no GPU device node exists.

    Why: with descriptors computed in the workers the main process never needs torch on a CPU-only
    machine, and importing it only to learn that CUDA is absent delays the first chunk.
    """
    if device == "auto" and not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")):
        return "cpu"
    return resolve_device(device)


def plan_embedding(embedder: str, device: str, workers: int, embed_in: str = "auto") -> tuple[str, int]:
    """(``"main"`` or ``"workers"``, torch threads per worker) for this embedder and device.

    ``auto``: dlib → workers (single-threaded reference); torch on CUDA → main (one GPU, fed by
    the workers); torch on the CPU → workers, with ``cores // workers`` threads each, so the build
    runs one busy thread per core. The choice does not change an index beyond float round-off:
    on real chips oneDNN gives bitwise-equal descriptors for any thread count and batch size of
    ~17 or more, and differences of at most ~4e-7 for tiny remainder batches.
    """
    if embed_in not in ("auto", "main", "workers"):
        raise ValueError(f"embed_in must be auto, main or workers, got {embed_in!r}")
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if embedder == "dlib":
        if embed_in == "main":
            raise ValueError("the dlib embedder runs in the worker processes")
        return "workers", 1
    if embed_in == "auto":
        embed_in = "main" if device != "cpu" else "workers"
    if embed_in == "workers" and device != "cpu":
        raise ValueError("on a GPU the descriptors are computed in the main process")
    return embed_in, threads


def pool_context(
    embed_in: str, embedder: str, preload: bool = True
) -> tuple[multiprocessing.context.BaseContext, bool]:
    """The worker start method, and whether its workers come pre-loaded (see the module docstring).

    CPU torch builds fork their workers from a forkserver that has run ``_warm_forkserver``; the
    forkserver lives as long as this process, so later builds (tests) start workers instantly.
    Elsewhere (dlib, CUDA, no forkserver on this platform) workers are spawned as before.
    """
    if (
        not preload
        or embed_in != "workers"
        or embedder != "torch"
        or "forkserver" not in multiprocessing.get_all_start_methods()
    ):
        return get_context("spawn"), False
    from multiprocessing import forkserver

    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    os.environ[_WARM_ENV] = "1"  # read (and removed) by this module's import in the forkserver
    try:
        forkserver.ensure_running()  # starts it now (a no-op if already running): it warms up meanwhile
    finally:
        os.environ.pop(_WARM_ENV, None)
    return ctx, True


def worker_pool(workers: int, ctx: multiprocessing.context.BaseContext, torch_threads: int) -> ProcessPoolExecutor:
    """The build's worker processes: ``workers`` processes started by ``ctx`` (:func:`pool_context`),
    each capped at ``torch_threads`` library threads and ended when this process dies (:func:`init_worker`).
    The in-process audit runs its query images in the same workers (:class:`service.detect.QueryWorkers`)."""
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(torch_threads, os.getpid()))


def _run_tasks(
    chunks: list[list[Item]], todo: list[int], cfg: BuildConfig, plan: _Plan, save: Callable[[int, dict], None]
) -> None:
    """Run every task of the ``todo`` chunks in ``plan.workers`` processes started by ``plan.ctx``
    (pre-loaded when ``plan.warm``) and call ``save(chunk, result)`` for each finished chunk, in chunk order."""
    tasks = plan_tasks(chunks, todo)
    if not tasks:
        return
    device, workers, embed_in, torch_threads, ctx, warm = (
        plan.device,
        plan.workers,
        plan.embed_in,
        plan.torch_threads,
        plan.ctx,
        plan.warm,
    )
    n_parts = parts_per_chunk(chunks, todo)
    precision = cfg.descriptor_precision
    embedder = faces.make_embedder(cfg.embedder, device, precision) if embed_in == "main" else None
    worker_embeds = cfg.embedder if embed_in == "workers" else None

    def args(task: tuple[int, int], embed: str | None) -> tuple[list[tuple[str, str]], str, str | None, bool, str]:
        return task_items(chunks, task), cfg.detector, embed, cfg.flip_average, precision

    pool = worker_pool(workers, ctx, torch_threads)
    queue = deque(tasks)
    pending: dict[tuple[int, int], tuple[Future, dict | None]] = {}
    try:
        if warm:
            # The forkserver is importing torch on one core: run the face pipeline here on the
            # other until the workers exist, then let them embed these chips first.
            ready = threading.Event()
            failed: list[BaseException] = []

            def start_workers() -> None:
                try:
                    for f in [pool.submit(worker_ready, worker_embeds, precision) for _ in range(workers)]:
                        f.result()
                except BaseException as e:  # re-raised in the main thread
                    failed.append(e)
                finally:
                    ready.set()

            starter = threading.Thread(target=start_workers, name="facemem-worker-start", daemon=True)
            starter.start()
            prepared = []
            while queue and not ready.is_set():
                task = queue.popleft()
                prepared.append((task, process_task(args(task, None))))
            starter.join()
            if failed:
                raise failed[0]
            log.debug("main process prepared %d task(s) while the workers started", len(prepared))
            for task, res in prepared:
                chips = res.pop("chips")
                pending[task] = (pool.submit(embed_chips, cfg.embedder, chips, cfg.flip_average, precision), res)

        window = 4 * workers  # tasks in flight: enough to keep every worker busy
        parts: dict[int, list[dict]] = {}
        while queue or pending:
            while queue and len(pending) < window:
                task = queue.popleft()
                pending[task] = (pool.submit(process_task, args(task, worker_embeds)), None)
            task = min(pending)  # in order, so checkpoints fill from the front
            fut, res = pending.pop(task)
            out = fut.result()
            res = out if res is None else {**res, **out}
            if embedder is not None:
                t0 = time.perf_counter()
                res["descriptors"] = faces.describe(embedder, res.pop("chips"), cfg.flip_average)
                res["t_embed"] = time.perf_counter() - t0
            i = task[0]
            parts.setdefault(i, []).append(res)
            if len(parts[i]) == n_parts[i]:
                save(i, merge_parts(parts.pop(i)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def face_resolution(source_px: list[float | None]) -> dict | None:
    """The manifest's record of how sharp the indexed faces are: quantiles of each chip's source
    width in image pixels (``faces.Face.source_px``). Queries much sharper than the median are
    degraded to it before embedding (``faces.match_resolution``); None when there is no face."""
    px = np.array([v for v in source_px if v is not None], np.float64)
    if not len(px):
        return None
    p10, p50, p90 = np.percentile(px, [10, 50, 90])
    return {"median_px": round(float(p50), 2), "p10_px": round(float(p10), 2), "p90_px": round(float(p90), 2)}


def build(cfg: BuildConfig) -> Path:
    """Run the whole build and return the index directory."""
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise SystemExit(f"{out} exists; use --overwrite to replace it")
    if cfg.engine not in ("local", "ray"):
        raise ValueError(f"engine must be local or ray, got {cfg.engine!r}")
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {cfg.shard_size}")
    if cfg.ivf not in ("auto", "on", "off"):
        raise ValueError(f"ivf must be auto, on or off, got {cfg.ivf!r}")
    device = _resolve_build_device(cfg.device)
    # One concrete precision for the whole build (workers, resume check and manifest): ``auto`` is
    # decided here, on the machine that plans the build.
    precision = resolve_precision(cfg.descriptor_precision, device, cfg.embedder)
    cfg = dataclasses.replace(cfg, descriptor_precision=precision)
    if cfg.attribute_probes:
        attributes.borrowed_probes(cfg.attribute_probes)  # refuse unusable probes before any work
    t_run = time.perf_counter()  # the face-pipeline clock starts with the workers' start-up
    if cfg.engine == "ray":
        from . import ray_engine

        engine = ray_engine.RayEngine(cfg)  # connected and started only when there is work
        plan = _Plan(device, engine, 0, "workers", 1, None, False, t_start, t_run)
    else:
        workers = cfg.workers or os.cpu_count() or 1
        embed_in, torch_threads = plan_embedding(cfg.embedder, device, workers, cfg.embed_in)
        # Start the (warming) forkserver first: it is the longest start-up step, and the rest of the
        # preparation (dataset listing, model hashes) runs meanwhile.
        ctx, warm = pool_context(embed_in, cfg.embedder, cfg.preload_workers)
        plan = _Plan(device, None, workers, embed_in, torch_threads, ctx, warm, t_start, t_run)
    try:
        return _build(cfg, out, plan)
    finally:
        if plan.engine is not None:
            plan.engine.close()


def _build(cfg: BuildConfig, out: Path, plan: _Plan) -> Path:
    """Checkpoint every chunk, assemble the rows, fit the extras, calibrate and write the index."""
    items: list[Item] = read_dataset(cfg.dataset, Path(cfg.root), cfg.split, cfg.limit, cfg.identity_from_folders)
    excluded = set(excluded_identities(cfg.exclude_identities))
    if excluded:
        kept = [it for it in items if it.identity not in excluded]
        log.info("left out %d images of %d excluded identities", len(items) - len(kept), len(excluded))
        items = kept
    if not items:
        raise SystemExit(f"no images found under {cfg.root} (dataset {cfg.dataset}, split {cfg.split})")
    partial = out.with_name(out.name + ".partial")
    lock = _prepare_partial(partial, _chunk_params(cfg), cfg.resume)
    try:
        chunks = [items[i : i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
        paths = [partial / f"chunk-{i:06d}.npz" for i in range(len(chunks))]
        todo = _chunks_to_do(chunks, paths)
        done_images = sum(len(chunks[i]) for i in range(len(chunks)) if i not in set(todo))
        if cfg.resume and done_images:
            log.info("resuming: %d of %d chunks already done", len(chunks) - len(todo), len(chunks))
        _run_chunks(cfg, plan, chunks, paths, todo, done_images, partial)
        t_faces = time.perf_counter() - plan.t_run

        times = {"decode": 0.0, "detect_align": 0.0, "embed": 0.0}
        rows, nodes, descs, extras = _assemble_rows(chunks, paths, times)
        t0 = time.perf_counter()
        ok_rows = [r for r in rows if r["status"] == "ok"]
        codes: dict[str, int] = {}
        idents = np.array(
            [codes.setdefault(r["identity"], len(codes)) if r["identity"] is not None else -1 for r in ok_rows],
            dtype=np.int64,
        )
        # A monolithic index's calibration needs only its vectors and identities, the attribute probes
        # only the rows and extras: they run side by side (the L1 search's numpy, the probes' LAPACK and
        # FAISS release the GIL). Sharded indexes calibrate on the written shards, afterwards.
        with ThreadPoolExecutor(1, thread_name_prefix="facemem-calibration") as side:
            calib = None if cfg.shard_size else side.submit(_calibrate_chunks, cfg, plan.device, idents, paths)
            t1 = time.perf_counter()
            desc_all = np.concatenate(descs) if descs else np.zeros((0, 128), np.float32)
            extra_files, extra_manifest = attributes.index_outputs(
                ok_rows, desc_all, attributes.concat_extras(extras), cfg, len(codes) > 0
            )
            del descs, desc_all, extras
            times["attributes"] = time.perf_counter() - t1
            manifest = _manifest(cfg, plan, rows, len(items), len(codes), extra_manifest)
            manifest["identities_known"] = bool((idents >= 0).any())
            manifest["build"].update(
                resumed=bool(cfg.resume and done_images),
                face_pipeline_seconds=round(t_faces, 3),
                **({"nodes": sorted(nodes), **plan.engine.manifest_info()} if plan.engine is not None else {}),
            )
            try:
                _write_index(cfg, out, plan, rows, paths, manifest, idents, times, t0, extra_files, calib)
            except store.IndexWriteError as e:  # the chunks stay: a rerun with --resume only writes the index
                raise SystemExit(
                    f"error: {e}; all {len(chunks)} chunks are kept in {partial}: free space and rerun with --resume"
                ) from None
        shutil.rmtree(partial, ignore_errors=True)
        _report(out, manifest, len(items), len(items) - done_images, t_faces, times)
        return out
    finally:
        watchdog.unlock_dir(lock)


def _chunks_to_do(chunks: list[list[Item]], paths: list[Path]) -> list[int]:
    """The chunks without a sound checkpoint (a damaged one is deleted and redone)."""
    for i, p in enumerate(paths):
        if p.exists() and not chunk_ok(p, len(chunks[i])):
            log.warning("checkpoint %s is damaged; redoing it", p.name)
            p.unlink()
    return [i for i, p in enumerate(paths) if not p.exists()]


def _run_chunks(
    cfg: BuildConfig,
    plan: _Plan,
    chunks: list[list[Item]],
    paths: list[Path],
    todo: list[int],
    done_images: int,
    partial: Path,
) -> None:
    """Run the ``todo`` chunks on the plan's engine, checkpointing each as it finishes."""
    if plan.engine is None:
        log.info(
            "%d worker processes; descriptors (%s) in the %s%s",
            plan.workers,
            cfg.embedder,
            "main process" if plan.embed_in == "main" else "workers",
            f", {plan.torch_threads} torch thread(s) each"
            if plan.embed_in == "workers" and cfg.embedder == "torch"
            else "",
        )
    from .progress import progress_bar

    total = sum(len(c) for c in chunks)
    bar = progress_bar(enabled=cfg.progress, total=total, initial=done_images, unit="img", desc="indexing")

    def save(i: int, res: dict) -> None:
        ct = {"decode": res["t_decode"], "detect_align": res["t_face"], "embed": res["t_embed"]}
        if "nodes" in res:  # Ray: the nodes that did this chunk's work (kept across --resume)
            ct["nodes"] = res["nodes"]
        try:
            save_chunk(paths[i], res["rows"], res["descriptors"], res["pixels"], ct, res["face_extras"])
        except OSError as e:  # a full disk or permissions: the finished chunks stay
            raise SystemExit(
                f"could not write a checkpoint: {e.strerror or e} (in {partial}); the finished "
                f"chunks are kept there: free space and rerun with --resume"
            ) from None
        bar.update(len(chunks[i]))

    try:
        if plan.engine is not None:
            if todo:
                plan.engine.start()  # connect, start the actors (they load their models once)
            plan.engine.run(chunks, todo, save)
            plan.workers = plan.engine.workers
        else:
            _run_tasks(chunks, todo, cfg, plan, save)
    except BrokenProcessPool as e:
        raise SystemExit(
            f"a worker process died ({e}); finished chunks are kept in {partial}: rerun with --resume"
        ) from None
    finally:
        bar.close()


def _assemble_rows(
    chunks: list[list[Item]], paths: list[Path], times: dict[str, float]
) -> tuple[list[dict], set[str], list[np.ndarray], list[dict]]:
    """The index rows in order (face numbers assigned), the Ray nodes that worked, and each chunk's
    descriptors and per-face extras (what attribute probes need); adds each chunk's stage times to
    ``times``. The pixels, the bulk of a chunk, are not read here (they are read again, chunk by
    chunk, when the index is written)."""
    rows: list[dict] = []
    nodes: set[str] = set()
    descs, extras = [], []
    for i, chunk in enumerate(chunks):
        crow, cdesc, _, ct = load_chunk(paths[i], pixels=False)
        descs.append(cdesc)
        extras.append(load_chunk_extras(paths[i]))
        for k in times:
            times[k] += ct[k]
        nodes.update(ct.get("nodes", ()))
        for it, r in zip(chunk, crow):
            rows.append(
                {
                    "row": len(rows),
                    "file": it.file,
                    "identity": it.identity,
                    "split": it.split,
                    **r,
                    "face": None,
                    **({"extra": it.extra} if it.extra else {}),
                }
            )
    f = 0
    for r in rows:
        if r["status"] == "ok":
            r["face"] = f
            f += 1
    return rows, nodes, descs, extras


def _manifest(
    cfg: BuildConfig, plan: _Plan, rows: list[dict], n_items: int, n_identities: int, extra_manifest: dict
) -> dict:
    """The manifest of the index being written (its times and calibration sample are filled in later)."""
    ok_rows = [r for r in rows if r["status"] == "ok"]
    engine = plan.engine
    return {
        "dataset": {
            "kind": cfg.dataset,
            "root": str(Path(cfg.root).resolve()),
            "split": cfg.split,
            "limit": cfg.limit,
            "exclude_identities": excluded_identities(cfg.exclude_identities),
            "identity_from_folders": cfg.identity_from_folders,
            "items": n_items,
            "identities": n_identities,
        },
        "pipeline": {
            "detector": cfg.detector,
            "embedder": cfg.embedder,
            "device": engine.device if engine is not None and engine.started else plan.device,
            "chip_size": faces.CHIP_SIZE,
            "chip_padding": faces.CHIP_PADDING,
            "landmarks": "dlib 5-point",
            "descriptor": "dlib_face_recognition_resnet_model_v1 (128-d)",
            "pixel": {
                "size": pixels.PIXEL_SIZE,
                "dim": pixels.PIXEL_DIM,
                "crop": "face chip (padding 0.25) box-averaged to size x size RGB uint8",
            },
            "refine_passes": faces.REFINE_PASSES,
            "aligned_init_box": list(faces.ALIGNED_INIT_BOX),
            "aligned_refine": faces.ALIGNED_REFINE,
            "flip_average": cfg.flip_average,
            "descriptor_precision": cfg.descriptor_precision,
            "face_resolution": face_resolution([r.get("source_px") for r in ok_rows]),
        },
        **extra_manifest,
        "counts": {s: sum(r["status"] == s for r in rows) for s in faces.STATUSES},
        "faces": len(ok_rows),
        "identities_known": None,
        "pixel_calibration_sample": None,
        "build": {
            "seconds": None,
            "engine": cfg.engine,
            "workers": plan.workers,
            "chunk_size": cfg.chunk_size,
            "embed_in": plan.embed_in,
            "preloaded_workers": plan.warm,
            "resumed": None,
            "face_pipeline_seconds": None,
        },
    }


def _calibrate(cfg: BuildConfig, device: str, idents: np.ndarray, desc, pix) -> dict[str, np.ndarray]:
    """The index's calibration arrays (:mod:`indexer.calibrate`): the semantic, then the pixel channel.
    (Running the two side by side as well was slower on 2 cores: 2.3–2.5 s against 2.1 s.)"""
    calib = calibrate.semantic_calibration(
        np.asarray(desc), idents, device=device, sample=cfg.semantic_calibration_sample or None
    )
    calib.update(calibrate.pixel_calibration(pix, idents, cfg.pixel_calibration_sample, device=device))
    return calib


def _calibrate_chunks(
    cfg: BuildConfig, device: str, idents: np.ndarray, paths: list[Path]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A monolithic index's vectors, read back from the checkpoints, and their calibration."""
    desc, pix = _concat_chunks(paths)
    return desc, pix, _calibrate(cfg, device, idents, desc, pix)


def _write_index(
    cfg: BuildConfig,
    out: Path,
    plan: _Plan,
    rows: list[dict],
    paths: list[Path],
    manifest: dict,
    idents: np.ndarray,
    times: dict[str, float],
    t0: float,
    extra_files: dict,
    calibrated: Future | None = None,
) -> None:
    """Write the index (sharded or monolithic), the stage times last. A monolithic index's vectors
    and calibration come from ``calibrated`` (a :func:`_calibrate_chunks` running beside the probes;
    None for a sharded index, which calibrates on its written shards)."""
    f = manifest["faces"]
    use_ivf = cfg.ivf == "on" or (cfg.ivf == "auto" and f >= cfg.ivf_min_faces)

    def record(calib: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        manifest["pixel_calibration_sample"] = int(len(calib["pix_loo"]))
        if "sem_rows" in calib:  # absent (every face calibrated) in indexes of up to that many faces
            manifest["semantic_calibration_sample"] = int(len(calib["sem_rows"]))
        return calib

    def finish_times() -> None:
        times["index"] = time.perf_counter() - t0 - times["attributes"]
        total = time.perf_counter() - plan.t_start
        manifest["build"]["seconds"] = round(total, 2)
        manifest["build"]["stage_seconds"] = {k: round(v, 2) for k, v in times.items()}

    if cfg.shard_size:

        def calibration(desc, pix) -> dict[str, np.ndarray]:
            return record(_calibrate(cfg, plan.device, idents, desc, pix))

        _write_sharded(cfg, out, rows, paths, calibration, manifest, finish_times, use_ivf, extra_files)
        return
    desc, pix, calib = calibrated.result()
    assert f == len(desc) == len(pix), (f, len(desc), len(pix))
    record(calib)
    ivf_index = ivf_mod.build([desc], cfg.ivf_spec) if use_ivf and len(desc) else None
    if ivf_index is not None:
        manifest["semantic_ivf"] = {"spec": ivf_mod.spec_for(len(desc), cfg.ivf_spec)}
    finish_times()
    store.write_index(out, rows, desc, pix, calib, manifest, overwrite=cfg.overwrite, extras=extra_files, ivf=ivf_index)


def _report(out: Path, manifest: dict, n_items: int, n_new: int, t_faces: float, times: dict[str, float]) -> None:
    """The one line a build prints when it is done."""
    counts = manifest["counts"]
    rate = n_new / t_faces if t_faces > 0 else float("nan")
    total = manifest["build"]["seconds"]
    print(
        f"built {out}: {n_items} images, {counts['ok']} ok, {counts['no_face']} no_face, "
        f"{counts['unreadable']} unreadable in {total:.1f} s ({rate:.1f} img/s through the face "
        f"pipeline); stage time: decode {times['decode']:.1f} s, detect/align {times['detect_align']:.1f} s "
        f"(worker core-seconds), embed {times['embed']:.1f} s, index {times['index']:.1f} s"
    )


def _concat_chunks(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    descs, pixs = [], []
    for p in paths:
        _, cdesc, cpix, _ = load_chunk(p)
        descs.append(cdesc)
        pixs.append(cpix)
    desc = np.concatenate(descs) if descs else np.zeros((0, 128), np.float32)
    pix = np.concatenate(pixs) if pixs else np.zeros((0, pixels.PIXEL_DIM), np.uint8)
    return desc, pix


def _write_sharded(
    cfg: BuildConfig,
    out: Path,
    rows: list[dict],
    paths: list[Path],
    calibration: Callable,
    manifest: dict,
    finish_times: Callable[[], None],
    use_ivf: bool,
    extras: dict,
) -> None:
    """Stream the checkpoints into shards (memory: one shard), calibrate on the written shards."""
    from .shards import write_sharded_index

    def pieces():
        for p in paths:
            _, cdesc, cpix, _ = load_chunk(p)
            yield cdesc, cpix

    def calib(desc, pix):
        c = calibration(desc, pix)
        finish_times()
        return c

    def ivf_index(desc):
        manifest["semantic_ivf"] = {"spec": ivf_mod.spec_for(len(desc), cfg.ivf_spec)}
        return ivf_mod.build(desc.blocks, cfg.ivf_spec)

    write_sharded_index(
        out,
        rows,
        pieces(),
        cfg.shard_size,
        calib,
        manifest,
        overwrite=cfg.overwrite,
        ivf=ivf_index if use_ivf else None,
        extras=extras,
    )


if os.environ.pop(_WARM_ENV, None) == "1":  # imported by the forkserver that pool_context started
    _warm_forkserver()
