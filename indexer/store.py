"""The index directory: written atomically, loaded with verification.

Layout of an index directory::

    manifest.json     format version, model sha256s, dataset, pipeline parameters, counts,
                      build time, library versions, and size + sha256 of every other file
    rows.jsonl        one line per input file: file, identity, split, status, reason,
                      faces_found, box, size, source_px (chip source width; absent in
                      older indexes), face (row in the face arrays, or null)
    descriptors.npy   float32 (F, 128)   dlib ResNet descriptors of the F ``ok`` faces
    semantic.faiss    faiss.IndexFlatL2 over descriptors (exact)
    pixels.npy        uint8 (F, 64·64·3) pixel-channel crops (memory-mapped on load)
    calibration.npz   per-face nearest distances used by the service statistics
    geometry.npy      optional: float32 (F, 7) pose/expression/framing of each face (indexer.geometry)
    attributes.npz    optional: attribute probes, their held-out measurements, per-face probabilities
                      and labels (indexer.attributes)
    semantic_ivf.faiss  optional: an IVF index over the descriptors (indexer.ivf), for approximate
                      search above a configurable size

An index may instead be sharded (``"layout": "sharded"`` in the manifest): row ranges with their
own rows, descriptors and pixels, memory-mapped, described in :mod:`indexer.shards`. Indexes
without a ``layout`` key are monolithic, as every index written before shards existed.

The optional files (in either layout) are absent in indexes written before they existed; such an
index loads as before.

A build writes everything into ``.<out>.tmp-<pid>`` beside ``<out>`` and swaps it into place with
one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where the filesystem lacks it), so ``<out>``
is always a complete index, the old one or the new one; a crash or a full disk leaves the old one
intact. (A process that is loading while the swap happens can still read files of both; the
service loads once, at start-up.)
Debris of a killed build (``.<out>.tmp-<pid>`` that no live writer holds locked) is removed by the
next write.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import faces, files
from .files import (
    EXTRA_FILES,
    FILES,
    FORMAT_VERSION,
    IVF_FILE,
    MANIFEST,
    OPTIONAL_FILES,
    pipeline_signature,
    sha256_file,
)
from .files import IndexWriteError as IndexWriteError  # re-exported: callers catch it as store.IndexWriteError
from .files import remove_debris as remove_debris  # re-exported: part of what store offers for index directories
from .pixels import PIXEL_DIM
from .shards import FileLookup, blocks_of, expected_files, load_sharded

log = logging.getLogger(__name__)


class IndexLoadError(Exception):
    """The directory is not a usable index; the message says what to do."""


@dataclass
class FaceIndex:
    """A loaded, read-only index. Safe to share across threads (nothing here is mutated).

    The same API for both layouts. A monolithic index holds ``rows`` as a list and
    ``descriptors`` in memory; a sharded one (:mod:`indexer.shards`) holds rows parsed on access
    and both arrays as :class:`~indexer.shards.ShardedArray` views over memory-mapped shards.
    """

    root: Path
    manifest: dict
    rows: Sequence[dict]
    face_rows: np.ndarray  # (F,) row number of each face
    descriptors: np.ndarray  # (F, 128) float32 (ShardedArray for a sharded index)
    pixels: np.ndarray  # (F, D) uint8, memory-mapped (ShardedArray for a sharded index)
    semantic: object  # faiss IndexFlatL2 over descriptors; None for a sharded index
    calibration: dict[str, np.ndarray]
    geometry: np.ndarray | None = None  # (F, G) float32, or None (optional file absent)
    attributes: dict[str, np.ndarray] | None = None  # attributes.npz arrays, or None
    ivf_path: Path | None = None  # semantic_ivf.faiss when the index has one

    @property
    def n_faces(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def dataset_root(self) -> Path:
        return Path(self.manifest["dataset"]["root"])

    @property
    def sharded(self) -> bool:
        return self.manifest.get("layout") == "sharded"

    def descriptor_blocks(self) -> list[np.ndarray]:
        """Descriptors as row blocks (one per shard; the whole array for a monolithic index)."""
        return blocks_of(self.descriptors)

    def pixel_blocks(self) -> list[np.ndarray]:
        return blocks_of(self.pixels)

    def face_file(self, face: int) -> str:
        return self.rows[int(self.face_rows[face])]["file"]

    @property
    def descriptor_precision(self) -> str:
        """The network arithmetic the rows were described with (``fp32`` for indexes that predate
        the option, and for dlib's embedder); queries use the same, so rows and queries match."""
        return str(self.manifest.get("pipeline", {}).get("descriptor_precision", "fp32"))

    @property
    def flip_average(self) -> bool:
        """Whether the descriptors are flip-averaged (``faces.describe``); queries must match.
        Indexes written before the option existed have no key: plain descriptors."""
        return bool(self.manifest.get("pipeline", {}).get("flip_average", False))

    @property
    def face_resolution(self) -> float | None:
        """Median source width of the indexed chips in image pixels (``faces.Face.source_px``), the
        resolution queries are matched to; None for indexes written before it was recorded."""
        res = self.manifest.get("pipeline", {}).get("face_resolution")
        px = res.get("median_px") if isinstance(res, dict) else None
        return float(px) if isinstance(px, (int, float)) and px > 0 else None

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

    def face_files(self):
        """A set-like view of the faces' file names (``file in index.face_files()``)."""
        if not self.sharded:
            return {self.face_file(i): i for i in range(self.n_faces)}
        return FileLookup(self)


def write_index(
    out: Path,
    rows: list[dict],
    descriptors: np.ndarray,
    pixels: np.ndarray,
    calibration: dict[str, np.ndarray],
    manifest: dict,
    overwrite: bool = False,
    extras: dict | None = None,
    ivf: object | None = None,
) -> Path:
    """Write a complete monolithic index to ``out`` atomically (see :func:`indexer.files.atomic_write`).

    ``extras``: the optional per-face files (:func:`indexer.files.write_extras`). ``ivf``: an optional FAISS
    index over the descriptors (:mod:`indexer.ivf`), stored as ``semantic_ivf.faiss``.
    """

    def fill(tmp: Path) -> None:
        _write_files(tmp, rows, descriptors, pixels, calibration, manifest, extras or {}, ivf)

    files.atomic_write(Path(out), fill, overwrite)
    log.info("wrote index %s (%d faces)", out, len(descriptors))
    return Path(out)


def _write_files(
    tmp: Path,
    rows: list[dict],
    descriptors: np.ndarray,
    pixels: np.ndarray,
    calibration: dict[str, np.ndarray],
    manifest: dict,
    extras: dict,
    ivf: object | None = None,
) -> None:
    import faiss

    with open(tmp / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    files.save_npy(tmp / "descriptors.npy", descriptors)
    index = faiss.IndexFlatL2(descriptors.shape[1] if descriptors.ndim == 2 else 128)
    if len(descriptors):
        index.add(descriptors)
    files.save_faiss(tmp / "semantic.faiss", index)
    files.save_npy(tmp / "pixels.npy", np.ascontiguousarray(pixels, dtype=np.uint8))
    files.save_npz(tmp / "calibration.npz", calibration)
    files.write_extras(tmp, extras)
    names = [*FILES, *(n for n in EXTRA_FILES if n in extras)]
    if ivf is not None:
        files.save_faiss(tmp / IVF_FILE, ivf)
        names.append(IVF_FILE)
    files.finish_index_dir(tmp, manifest, names)


def read_manifest(root: Path) -> dict:
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise IndexLoadError(f"{root} is not a facemem index (no {MANIFEST}); build one with `python -m indexer build`")
    try:
        m = json.loads(mpath.read_text())
    except (ValueError, OSError) as e:
        raise IndexLoadError(f"{mpath} is corrupt or unreadable ({e}); rebuild the index") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(m.get("dataset"), dict):
        raise IndexLoadError(
            f"{mpath} is not a valid manifest (edited or damaged: expected an object with "
            f"'files' and 'dataset'); rebuild the index"
        )
    return m


def check_manifest(root: Path, manifest: dict, verify_hashes: bool = False) -> None:
    """Refuse an index from another format version, other model weights, or with damaged files."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexLoadError(
            f"{root}: index format version {version}, this facemem reads version {FORMAT_VERSION}; rebuild the index"
        )
    listed = manifest.get("files")
    if manifest.get("layout", "monolithic") == "sharded":
        expected = expected_files(manifest)
    else:
        expected = set(FILES) if manifest.get("layout", "monolithic") == "monolithic" else None
    if (
        expected is None
        or not isinstance(listed, dict)
        or set(listed) - set(OPTIONAL_FILES) != expected
        or not all(
            isinstance(m, dict) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha256"), str)
            for m in listed.values()
        )
    ):
        raise IndexLoadError(
            f"{root}: the manifest's file list is damaged (expected {_describe(expected)} with size "
            f"and sha256 each); rebuild the index"
        )
    for key in ("model_sha256", "pipeline_signature"):
        if not isinstance(manifest.get(key), dict):
            raise IndexLoadError(f"{root}: the manifest's {key} is missing or damaged; rebuild the index")
    want, have = manifest.get("model_sha256", {}), faces.model_hashes()
    for name, sha in have.items():
        if want.get(name) != sha:
            raise IndexLoadError(
                f"{root}: built with a different {name} model (sha256 {str(want.get(name))[:12]}…, "
                f"installed {sha[:12]}…); descriptors would not be comparable; rebuild the index"
            )
    sig = manifest.get("pipeline_signature")
    if sig != pipeline_signature():
        diff = sorted(k for k in pipeline_signature() if (sig or {}).get(k) != pipeline_signature()[k])
        raise IndexLoadError(
            f"{root}: built with other face-pipeline settings ({', '.join(diff)}); its "
            f"descriptors would not match today's queries; rebuild the index"
        )
    for name, meta in manifest.get("files", {}).items():
        p = Path(root) / name
        if not p.is_file() or p.stat().st_size != meta["bytes"]:
            raise IndexLoadError(f"{root}: {name} is missing or has the wrong size; rebuild the index")
        if verify_hashes and sha256_file(p) != meta["sha256"]:
            raise IndexLoadError(f"{root}: {name} fails its sha256 check; rebuild the index")


def _describe(expected: set[str] | None) -> str:
    if expected is None:
        return "a known layout and its shard list"
    return str([n for n in FILES if n in expected]) if expected == set(FILES) else "every shard's files"


def load_index(root: Path, verify_hashes: bool = False) -> FaceIndex:
    """Load and verify an index (sizes always; sha256 of every file with ``verify_hashes``).

    Either layout: monolithic (:data:`FILES`) or sharded (:mod:`indexer.shards`, memory-mapped).
    """
    import faiss

    root = Path(root)
    manifest = read_manifest(root)
    check_manifest(root, manifest, verify_hashes)
    ivf_path = root / IVF_FILE if IVF_FILE in manifest["files"] else None
    name = "calibration.npz"
    try:  # sizes matched; a file can still be damaged inside (edited, or --verify skipped)
        if manifest.get("layout") == "sharded":
            with np.load(root / name) as z:
                calibration = {k: z[k] for k in z.files}
            name = "a shard"
            rows, face_rows, descriptors, pixels = load_sharded(root, manifest)
            if not (len(face_rows) == len(descriptors) == len(pixels) == manifest.get("faces")):
                raise ValueError(f"inconsistent face counts (manifest {manifest.get('faces')}, shards {len(pixels)})")
            geometry, attributes = _load_extras(root, manifest, len(face_rows))
            return FaceIndex(
                root, manifest, rows, face_rows, descriptors, pixels, None, calibration, geometry, attributes, ivf_path
            )
        name = "rows.jsonl"
        with open(root / name) as f:
            rows = [json.loads(line) for line in f]
        face_rows = np.array([i for i, r in enumerate(rows) if r.get("face") is not None], dtype=np.int64)
        name = "descriptors.npy"
        descriptors = np.load(root / name)
        name = "pixels.npy"
        pixels = np.load(root / name, mmap_mode="r")
        name = "semantic.faiss"
        semantic = faiss.read_index(str(root / name))
        name = "calibration.npz"
        with np.load(root / name) as z:
            calibration = {k: z[k] for k in z.files}
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RuntimeError,
        OSError,
        EOFError,
        MemoryError,
        zipfile.BadZipFile,
    ) as e:  # MemoryError: a damaged header that asks for a huge array
        raise IndexLoadError(
            f"{root}: {name} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            f"rebuild the index"
        ) from None
    # Right sizes and counts can still hold arrays of the wrong kind; search would fail on them later.
    for name, arr, dtype, width in (
        ("descriptors.npy", descriptors, np.float32, 128),
        ("pixels.npy", pixels, np.uint8, PIXEL_DIM),
    ):
        if arr.dtype != dtype or arr.ndim != 2 or arr.shape[1] != width:
            raise IndexLoadError(
                f"{root}: {name} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} "
                f"(N, {width}); rebuild the index"
            )
    if getattr(semantic, "d", None) != descriptors.shape[1]:
        raise IndexLoadError(
            f"{root}: semantic.faiss is damaged (dimension {getattr(semantic, 'd', None)}, "
            f"expected {descriptors.shape[1]}); rebuild the index"
        )
    if not (len(face_rows) == len(descriptors) == len(pixels) == semantic.ntotal):
        raise IndexLoadError(
            f"{root}: inconsistent face counts (rows {len(face_rows)}, descriptors "
            f"{len(descriptors)}, pixels {len(pixels)}, faiss {semantic.ntotal})"
        )
    geometry, attributes = _load_extras(root, manifest, len(face_rows))
    return FaceIndex(
        root, manifest, rows, face_rows, descriptors, pixels, semantic, calibration, geometry, attributes, ivf_path
    )


def _load_extras(root: Path, manifest: dict, n_faces: int) -> tuple[np.ndarray | None, dict | None]:
    """geometry.npy and attributes.npz, checked (None where the index has no such file)."""
    geometry = attributes = None
    name = "geometry.npy"
    try:
        if name in manifest["files"]:
            geometry = np.load(root / name)
        name = "attributes.npz"
        if name in manifest["files"]:
            with np.load(root / name) as z:
                attributes = {k: z[k] for k in z.files}
    except (ValueError, TypeError, KeyError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as e:
        raise IndexLoadError(
            f"{root}: {name} is damaged ({type(e).__name__}: {str(e)[:200]}); rebuild the index"
        ) from None
    if geometry is not None and (geometry.dtype != np.float32 or geometry.ndim != 2 or len(geometry) != n_faces):
        raise IndexLoadError(
            f"{root}: geometry.npy holds {geometry.dtype} {geometry.shape}, expected float32 "
            f"({n_faces}, G); rebuild the index"
        )
    if attributes is not None:
        _check_attributes(root, attributes, n_faces)
    return geometry, attributes


def _check_attributes(root: Path, z: dict[str, np.ndarray], n_faces: int) -> None:
    """attributes.npz must hold consistent probe arrays (an edited file is refused, not used)."""
    need = ("names", "mean", "scale", "weights", "bias", "platt", "threshold", "metrics", "face_p", "labels")
    missing = [k for k in (*need, "labelled") if k not in z]
    a = len(z["names"]) if "names" in z else -1
    d = len(z["mean"]) if "mean" in z else -1
    ok = not missing and (
        z["scale"].shape == (d,)
        and z["weights"].shape == (d, a)
        and z["bias"].shape == (a,)
        and z["platt"].shape == (a, 2)
        and z["threshold"].shape == (a,)
        and z["face_p"].shape == (n_faces, a)
        and z["labels"].shape == (n_faces, a)
        and z["labelled"].shape == (n_faces,)
    )
    if not ok:
        raise IndexLoadError(
            f"{root}: attributes.npz is damaged (missing {missing} or inconsistent shapes); rebuild the index"
        )
