"""Nearest-neighbour search over a loaded index, in both channels.

Used by the HTTP service and by the in-process audit, so both give the same numbers. Either index
layout (monolithic or sharded, :mod:`indexer.shards`): searches run per block and merge their
top-k, so a sharded index answers exactly as a monolithic one.

* Semantic, exact (default up to ``exact_max_faces``): :class:`indexer.flat.ExactL2`, a matrix
  product with a proven float32 error bound and an exact float64 re-rank (FAISS's expanded
  ‖a‖²+‖b‖²−2ab form loses ~1e-3 near zero, which matters for copy detection).
* Semantic, approximate (above it, or ``semantic="ivf"``): the index's IVF (:mod:`indexer.ivf`),
  candidates re-ranked in float64; the response says so.
* Pixel, exact (up to ``pixel_exact_max_faces``): the L1 cascade of :mod:`indexer.l1` per shard,
  merged. Above it the bound tables (2,120 bytes per face, in RAM) are not built, and the pixel
  channel is exact L1 over the semantic top ``pixel_candidates`` instead (approximate: a pixel
  near-copy of a face that is not among them is missed); the response says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from indexer import attributes, calibrate, faces, ivf, pixels
from indexer.devices import resolve_device
from indexer.flat import ExactL2
from indexer.shards import ShardedL1
from indexer.store import FaceIndex
from indexer.topk import select_topk

from .detect import embedding_inputs

log = logging.getLogger(__name__)

RERANK_MARGIN = 16  # extra IVF candidates re-ranked exactly
EXACT_MAX_FACES = 1_000_000  # semantic="auto": exact search up to this many faces, IVF above
PIXEL_EXACT_MAX_FACES = 4_000_000  # exact L1 up to here (bound tables: 2,120 B/face, ~8.5 GB at 4M)
PIXEL_CANDIDATES = 1000  # above it: exact L1 over this many semantic neighbours
SEMANTIC_MODES = ("auto", "exact", "ivf")


@dataclass
class Query:
    """One query image after the face pipeline and embedding."""

    name: str
    face: faces.Face
    descriptor: np.ndarray | None = None  # (128,) float32
    pixel: np.ndarray | None = None  # (D,) uint8


class FaceField(Sequence):
    """``files[j]`` / ``identities[j]`` of face j, read from the index rows on access (a sharded
    index of millions keeps its rows on disk)."""

    def __init__(self, index: FaceIndex, key: str):
        self._index, self._key = index, key

    def __len__(self) -> int:
        return self._index.n_faces

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        return self._index.rows[int(self._index.face_rows[int(j)])][self._key]


class Searcher:
    """Read-only search over one index; thread-safe (nothing is mutated after construction)."""

    def __init__(
        self,
        index: FaceIndex,
        device: str = "auto",
        embedder: str = "torch",
        semantic: str = "auto",
        exact_max_faces: int = EXACT_MAX_FACES,
        ivf_nprobe: int = ivf.DEFAULT_NPROBE,
        pixel_exact_max_faces: int = PIXEL_EXACT_MAX_FACES,
        pixel_candidates: int = PIXEL_CANDIDATES,
    ):
        if semantic not in SEMANTIC_MODES:
            raise ValueError(f"semantic search must be one of {', '.join(SEMANTIC_MODES)}, got {semantic!r}")
        self.index = index
        self.device = resolve_device(device)
        index.calibration = calibrate.complete(
            index.calibration, index.descriptors, index.pixels, index.identity_codes(), self.device
        )
        # Queries are described with the index's arithmetic (fp32 for dlib-embedded or older indexes).
        self.precision = index.descriptor_precision if embedder == "torch" else "fp32"
        self.embedder = faces.make_embedder(embedder, self.device, self.precision)
        n = index.n_faces
        self.flat = ExactL2(index.descriptor_blocks(), device=self.device)
        self.ivf = None
        self.ivf_nprobe = int(ivf_nprobe)
        if semantic == "ivf" or (semantic == "auto" and n > exact_max_faces):
            self.ivf = self._load_ivf()
        self.ivf_nlist = ivf.describe(self.ivf)["nlist"] if self.ivf is not None else None
        if n <= pixel_exact_max_faces:
            self.l1: ShardedL1 | None = ShardedL1(index.pixel_blocks(), use_gpu=self.device == "cuda")
        else:
            self.l1 = None
            log.warning(
                "pixel channel: %d faces > pixel_exact_max_faces %d: exact L1 over the %d semantic "
                "neighbours of each query instead of over all faces",
                n,
                pixel_exact_max_faces,
                pixel_candidates,
            )
        self.pixel_candidates = int(pixel_candidates)
        self.files = FaceField(index, "file")
        self.identities = FaceField(index, "identity")
        self.probes = attributes.probes_of(index)  # None: the index has no attribute probes
        self._null_clusters: dict[str, np.ndarray] | None = None
        self.flip_average = index.flip_average  # queries are described as the index's rows are
        self.face_resolution = index.face_resolution  # None: an index without the record

    def _load_ivf(self):
        if self.index.ivf_path is not None:
            return ivf.load(self.index.ivf_path, device=self.device)
        log.warning(
            "the index has no IVF file (build with --ivf); training one in memory on a sample of "
            "%d faces, which takes a while for large indexes",
            self.index.n_faces,
        )
        if not self.index.n_faces:
            return None
        return ivf.to_device(ivf.build(self.index.descriptor_blocks()), self.device)

    @property
    def null_clusters(self) -> dict[str, np.ndarray]:
        """The clusters of the index's null samples (:func:`service.stats.training_side.null_clusters`),
        computed once: every request's memorization tests use them."""
        if self._null_clusters is None:
            from .stats.training_side import null_clusters

            self._null_clusters = null_clusters(self.index)
        return self._null_clusters

    def search_info(self, channels: Sequence[str] = ("semantic", "pixel")) -> dict:
        """How each channel searches: the ``search`` object of a response."""
        out: dict[str, dict] = {}
        shards = len(self.index.descriptor_blocks())
        if "semantic" in channels:
            if self.ivf is not None:
                out["semantic"] = {
                    "method": "ivf",
                    "exact": False,
                    "nlist": self.ivf_nlist,
                    "nprobe": self.ivf_nprobe,
                    "faces": self.index.n_faces,
                    "shards": shards,
                }
            else:
                out["semantic"] = {"method": "exact", "exact": True, "faces": self.index.n_faces, "shards": shards}
        if "pixel" in channels:
            if self.l1 is not None:
                out["pixel"] = {"method": "exact_l1", "exact": True, "faces": self.index.n_faces, "shards": shards}
            else:
                out["pixel"] = {
                    "method": "l1_over_semantic_candidates",
                    "exact": False,
                    "candidates": self.pixel_candidates,
                    "faces": self.index.n_faces,
                    "shards": shards,
                }
        return out

    def prepare(self, faces_: list[tuple[str, faces.Face]], resolution_match: bool = True) -> list[Query]:
        """Embed all ``ok`` faces in one batch (a batch of 64 pays one batched forward pass).

        Descriptors follow the index: flip-averaged when it is, and, with ``resolution_match`` on an
        index that records its faces' resolution, each chip much sharper than the indexed faces is
        degraded to their resolution first (:func:`indexer.faces.match_resolution`). The pixel
        vector always comes from the chip as cut.
        """
        queries = [Query(name, f) for name, f in faces_]
        ok = [q for q in queries if q.face.ok]
        if ok:
            chips, pix = embedding_inputs([q.face for q in ok], self.face_resolution if resolution_match else None)
            desc = faces.describe(self.embedder, chips, self.flip_average)
            for q, d, p in zip(ok, desc, pix):
                q.descriptor, q.pixel = d, p
        return queries

    def semantic_search(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k Euclidean neighbours: (distances float64 (Q,k), ids int64 (Q,k)), NaN/−1 padded.

        Exact unless this searcher uses the IVF (``search_info()``); distances are always exact."""
        q = np.ascontiguousarray(desc, dtype=np.float32).reshape(-1, 128)
        if self.ivf is None or len(q) == 0:
            return self.flat.search(q, k)
        kk = min(self.index.n_faces, k + RERANK_MARGIN)
        cand = ivf.candidates(self.ivf, q, kk, self.ivf_nprobe)
        return self.flat.rerank(q, list(cand), k)

    def pixel_search(self, pix: np.ndarray, k: int, desc: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k L1 neighbours: (sum of |Δ| over uint8 values, ids), −1 padded.

        Exact over all faces when the bound tables exist; otherwise exact over each query's
        ``pixel_candidates`` semantic neighbours (``desc`` needed)."""
        q = np.ascontiguousarray(pix, dtype=np.uint8).reshape(-1, pixels.PIXEL_DIM)
        if len(q) == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.int64)
        if self.l1 is not None:
            return self.l1.search(q, k)
        if desc is None:
            raise ValueError("this index's pixel channel searches the semantic candidates: pass the descriptors")
        _, cand = self.semantic_search(desc, min(self.index.n_faces, self.pixel_candidates))

        def scored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for j in range(len(q)):
                c = np.sort(cand[j][cand[j] >= 0])
                crops = np.asarray(self.index.pixels[c])
                yield np.abs(crops.astype(np.int16) - q[j].astype(np.int16)).sum(axis=1, dtype=np.int64), c

        return select_topk(scored(), len(q), k, pad=-1, dtype=np.int64)
