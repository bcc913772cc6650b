"""The body of ``POST /neighbors``, as plain functions: the HTTP route and the in-process audit both
call :func:`neighbors`, so both report identical numbers.

Nothing here knows about Flask: the parameters arrive validated (:mod:`service.params`), faces
come from the detection pool (:mod:`service.detect`), and the answer is a JSON-ready dict.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from indexer import attributes, faces, pixels
from indexer.store import FaceIndex

from .detect import DetectPool, detect_many
from .params import Params, parse_params
from .search import Query
from .stats import collisions, memorization
from .stats.thresholds import DistanceContext, Thresholds, calibrate


def index_summary(index: FaceIndex) -> dict:
    """What a response says about the index it searched (no server paths)."""
    m = index.manifest
    ds, pipe = m.get("dataset", {}), m.get("pipeline", {})
    return {
        "faces": index.n_faces,
        "images": len(index.rows),
        "dataset": ds.get("kind"),
        "split": ds.get("split"),
        "identities": ds.get("identities"),
        "identities_known": bool(m.get("identities_known")),
        "detector": pipe.get("detector"),
        "embedder": pipe.get("embedder"),
        "pixel_size": pipe.get("pixel", {}).get("size"),
        "flip_average": index.flip_average,
        "descriptor_precision": index.descriptor_precision,
        "face_resolution_px": index.face_resolution,
        "written_at": m.get("written_at"),
    }


def index_info(index: FaceIndex, thresholds: Thresholds) -> dict:
    """``GET /v1/index`` without the server's own part (limits, device): the manifest summary, no
    server paths, and the default thresholds (the audit's in-process backend reports the same)."""
    m = index.manifest
    return {
        "summary": index_summary(index),
        "dataset": {k: v for k, v in m.get("dataset", {}).items() if k != "root"},  # no server paths
        "counts": m.get("counts", {}),
        "pipeline": m.get("pipeline", {}),
        "build": m.get("build", {}),
        "format_version": m.get("format_version"),
        "written_at": m.get("written_at"),
        "model_sha256": m.get("model_sha256", {}),
        "libraries": m.get("libraries", {}),
        "calibration": thresholds.to_dict(pixels.PIXEL_DIM),
    }


def _image_entry(name: str, face: faces.Face) -> dict:
    reason = face.reason
    if face.ok and face.faces_found > 1:
        reason = f"{face.faces_found} faces found; the largest is used"
    return {
        "image": name,
        "status": face.status,
        "reason": reason,
        "faces_found": int(face.faces_found),
        "box": list(face.box) if face.box is not None else None,
        "image_size": [face.width, face.height] if face.width else None,
        "semantic": [],
        "pixel": [],
    }


def _add_attributes(searcher, entries: list[dict], found: list[faces.Face], desc: np.ndarray, pos: list[int]) -> None:
    """``attributes=1``: each entry gets ``attributes`` ({name: probability}, null without probes or face)
    and ``geometry`` ({name: value}, null without a face)."""
    for e in entries:
        e["attributes"], e["geometry"] = None, None
    with_extras = [j for j, f in enumerate(found) if f.landmarks68 is not None and f.attr_crop is not None]
    described = attributes.describe_faces(
        getattr(searcher, "probes", None), [found[j] for j in with_extras], desc[with_extras]
    )
    for j, (a, g) in zip(with_extras, described):
        entries[pos[j]]["attributes"], entries[pos[j]]["geometry"] = a, g


def _semantic(
    searcher, desc: np.ndarray, k: int, th: Thresholds, ctx: DistanceContext
) -> tuple[list[list[dict]], np.ndarray]:
    """Each face's k semantic neighbours as response entries, and the top-1 distances."""
    files, idents = searcher.files, searcher.identities
    sd, si = searcher.semantic_search(desc, k)
    rows = [
        [
            {
                "rank": r + 1,
                "file": files[j],
                "identity": idents[j],
                "distance": float(sd[row, r]),
                "same_person": bool(sd[row, r] < th.identity),
                **ctx.semantic(sd[row, r]),
            }
            for r, j in enumerate(si[row])
            if j >= 0
        ]
        for row in range(len(desc))
    ]
    return rows, (sd[:, 0] if len(desc) else np.zeros(0)), (si[:, 0] if len(desc) else np.zeros(0, np.int64))


def _pixel(searcher, pix: np.ndarray, desc: np.ndarray, k: int, ctx: DistanceContext):
    """Each face's k pixel (L1) neighbours as response entries, and the top-1 distances."""
    files, idents = searcher.files, searcher.identities
    pd, pi = searcher.pixel_search(pix, k, desc=desc)
    rows = [
        [
            {
                "rank": r + 1,
                "file": files[j],
                "identity": idents[j],
                "distance": int(pd[row, r]),
                "distance_per_value": float(pixels.normalised_l1(pd[row, r])),
                **ctx.pixel(pd[row, r]),
            }
            for r, j in enumerate(pi[row])
            if j >= 0
        ]
        for row in range(len(pix))
    ]
    return (
        rows,
        (pd[:, 0].astype(np.float64) if len(pix) else np.zeros(0)),
        (pi[:, 0] if len(pix) else np.zeros(0, np.int64)),
    )


def _answer(searcher, named_faces: list[tuple[str, faces.Face]], params: Params, thresholds: Thresholds | None) -> dict:
    """Embed, search and summarise faces that went through the face pipeline already; ``params``
    are resolved for this index (:meth:`Params.for_index`).

    Every ok face is embedded in one batch (:meth:`Searcher.prepare`) and searched in one batched
    call per channel, so a batch of 64 costs one forward pass, and a single image a batch of one.
    """
    t0 = time.perf_counter()
    # The keyword only when it changes something: callers that wrap ``prepare(named_faces)`` keep working.
    off = not params.resolution_match and searcher.index.face_resolution is not None
    queries = searcher.prepare(named_faces, **({"resolution_match": False} if off else {}))
    return answer(searcher, queries, params, thresholds, t_embed=time.perf_counter() - t0)


def answer(
    searcher,
    queries: list[Query],
    params: Params,
    thresholds: Thresholds | None = None,
    t_embed: float = 0.0,
    array_vectors: bool = False,
    summaries: bool = True,
) -> dict:
    """The response for ``queries`` already embedded (descriptor and pixel vector of every ok face):
    search, summarise. ``params`` are resolved for this index (:meth:`Params.for_index`).

    ``array_vectors``: with ``vectors``, each face's descriptor (float32) and pixel crop (uint8) as
    arrays, not the JSON forms (a list of floats, base64): for a caller in this process (the in-process
    audit), which would only turn them back into arrays. The values are the same.
    ``summaries=False``: ``collisions`` and ``memorization`` are None, for a caller that computes its own
    over all its requests from the vectors (the in-process audit: the per-request blocks cost a third of
    this function and it would discard them).
    """
    cal = searcher.index.calibration
    th = thresholds or calibrate(
        cal, params.false_match_rate, params.threshold, pair_false_match_rate=params.pair_false_match_rate
    )
    ctx = DistanceContext.of(cal)
    entries = [_image_entry(q.name, q.face) for q in queries]
    pos = [i for i, q in enumerate(queries) if q.face.ok]
    names = [queries[i].name for i in pos]
    desc = np.stack([queries[i].descriptor for i in pos]) if pos else np.zeros((0, 128), np.float32)
    pix = np.stack([queries[i].pixel for i in pos]) if pos else np.zeros((0, pixels.PIXEL_DIM), np.uint8)
    top1: dict[str, np.ndarray | None] = {"semantic": None, "pixel": None}
    train: dict[str, list[dict] | None] = {"semantic": None, "pixel": None}
    t1 = time.perf_counter()
    for channel in params.channels:
        if channel == "semantic":
            rows, top1[channel], nearest = _semantic(searcher, desc, params.k, th, ctx)
        else:
            rows, top1[channel], nearest = _pixel(searcher, pix, desc, params.k, ctx)
        for i, row in zip(pos, rows):
            entries[i][channel] = row
        train[channel] = [{"file": searcher.files[j], "identity": searcher.identities[j]} for j in nearest]
    t_search = time.perf_counter() - t1
    if params.attributes:
        _add_attributes(searcher, entries, [queries[i].face for i in pos], desc, pos)
    t2 = time.perf_counter()
    coll = mem = None
    if summaries:
        coll = collisions.collisions(names, desc, pix, th, batch_size=len(queries), positions=pos)
        mem = memorization.memorization(
            names,
            top1["semantic"],
            train["semantic"],
            top1["pixel"],
            train["pixel"],
            th,
            pixels.PIXEL_DIM,
            positions=pos,
            calibration={**cal, **searcher.null_clusters},
        )
    if params.vectors:
        for row, i in enumerate(pos):
            if array_vectors:
                entries[i]["descriptor"], entries[i]["pixels"] = desc[row], pix[row]
            else:
                entries[i]["descriptor"] = [float(v) for v in desc[row]]
                entries[i]["pixels"] = base64.b64encode(np.ascontiguousarray(pix[row]).tobytes()).decode("ascii")
    return {
        "images": entries,
        "counts": {s: sum(q.face.status == s for q in queries) for s in faces.STATUSES},
        "collisions": coll,
        "memorization": mem,
        "calibration": th.to_dict(pixels.PIXEL_DIM),
        "index": index_summary(searcher.index),
        "search": searcher.search_info(params.channels),
        "params": params.to_dict(),
        "timing": {"embed_s": t_embed, "search_s": t_search, "stats_s": time.perf_counter() - t2},
    }


def neighbors(
    searcher,
    images: list[tuple[str, bytes]],
    params: Params | Mapping[str, Any] | None = None,
    pool: DetectPool | None = None,
    max_pixels: int = faces.MAX_PIXELS,
    thresholds: Thresholds | None = None,
) -> dict:
    """The exact JSON body of ``POST /neighbors`` for ``images`` = [(name, bytes)] in upload order.

    ``params`` may be a :class:`Params` or a raw mapping (validated here). Face detection runs in
    ``pool`` when given (parallel worker processes), else in this thread.
    """
    if not isinstance(params, Params):
        params = parse_params(params or {})
    params = params.for_index(searcher.index)  # a parameter the index cannot honour fails before any work
    t0 = time.perf_counter()
    datas = [d for _, d in images]
    found = (
        pool.run(datas, params.detector, max_pixels, params.attributes)
        if pool
        else detect_many(datas, params.detector, max_pixels, params.attributes)
    )
    t_detect = time.perf_counter() - t0
    body = _answer(searcher, [(n, f) for (n, _), f in zip(images, found)], params, thresholds)
    body["timing"] = {"detect_s": t_detect, **body["timing"], "total_s": time.perf_counter() - t0}
    return body
