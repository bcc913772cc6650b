"""The index directory: written atomically, loaded with verification.

Layout of an index directory::

    manifest.json     format version, model sha256s, dataset, pipeline parameters, counts,
                      build time, library versions, and size + sha256 of every other file
    rows.jsonl        one line per input file: file, identity, split, status, reason,
                      faces_found, box, face (row in the face arrays, or null)
    descriptors.npy   float32 (F, 128)   dlib ResNet descriptors of the F ``ok`` faces
    semantic.faiss    faiss.IndexFlatL2 over descriptors (exact)
    pixels.npy        uint8 (F, 64·64·3) pixel-channel crops (memory-mapped on load)
    calibration.npz   per-face nearest distances used by the service statistics

A build writes everything into ``<out>.tmp-<pid>`` and renames it into place, so a crash never
leaves a directory that loads as an index (a directory without a verified manifest never loads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import faces, pixels

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("rows.jsonl", "descriptors.npy", "semantic.faiss", "pixels.npy", "calibration.npz")


class IndexLoadError(Exception):
    """The directory is not a usable index; the message says what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("dlib-bin", "face_recognition_models", "faiss-cpu", "faiss-gpu-cu12", "torch", "numpy", "Pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class FaceIndex:
    """A loaded, read-only index. Safe to share across threads (nothing here is mutated)."""

    root: Path
    manifest: dict
    rows: list[dict]
    face_rows: np.ndarray  # (F,) row number of each face
    descriptors: np.ndarray  # (F, 128) float32
    pixels: np.ndarray  # (F, D) uint8, memory-mapped
    semantic: object  # faiss index over descriptors
    calibration: dict[str, np.ndarray]

    @property
    def n_faces(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def dataset_root(self) -> Path:
        return Path(self.manifest["dataset"]["root"])

    def face_file(self, face: int) -> str:
        return self.rows[int(self.face_rows[face])]["file"]

    def face_identity(self, face: int) -> str | None:
        return self.rows[int(self.face_rows[face])]["identity"]

    def identity_codes(self) -> np.ndarray:
        """(F,) int identity code per face; −1 where unknown."""
        codes: dict[str, int] = {}
        out = np.full(self.n_faces, -1, np.int64)
        for i, r in enumerate(self.face_rows):
            ident = self.rows[int(r)]["identity"]
            if ident is not None:
                out[i] = codes.setdefault(ident, len(codes))
        return out


def write_index(out: Path, rows: list[dict], descriptors: np.ndarray, pixels: np.ndarray,
                calibration: dict[str, np.ndarray], manifest: dict, overwrite: bool = False) -> Path:
    """Write a complete index to ``out`` atomically (temp dir in the same parent, then rename)."""
    import faiss

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with open(tmp / "rows.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        np.save(tmp / "descriptors.npy", descriptors)
        index = faiss.IndexFlatL2(descriptors.shape[1] if descriptors.ndim == 2 else 128)
        if len(descriptors):
            index.add(descriptors)
        faiss.write_index(index, str(tmp / "semantic.faiss"))
        np.save(tmp / "pixels.npy", np.ascontiguousarray(pixels, dtype=np.uint8))
        np.savez(tmp / "calibration.npz", **calibration)
        files = {}
        for name in FILES:
            p = tmp / name
            files[name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        manifest = dict(manifest, format_version=FORMAT_VERSION, model_sha256=faces.model_hashes(),
                        pipeline_signature=_pipeline_signature(),
                        files=files, libraries=library_versions(),
                        written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        # The manifest goes last: a directory without it is never taken for an index.
        with open(tmp / (MANIFEST + ".part"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp / (MANIFEST + ".part"), tmp / MANIFEST)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote index %s (%d faces)", out, len(descriptors))
    return out


def _pipeline_signature() -> dict:
    return dict(faces.pipeline_signature(), pixel_size=pixels.PIXEL_SIZE)


def read_manifest(root: Path) -> dict:
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise IndexLoadError(f"{root} is not a facemem index (no {MANIFEST}); build one with "
                             f"`python -m indexer build`")
    try:
        return json.loads(mpath.read_text())
    except ValueError as e:
        raise IndexLoadError(f"{mpath} is corrupt: {e}") from None


def check_manifest(root: Path, manifest: dict, verify_hashes: bool = False) -> None:
    """Refuse an index from another format version, other model weights, or with damaged files."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexLoadError(f"{root}: index format version {version}, this facemem reads version "
                             f"{FORMAT_VERSION}; rebuild the index")
    want, have = manifest.get("model_sha256", {}), faces.model_hashes()
    for name, sha in have.items():
        if want.get(name) != sha:
            raise IndexLoadError(
                f"{root}: built with a different {name} model (sha256 {str(want.get(name))[:12]}…, "
                f"installed {sha[:12]}…); descriptors would not be comparable; rebuild the index")
    sig = manifest.get("pipeline_signature")
    if sig != _pipeline_signature():
        diff = sorted(k for k in _pipeline_signature() if (sig or {}).get(k) != _pipeline_signature()[k])
        raise IndexLoadError(f"{root}: built with other face-pipeline settings ({', '.join(diff)}); its "
                             f"descriptors would not match today's queries; rebuild the index")
    for name, meta in manifest.get("files", {}).items():
        p = Path(root) / name
        if not p.is_file() or p.stat().st_size != meta["bytes"]:
            raise IndexLoadError(f"{root}: {name} is missing or has the wrong size; rebuild the index")
        if verify_hashes and sha256_file(p) != meta["sha256"]:
            raise IndexLoadError(f"{root}: {name} fails its sha256 check; rebuild the index")
    if set(manifest.get("files", {})) != set(FILES):
        raise IndexLoadError(f"{root}: manifest lists {sorted(manifest.get('files', {}))}, expected {list(FILES)}")


def load_index(root: Path, verify_hashes: bool = False) -> FaceIndex:
    """Load and verify an index (sizes always; sha256 of every file with ``verify_hashes``)."""
    import faiss

    root = Path(root)
    manifest = read_manifest(root)
    check_manifest(root, manifest, verify_hashes)
    with open(root / "rows.jsonl") as f:
        rows = [json.loads(line) for line in f]
    face_rows = np.array([i for i, r in enumerate(rows) if r.get("face") is not None], dtype=np.int64)
    descriptors = np.load(root / "descriptors.npy")
    pixels = np.load(root / "pixels.npy", mmap_mode="r")
    semantic = faiss.read_index(str(root / "semantic.faiss"))
    with np.load(root / "calibration.npz") as z:
        calibration = {k: z[k] for k in z.files}
    if not (len(face_rows) == len(descriptors) == len(pixels) == semantic.ntotal):
        raise IndexLoadError(f"{root}: inconsistent face counts (rows {len(face_rows)}, descriptors "
                             f"{len(descriptors)}, pixels {len(pixels)}, faiss {semantic.ntotal})")
    return FaceIndex(root, manifest, rows, face_rows, descriptors, pixels, semantic, calibration)
