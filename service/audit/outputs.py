"""The audit's files, bounded whatever n is: per-image rows go to a CSV, the JSON and the HTML's
embedded block list per-image arrays only up to :data:`PER_IMAGE_LISTED` images.

Why: every per-image list grows linearly with n (at n = 2,000 the JSON was 9.8 MB and the HTML
12.5 MB; at the FID-standard 50,000 samples that would be ~250 MB and ~300 MB, more than a browser
opens comfortably). The statistics are computed over every image either way; only what is *listed*
is capped. The in-memory ``AuditResult.data`` keeps everything (a notebook can still read every
entry); :func:`bounded` is the view that is written, with a ``per_image`` block that says how many
images there are, how many are listed, and where the CSV with one row for each of them is.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

PER_IMAGE_LISTED = 1000  # images listed in the JSON / embedded block; the CSV has every one
CAPPED = (  # (section, key): per-image lists capped at PER_IMAGE_LISTED in the written JSON
    ("neighbors", "images"),
    ("histograms", "generated_semantic"),
    ("histograms", "generated_pixel"),
    ("grid", "no_face"),
)


def bounded(data: dict, csv_path: str | None = None, cap: int = PER_IMAGE_LISTED) -> dict:
    """``data`` with every per-image list cut to its first ``cap`` items (sample order) and a
    ``per_image`` block: ``images`` (all audited), ``listed`` (in this JSON), ``cap``, ``csv`` (the
    CSV's path relative to the file that holds this JSON, or None when none was written), ``columns``
    (the CSV's header). A shallow copy: ``data`` itself is not changed."""
    out = dict(data)
    rows = data.get("rows") or []
    images = len(rows) if "rows" in data else len((data.get("neighbors") or {}).get("images") or [])
    for section, key in CAPPED:
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), list) and len(block[key]) > cap:
            out[section] = {**out[section], key: block[key][:cap]}
    if "rows" in data:
        out["rows"] = rows[:cap]
    out["per_image"] = {
        "images": images,
        "listed": min(images, cap),
        "cap": cap,
        "csv": csv_path,
        "columns": list(rows[0]) if rows else [],
    }
    return out


def relative(target: str | Path | None, beside: str | Path) -> str | None:
    """``target`` relative to the folder of ``beside`` (how a report links the CSV next to it)."""
    if target is None:
        return None
    try:
        return Path(os.path.relpath(Path(target).resolve(), Path(beside).resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows): the absolute path
        return Path(target).resolve().as_posix()


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One line per row, streamed to a temporary file beside ``path`` and renamed into place (a
    half-written CSV never replaces a good one; no whole-file string in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path
