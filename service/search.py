"""Nearest-neighbour search over a loaded index, in both channels.

Used by the HTTP service and by the in-process audit, so both give the same numbers. The semantic
channel is exact L2 in FAISS, re-ranked with exact float64 distances (FAISS's expanded
‖a‖²+‖b‖²−2ab form loses ~1e-3 near zero, which matters for copy detection). The pixel channel is
the exact L1 search of :mod:`indexer.l1`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from indexer import attributes, calibrate, faces, pixels
from indexer.devices import faiss_gpus, faiss_index, resolve_device
from indexer.l1 import L1Index
from indexer.store import FaceIndex

log = logging.getLogger(__name__)

RERANK_MARGIN = 16  # extra FAISS candidates re-ranked exactly


@dataclass
class Query:
    """One query image after the face pipeline and embedding."""

    name: str
    face: faces.Face
    descriptor: np.ndarray | None = None  # (128,) float32
    pixel: np.ndarray | None = None  # (D,) uint8


class Searcher:
    """Read-only search over one index; thread-safe (nothing is mutated after construction)."""

    def __init__(self, index: FaceIndex, device: str = "auto", embedder: str = "torch"):
        self.index = index
        self.device = resolve_device(device)
        index.calibration = calibrate.complete(
            index.calibration, index.descriptors, index.pixels, index.identity_codes(), self.device
        )
        self.embedder = faces.make_embedder(embedder, self.device)
        if self.device == "cuda" and faiss_gpus() > 0:
            self.semantic = faiss_index(index.descriptors, "l2", self.device)
        else:
            self.semantic = index.semantic
        self.l1 = L1Index(index.pixels, use_gpu=self.device == "cuda")
        self.files = [index.face_file(i) for i in range(index.n_faces)]
        self.identities = [index.face_identity(i) for i in range(index.n_faces)]
        self.probes = attributes.probes_of(index)  # None: the index has no attribute probes
        self.flip_average = index.flip_average  # queries are described as the index's rows are
        self.face_resolution = index.face_resolution  # None: an index without the record

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
            target = self.face_resolution if resolution_match else None
            chips = np.stack([faces.match_resolution(q.face.chip, q.face.source_px, target) for q in ok])
            desc = faces.describe(self.embedder, chips, self.flip_average)
            for q, d in zip(ok, desc):
                q.descriptor = d
                q.pixel = pixels.pixel_vector(q.face.chip)
        return queries

    def semantic_search(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k Euclidean neighbours: (distances float64 (Q,k), ids int64 (Q,k)), −1 padded."""
        n = self.index.n_faces
        q = np.ascontiguousarray(desc, dtype=np.float32).reshape(-1, 128)
        out_d = np.full((len(q), k), np.nan)
        out_i = np.full((len(q), k), -1, np.int64)
        if n == 0 or len(q) == 0:
            return out_d, out_i
        kk = min(n, k + RERANK_MARGIN)
        _, cand = self.semantic.search(q, kk)
        base = self.index.descriptors  # float32; only the candidates are widened (not all N per call)
        for j in range(len(q)):
            c = cand[j][cand[j] >= 0]
            d = np.linalg.norm(base[c].astype(np.float64) - q[j].astype(np.float64), axis=1)
            order = np.lexsort((c, d))[:k]
            out_d[j, : len(order)] = d[order]
            out_i[j, : len(order)] = c[order]
        return out_d, out_i

    def pixel_search(self, pix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k L1 neighbours: (sum of |Δ| over uint8 values, ids)."""
        q = np.ascontiguousarray(pix, dtype=np.uint8).reshape(-1, pixels.PIXEL_DIM)
        if len(q) == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.int64)
        return self.l1.search(q, k)
