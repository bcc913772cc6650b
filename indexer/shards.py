"""Sharded indexes: an index cut into row ranges, each shard with its own rows, descriptors and pixels.

Why: an index of millions of faces does not fit in memory as one array (2M pixel crops are
24.6 GB), and one huge file is awkward to write, copy and resume. A sharded index keeps every
shard's arrays memory-mapped, and searches run per shard and merge their top-k
(:class:`ShardedL1`, :func:`merge_topk`), so results equal those of one monolithic index,
ties included (order is (distance, global id)).

Layout (``manifest["layout"] == "sharded"``; the monolithic layout of :mod:`indexer.store` is
unchanged and still the default)::

    manifest.json                    as for a monolithic index, plus "layout", "shard_size" and
                                     "shards": [{"name", "rows": [lo, hi], "faces": [lo, hi]}]
    calibration.npz                  over the whole index
    semantic_ivf.faiss               optional: IVF over all descriptors (indexer.ivf)
    shard-NNNNNN/rows.jsonl          rows lo..hi-1 (global "row" and "face" numbers)
    shard-NNNNNN/descriptors.npy     float32 (faces in the shard, 128)
    shard-NNNNNN/pixels.npy          uint8 (faces in the shard, 12288)
    shard-NNNNNN/face_rows.npy       int64 global row of each face of the shard

A shard covers ``shard_size`` consecutive rows (images), whatever their status, so the cut is
a fixed function of the dataset order.
"""

from __future__ import annotations

import bisect
import json
import logging
import mmap
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import files
from .pixels import PIXEL_DIM
from .topk import merge_topk

log = logging.getLogger(__name__)

SHARD_FILES = ("rows.jsonl", "descriptors.npy", "pixels.npy", "face_rows.npy")
TOP_FILES = ("calibration.npz",)


def shard_name(i: int) -> str:
    return f"shard-{i:06d}"


# ----------------------------------------------------------------------------- arrays


