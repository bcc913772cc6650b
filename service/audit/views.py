"""The audit's per-image views: the data behind the report's grid, CSV rows, pair lists and histograms.

Plain functions of the main sample's answers (:class:`service.audit.run.Answers`), its colliding pairs
(:func:`service.stats.collisions.batch_pairs`) and the thresholds; nothing here is a test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..stats.collisions import Pairs, closest_pairs
from ..stats.thresholds import Thresholds
from .run import Answers
from .strangers import TrainingStrangers

PAIRS_LISTED = 1000  # colliding pairs listed per channel in the JSON (all are counted)
TOP_PAIRS = 20  # the most similar pairs shown for a human to confirm


def _pair(main: Answers, i: int, j: int) -> dict:
    """A pair of ok faces (positions among them) as the report names it: images and entry positions."""
    a, b = main.ok[i], main.ok[j]
    return {"a": main.entries[a]["image"], "b": main.entries[b]["image"], "a_index": a, "b_index": b}


def collisions(main: Answers, pairs: dict, thresholds: Thresholds) -> dict:
    """Per channel: the collision threshold, the count, and the first :data:`PAIRS_LISTED` pairs."""
    out = {}
    for channel in ("semantic", "pixel"):
        pair_threshold = getattr(thresholds, f"collision_{channel}")
        found = pairs[channel]
        out[channel] = {
            "threshold": pair_threshold.threshold if pair_threshold else None,
            "count": len(found),
            "pairs": [
                _pair(main, i, j) | {"distance": float(d) if channel == "semantic" else int(round(d))}
                for i, j, d in found[:PAIRS_LISTED]
            ],
            "listed": min(len(found), PAIRS_LISTED),
        }
    return out


def grid(entries: list[dict], thresholds: Thresholds, grid_max: int, expanded: int) -> dict:
    """Rows of the nearest-neighbour figure, most suspicious first (closest to a copy threshold)."""
    rows = []
    for i, e in enumerate(entries):
        if e["status"] != "ok":
            continue
        sem, pix = e["semantic"][0], e["pixel"][0]
        r_sem = sem["distance"] / thresholds.semantic_copy if thresholds.semantic_copy else math.inf
        r_pix = pix["distance"] / thresholds.pixel_copy if thresholds.pixel_copy else math.inf
        badges = []
        if thresholds.semantic_copy is not None and sem["distance"] < thresholds.semantic_copy:
            badges.append("copy (semantic)")
        if thresholds.pixel_copy is not None and pix["distance"] < thresholds.pixel_copy:
            badges.append("copy (pixel)")
        if sem["same_person"]:
            badges.append("same person")
        rows.append(
            {
                "index": i,
                "image": e["image"],
                "score": min(r_sem, r_pix),
                "badges": badges,
                "semantic": e["semantic"][:1],
                "pixel": e["pixel"][:1],
            }
        )
    rows.sort(key=lambda r: (r["score"], r["index"]))
    for k, r in enumerate(rows):
        r["order"] = k + 1
    return {
        "rows": rows[:grid_max],
        "expanded": expanded,
        "omitted": max(0, len(rows) - grid_max),
        "no_face": [
            {"image": e["image"], "status": e["status"], "reason": e["reason"]} for e in entries if e["status"] != "ok"
        ],
    }


def rows(main: Answers, pairs: dict, thresholds: Thresholds, leaking: set[str] | None = None) -> list[dict]:
    """One row per audited image (the CSV): status, top-1 in each channel, the flags; ``leak_identity``
    names the training identity when the face is a same-person match of one that leaks
    (``leaking``: the significant identities of :mod:`service.stats.leaks`), empty otherwise."""
    leaking = leaking or set()
    partners = {ch: _partners(main, found) for ch, found in pairs.items()}
    out = []
    for i, e in enumerate(main.entries):
        sem = e["semantic"][0] if e["semantic"] else {}
        pix = e["pixel"][0] if e["pixel"] else {}
        ok = e["status"] == "ok"
        out.append(
            {
                "image": e["image"],
                "status": e["status"],
                "reason": e["reason"],
                "semantic_file": sem.get("file"),
                "semantic_identity": sem.get("identity"),
                "semantic_distance": sem.get("distance"),
                "pixel_file": pix.get("file"),
                "pixel_distance": pix.get("distance"),
                "same_person": bool(sem.get("same_person")) if ok else None,
                "copy_semantic": _under(sem, thresholds.semantic_copy) if ok else None,
                "copy_pixel": _under(pix, thresholds.pixel_copy) if ok else None,
                "collisions_semantic": int(partners["semantic"][i]) if ok else None,
                "collisions_pixel": int(partners["pixel"][i]) if ok else None,
                "leak_identity": (
                    sem.get("identity") if ok and sem.get("same_person") and sem.get("identity") in leaking else None
                ),
            }
        )
    return out


def _partners(main: Answers, found: Any) -> np.ndarray:
    """How many colliding partners each entry has (by entry position), from the pair arrays (no
    Python loop over millions of pairs)."""
    ok = np.asarray(main.ok, np.int64)
    n = len(main.entries)
    if not len(found):
        return np.zeros(n, np.int64)
    p = found if isinstance(found, Pairs) else Pairs.sorted(*zip(*found)) if found else Pairs()
    return np.bincount(ok[p.i], minlength=n) + np.bincount(ok[p.j], minlength=n)


def _under(neighbour: dict, threshold: float | None) -> bool | None:
    """Whether a top-1 neighbour is under a copy threshold (None: the index has no such threshold)."""
    return neighbour["distance"] < threshold if threshold is not None else None


def top_pairs(main: Answers, pairs: dict, thresholds: Thresholds) -> list[dict]:
    """The :data:`TOP_PAIRS` closest pairs by descriptor, colliding or not, for a human to confirm."""
    found = pairs["pixel"]
    pixel_pairs = found if isinstance(found, Pairs) else Pairs.sorted(*zip(*found)) if len(found) else Pairs()
    sem_threshold = thresholds.collision_semantic.threshold if thresholds.collision_semantic else None
    return [
        {"rank": rank + 1}
        | _pair(main, i, j)
        | {
            "distance": d,
            "collides": sem_threshold is not None and d < sem_threshold,
            "pixel_duplicate": pixel_pairs.distance(i, j) is not None,
            "pixel_distance": pixel_pairs.distance(i, j),
        }
        for rank, (i, j, d) in enumerate(closest_pairs(main.descriptors, TOP_PAIRS))
    ]


NULL_SERIES = (  # the training side's null distances drawn in every histogram: (label, null key, channel)
    ("training → training leave-one-out, semantic", "sem_loo", "semantic"),
    ("training → nearest other identity, semantic", "sem_diff_id", "semantic"),
    ("training → training leave-one-out, pixel L1", "pix_loo", "pixel"),
    ("training → nearest other identity, pixel L1", "pix_diff_id", "pixel"),
)
REFERENCE_LABELS = {
    "semantic": "reference real faces → training, semantic",
    "pixel": "reference real faces → training, pixel L1",
}


def histograms(ok_entries: list[dict], null: TrainingStrangers, thresholds: Thresholds) -> dict:
    """The data of section 4: generated → training nearest distances beside the training nulls and,
    with a real reference, its faces' own distances; each series summarised (n, p1, median, share
    under the copy threshold)."""
    copy = {"semantic": thresholds.semantic_copy, "pixel": thresholds.pixel_copy}
    g_sem = [e["semantic"][0]["distance"] for e in ok_entries]
    g_pix = [e["pixel"][0]["distance"] for e in ok_entries]
    out: dict = {"generated_semantic": g_sem, "generated_pixel": g_pix, "stats": {}}

    def summarise(name: str, values: Any, threshold: float | None) -> None:
        a = np.asarray(values, np.float64)
        a = a[np.isfinite(a)]
        if len(a):
            out["stats"][name] = {
                "n": int(len(a)),
                "p1": float(np.percentile(a, 1)),
                "median": float(np.median(a)),
                "under_copy": float(np.mean(a < threshold)) if threshold is not None else None,
            }

    summarise("generated → training, semantic", g_sem, copy["semantic"])
    summarise("generated → training, pixel L1", g_pix, copy["pixel"])
    for label, key, channel in NULL_SERIES:
        summarise(label, null.nulls[key], copy[channel])
    for channel, values in null.distances().items():
        out[f"reference_{channel}"] = values
        summarise(REFERENCE_LABELS[channel], values, copy[channel])
    return out
