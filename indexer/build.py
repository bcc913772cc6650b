"""The parallel, resumable build: dataset → faces (worker processes) → descriptors (batched) → index.

Items are cut into fixed chunks. Worker processes decode, detect/align and cut chips; the main
process embeds each chunk in batches while the workers run ahead, and checkpoints the finished
chunk to ``<out>.partial/chunk-NNNNNN.npz`` (atomic rename). ``--resume`` skips finished chunks,
so an interrupted build loses at most the chunks in flight. Chunk contents do not depend on
timing, so a resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from . import calibrate, faces, pixels, store
from .datasets import Item, read_dataset
from .devices import resolve_device

log = logging.getLogger(__name__)

PARTIAL_VERSION = 1


@dataclass
class BuildConfig:
    dataset: str
    root: str
    out: str
    split: str = "all"
    limit: int | None = None
    workers: int = 0  # 0 = all cores
    detector: str = "aligned"
    device: str = "auto"
    embedder: str = "torch"
    chunk_size: int = 256
    resume: bool = False
    overwrite: bool = False
    identity_from_folders: bool = False
    pixel_calibration_sample: int = 5000
    progress: bool = True


def _chunk_params(cfg: BuildConfig) -> dict:
    """Everything that determines a chunk's content; a resume must match it exactly."""
    return {"partial_version": PARTIAL_VERSION, "dataset": cfg.dataset, "root": str(Path(cfg.root).resolve()),
            "split": cfg.split, "limit": cfg.limit, "detector": cfg.detector, "embedder": cfg.embedder,
            "chunk_size": cfg.chunk_size, "identity_from_folders": cfg.identity_from_folders,
            "chip": [faces.CHIP_SIZE, faces.CHIP_PADDING], "pixel_size": pixels.PIXEL_SIZE,
            "refine_passes": faces.REFINE_PASSES, "aligned": [faces.ALIGNED_INIT_BOX, faces.ALIGNED_REFINE],
            "models": faces.model_hashes()}


def _process_chunk(args: tuple[list[tuple[str, str]], str, bool]) -> dict:
    """Worker: one chunk of (path, file) → row records, chips or descriptors, pixel vectors."""
    items, detector, embed_here = args
    rows, chips, pix = [], [], []
    t_decode = t_face = 0.0
    for path, _ in items:
        t0 = time.perf_counter()
        try:
            img = faces.read_file(path)
            t1 = time.perf_counter()
            face = faces.find_face(img, detector)
        except faces.Unreadable as e:
            t1 = time.perf_counter()
            face = faces.Face("unreadable", str(e))
        except Exception as e:  # never let one image take the build down
            t1 = time.perf_counter()
            log.exception("unexpected error on %s", path)
            face = faces.Face("unreadable", f"internal error: {type(e).__name__}: {e}")
        t2 = time.perf_counter()
        t_decode += t1 - t0
        t_face += t2 - t1
        rows.append({"status": face.status, "reason": face.reason, "faces_found": face.faces_found,
                     "box": list(face.box) if face.box else None, "size": [face.width, face.height]})
        if face.ok:
            chips.append(face.chip)
            pix.append(pixels.pixel_vector(face.chip))
    chip_arr = np.stack(chips) if chips else np.zeros((0, faces.CHIP_SIZE, faces.CHIP_SIZE, 3), np.uint8)
    out = {"rows": rows, "pixels": np.stack(pix) if pix else np.zeros((0, pixels.PIXEL_DIM), np.uint8),
           "t_decode": t_decode, "t_face": t_face, "t_embed": 0.0}
    if embed_here:
        t0 = time.perf_counter()
        out["descriptors"] = faces.DlibEmbedder().embed(chip_arr)
        out["t_embed"] = time.perf_counter() - t0
    else:
        out["chips"] = chip_arr
    return out


def _save_chunk(path: Path, rows: list[dict], desc: np.ndarray, pix: np.ndarray, times: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rows=np.array(json.dumps(rows)), descriptors=desc, pixels=pix,
             times=np.array(json.dumps(times)))
    os.replace(tmp, path)


def _load_chunk(path: Path) -> tuple[list[dict], np.ndarray, np.ndarray, dict]:
    with np.load(path) as z:
        return json.loads(str(z["rows"])), z["descriptors"], z["pixels"], json.loads(str(z["times"]))


