"""The processed ``--reference-real`` faces, kept between audits.

Why: the reference faces are detected, embedded and searched on every audit (117 of 188 s in the
demo's PGGAN audit), although nothing about them changes from one audit of a model to the next. The
service's answers for them are stored under a key of everything they depend on: each file's name,
size and content hash, the rendering (detector, downscale, upscale), the request parameters, and the
index (its manifest's write time, size and model hashes). Any change gives a new key; a damaged or
unreadable entry is ignored and rewritten.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .formats import json_safe

log = logging.getLogger(__name__)

FORMAT = "facemem-reference-cache/1"


def default_dir() -> Path:
    """``$FACEMEM_CACHE/references``, else ``$XDG_CACHE_HOME/facemem/references``, else ``~/.cache/...``."""
    root = os.environ.get("FACEMEM_CACHE")
    if root:
        return Path(root) / "references"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facemem" / "references"


def key(files: list[Path], rendering: dict[str, Any], params: dict[str, Any], index: dict[str, Any]) -> str:
    """The cache key of one reference pass (sha256 hex)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError:  # the pass reads it as empty and reports it unreadable: so does the key
            h.update(b"unreadable")
    identity = {
        "format": FORMAT,
        "rendering": rendering,
        "params": params,
        "index": {k: index.get(k) for k in ("written_at", "format_version", "model_sha256", "counts")},
    }
    h.update(json.dumps(json_safe(identity), sort_keys=True).encode())
    return h.hexdigest()


def load(directory: Path, name: str) -> list[dict] | None:
    """The stored answers, or None (missing, unreadable or of another format)."""
    path = directory / f"{name}.json.gz"
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("format") != FORMAT or not isinstance(stored.get("answers"), list):
            return None
        return stored["answers"]
    except (OSError, ValueError, EOFError) as e:
        log.warning("reference cache %s unreadable (%s): recomputing", path, e)
        return None


def save(directory: Path, name: str, answers: list[dict]) -> Path | None:
    """Store the answers atomically; a cache that cannot be written only costs the next audit time."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".partial-", suffix=".json.gz")
        with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "answers": json_safe(answers)}, f)
        path = directory / f"{name}.json.gz"
        os.replace(tmp, path)
        return path
    except OSError as e:
        log.warning("reference cache not written in %s: %s", directory, e)
        return None
