"""Identification quality of an index: how often a photo of an indexed person finds that person, and
how often a stranger is called someone, with each descriptor lever on and off.

Why a module: every downstream number (same-person rate, collisions, identity concentration) rests
on the semantic channel, so the levers that change it (flip-averaged descriptors, resolution-matched
queries) are judged on labelled photos, through the service's own code: faces from
:func:`service.detect.detect_one` (in a :class:`service.detect.DetectPool`), descriptors from
:meth:`service.search.Searcher.prepare`, the threshold from :func:`service.stats.thresholds.calibrate`.
``scripts/eval_identification.py`` is the CLI.

Query sets (all paths overridable):

* ``celeba_wild``: unaligned CelebA originals; ``labels.txt`` says whether the person is in
  celeba10k (``indexed_person``, another photo of them) or not (``unindexed_person``);
* ``celeba_test``: CelebA test-split faces, an identity pool disjoint from celeba10k (strangers);
* same photo: ``celeba_wild`` holds no photo whose own aligned crop is in celeba10k (its files
  start at 010237), so this set is made from indexed crops: a seeded sample, enlarged 4×
  (bicubic) onto a larger canvas at a seeded offset and JPEG re-encoded, found with the query
  detector. The right answer is the crop itself. It checks that a sharper copy of a training
  photo still finds its source after resolution matching degrades it.
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer import faces

from .detect import DetectPool
from .stats import thresholds

log = logging.getLogger(__name__)

SAME_PHOTO_SCALE = 4  # 89×109 crops become 356×436, the size of a wild photo
SAME_PHOTO_CANVAS = 1.5  # canvas side / enlarged crop side: the face lands off-centre
SAME_PHOTO_QUALITY = 90
GROUPS = ("indexed_person", "unindexed_person", "stranger", "same_photo")


@dataclass
class LabelledFace:
    """One query photo after the face pipeline, with what the right answer is."""

    name: str
    group: str  # indexed_person | unindexed_person | stranger | same_photo
    identity: str | None  # the person (indexed_person) or None
    source_file: str | None  # same_photo: the index file it was made from
    face: faces.Face


def read_wild(root: Path) -> list[tuple[str, bytes, str, str]]:
    """``celeba_wild``: (file, bytes, identity, relation) from ``labels.txt``."""
    out = []
    for line in (root / "labels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            f, ident, rel = line.split()
            out.append((f, (root / f).read_bytes(), ident, rel))
    return out


def read_strangers(root: Path) -> list[tuple[str, bytes]]:
    """Every image file directly in ``root`` (``celeba_test``), sorted."""
    exts = {".jpg", ".jpeg", ".png"}
    return [(p.name, p.read_bytes()) for p in sorted(root.iterdir()) if p.suffix.lower() in exts]


def same_photo_image(data: bytes, rng: random.Random) -> bytes:
    """A sharper-looking copy of an indexed crop: enlarged, placed off-centre on a grey canvas, re-encoded."""
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    big = im.resize((im.width * SAME_PHOTO_SCALE, im.height * SAME_PHOTO_SCALE), Image.BICUBIC)
    cw, ch = int(big.width * SAME_PHOTO_CANVAS), int(big.height * SAME_PHOTO_CANVAS)
    canvas = Image.new("RGB", (cw, ch), (128, 128, 128))
    canvas.paste(big, (rng.randrange(cw - big.width + 1), rng.randrange(ch - big.height + 1)))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=SAME_PHOTO_QUALITY)
    return buf.getvalue()


def same_photo_set(index, n: int, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """(name, bytes, index file) for a seeded sample of ``n`` faces of ``index`` (see module docstring)."""
    rng = random.Random(seed)
    files = sorted(index.face_file(i) for i in range(index.n_faces))
    picked = sorted(rng.sample(files, min(n, len(files))))
    root = index.dataset_root
    return [(f"same-{f}", same_photo_image((root / "img_align_celeba" / f).read_bytes(), rng), f) for f in picked]


def detect_all(
    wild: list[tuple[str, bytes, str, str]],
    strangers: list[tuple[str, bytes]],
    same: list[tuple[str, bytes, str]],
    detector: str = "hog",
    processes: int | None = None,
) -> list[LabelledFace]:
    """Run the face pipeline once on every query photo (detection does not depend on the levers)."""
    items = (
        [(n, d, rel, ident, None) for n, d, ident, rel in wild]
        + [(n, d, "stranger", None, None) for n, d in strangers]
        + [(n, d, "same_photo", None, f) for n, d, f in same]
    )
    pool = DetectPool(processes)
    try:
        found = pool.run([d for _, d, *_ in items], detector, faces.MAX_PIXELS)
    finally:
        pool.close()
    return [LabelledFace(n, g, ident, src, f) for (n, _, g, ident, src), f in zip(items, found)]


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def measure(searcher, queries: list[LabelledFace], resolution_match: bool, k: int = 5) -> dict:
    """The identification figures of one lever setting (``searcher``'s index decides flip averaging).

    Only photos in which a face was found count (faces found are reported per group); "flagged" is
    ``same_person`` at the calibrated default (the 1% quantile of the index's nearest
    other-identity distances), i.e. top-1 distance < threshold.
    """
    th = thresholds.calibrate(searcher.index.calibration)
    ok = [q for q in queries if q.face.ok]
    prepared = searcher.prepare([(q.name, q.face) for q in ok], resolution_match=resolution_match)
    desc = np.stack([p.descriptor for p in prepared]) if prepared else np.zeros((0, 128), np.float32)
    dist, ids = searcher.semantic_search(desc, k)
    ident = np.array([searcher.identities[j] if j >= 0 else None for j in ids.ravel()], dtype=object).reshape(ids.shape)
    files = np.array([searcher.files[j] for j in ids[:, 0]], dtype=object)
    group = np.array([q.group for q in ok], dtype=object)
    truth = np.array([q.identity for q in ok], dtype=object)
    flagged = dist[:, 0] < th.identity
    known, strangers = group == "indexed_person", (group == "unindexed_person") | (group == "stranger")
    same = group == "same_photo"
    top1 = ident[:, 0] == truth
    top5 = (ident == truth[:, None]).any(axis=1)
    src = np.array([q.source_file for q in ok], dtype=object)
    return {
        "flip_average": searcher.flip_average,
        "resolution_match": bool(resolution_match and searcher.face_resolution is not None),
        "threshold": th.identity,
        "faces": {g: int((group == g).sum()) for g in GROUPS},
        "photos": {g: sum(q.group == g for q in queries) for g in GROUPS},
        "top1_identity": _share(top1[known]),
        "top5_identity": _share(top5[known]),
        "indexed_flagged": _share(flagged[known]),
        "indexed_flagged_right_identity": _share((flagged & top1)[known]),
        "same_photo_top1": _share(files[same] == src[same]),
        "strangers_flagged": _share(flagged[strangers]),
        "strangers_flagged_count": int(flagged[strangers].sum()),
        "wild_unindexed_flagged": _share(flagged[group == "unindexed_person"]),
        "celeba_test_flagged": _share(flagged[group == "stranger"]),
        "degraded_faces": sum(faces.too_sharp(q.face.source_px, searcher.face_resolution) for q in ok)
        if resolution_match
        else 0,
    }


def evaluate(searchers: dict[str, object], queries: list[LabelledFace]) -> list[dict]:
    """One row per lever combination: each searcher (flip-averaged index or plain), resolution matching off and on."""
    rows = []
    for name, s in searchers.items():
        for rm in (False, True):
            r = measure(s, queries, rm)
            levers = [x for x, on in (("flip", r["flip_average"]), ("resolution", r["resolution_match"])) if on]
            rows.append({"levers": " + ".join(levers) or "none", "index": name, **r})
    order = {"none": 0, "flip": 1, "resolution": 2, "flip + resolution": 3}
    return sorted(rows, key=lambda r: order.get(r["levers"], 9))


def cost_per_face(searchers: dict[str, object], queries: list[LabelledFace], n: int = 256, rounds: int = 3) -> dict:
    """Milliseconds per face of :meth:`Searcher.prepare` (degrade + descriptor) for each lever
    setting, on the same ``n`` sharp query faces (the first found in each group, interleaved), each
    setting timed once per round in rotating order, median over ``rounds`` after one warm-up pass.

    Why interleaved: the machine is shared, and two-thread torch slows several-fold under load
    (BENCHMARKS.md), so settings timed minutes apart are not comparable; in one rotation they share
    the load. The face pipeline before (decode, detect, landmarks) is the same for every setting.
    """
    ok = [q for q in queries if q.face.ok and q.group != "same_photo"]
    ok = sorted(ok, key=lambda q: q.group)[:: max(1, len(ok) // n)][:n]
    named = [(q.name, q.face) for q in ok]
    settings = [(name, rm) for name in searchers for rm in (False, True)]
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in settings}
    for name, rm in settings:  # warm-up: first calls allocate and pick kernels
        searchers[name].prepare(named[:32], resolution_match=rm)
    for r in range(rounds):
        for name, rm in settings[r % len(settings) :] + settings[: r % len(settings)]:
            t0 = time.perf_counter()
            searchers[name].prepare(named, resolution_match=rm)
            times[name, rm].append(time.perf_counter() - t0)
    out = {}
    for (name, rm), ts in times.items():
        s = searchers[name]
        levers = [x for x, on in (("flip", s.flip_average), ("resolution", rm and s.face_resolution)) if on]
        out[" + ".join(levers) or "none"] = 1000 * float(np.median(ts)) / max(1, len(named))
    return {"faces": len(named), "rounds": rounds, "ms_per_face": out, "loadavg": list(os.getloadavg())}


def tradeoff(searcher, queries: list[LabelledFace], rates: list[float], resolution_match: bool = True) -> list[dict]:
    """celeba_wild only (as in the README's wild-photo table): at each target false-match rate, the
    calibrated threshold, the share of strangers (unindexed_person) and of indexed people flagged."""
    wild = [q for q in queries if q.face.ok and q.group in ("indexed_person", "unindexed_person")]
    prepared = searcher.prepare([(q.name, q.face) for q in wild], resolution_match=resolution_match)
    desc = np.stack([p.descriptor for p in prepared]) if prepared else np.zeros((0, 128), np.float32)
    top1 = searcher.semantic_search(desc, 1)[0][:, 0]
    known = np.array([q.group == "indexed_person" for q in wild], dtype=bool)
    out = []
    for rate in rates:
        t = thresholds.calibrate(searcher.index.calibration, rate).identity
        out.append(
            {
                "false_match_rate": rate,
                "threshold": t,
                "strangers_flagged": _share(top1[~known] < t),
                "indexed_flagged": _share(top1[known] < t),
            }
        )
    return out


def strangers_vs_null(searcher, queries: list[LabelledFace], resolution_match: bool = True) -> dict:
    """Whether wild strangers' nearest distances follow the index's own null (each training face's
    nearest other-identity distance), which the calibrated false-match rate assumes: medians and
    the two-sample Kolmogorov-Smirnov p-value."""
    from scipy.stats import ks_2samp

    wild = [q for q in queries if q.face.ok and q.group == "unindexed_person"]
    prepared = searcher.prepare([(q.name, q.face) for q in wild], resolution_match=resolution_match)
    top1 = searcher.semantic_search(np.stack([p.descriptor for p in prepared]), 1)[0][:, 0]
    null = np.asarray(searcher.index.calibration["sem_diff_id"], np.float64)
    null = null[np.isfinite(null)]
    return {
        "strangers": len(top1),
        "strangers_median": float(np.median(top1)),
        "null_median": float(np.median(null)),
        "ks_p": float(ks_2samp(top1, null).pvalue),
    }


def format_tradeoff(rows: list[dict]) -> str:
    lines = ["| `false_match_rate` | threshold | strangers flagged | indexed people flagged |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['false_match_rate']:g} | {r['threshold']:.3f} | {_pct(r['strangers_flagged'])} | "
            f"{_pct(r['indexed_flagged'])} |"
        )
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def format_table(rows: list[dict]) -> str:
    """The rows as the Markdown table recorded in the README."""
    r0 = rows[0]
    head = (
        "| levers | top-1 identity | top-5 identity | same-photo top-1 | indexed people flagged | "
        "strangers flagged (wild unindexed + celeba_test) | threshold |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['levers']} | {r['top1_identity']:.3f} | {r['top5_identity']:.3f} | "
            f"{r['same_photo_top1']:.3f} | {_pct(r['indexed_flagged'])} | "
            f"{_pct(r['strangers_flagged'])} ({r['strangers_flagged_count']}: {_pct(r['wild_unindexed_flagged'])} + "
            f"{_pct(r['celeba_test_flagged'])}) | {r['threshold']:.3f} |"
        )
    f, p = r0["faces"], r0["photos"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines.append("")
    lines.append(
        f"Faces found: indexed_person {f['indexed_person']}/{p['indexed_person']}, unindexed_person "
        f"{f['unindexed_person']}/{p['unindexed_person']}, celeba_test {f['stranger']}/{p['stranger']}, "
        f"same photo {f['same_photo']}/{p['same_photo']}; load average {load}."
    )
    return "\n".join(lines)