def _prepare_partial(partial: Path, params: dict, resume: bool) -> None:
    pfile = partial / "params.json"
    if partial.exists():
        if resume:
            have = json.loads(pfile.read_text()) if pfile.exists() else None
            if have != params:
                raise SystemExit(f"cannot resume: {partial} was started with other parameters; "
                                 f"delete it or run without --resume")
            return
        log.warning("discarding the unfinished build in %s (use --resume to continue it)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    pfile.write_text(json.dumps(params, indent=1))


def build(cfg: BuildConfig) -> Path:
    """Run the whole build and return the index directory."""
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise SystemExit(f"{out} exists; use --overwrite to replace it")
    device = resolve_device(cfg.device)
    items: list[Item] = read_dataset(cfg.dataset, Path(cfg.root), cfg.split, cfg.limit, cfg.identity_from_folders)
    if not items:
        raise SystemExit(f"no images found under {cfg.root} (dataset {cfg.dataset}, split {cfg.split})")
    partial = out.with_name(out.name + ".partial")
    _prepare_partial(partial, _chunk_params(cfg), cfg.resume)

    chunks = [items[i:i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    paths = [partial / f"chunk-{i:06d}.npz" for i in range(len(chunks))]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    done_images = sum(len(chunks[i]) for i in range(len(chunks)) if i not in set(todo))
    if cfg.resume and done_images:
        log.info("resuming: %d of %d chunks already done", len(chunks) - len(todo), len(chunks))
    workers = cfg.workers or os.cpu_count() or 1
    embed_in_workers = cfg.embedder == "dlib"
    embedder = None if embed_in_workers else faces.make_embedder(cfg.embedder, device)
    times = {"decode": 0.0, "detect_align": 0.0, "embed": 0.0}

    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=done_images, unit="img", disable=not cfg.progress,
               dynamic_ncols=True, file=sys.stderr, desc="indexing")
    t_run = time.perf_counter()
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            window = 2 * workers  # chunks in flight: keeps workers busy while we embed
            pending: dict[int, object] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < window:
                    i = queue.pop(0)
                    args = ([(str(it.path), it.file) for it in chunks[i]], cfg.detector, embed_in_workers)
                    pending[i] = pool.submit(_process_chunk, args)
                i = min(pending)  # in order, so checkpoints fill from the front
                res = pending.pop(i).result()
                if embedder is not None:
                    t0 = time.perf_counter()
                    desc = embedder.embed(res["chips"])
                    res["t_embed"] = time.perf_counter() - t0
                else:
                    desc = res["descriptors"]
                ct = {"decode": res["t_decode"], "detect_align": res["t_face"], "embed": res["t_embed"]}
                _save_chunk(paths[i], res["rows"], desc, res["pixels"], ct)
                bar.update(len(chunks[i]))
    except BrokenProcessPool as e:
        raise SystemExit(f"a worker process died ({e}); finished chunks are kept in {partial}: "
                         f"rerun with --resume") from None
    finally:
        bar.close()
    t_faces = time.perf_counter() - t_run

    # Assemble the chunks in order.
    rows, descs, pixs = [], [], []
    for i, chunk in enumerate(chunks):
        crow, cdesc, cpix, ct = _load_chunk(paths[i])
        for k in times:
            times[k] += ct[k]
        for it, r in zip(chunk, crow):
            rows.append({"row": len(rows), "file": it.file, "identity": it.identity, "split": it.split,
                         **r, "face": None, **({"extra": it.extra} if it.extra else {})})
        descs.append(cdesc)
        pixs.append(cpix)
    f = 0
    for r in rows:
        if r["status"] == "ok":
            r["face"] = f
            f += 1
    desc = np.concatenate(descs) if descs else np.zeros((0, 128), np.float32)
    pix = np.concatenate(pixs) if pixs else np.zeros((0, pixels.PIXEL_DIM), np.uint8)
    assert f == len(desc) == len(pix), (f, len(desc), len(pix))

    t0 = time.perf_counter()
    codes: dict[str, int] = {}
    idents = np.array([codes.setdefault(r["identity"], len(codes)) if r["identity"] is not None else -1
                       for r in rows if r["status"] == "ok"], dtype=np.int64)
    calib = calibrate.semantic_calibration(desc, idents, device=device)
    calib.update(calibrate.pixel_calibration(pix, cfg.pixel_calibration_sample, device=device))
    counts = {s: sum(r["status"] == s for r in rows) for s in faces.STATUSES}
    manifest = {
        "dataset": {"kind": cfg.dataset, "root": str(Path(cfg.root).resolve()), "split": cfg.split,
                    "limit": cfg.limit, "identity_from_folders": cfg.identity_from_folders,
                    "items": len(items), "identities": len(codes)},
        "pipeline": {"detector": cfg.detector, "embedder": cfg.embedder, "device": device,
                     "chip_size": faces.CHIP_SIZE, "chip_padding": faces.CHIP_PADDING,
                     "landmarks": "dlib 5-point", "descriptor": "dlib_face_recognition_resnet_model_v1 (128-d)",
                     "pixel": {"size": pixels.PIXEL_SIZE, "dim": pixels.PIXEL_DIM,
                               "crop": "face chip (padding 0.25) box-averaged to size x size RGB uint8"},
                     "refine_passes": faces.REFINE_PASSES, "aligned_init_box": list(faces.ALIGNED_INIT_BOX),
                     "aligned_refine": faces.ALIGNED_REFINE},
        "counts": counts,
        "faces": int(len(desc)),
        "identities_known": bool((idents >= 0).any()),
        "pixel_calibration_sample": int(len(calib["pix_loo"])),
        "build": {"seconds": None, "workers": workers, "chunk_size": cfg.chunk_size,
                  "resumed": bool(cfg.resume and done_images)},
    }
    times["index"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    manifest["build"]["seconds"] = round(total, 2)
    manifest["build"]["stage_seconds"] = {k: round(v, 2) for k, v in times.items()}
    store.write_index(out, rows, desc, pix, calib, manifest, overwrite=cfg.overwrite)
    shutil.rmtree(partial, ignore_errors=True)
    n_new = len(items) - done_images
    rate = n_new / t_faces if t_faces > 0 else float("nan")
    print(f"built {out}: {len(items)} images, {counts['ok']} ok, {counts['no_face']} no_face, "
          f"{counts['unreadable']} unreadable in {total:.1f} s ({rate:.1f} img/s through the face "
          f"pipeline); stage time: decode {times['decode']:.1f} s, detect/align {times['detect_align']:.1f} s "
          f"(worker core-seconds), embed {times['embed']:.1f} s, index {times['index']:.1f} s")
    return out


