"""What a generator under- and over-produces, against an index, with the omission library directly.

A thin CLI for the closing note of issue 13 until the audit report wires the section in: images go
through ``service.api.neighbors(..., attributes=1)`` in requests of ``--chunk``, then
``service.audit.omissions.analyse``; it prints the top rows and writes the JSON (and, with ``--html``, the
section rendered by ``service.audit.omissions_html`` in a bare page with training thumbnails).

    python scripts/omission_figures.py --index build/celeba10k --generated ../shared/data/generated/pggan_celebahq \
        --detector hog --json pggan.json
    python scripts/omission_figures.py --index build/celeba10k --n 1000 --detector aligned --json dcgan.json \
        --generator dcgan32:../shared/data/generated/dcgan32_celeba/checkpoint_G.pth
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer import attributes, faces  # noqa: E402
from indexer.store import load_index  # noqa: E402
from service import api  # noqa: E402
from service.app import image_path  # noqa: E402
from service.audit import omissions, omissions_html  # noqa: E402
from service.audit.sources import FolderSource, load_generator  # noqa: E402
from service.search import Searcher  # noqa: E402


def thumbnails(index, files: list[str], size: int = 96) -> dict[str, str]:
    from PIL import Image

    out = {}
    for f in files:
        try:
            im = Image.fromarray(faces.read_file(image_path(index, f)))
        except faces.Unreadable:
            continue
        im.thumbnail((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out[f] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--generated", help="folder of generated images")
    src.add_argument("--generator", help="ADAPTER:CHECKPOINT, e.g. dcgan32:checkpoint_G.pth")
    ap.add_argument("--n", type=int, default=1000, help="generator samples (default 1000)")
    ap.add_argument("--detector", default="hog", choices=list(faces.DETECTORS))
    ap.add_argument("--upscale", type=int, default=128, help="enlarge smaller samples to this (bicubic)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=8, help="rows printed")
    ap.add_argument("--json", help="write the section's data here")
    ap.add_argument("--html", help="write the rendered section here (a bare page)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    index = load_index(Path(a.index))
    searcher = Searcher(index, device="cpu")
    if a.generated:
        source = FolderSource.open(a.generated)
        images = source.read(list(range(len(source.files))))
    else:
        images = load_generator(a.generator).sample(a.n, a.seed, upscale=a.upscale)
    entries = []
    params = {"attributes": 1, "detector": a.detector, "k": 1}
    for lo in range(0, len(images), a.chunk):
        entries += api.neighbors(searcher, images[lo : lo + a.chunk], params)["images"]
    res = omissions.analyse(entries, attributes.training_side(index), seed=a.seed)
    t = time.perf_counter() - t0
    at, geo = res["attributes"], res["geometry"]
    print(f"{len(entries)} images, {at['n_generated']} faces, {t:.0f} s, load average {os.getloadavg()}")
    if not at["available"]:
        print(f"attributes skipped: {at['reason']}")
    else:
        print(f"flagged: {at['n_flagged_under']} under, {at['n_flagged_over']} over (of {at['n_tested']} tested)")
        print("| attribute | training | generated [95% CI] | q | direction | AUC | label-shift p |")
        print("|---|---|---|---|---|---|---|")
        for r in at["rows"][: a.top]:
            iv = r["interval"] or [float("nan")] * 2
            ls = (r.get("label_shift") or {}).get("p_value")
            print(
                f"| {r['name']} | {100 * r['training_rate']:.1f}% | {100 * r['generated_rate']:.1f}% "
                f"[{100 * iv[0]:.1f}–{100 * iv[1]:.1f}%] | {r['q_value']:.2g} | {r['direction']} | "
                f"{r['probe_auc']:.3f} | {ls:.2g} |"
            )
    if geo["available"]:
        print("| geometry | training median | generated median | IQR ratio | KS | q |")
        print("|---|---|---|---|---|---|")
        for s in geo["stats"]:
            print(
                f"| {s['name']} | {s['training']['median']:.3f} | {s['generated']['median']:.3f} | "
                f"{s['spread_ratio']:.2f} | {s['ks']:.3f} | {s['q_value']:.2g} |"
            )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.html:
        files = [f for r in at.get("rows", []) for f in r.get("examples", [])]
        body = omissions_html.render(res, thumbnails(index, files))
        Path(a.html).write_text(f"<!doctype html><meta charset=utf-8><body>{body}</body>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
