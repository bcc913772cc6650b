"""``python -m indexer build|info``: build a face index from a dataset, or describe one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from . import faces, ivf, store
from .build import BuildConfig, build


def _summary(idx: store.FaceIndex) -> dict:
    m = idx.manifest
    c = idx.calibration
    import numpy as np

    def pct(a, q):
        a = a[~np.isnan(a)]
        return round(float(np.percentile(a, q)), 4) if len(a) else None

    return {
        "path": str(idx.root),
        "format_version": m["format_version"],
        "written_at": m["written_at"],
        "dataset": m["dataset"],
        "pipeline": m["pipeline"],
        "counts": m["counts"],
        "faces": idx.n_faces,
        "layout": m.get("layout", "monolithic"),
        "shards": len(m.get("shards", [])) or 1,
        "semantic_ivf": m.get("semantic_ivf") if idx.ivf_path is not None else None,
        "build": m["build"],
        "model_sha256": {k: v[:16] for k, v in m["model_sha256"].items()},
        "libraries": m["libraries"],
        "calibration": {
            "semantic_loo_p1": pct(c["sem_loo"], 1),
            "semantic_loo_median": pct(c["sem_loo"], 50),
            "different_identity_p1": pct(c["sem_diff_id"], 1),
            "same_identity_median": pct(c["sem_same_id"], 50),
            "pixel_loo_p1": pct(c["pix_loo"].astype(float), 1),
            "pixel_loo_sample": int(len(c["pix_loo"])),
        },
    }


# The options of ``build``, in the order ``--help`` lists them: (flags, argparse keywords).
BUILD_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (
        ("--dataset",),
        dict(
            choices=["celeba", "folder"],
            required=True,
            help="celeba: img_align_celeba/ + identity/partition lists; folder: any image tree",
        ),
    ),
    (("--root",), dict(required=True, help="dataset root directory")),
    (("--out",), dict(required=True, help="index directory to write (atomically)")),
    (("--split",), dict(default="all", choices=["train", "val", "test", "all"], help="CelebA split")),
    (("--limit",), dict(type=int, help="only the first N images (after the split filter)")),
    (
        ("--exclude-identities",),
        dict(
            metavar="FILE",
            help="leave out every image of these people: one identity per line (a `file identity` line counts "
            "by its last field), e.g. to hold out a generator's control training set",
        ),
    ),
    (
        ("--workers",),
        dict(
            type=int,
            default=0,
            help="worker processes (default: all cores); --engine ray: actors (default: one per cluster CPU, or GPU)",
        ),
    ),
    (
        ("--detector",),
        dict(
            default="aligned",
            choices=list(faces.DETECTORS),
            help="aligned (pre-aligned crops, no detection; default), hog or cnn",
        ),
    ),
    (
        ("--device",),
        dict(
            default="auto",
            choices=["auto", "cpu", "cuda"],
            help="where descriptors and FAISS run (auto: GPU when present)",
        ),
    ),
    (
        ("--embedder",),
        dict(
            default="torch",
            choices=["torch", "dlib"],
            help="torch: batched port of dlib's ResNet (same numbers); dlib: the reference",
        ),
    ),
    (("--chunk-size",), dict(type=int, default=256, help="images per checkpointed chunk")),
    (("--resume",), dict(action="store_true", help="continue an interrupted build")),
    (("--overwrite",), dict(action="store_true", help="replace an existing index at --out")),
    (
        ("--identity-from-folders",),
        dict(action="store_true", help="folder datasets: identity = parent folder name (LFW layout)"),
    ),
    (
        ("--pixel-calibration-sample",),
        dict(type=int, default=5000, help="faces used for the pixel leave-one-out distribution (default 5000)"),
    ),
    (
        ("--attribute-probes",),
        dict(
            metavar="INDEX",
            help="use this index's attribute probes instead of fitting them (for a dataset without attribute "
            "labels): the build scores its own faces with them, so the audit can compare attribute rates",
        ),
    ),
    (
        ("--no-flip-average",),
        dict(
            action="store_true",
            help="plain descriptors (default: the mean of each chip's and its mirror image's descriptor; "
            "recorded in the manifest, and queries follow it)",
        ),
    ),
    (
        ("--descriptor-precision",),
        dict(
            default="auto",
            choices=["auto", "fp32", "bf16"],
            help="the network's arithmetic (torch embedder): fp32 = dlib's numbers exactly; bf16 = about 2x "
            "faster on CPUs with native bf16, descriptors within ~0.005 (BENCHMARKS.md); auto: bf16 where the "
            "CPU has it, else fp32. Recorded in the manifest; queries follow it",
        ),
    ),
    (
        ("--engine",),
        dict(
            default="local",
            choices=["local", "ray"],
            help="local: worker processes on this machine; ray: Ray actors (this machine or a cluster, see "
            "--ray-address)",
        ),
    ),
    (
        ("--ray-address",),
        dict(
            default=None,
            help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: start a local Ray instance)",
        ),
    ),
    (
        ("--ray-embed-actors",),
        dict(
            type=int,
            default=None,
            help="--engine ray: actors that only compute descriptors, fed chips by the others "
            "(default: one per GPU on a GPU cluster, none on CPUs: every actor runs whole tasks)",
        ),
    ),
    (
        ("--shard-size",),
        dict(
            type=int,
            default=None,
            help="write a sharded index with this many images per shard (memory-mapped, for millions of faces)",
        ),
    ),
    (
        ("--ivf",),
        dict(
            default="auto",
            choices=["auto", "on", "off"],
            help="store an IVF index for approximate semantic search (auto: when faces >= --ivf-min-faces)",
        ),
    ),
    (
        ("--ivf-min-faces",),
        dict(type=int, default=1_000_000, help="--ivf auto: smallest index that gets one"),
    ),
    (
        ("--ivf-spec",),
        dict(
            default=ivf.DEFAULT_SPEC,
            help="faiss.index_factory string; {nlist} is filled from the size (e.g. 'IVF{nlist},PQ32' for 32 B/face)",
        ),
    ),
    (
        ("--semantic-calibration-sample",),
        dict(
            type=int,
            default=250_000,
            help="above this many faces, calibrate a seeded sample of them against every face (0: all faces; "
            "the exact self-search costs N^2 distances)",
        ),
    ),
    (("--no-progress",), dict(action="store_true", help="no progress bar")),
]


def _parser() -> argparse.ArgumentParser:
    """The command line: ``build`` (options in :data:`BUILD_OPTIONS`) and ``info``."""
    ap = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser(
        "build",
        help="embed a dataset into an index directory",
        description="Detect/align, embed and index every image of a dataset. Bad files "
        "become rows with a status; the build never stops on them.",
    )
    for flags, kw in BUILD_OPTIONS:
        b.add_argument(*flags, **kw)
    i = sub.add_parser("info", help="describe an index", description="Print an index's manifest summary.")
    i.add_argument("index", help="index directory")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true", help="also check every file's sha256")
    return ap


def _build_config(ap: argparse.ArgumentParser, args: argparse.Namespace) -> BuildConfig:
    """The BuildConfig of ``build``'s options (every option is the field of the same name, except the
    two ``--no-*`` switches); options that contradict each other end the program (exit code 2)."""
    if args.dataset == "celeba" and args.identity_from_folders:
        ap.error("--identity-from-folders applies to --dataset folder")
    if (args.ray_address or args.ray_embed_actors is not None) and args.engine != "ray":
        ap.error("--ray-address and --ray-embed-actors apply to --engine ray")
    if args.ray_embed_actors is not None and args.ray_embed_actors < 0:
        ap.error("--ray-embed-actors must be >= 0")
    if args.shard_size is not None and args.shard_size < 1:
        ap.error("--shard-size must be >= 1")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(BuildConfig) if hasattr(args, f.name)}
    return BuildConfig(**given, progress=not args.no_progress, flip_average=not args.no_flip_average)


def _run_build(cfg: BuildConfig) -> int:
    try:
        build(cfg)
    except (FileNotFoundError, ValueError, RuntimeError, ConnectionError, store.IndexLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _run_info(args: argparse.Namespace) -> int:
    try:
        idx = store.load_index(Path(args.index), verify_hashes=args.verify)
    except store.IndexLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = _summary(idx)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _print_summary(idx, s)
    return 0


def _print_summary(idx: store.FaceIndex, s: dict) -> None:
    """``info`` without ``--json``: the summary, one topic a line."""
    d, c = s["dataset"], s["counts"]
    print(f"index      {s['path']} (format {s['format_version']}, written {s['written_at']})")
    print(f"dataset    {d['kind']} {d['root']} split={d['split']} items={d['items']} identities={d['identities']}")
    res = idx.face_resolution
    print(
        f"pipeline   detector={s['pipeline']['detector']} embedder={s['pipeline']['embedder']} "
        f"device={s['pipeline']['device']} flip_average={idx.flip_average} "
        f"precision={idx.descriptor_precision} "
        f"face_resolution={'unknown' if res is None else f'{res:g} px (median chip source width)'}"
    )
    print(f"rows       ok={c['ok']} no_face={c['no_face']} unreadable={c['unreadable']} faces={s['faces']}")
    b = s["build"]
    ivf_spec = s["semantic_ivf"]["spec"] if s["semantic_ivf"] else "none"
    print(f"layout     {s['layout']}, {s['shards']} shard(s), IVF {ivf_spec}")
    print(
        f"build      {b['seconds']} s, engine {b.get('engine', 'local')}"
        f"{', nodes ' + str(len(b['nodes'])) if b.get('nodes') else ''}, stages {b.get('stage_seconds')}"
    )
    print(f"calibration {json.dumps(s['calibration'])}")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.cmd == "build":
        return _run_build(_build_config(ap, args))
    return _run_info(args)


if __name__ == "__main__":
    raise SystemExit(main())
