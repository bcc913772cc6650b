"""The report's pictures: thumbnails of the faces it shows and its plots, as data URIs.

Kept apart from the statistics (``run``) and from the HTML (``html``): the data dict is complete
without them (``--json`` needs no pictures), and the HTML only places what is made here.
"""

from __future__ import annotations

import io

import numpy as np

from indexer import faces, pixels

from ...thumbnails import jpeg
from ..backends import THUMB
from ..progress import stage_bar
from . import html, plots


def image_thumb(data: bytes | np.ndarray, size: int = THUMB) -> str | None:
    """A generated image's thumbnail: encoded bytes, or a sample still held as its array."""
    try:
        arr = faces.from_array(data) if isinstance(data, np.ndarray) else faces.decode(data)
        return plots.data_uri(jpeg(arr, size), "image/jpeg")
    except faces.Unreadable:
        return None


def _array(kept: np.ndarray | bytes) -> np.ndarray:
    """A kept sample (:func:`service.audit.sources.keepsake`) as its array: the lossless PNG decoded."""
    if isinstance(kept, np.ndarray):
        return kept
    from PIL import Image

    with Image.open(io.BytesIO(kept)) as im:  # our own PNG of an RGB array: no checks to apply here
        return np.asarray(im.convert("RGB"))


def thumbnails(
    data: dict, source, backend, images: list[tuple[str, bytes | np.ndarray]], progress: bool
) -> dict[str, str]:
    """Every generated and training face the report shows, keyed ``gen:<image>`` / ``train:<file>``;
    ``images``: a generator's main sample as kept (:attr:`service.audit.run.Passes.images`)."""
    gen_names: list[str] = []
    train_files: list[str] = []
    for r in data["grid"]["rows"]:
        gen_names.append(r["image"])
        train_files += [x["file"] for x in r["semantic"] + r["pixel"]]
    for p in data["birthday"]["top_pairs"]:
        gen_names += [p["a"], p["b"]]
    ident = data["identities"]
    for t in ident["top"][: ident["gallery"]]:
        gen_names += t["generated"][:6]
        train_files += t["train_files"][:4]
    for r in (data.get("leaks") or {}).get("rows", [])[: html.LEAKS_SHOWN]:
        gen_names += r["generated_images"][: html.LEAK_FACES]
        train_files += r["training_examples"][: html.LEAK_FACES]
    for r in (data.get("attributes") or {}).get("rows", []):
        train_files += list(r.get("examples") or [])[:4]
    gen_names = list(dict.fromkeys(gen_names))
    train_files = list(dict.fromkeys(train_files))
    if source.kind == "generator":  # the samples as generated, enlarged as the face pipeline saw them
        from ..sources import enlarge

        by_name = dict(images)
        upscale = data["source"]["upscale"] or 0
        blobs = [(n, enlarge(_array(by_name[n]), upscale)) for n in gen_names]
    else:
        idx = {name: i for i, name in enumerate(source.names())}
        blobs = source.read([idx[n] for n in gen_names])
    out: dict[str, str] = {}
    bar = stage_bar(total=len(blobs) + len(train_files), unit="thumb", desc="thumbnails", enabled=progress)
    for name, b in blobs:
        uri = image_thumb(b)
        if uri:
            out["gen:" + name] = uri
        bar.update()
    for f in train_files:
        jpg = backend.thumbnail(f)
        if jpg:
            out["train:" + f] = plots.data_uri(jpg, "image/jpeg")
        bar.update()
    bar.close()
    return out


def figures(data: dict, training: dict) -> dict[str, str]:
    h, cal = data["histograms"], data["calibration"]
    nulls = training["nulls"]
    out = {}
    ref_sem = {
        "training → training leave-one-out": nulls["sem_loo"],
        "training → nearest other identity (strangers)": nulls["sem_diff_id"],
    }
    if h.get("reference_semantic"):
        ref_sem["reference real faces → training"] = h["reference_semantic"]
    coll = cal.get("collision_semantic") or {}
    out["hist_semantic"] = plots.plot_histogram(
        "Semantic channel: nearest-neighbour descriptor distance",
        "Euclidean distance between dlib descriptors",
        h["generated_semantic"],
        ref_sem,
        {
            "identity threshold": cal["identity"],
            "semantic copy threshold": cal["semantic_copy"],
            "collision threshold": coll.get("threshold"),
        },
    )
    norm = pixels.PIXEL_DIM * 255.0

    def per_value(v):
        a = np.asarray([np.nan if x is None else x for x in v], np.float64)
        return a / norm

    ref_pix = {"training → training leave-one-out": per_value(nulls["pix_loo"])}
    if nulls.get("pix_diff_id"):
        ref_pix["training → nearest other identity"] = per_value(nulls["pix_diff_id"])
    if h.get("reference_pixel"):
        ref_pix["reference real faces → training"] = per_value(h["reference_pixel"])
    out["hist_pixel"] = plots.plot_histogram(
        "Pixel channel: nearest-neighbour L1 distance (64×64 face crop)",
        "mean |Δ| per value (0–1)",
        list(per_value(h["generated_pixel"])),
        ref_pix,
        {"pixel copy threshold": None if cal["pixel_copy"] is None else cal["pixel_copy"] / norm},
    )
    if data["birthday"]["rows"]:
        out["birthday"] = plots.plot_birthday(data["birthday"]["rows"], data["crossing"])
    if data["identities"]["top"]:
        out["identities"] = plots.plot_identities(data["identities"]["top"], data["identities"].get("null"))
    return out