class ShardedArray:
    """Read-only row concatenation of 2-D blocks (memory maps), without copying them.

    Supports what index consumers do with ``FaceIndex.descriptors`` / ``.pixels``: ``shape``,
    ``dtype``, ``len``, ``nbytes``, row indexing by int, slice, index array or boolean mask (a
    copy of just those rows), ``arr[rows, cols]`` and ``np.asarray(arr)`` (a full copy: only
    for small indexes).
    """

    def __init__(self, blocks: Sequence[np.ndarray]):
        if not blocks:
            raise ValueError("a ShardedArray needs at least one block")
        tail = blocks[0].shape[1:]
        if any(b.shape[1:] != tail or b.dtype != blocks[0].dtype for b in blocks):
            raise ValueError("blocks differ in width or dtype")
        self.blocks = list(blocks)
        self.starts = np.cumsum([0] + [len(b) for b in self.blocks]).astype(np.int64)
        self.dtype = blocks[0].dtype
        self.shape = (int(self.starts[-1]), *tail)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.blocks))

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(self)
        if ids.size and (ids.min() < -n or ids.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        ids = np.where(ids < 0, ids + n, ids)
        out = np.empty((ids.size, *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.starts, ids, side="right") - 1
        for b in np.unique(which):
            sel = np.flatnonzero(which == b)
            local = ids[sel] - self.starts[b]
            if local.size > 1 and np.all(np.diff(local) == 1):  # a run: one slice, no fancy indexing
                out[sel] = self.blocks[b][local[0] : local[-1] + 1]
            else:
                out[sel] = self.blocks[b][local]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            got = self[head]
            return got[(slice(None), *rest)] if np.ndim(got) == len(self.shape) else got[rest]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            b = bisect.bisect_right(self.starts, i) - 1
            return self.blocks[b][i - self.starts[b]]
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                return self._rows(np.arange(lo, hi, step))
            parts = []
            for b, blk in enumerate(self.blocks):
                s, e = int(self.starts[b]), int(self.starts[b + 1])
                if e > lo and s < hi:
                    parts.append(np.asarray(blk[max(lo, s) - s : min(hi, e) - s]))
            if not parts:
                return np.empty((0, *self.shape[1:]), self.dtype)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise IndexError("boolean index must have one entry per row")
            arr = np.flatnonzero(arr)
        if arr.ndim == 0:
            return self[int(arr)]
        return self._rows(arr).reshape((*arr.shape, *self.shape[1:]))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __iter__(self) -> Iterator[np.ndarray]:
        for blk in self.blocks:
            yield from blk


def blocks_of(arr) -> list[np.ndarray]:
    """The row blocks of an index array: a ShardedArray's shards, or the array itself."""
    return list(arr.blocks) if isinstance(arr, ShardedArray) else [arr]


class LazyRows(Sequence):
    """``rows.jsonl`` of every shard as a read-only sequence of dicts, parsed on access.

    Why: two million parsed row dicts take gigabytes and ~10 s to load; a search touches only
    the k rows it returns. Line offsets (8 bytes per row) are found once with numpy.
    """

    def __init__(self, paths: Sequence[Path]):
        self._maps, self._offsets = [], []
        for p in paths:
            with open(p, "rb") as f:
                size = f.seek(0, 2)
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            ends = np.flatnonzero(np.frombuffer(mm, np.uint8) == 10) if size else np.zeros(0, np.int64)
            self._maps.append(mm)
            self._offsets.append(np.concatenate([[0], ends + 1]).astype(np.int64))
        self._starts = np.cumsum([0] + [len(o) - 1 for o in self._offsets]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _line(self, b: int, j: int) -> dict:
        o = self._offsets[b]
        return json.loads(self._maps[b][o[j] : o[j + 1]])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        b = bisect.bisect_right(self._starts, i) - 1
        return self._line(b, i - int(self._starts[b]))

    def __iter__(self) -> Iterator[dict]:
        for b, o in enumerate(self._offsets):
            for j in range(len(o) - 1):
                yield self._line(b, j)


# ----------------------------------------------------------------------------- search over shards


class ShardedL1:
    """The exact L1 cascade of :class:`indexer.l1.L1Index` run per shard, results merged.

    Each shard's bound tables are built from its memory-mapped crops (2,120 bytes per row for
    64x64x3 crops, in RAM); the crops themselves stay on disk and only candidates are read.
    """

    def __init__(self, blocks: Sequence[np.ndarray], use_gpu: bool = False):
        from .l1 import L1Index

        self.starts = np.cumsum([0] + [len(b) for b in blocks]).astype(np.int64)
        self.shards = [L1Index(b, use_gpu=use_gpu) for b in blocks]
        self.ntotal = int(self.starts[-1])
        self.last_stats: dict[str, float] = {}

    @property
    def nbytes(self) -> int:
        return int(sum(s.nbytes for s in self.shards))

    def search(self, queries: np.ndarray, k: int, exclude_self: np.ndarray | None = None):
        """Same contract as :meth:`L1Index.search`, over global row ids."""
        nq = len(queries)
        ex = np.full(nq, -1, np.int64) if exclude_self is None else np.asarray(exclude_self, np.int64)
        best_d = np.full((nq, k), -1, np.int64)
        best_i = np.full((nq, k), -1, np.int64)
        stats = []
        for s, shard in zip(self.starts, self.shards):
            if shard.ntotal == 0:
                continue
            local_ex = np.where((ex >= s) & (ex < s + shard.ntotal), ex - s, -1)
            # the k-th distance found so far bounds this shard's search: it prunes far more
            bound = np.where(best_i[:, -1] >= 0, best_d[:, -1], np.inf)
            d, i = shard.search(queries, k, exclude_self=local_ex, bound=bound)
            best_d, best_i = merge_topk([best_d, d], [best_i, np.where(i >= 0, i + s, -1)], k, pad=-1)
            stats.append(shard.last_stats)
        if stats and stats[0]:
            self.last_stats = {key: float(sum(st.get(key, 0.0) for st in stats)) for key in stats[0]}
        return best_d, best_i


# ----------------------------------------------------------------------------- writing


class _FaceStream:
    """Pulls faces (descriptor, pixel) in order from an iterator of (desc block, pix block)."""

    def __init__(self, pieces: Iterable[tuple[np.ndarray, np.ndarray]]):
        self._it = iter(pieces)
        self._rest: tuple[np.ndarray, np.ndarray] | None = None

    def take(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The next ``n`` faces, in the pieces they came in (a piece is split where ``n`` ends)."""
        while n > 0:
            if self._rest is not None:
                d, p = self._rest
                self._rest = None
            else:
                try:
                    d, p = next(self._it)
                except StopIteration:
                    raise ValueError(f"the face stream ended {n} faces early") from None
            if len(d) > n:
                self._rest = (d[n:], p[n:])
                d, p = d[:n], p[:n]
            n -= len(d)
            if len(d):
                yield np.asarray(d, np.float32), np.asarray(p, np.uint8)

    def exhausted(self) -> bool:
        if self._rest is not None and len(self._rest[0]):
            return False
        return all(len(d) == 0 for d, _ in self._it)


class _NpyWriter:
    """Writes an ``.npy`` of a known shape piece by piece (the same bytes as ``np.save``)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.f = open(path, "wb")
        self.left = shape[0]
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.dtype = np.dtype(dtype)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, self.dtype)
        self.left -= len(arr)
        self.f.write(memoryview(arr.reshape(-1).view(np.uint8)))

    def close(self) -> None:
        self.f.close()
        if self.left != 0:
            raise ValueError(f"{self.f.name}: {self.left} rows missing")


def write_shards(
    tmp: Path,
    rows: Iterable[dict],
    pieces: Iterable[tuple[np.ndarray, np.ndarray]],
    shard_size: int,
    pixel_dim: int,
) -> list[dict]:
    """Write the shard directories into ``tmp`` (an index directory being built) and return the
    manifest's shard list. ``rows`` in order with their global ``face`` numbers; ``pieces`` the
    faces' descriptors and pixels in face order, in blocks of any size. Memory: one shard's rows
    and one piece."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    faces = _FaceStream(pieces)
    shards: list[dict] = []
    row_it = iter(rows)
    r0 = f0 = 0
    while True:
        batch = []
        for r in row_it:
            batch.append(r)
            if len(batch) == shard_size:
                break
        if not batch and shards:
            break
        name = shard_name(len(shards))
        d = tmp / name
        d.mkdir()
        face_rows = np.array([r["row"] for r in batch if r.get("face") is not None], np.int64)
        with open(d / "rows.jsonl", "w") as f:
            for r in batch:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        files.save_npy(d / "face_rows.npy", face_rows)
        wd = _NpyWriter(d / "descriptors.npy", (len(face_rows), 128), np.float32)
        wp = _NpyWriter(d / "pixels.npy", (len(face_rows), pixel_dim), np.uint8)
        try:
            for desc, pix in faces.take(len(face_rows)):
                wd.write(desc)
                wp.write(pix)
        finally:
            wd.close()
            wp.close()
        shards.append({"name": name, "rows": [r0, r0 + len(batch)], "faces": [f0, f0 + len(face_rows)]})
        r0 += len(batch)
        f0 += len(face_rows)
        log.info("wrote %s: rows %d-%d, %d faces", name, shards[-1]["rows"][0], r0 - 1, len(face_rows))
        if len(batch) < shard_size:
            break
    if not faces.exhausted():
        raise ValueError("more faces than ok rows")
    return shards


def shard_file_names(shards: list[dict]) -> list[str]:
    return [f"{s['name']}/{f}" for s in shards for f in SHARD_FILES]


def write_sharded_index(
    out: Path,
    rows: Iterable[dict],
    pieces: Iterable[tuple[np.ndarray, np.ndarray]],
    shard_size: int,
    calibration: dict[str, np.ndarray] | Callable[[ShardedArray, ShardedArray], dict[str, np.ndarray]],
    manifest: dict,
    overwrite: bool = False,
    ivf: Callable[[ShardedArray], object] | None = None,
    extras: dict | Callable[[ShardedArray], dict] | None = None,
) -> Path:
    """Write a sharded index at ``out`` atomically (the same temp directory, locks, swap and
    disk-full handling as :func:`indexer.store.write_index`).

    ``calibration`` is the finished arrays, or a function of the written (memory-mapped)
    descriptors and pixels, so a build computes it without holding all pixels in memory.
    ``ivf``: optional function of the descriptors returning a FAISS index to store. ``extras``: the
    optional per-face files (:func:`indexer.files.write_extras`), or a function of the descriptors
    giving them; written at the top level, as in a monolithic index.
    """

    def fill(tmp: Path) -> None:
        shards = write_shards(tmp, rows, pieces, shard_size, PIXEL_DIM)
        desc = ShardedArray([np.load(tmp / s["name"] / "descriptors.npy", mmap_mode="r") for s in shards])
        pix = ShardedArray([np.load(tmp / s["name"] / "pixels.npy", mmap_mode="r") for s in shards])
        calib = calibration(desc, pix) if callable(calibration) else calibration
        files.save_npz(tmp / "calibration.npz", calib)
        ex = (extras(desc) if callable(extras) else extras) or {}
        files.write_extras(tmp, ex)
        names = [*TOP_FILES, *(n for n in files.EXTRA_FILES if n in ex), *shard_file_names(shards)]
        if ivf is not None and len(desc):
            files.save_faiss(tmp / files.IVF_FILE, ivf(desc))
            names.append(files.IVF_FILE)
        n_faces = len(desc)
        m = dict(manifest, layout="sharded", shard_size=int(shard_size), shards=shards, faces=n_faces)
        files.finish_index_dir(tmp, m, names)

    return files.atomic_write(Path(out), fill, overwrite)


# ----------------------------------------------------------------------------- loading


def expected_files(manifest: dict) -> set[str] | None:
    """The data files a sharded manifest must list (None: the shard list itself is damaged)."""
    shards = manifest.get("shards")
    if (
        not isinstance(shards, list)
        or not shards
        or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"].startswith("shard-") for s in shards
        )
    ):
        return None
    return {*TOP_FILES, *shard_file_names(shards)}


def load_sharded(root: Path, manifest: dict):
    """The arrays and rows of a checked sharded index (see :func:`indexer.store.load_index`)."""
    shards = manifest["shards"]
    descs, pixs, face_rows = [], [], []
    name = "?"
    for s in shards:
        d = root / s["name"]
        name = f"{s['name']}/descriptors.npy"
        descs.append(np.load(root / name, mmap_mode="r"))
        name = f"{s['name']}/pixels.npy"
        pixs.append(np.load(root / name, mmap_mode="r"))
        name = f"{s['name']}/face_rows.npy"
        face_rows.append(np.load(d / "face_rows.npy"))
        want = s["faces"][1] - s["faces"][0]
        for nm, arr, dtype, width in (
            ("descriptors.npy", descs[-1], np.float32, 128),
            ("pixels.npy", pixs[-1], np.uint8, PIXEL_DIM),
        ):
            if arr.dtype != dtype or arr.ndim != 2 or arr.shape[1] != width or len(arr) != want:
                raise ValueError(
                    f"{s['name']}/{nm} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} ({want}, {width})"
                )
        if face_rows[-1].dtype != np.int64 or face_rows[-1].shape != (want,):
            raise ValueError(f"{s['name']}/face_rows.npy holds {face_rows[-1].dtype} {face_rows[-1].shape}")
    name = "rows.jsonl"
    rows = LazyRows([root / s["name"] / "rows.jsonl" for s in shards])
    if len(rows) != shards[-1]["rows"][1]:
        raise ValueError(f"the shards' rows.jsonl hold {len(rows)} rows, the manifest {shards[-1]['rows'][1]}")
    return rows, np.concatenate(face_rows), ShardedArray(descs), ShardedArray(pixs)


class FileLookup:
    """``file in lookup``: whether ``file`` is a face of the index, for any index size.

    Why: a dict of two million file names costs hundreds of MB; 8-byte hashes, sorted, cost 16 MB,
    and a hit is confirmed against the row itself. Built on first use.
    """

    def __init__(self, index):
        self._index = index
        self._hashes: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _hash(name: str) -> int:
        import hashlib

        return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")

    def _build(self) -> None:
        with self._lock:
            if self._hashes is None:
                idx = self._index
                h = np.fromiter(
                    (self._hash(idx.face_file(f)) for f in range(idx.n_faces)), dtype=np.uint64, count=idx.n_faces
                )
                self._order = np.argsort(h, kind="stable")
                self._hashes = h[self._order]

    def face_of(self, file: str) -> int | None:
        """The face number of ``file``, or None."""
        if self._hashes is None:
            self._build()
        h = np.uint64(self._hash(file))
        lo = int(np.searchsorted(self._hashes, h, side="left"))
        while lo < len(self._hashes) and self._hashes[lo] == h:
            f = int(self._order[lo])
            if self._index.face_file(f) == file:
                return f
            lo += 1
        return None

    def __contains__(self, file: object) -> bool:
        return isinstance(file, str) and self.face_of(file) is not None
