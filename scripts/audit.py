"""Audit a face generator for memorization: one self-contained HTML report.

    python scripts/audit.py (--generated DIR | --generator SPEC) (--index INDEX | --server URL [--token T])
                            --out report.html [--n N] [--batch-sizes 8,16,32,64] [--trials T] [--seed S]

Every per-image number comes from ``service.api.neighbors``: called in-process with ``--index``,
or through ``POST /neighbors`` of a running service with ``--server`` (same images, in chunks), so
both modes give the same numbers. Batch statistics (thresholds, collisions, support, memorization)
are the service's own functions in ``service/stats.py``.

Exit codes: 0 ok, 2 bad arguments / folder / generator / index, 3 server unreachable (or not a
facemem service), 4 token refused, 5 the server answered with another error.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import shlex
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from indexer import faces, pixels  # noqa: E402
from scripts import generators, report_html  # noqa: E402
from scripts.generators import SourceError  # noqa: E402
from service import api, stats  # noqa: E402

log = logging.getLogger("audit")

EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_SERVER = 2, 3, 4, 5
ALL_PAIRS = 1e6  # an identity threshold above every descriptor distance: the service lists every pair
THUMB = 150  # thumbnail side in pixels (shown at up to 150 px)


class AuditError(Exception):
    """A failure the user can fix; ``code`` is the process exit status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# ----------------------------------------------------------------------------- backends


class RecordingSearcher:
    """Thin adapter around :class:`service.search.Searcher` that keeps each query's descriptor and
    pixel crop, so the in-process audit gets them from the very pass that produced the response
    (the HTTP response does not carry them)."""

    def __init__(self, searcher):
        self._s = searcher
        self.recorded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.last_faces: dict[str, faces.Face] = {}  # the faces of the latest request, by name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    def prepare(self, named_faces):
        qs = self._s.prepare(named_faces)
        self.last_faces = {q.name: q.face for q in qs}
        for q in qs:
            if q.descriptor is not None:
                self.recorded.setdefault(q.name, (q.descriptor, q.pixel))  # the main pass wins
        return qs


def _thumb_jpeg(arr: np.ndarray, size: int) -> bytes:
    """The service's /images thumbnail recipe (LANCZOS into size×size, JPEG q90)."""
    from PIL import Image

    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class LocalBackend:
    """``--index``: the index loaded in this process; :func:`service.api.neighbors` called directly."""

    mode = "index"

    def __init__(self, index_dir: str, device: str = "cpu", detect_processes: int | None = None):
        from indexer.store import IndexLoadError, load_index
        from service.search import Searcher

        try:
            self.index = load_index(Path(index_dir))
        except IndexLoadError as e:
            raise AuditError(EXIT_USAGE, str(e)) from None
        except FileNotFoundError as e:
            raise AuditError(EXIT_USAGE, f"--index {index_dir}: {e}") from None
        self.where = str(Path(index_dir).resolve())
        self.searcher = RecordingSearcher(Searcher(self.index, device=device))
        self.pool = api.DetectPool(detect_processes)
        self.max_files: int | None = None
        self.cache_size = 0  # faces kept for a second request on the same bytes (the pairs pass)
        self._faces: dict[tuple[str, str], faces.Face] = {}

    def info(self) -> dict:
        """The fields of the service's ``GET /v1/index``, plus the dataset root (a local path)."""
        m = self.index.manifest
        return {
            "summary": api.index_summary(self.index),
            "dataset": {k: v for k, v in m.get("dataset", {}).items() if k != "root"},
            "counts": m.get("counts", {}),
            "pipeline": m.get("pipeline", {}),
            "build": m.get("build", {}),
            "format_version": m.get("format_version"),
            "written_at": m.get("written_at"),
            "model_sha256": m.get("model_sha256", {}),
            "libraries": m.get("libraries", {}),
            "calibration": stats.calibrate(self.index.calibration).to_dict(pixels.PIXEL_DIM),
            "search": self.searcher.search_info(),
            "root": str(self.index.dataset_root),
            "path": self.where,
        }

    def neighbors(self, images: list[tuple[str, bytes]], params: dict) -> dict:
        """:func:`service.api.neighbors`, except that faces already detected in this run (same bytes,
        same detector) are not detected again: detection is deterministic, and it is the expensive
        step on large images. Embedding and search always rerun on the request as posted, because
        the batched embedder's last bits depend on the batch size, and a server would do the same."""
        try:
            p = api.parse_params(params)
        except api.ApiError as e:
            raise AuditError(EXIT_USAGE, e.message) from None
        keys = [(hashlib.sha1(d).hexdigest(), p.detector) for _, d in images]
        todo = [i for i, k in enumerate(keys) if k not in self._faces]
        if len(todo) == len(images):
            body = api.neighbors(self.searcher, images, p, pool=self.pool)
        else:
            t0 = time.perf_counter()
            got = dict(zip(todo, self.pool.run([images[i][1] for i in todo], p.detector, faces.MAX_PIXELS)))
            named = [(n, got[i] if i in got else self._faces[keys[i]]) for i, (n, _) in enumerate(images)]
            t_detect = time.perf_counter() - t0
            body = api.neighbors_for_faces(self.searcher, named, p)
            body["timing"] = {"detect_s": t_detect, **body["timing"], "total_s": time.perf_counter() - t0}
        for k, (n, _) in zip(keys, images):
            if len(self._faces) >= self.cache_size:
                break
            self._faces.setdefault(k, self.searcher.last_faces[n])
        return body

    def recorded(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.searcher.recorded.get(name)

    def thumbnail(self, file: str, size: int = THUMB) -> bytes | None:
        from service.app import image_path

        try:
            return _thumb_jpeg(faces.read_file(image_path(self.index, file)), size)
        except faces.Unreadable as e:
            log.warning("training thumbnail %s: %s", file, e)
            return None

    def calibration_arrays(self) -> dict[str, np.ndarray] | None:
        return self.index.calibration

    def train_descriptors(self) -> np.ndarray | None:
        return self.index.descriptors

    def close(self) -> None:
        self.pool.close()


class ServerBackend:
    """``--server``: a running ``python -m service``; images are POSTed in chunks of ``max_files``."""

    mode = "server"

    def __init__(self, url: str, token: str | None, timeout: float = 600.0):
        import requests

        self.requests = requests
        self.url = url.rstrip("/")
        self.where = self.url
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        try:
            r = self.session.get(self.url + "/healthz", timeout=15)
        except requests.RequestException as e:
            raise AuditError(
                EXIT_UNREACHABLE, f"cannot reach the facemem service at {self.url}: {type(e).__name__}: {e}"
            ) from None
        try:
            ok = r.status_code == 200 and r.json().get("status") == "ok"
        except ValueError:
            ok = False
        if not ok:
            raise AuditError(
                EXIT_UNREACHABLE, f"{self.url} is not a facemem service (GET /healthz answered HTTP {r.status_code})"
            )
        self._info = self._get("/v1/index").json()
        self.max_files = int(self._info.get("limits", {}).get("max_files", 64))

    def _check(self, r, what: str):
        if r.status_code in (401, 403):
            why = (
                "refused the token"
                if "Authorization" in self.session.headers
                else "requires a token and none was given"
            )
            raise AuditError(
                EXIT_AUTH,
                f"the service at {self.url} {why} ({what}: HTTP {r.status_code}); "
                f"pass the right one with --token or $FACEMEM_TOKEN",
            )
        if r.status_code >= 400:
            try:
                msg = r.json().get("message", r.text[:300])
            except ValueError:
                msg = r.text[:300]
            raise AuditError(EXIT_SERVER, f"{what} failed: HTTP {r.status_code}: {msg}")
        return r

    def _get(self, path: str, **kw):
        try:
            r = self.session.get(self.url + path, timeout=60, **kw)
        except self.requests.RequestException as e:
            raise AuditError(EXIT_UNREACHABLE, f"GET {path} on {self.url}: {type(e).__name__}: {e}") from None
        return self._check(r, f"GET {path}")

    def info(self) -> dict:
        return dict(self._info, path=self.url)

    def neighbors(self, images: list[tuple[str, bytes]], params: dict) -> dict:
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        q = {
            k: (",".join(v) if isinstance(v, (list, tuple)) else repr(v) if isinstance(v, float) else str(v))
            for k, v in params.items()
        }
        try:
            r = self.session.post(self.url + "/neighbors", params=q, files=files, timeout=self.timeout)
        except self.requests.RequestException as e:
            raise AuditError(EXIT_UNREACHABLE, f"POST /neighbors on {self.url}: {type(e).__name__}: {e}") from None
        return self._check(r, "POST /neighbors").json()

    def recorded(self, name: str) -> None:
        return None

    def thumbnail(self, file: str, size: int = THUMB) -> bytes | None:
        try:
            return self._get(f"/images/{quote(file)}", params={"size": str(size)}).content
        except AuditError as e:
            if e.code == EXIT_SERVER:
                log.warning("training thumbnail %s: %s", file, e.message)
                return None
            raise

    def calibration_arrays(self) -> None:
        return None  # the service exposes the thresholds, not the distributions behind them

    def train_descriptors(self) -> None:
        return None

    def close(self) -> None:
        self.session.close()


# ----------------------------------------------------------------------------- helpers


def thresholds_from_dict(d: dict) -> stats.Thresholds:
    """Rebuild the :class:`stats.Thresholds` a response used from its ``calibration`` block."""
    return stats.Thresholds(**{f.name: d[f.name] for f in fields(stats.Thresholds)})


def sub_seed(seed: int, *path: int) -> int:
    """Independent, reproducible seeds for the main sample, each chunk and each trial."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def crossing(sizes: list[int], shares: list[float]) -> dict:
    """Where the share of trials with a collision crosses 50%, interpolated linearly in log s.

    Arora & Zhang: if batches of s samples contain a near-duplicate with probability ≥ ½, the support
    is about s². (Under a uniform distribution on M faces, P(no pair) ≈ exp(−s²/2M), which puts the
    50% point at M = s²/(2 ln 2) ≈ 0.72 s²; both are reported.)
    """
    pts = [(s, p) for s, p in zip(sizes, shares) if p is not None]
    if not pts:
        return {"s50": None, "support": None, "kind": "no_data", "text": "no trials"}
    if pts[0][1] >= 0.5:
        s = pts[0][0]
        return {
            "s50": None,
            "support_upper": s * s,
            "kind": "below_smallest",
            "text": f"already ≥ 50% at the smallest batch size s = {s}: support ≲ s² = {s * s:,}; "
            f"try smaller batch sizes",
        }
    for (s0, p0), (s1, p1) in zip(pts, pts[1:]):
        if p1 >= 0.5:
            t = (0.5 - p0) / (p1 - p0)
            s50 = float(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))
            return {
                "s50": s50,
                "support": s50**2,
                "support_uniform": s50**2 / (2 * math.log(2)),
                "kind": "interpolated",
                "bracket": [s0, s1],
                "text": f"crosses 50% at s ≈ {s50:.1f} (between {s0} and {s1}): support ≈ s² ≈ "
                f"{s50**2:,.0f} faces ({s50**2 / (2 * math.log(2)):,.0f} under a uniform model)",
            }
    s = pts[-1][0]
    return {
        "s50": None,
        "support_lower": s * s,
        "kind": "not_reached",
        "text": f"below 50% up to the largest batch size s = {s}: support ≳ s² = {s * s:,} faces "
        f"(larger batches would tighten this)",
    }


def image_thumb(data: bytes, size: int = THUMB) -> str | None:
    try:
        return report_html.data_uri(_thumb_jpeg(faces.decode(data), size), "image/jpeg")
    except faces.Unreadable:
        return None


@dataclass
class Config:
    n: int | None
    batch_sizes: list[int]
    trials: int
    seed: int
    params: dict
    chunk: int
    pairs_max: int
    grid_expanded: int
    grid_max: int
    upscale: int
    command: str


# ----------------------------------------------------------------------------- the audit


class Audit:
    """Runs the audit against one source and one backend and returns the report's data."""

    def __init__(self, cfg: Config, source, backend, progress: bool = True):
        self.cfg, self.source, self.backend = cfg, source, backend
        if isinstance(backend, LocalBackend):
            backend.cache_size = cfg.pairs_max  # the pairs pass re-posts the first pairs_max images
        self.progress = progress
        self.images: list[tuple[str, bytes]] = []  # the main sample, bytes kept for thumbnails
        self.timing: dict[str, float] = {}
        self.sample_seeds: list[dict] = []  # generator: how to redraw the main sample exactly
        self.planned_n = 0

    # -- input ---------------------------------------------------------------------------------

    def _gen_sample(self, n: int, seed: int, prefix: str) -> list[tuple[str, bytes]]:
        return self.source.sample(n, seed, prefix=prefix, upscale=self.cfg.upscale)

    def main_sample_plan(self) -> list[Callable[[], list[tuple[str, bytes]]]]:
        """Chunks of the main sample as loaders (loaded lazily, so a huge folder streams)."""
        cfg, src = self.cfg, self.source
        if src.kind == "folder":
            total = len(src.files)
            n = total if cfg.n is None else min(cfg.n, total)
            idx = (
                list(range(total))
                if n == total
                else sorted(np.random.default_rng(sub_seed(cfg.seed, 0)).choice(total, n, replace=False).tolist())
            )
            self.planned_n = n
            return [lambda c=idx[i : i + cfg.chunk]: src.read(c) for i in range(0, n, cfg.chunk)]
        n = cfg.n or 100
        self.planned_n = n
        plan = []
        for ci, start in enumerate(range(0, n, cfg.chunk)):
            m, seed = min(cfg.chunk, n - start), sub_seed(cfg.seed, 0, ci)
            self.sample_seeds.append({"n": m, "seed": seed, "prefix": f"sample{ci:03d}_"})
            plan.append(lambda m=m, seed=seed, ci=ci: self._gen_sample(m, seed, f"sample{ci:03d}_"))
        return plan

    # -- steps ---------------------------------------------------------------------------------

    def run(self) -> tuple[dict, dict[str, str], dict[str, str]]:
        from tqdm import tqdm

        cfg = self.cfg
        t_all = time.perf_counter()
        plan = self.main_sample_plan()
        n_main = self.planned_n
        n_pool = min(n_main, cfg.pairs_max)
        if n_pool <= cfg.chunk:
            n_pairs = n_pool
        else:
            half = max(1, cfg.chunk // 2)
            n_blocks = -(-n_pool // half)
            n_pairs = (n_blocks - 1) * n_pool  # each block is posted with every other block
        n_trials = 0
        if self.source.kind == "generator":
            limit = self.backend.max_files
            n_trials = sum(s for s in cfg.batch_sizes if not limit or s <= limit) * cfg.trials
        self.bar = tqdm(
            total=n_main + n_pairs + n_trials,
            unit="img",
            desc="auditing",
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            t0 = time.perf_counter()
            entries, first = self._main_pass(plan)
            self.timing["main_pass_s"] = time.perf_counter() - t0
            th = thresholds_from_dict(first["calibration"])
            mem = self._memorization(entries, th)
            t0 = time.perf_counter()
            pool_n = min(len(entries), cfg.pairs_max)
            sem_pairs, pix_pairs = self._all_pairs(pool_n, entries, th)
            self.timing["pairs_s"] = time.perf_counter() - t0
            coll = self._collisions(pool_n, entries, sem_pairs, pix_pairs, th)
            t0 = time.perf_counter()
            birthday = self._birthday(pool_n, entries, sem_pairs, pix_pairs, th)
            self.timing["birthday_s"] = time.perf_counter() - t0
        finally:
            self.bar.close()
        t0 = time.perf_counter()
        grid = self._grid(entries, th)
        idents = self._identities(entries)
        hist = self._histograms(entries, th)
        dist = self._distribution(entries)
        self.timing["statistics_s"] = time.perf_counter() - t0
        counts = Counter(e["status"] for e in entries)
        info = self.backend.info()
        data = {
            "format": "facemem-audit/1",
            "created_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": cfg.command,
            "seed": cfg.seed,
            "source": {
                "kind": self.source.kind,
                "describe": self.source.describe,
                "upscale": cfg.upscale if self.source.kind == "generator" else None,
                "sample_seeds": self.sample_seeds or None,
            },
            "backend": {"mode": self.backend.mode, "where": self.backend.where},
            "params": first["params"],
            "index": info,
            "calibration": first["calibration"],
            "summary": {
                "images": len(entries),
                "faces": counts.get("ok", 0),
                "counts": {s: counts.get(s, 0) for s in faces.STATUSES},
            },
            "neighbors": {"images": entries},
            "memorization": mem,
            "collisions": coll,
            "birthday": birthday,
            "grid": grid,
            "identities": idents,
            "histograms": hist,
            "distribution": dist,
        }
        t0 = time.perf_counter()
        thumbs = self._thumbnails(data)
        plots = self._plots(data)
        self.timing["thumbnails_plots_s"] = time.perf_counter() - t0
        self.timing["total_s"] = time.perf_counter() - t_all
        data["timing"] = self.timing
        return data, thumbs, plots

    def _post(self, images: list[tuple[str, bytes]], params: dict) -> dict:
        resp = self.backend.neighbors(images, params)
        self.bar.update(len(images))
        return resp

    def _main_pass(self, plan) -> tuple[list[dict], dict]:
        """The per-image neighbours of the main sample, chunk by chunk; returns entries in order."""
        entries: list[dict] = []
        first: dict | None = None
        for load in plan:
            imgs = load()
            resp = self._post(imgs, self.cfg.params)
            if first is None:
                first = resp
            elif resp["calibration"] != first["calibration"]:  # one index, one set of thresholds
                raise AuditError(EXIT_SERVER, "the thresholds changed between chunks (was the index replaced?)")
            entries.extend(resp["images"])
            if self.source.kind == "generator":
                self.images.extend(imgs)
        assert first is not None
        if len({e["image"] for e in entries}) != len(entries):
            raise AuditError(EXIT_USAGE, "image names in the sample are not unique")
        return entries, first

    def _memorization(self, entries: list[dict], th: stats.Thresholds) -> dict:
        """:func:`stats.memorization` over the whole sample, from the per-image top-1 neighbours."""
        pos = [i for i, e in enumerate(entries) if e["status"] == "ok"]
        names = [entries[i]["image"] for i in pos]
        sem = [entries[i]["semantic"][0] for i in pos]
        pix = [entries[i]["pixel"][0] for i in pos]
        return stats.memorization(
            names,
            np.array([s["distance"] for s in sem], np.float64),
            [{"file": s["file"], "identity": s["identity"]} for s in sem],
            np.array([p["distance"] for p in pix], np.float64),
            [{"file": p["file"], "identity": p["identity"]} for p in pix],
            th,
            pixels.PIXEL_DIM,
            positions=pos,
        )

    def _pool_images(self, n: int, entries: list[dict]) -> list[tuple[str, bytes]]:
        if self.source.kind == "generator":
            return self.images[:n]
        by_name = {name: i for i, name in enumerate(self.source.names())}
        return self.source.read([by_name[e["image"]] for e in entries[:n]])

    def _all_pairs(
        self, n: int, entries: list[dict], th: stats.Thresholds
    ) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
        """Every semantic pair distance, and the pixel near-duplicate pairs, among the first ``n``
        images (positions in the sample), from the service itself: ``neighbors`` with an identity
        threshold above every distance, so its collisions block lists every pair. Up to ``chunk``
        images go in one request; beyond, blocks of half a chunk, every pair of blocks in one
        request, so no pair is missed. The layout depends only on ``--chunk``, so in-process and
        server mode post the same batches and get bit-identical distances."""
        imgs = self._pool_images(n, entries)
        params = {k: v for k, v in self.cfg.params.items() if k not in ("false_match_rate", "threshold")}
        params["threshold"] = ALL_PAIRS
        params["k"] = 1
        chunk = self.cfg.chunk
        if n <= chunk:
            blocks, jobs = [list(range(n))], [[0]]
        else:
            half = max(1, chunk // 2)
            blocks = [list(range(i, min(i + half, n))) for i in range(0, n, half)]
            jobs = [[a, b] for a in range(len(blocks)) for b in range(a + 1, len(blocks))]
        sem: dict[tuple[int, int], float] = {}
        pix: dict[tuple[int, int], float] = {}
        for job in jobs:
            members = [i for b in job for i in blocks[b]]
            resp = self._post([imgs[i] for i in members], params)
            c = resp["collisions"]
            for p in (c.get("semantic") or {}).get("pairs", []):
                sem.setdefault((members[p["a_index"]], members[p["b_index"]]), p["distance"])
            for p in (c.get("pixel") or {}).get("pairs", []):
                pix.setdefault((members[p["a_index"]], members[p["b_index"]]), p["distance"])
        n_ok = sum(1 for e in entries[:n] if e["status"] == "ok")
        if len(sem) != n_ok * (n_ok - 1) // 2:
            raise AuditError(EXIT_SERVER, f"expected {n_ok * (n_ok - 1) // 2} pairs from the service, got {len(sem)}")
        return sem, pix

    def _collisions(self, n: int, entries: list[dict], sem: dict, pix: dict, th: stats.Thresholds) -> dict:
        """The service's ``collisions`` block for the first ``n`` images taken as one batch."""
        faces_n = sum(1 for e in entries[:n] if e["status"] == "ok")
        out: dict = {
            "batch_size": n,
            "faces": faces_n,
            "reference": "Arora & Zhang (2017), Do GANs learn the distribution? Some theory and empirics",
            "of_sample": len(entries),
        }
        for ch, pairs, thr in (("semantic", sem, th.identity), ("pixel", pix, th.pixel_copy)):
            hits = sorted((a, b, d) for (a, b), d in pairs.items() if thr is not None and d < thr)
            out[ch] = {
                "threshold": thr,
                "pairs": [
                    {"a": entries[a]["image"], "b": entries[b]["image"], "a_index": a, "b_index": b, "distance": d}
                    for a, b, d in hits
                ],
                **stats.support_estimate(faces_n, len(hits)),
            }
        return out

    def _birthday(self, n: int, entries: list[dict], sem: dict, pix: dict, th: stats.Thresholds) -> dict:
        cfg = self.cfg
        rows = []
        skipped = []
        if self.source.kind == "folder":
            protocol = (
                f"Folder mode: the {n} audited images are the population; each trial is a random subset of s "
                f"of them drawn without replacement (seeded), not fresh samples, so batches overlap and the "
                f"support estimate cannot exceed what {n} images can show. A pair collides when its "
                f"descriptor distance is under the identity threshold ({th.identity:.4g}; same person) and, "
                f"separately, when its pixel L1 is under the pixel copy threshold. Pair distances are the "
                f"service's (one pass over all pairs); a subset collides exactly when the service would "
                f"report a pair for it."
            )
            A_sem = np.zeros((n, n), bool)
            A_pix = np.zeros((n, n), bool)
            for (a, b), d in sem.items():
                A_sem[a, b] = A_sem[b, a] = d < th.identity
            for (a, b), d in pix.items():
                A_pix[a, b] = A_pix[b, a] = th.pixel_copy is not None and d < th.pixel_copy
            ok = np.array([e["status"] == "ok" for e in entries[:n]])
            for s in cfg.batch_sizes:
                if s > n:
                    skipped.append(s)
                    continue
                rng = np.random.default_rng(sub_seed(cfg.seed, 1, s))
                cs, cp, nf, subs = [], [], [], []
                for _ in range(cfg.trials):
                    sub = np.sort(rng.choice(n, s, replace=False))
                    cs.append(int(np.triu(A_sem[np.ix_(sub, sub)], 1).sum()))
                    cp.append(int(np.triu(A_pix[np.ix_(sub, sub)], 1).sum()))
                    nf.append(int(ok[sub].sum()))
                    subs.append(sub.tolist())
                rows.append(dict(self._trial_row(s, cs, cp, nf), subsets=subs))
        else:
            protocol = (
                f"Generator mode: every trial is a fresh batch of s samples (seeded), sent to the service as "
                f"one request; a trial collides when the service's collisions block has at least one pair "
                f"(semantic: same person at the identity threshold {th.identity:.4g}; pixel: under the pixel "
                f"copy threshold)."
            )
            limit = self.backend.max_files
            for s in cfg.batch_sizes:
                if limit and s > limit:
                    skipped.append(s)
                    continue
                cs, cp, nf, seeds = [], [], [], []
                for t in range(cfg.trials):
                    seeds.append(sub_seed(cfg.seed, 1, s, t))
                    imgs = self._gen_sample(s, seeds[-1], f"trial_s{s}_t{t:03d}_")
                    c = self._post(imgs, cfg.params)["collisions"]
                    cs.append(int(c["semantic"]["colliding_pairs"]))
                    cp.append(int(c["pixel"]["colliding_pairs"]) if c.get("pixel") else 0)
                    nf.append(int(c["faces"]))
                rows.append(dict(self._trial_row(s, cs, cp, nf), seeds=seeds))
        cross = {ch: crossing([r["s"] for r in rows], [r[ch]["share"] for r in rows]) for ch in ("semantic", "pixel")}
        top = sorted(sem.items(), key=lambda kv: (kv[1], kv[0]))[:20]
        top_pairs = [
            {
                "rank": r + 1,
                "a": entries[a]["image"],
                "b": entries[b]["image"],
                "a_index": a,
                "b_index": b,
                "distance": d,
                "same_person": d < th.identity,
                "pixel_duplicate": (a, b) in pix,
                "pixel_distance": pix.get((a, b)),
            }
            for r, ((a, b), d) in enumerate(top)
        ]
        return {
            "protocol": protocol,
            "trials": cfg.trials,
            "batch_sizes": cfg.batch_sizes,
            "rows": rows,
            "crossing": cross,
            "top_pairs": top_pairs,
            "top_pairs_batch": f"The batch: the first {n} images of the audited sample "
            f"({sum(1 for e in entries[:n] if e['status'] == 'ok')} faces, "
            f"{len(sem)} pairs compared; {sum(d < th.identity for d in sem.values())} same-person "
            f"pairs, {len(pix)} pixel near-duplicate pairs), most similar by descriptor distance.",
            "skipped": (
                f"batch sizes {skipped} skipped: larger than the "
                + ("audited sample" if self.source.kind == "folder" else "service's max_files per request")
                if skipped
                else None
            ),
        }

    @staticmethod
    def _trial_row(s: int, cs: list[int], cp: list[int], nf: list[int]) -> dict:
        return {
            "s": s,
            "trials": len(cs),
            "faces_mean": float(np.mean(nf)),
            "semantic": {
                "with_collision": int(sum(c > 0 for c in cs)),
                "share": float(np.mean([c > 0 for c in cs])),
                "mean_pairs": float(np.mean(cs)),
                "pairs": cs,
            },
            "pixel": {
                "with_collision": int(sum(c > 0 for c in cp)),
                "share": float(np.mean([c > 0 for c in cp])),
                "mean_pairs": float(np.mean(cp)),
                "pairs": cp,
            },
        }

    def _grid(self, entries: list[dict], th: stats.Thresholds) -> dict:
        """Rows of the nearest-neighbour figure, most suspicious first."""
        rows = []
        for i, e in enumerate(entries):
            if e["status"] != "ok":
                continue
            sem, pix = e["semantic"][0], e["pixel"][0]
            r_sem = sem["distance"] / th.semantic_copy if th.semantic_copy else math.inf
            r_pix = pix["distance"] / th.pixel_copy if th.pixel_copy else math.inf
            badges = []
            if th.semantic_copy is not None and sem["distance"] < th.semantic_copy:
                badges.append("copy (semantic)")
            if th.pixel_copy is not None and pix["distance"] < th.pixel_copy:
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
        omitted = max(0, len(rows) - self.cfg.grid_max)
        return {
            "rows": rows[: self.cfg.grid_max],
            "expanded": self.cfg.grid_expanded,
            "omitted": omitted,
            "no_face": [
                {"image": e["image"], "status": e["status"], "reason": e["reason"]}
                for e in entries
                if e["status"] != "ok"
            ],
        }

    def _identities(self, entries: list[dict]) -> dict:
        top1: Counter = Counter()
        same: Counter = Counter()
        train_files: dict[str, list[str]] = defaultdict(list)
        gen: dict[str, list[str]] = defaultdict(list)
        for e in entries:
            if e["status"] != "ok":
                continue
            s = e["semantic"][0]
            ident = s["identity"] if s["identity"] is not None else f"file:{s['file']}"
            top1[ident] += 1
            same[ident] += int(s["same_person"])
            if s["file"] not in train_files[ident]:
                train_files[ident].append(s["file"])
            gen[ident].append(e["image"])
        n = sum(top1.values())
        top = [
            {"identity": k, "top1": c, "same_person": same[k], "train_files": train_files[k], "generated": gen[k]}
            for k, c in sorted(top1.items(), key=lambda kv: (-same[kv[0]], -kv[1], kv[0]))
        ]
        n_same = sum(same.values())
        distinct_same = sum(1 for v in same.values() if v)
        text = (
            f"{n} faces have their nearest training face among {len(top1)} distinct identities; "
            f"{n_same} are under the identity threshold, spread over {distinct_same} identities. "
            f"Sorted by same-person matches, then top-1 matches. A generator that keeps producing the same few "
            f"people shows a few identities with many matches."
        )
        return {
            "faces": n,
            "distinct_top1": len(top1),
            "same_person": n_same,
            "distinct_same_person": distinct_same,
            "top": top[:30],
            "gallery": 10,
            "text": text,
        }

    def _histograms(self, entries: list[dict], th: stats.Thresholds) -> dict:
        ok = [e for e in entries if e["status"] == "ok"]
        g_sem = [e["semantic"][0]["distance"] for e in ok]
        g_pix = [e["pixel"][0]["distance"] for e in ok]
        out: dict = {"generated_semantic": g_sem, "generated_pixel": g_pix, "stats": {}}
        cal = self.backend.calibration_arrays()

        def summ(name: str, v: Any, thr: float | None) -> None:
            a = np.asarray(v, np.float64)
            a = a[np.isfinite(a)]
            if len(a):
                out["stats"][name] = {
                    "n": int(len(a)),
                    "p1": float(np.percentile(a, 1)),
                    "median": float(np.median(a)),
                    "under_copy": float(np.mean(a < thr)) if thr is not None else None,
                }

        summ("generated → training, semantic", g_sem, th.semantic_copy)
        summ("generated → training, pixel L1", g_pix, th.pixel_copy)
        if cal is not None:
            summ("training → training leave-one-out, semantic", cal.get("sem_loo"), th.semantic_copy)
            summ("training → training leave-one-out, pixel L1", cal.get("pix_loo"), th.pixel_copy)
            summ("training → nearest other identity, semantic", cal.get("sem_diff_id"), th.semantic_copy)
        else:
            out["note"] = (
                "Server mode: the service exposes its thresholds but not the training distributions "
                "behind them, so only the generated side is drawn. Run with --index for the baseline."
            )
        return out

    def _distribution(self, entries: list[dict]) -> dict:
        from service.distribution import NOT_COMPARABLE, distribution_distances

        train = self.backend.train_descriptors()
        rec = [self.backend.recorded(e["image"]) for e in entries if e["status"] == "ok"]
        if train is None or any(r is None for r in rec):
            return {
                "note": NOT_COMPARABLE,
                "error": "Server mode: the service does not return descriptors, so the "
                "distribution distances need --index (the descriptors of both sides).",
            }
        if len(rec) < 5:
            return {"note": NOT_COMPARABLE, "error": f"only {len(rec)} faces: too few for distribution distances"}
        gen = np.stack([r[0] for r in rec])
        return distribution_distances(gen, train, k=3, seed=self.cfg.seed)

    # -- assets --------------------------------------------------------------------------------

    def _thumbnails(self, data: dict) -> dict[str, str]:
        from tqdm import tqdm

        gen_names: list[str] = []
        train_files: list[str] = []
        for r in data["grid"]["rows"]:
            gen_names.append(r["image"])
            train_files += [x["file"] for x in r["semantic"] + r["pixel"]]
        for p in data["birthday"]["top_pairs"]:
            gen_names += [p["a"], p["b"]]
        for t in data["identities"]["top"][: data["identities"]["gallery"]]:
            gen_names += t["generated"][:6]
            train_files += t["train_files"][:4]
        gen_names = list(dict.fromkeys(gen_names))
        train_files = list(dict.fromkeys(train_files))
        thumbs: dict[str, str] = {}
        if self.source.kind == "generator":
            by_name = dict(self.images)
            blobs = [(n, by_name[n]) for n in gen_names]
        else:
            idx = {name: i for i, name in enumerate(self.source.names())}
            blobs = self.source.read([idx[n] for n in gen_names])
        bar = tqdm(
            total=len(blobs) + len(train_files),
            unit="thumb",
            desc="thumbnails",
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for name, b in blobs:
            uri = image_thumb(b)
            if uri:
                thumbs["gen:" + name] = uri
            bar.update()
        for f in train_files:
            jpg = self.backend.thumbnail(f)
            if jpg:
                thumbs["train:" + f] = report_html.data_uri(jpg, "image/jpeg")
            bar.update()
        bar.close()
        return thumbs

    def _plots(self, data: dict) -> dict[str, str]:
        h, cal = data["histograms"], data["calibration"]
        arrays = self.backend.calibration_arrays() or {}
        plots = {}
        ref_sem = {}
        if "sem_loo" in arrays:
            ref_sem["training → training leave-one-out"] = arrays["sem_loo"]
        if "sem_diff_id" in arrays and np.isfinite(arrays["sem_diff_id"]).any():
            ref_sem["training → nearest other identity"] = arrays["sem_diff_id"]
        plots["hist_semantic"] = report_html.plot_histogram(
            "Semantic channel: nearest-neighbour descriptor distance",
            "Euclidean distance between dlib descriptors",
            h["generated_semantic"],
            ref_sem,
            {"identity threshold": cal["identity"], "semantic copy threshold": cal["semantic_copy"]},
        )
        norm = pixels.PIXEL_DIM * 255.0
        ref_pix = (
            {"training → training leave-one-out": np.asarray(arrays["pix_loo"], np.float64) / norm}
            if "pix_loo" in arrays
            else {}
        )
        plots["hist_pixel"] = report_html.plot_histogram(
            "Pixel channel: nearest-neighbour L1 distance (64×64 face crop)",
            "mean |Δ| per value (0–1)",
            [d / norm for d in h["generated_pixel"]],
            ref_pix,
            {"pixel copy threshold": None if cal["pixel_copy"] is None else cal["pixel_copy"] / norm},
        )
        if data["birthday"]["rows"]:
            plots["birthday"] = report_html.plot_birthday(data["birthday"]["rows"], data["birthday"]["crossing"])
        if data["identities"]["top"]:
            plots["identities"] = report_html.plot_identities(data["identities"]["top"])
        return plots


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python scripts/audit.py",
        description="Audit generated faces for memorization of a training set and write a self-contained HTML "
        "report (nearest-neighbour grid, calibrated memorization rates, birthday-paradox support "
        "estimate, identity concentration, distribution distances).",
        epilog="Generator specs: ADAPTER:CHECKPOINT (built-in adapters: "
        + ", ".join(generators.ADAPTERS)
        + "), module:callable (callable(n, seed) -> images), or "
        "module:callable:CHECKPOINT (callable(checkpoint, device) -> sampler). Exit codes: 0 ok, 2 bad input, "
        "3 server unreachable, 4 token refused, 5 other server error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generated", metavar="DIR", help="folder of generated images (searched recursively)")
    src.add_argument("--generator", metavar="SPEC", help="PyTorch generator to sample fresh faces from")
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--index", help="index directory (in-process; no server needed)")
    tgt.add_argument("--server", metavar="URL", help="a running facemem service, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="bearer token for --server (default: $FACEMEM_TOKEN)")
    p.add_argument("--out", required=True, help="HTML report to write")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="images to audit (folder: a seeded random subset, default all; generator: default 100)",
    )
    p.add_argument("--batch-sizes", default="8,16,32,64", help="birthday-paradox batch sizes s, comma-separated")
    p.add_argument("--trials", type=int, default=20, help="birthday-paradox trials per batch size")
    p.add_argument("--seed", type=int, default=0, help="seed for subsets and generator samples")
    p.add_argument("--k", type=int, default=5, help="neighbours per image and channel (service parameter k)")
    p.add_argument(
        "--detector",
        default=api.DEFAULT_DETECTOR,
        choices=list(faces.DETECTORS),
        help="face detector (service parameter); 'aligned' skips detection for aligned generator output",
    )
    p.add_argument(
        "--false-match-rate",
        type=float,
        default=None,
        help="target false-match rate of the calibrated identity threshold (service default 0.01)",
    )
    p.add_argument("--threshold", type=float, default=None, help="identity threshold override (a distance)")
    p.add_argument(
        "--chunk",
        type=int,
        default=64,
        help="images per request / in-process call (the same --chunk gives bit-identical numbers in both "
        "modes; at most the service's max_files)",
    )
    p.add_argument(
        "--pairs-max",
        type=int,
        default=128,
        help="the first N audited images form the batch whose every pair is compared (collisions, "
        "top pairs, folder trials)",
    )
    p.add_argument("--grid-expanded", type=int, default=24, help="grid rows shown before the collapsed rest")
    p.add_argument("--grid-max", type=int, default=300, help="grid rows drawn at all")
    p.add_argument(
        "--upscale",
        type=int,
        default=128,
        help="generator samples smaller than this are upscaled (bicubic) to it before the face pipeline: "
        "dlib's landmarks are unreliable on 32 px faces (0 = off)",
    )
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="in-process embedding device")
    p.add_argument(
        "--detect-processes",
        type=int,
        default=None,
        help="in-process face-detection worker processes (default: one per core; 0: in this process)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    a = p.parse_args(argv)
    try:
        a.batch_sizes = sorted({int(x) for x in a.batch_sizes.split(",") if x.strip()})
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {a.batch_sizes!r}")
    if not a.batch_sizes or min(a.batch_sizes) < 2:
        p.error("--batch-sizes must be integers >= 2")
    for name in ("trials", "chunk", "k", "pairs_max", "grid_max"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.n is not None and a.n < 1:
        p.error("--n must be >= 1")
    if a.token and not a.server:
        p.error("--token applies to --server")
    if a.threshold is not None and a.false_match_rate is not None:
        p.error("give --threshold or --false-match-rate, not both")
    return a


def service_params(a: argparse.Namespace) -> dict:
    params: dict[str, Any] = {"k": a.k, "detector": a.detector}
    if a.threshold is not None:
        params["threshold"] = float(a.threshold)
    if a.false_match_rate is not None:
        params["false_match_rate"] = float(a.false_match_rate)
    try:
        api.parse_params(params)  # fail before any work, with the service's own message
    except api.ApiError as e:
        raise AuditError(EXIT_USAGE, e.message) from None
    return params


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    command = "python scripts/audit.py " + " ".join(
        shlex.quote("***" if prev == "--token" else x)
        for prev, x in zip([""] + (argv or sys.argv[1:]), argv or sys.argv[1:])
    )
    backend = None
    t0 = time.perf_counter()
    try:
        params = service_params(a)
        if a.generated:
            source: Any = generators.FolderSource.open(a.generated)
        else:
            source = generators.load_generator(a.generator, device="cpu" if a.device == "auto" else a.device)
        if a.server:
            backend = ServerBackend(a.server, a.token or os.environ.get("FACEMEM_TOKEN"))
            if a.chunk > backend.max_files:
                print(
                    f"warning: --chunk {a.chunk} is above the service's max_files; using {backend.max_files} "
                    f"(in-process runs match this report with --chunk {backend.max_files})",
                    file=sys.stderr,
                )
                a.chunk = backend.max_files
        else:
            backend = LocalBackend(a.index, device=a.device, detect_processes=a.detect_processes)
        cfg = Config(
            n=a.n,
            batch_sizes=a.batch_sizes,
            trials=a.trials,
            seed=a.seed,
            params=params,
            chunk=a.chunk,
            pairs_max=a.pairs_max,
            grid_expanded=a.grid_expanded,
            grid_max=a.grid_max,
            upscale=a.upscale,
            command=command,
        )
        data, thumbs, plots = Audit(cfg, source, backend, progress=not a.no_progress).run()
        html = report_html.render(data, thumbs, plots)
        out = Path(a.out)
        write_atomic(out, html)
    except (AuditError, SourceError) as e:
        code = e.code if isinstance(e, AuditError) else EXIT_USAGE
        print(f"error: {e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if backend is not None:
            backend.close()
    s, m, c = data["summary"], data["memorization"], data["collisions"]["semantic"]
    same = m["same_person"] or {}
    lc = m["likely_copies"]
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s: "
        f"{s['images']} images, {s['faces']} faces; same person {report_html.pct(same.get('share'))} "
        f"(strangers {report_html.pct(data['calibration']['expected_false_match_rate'])}); likely copies "
        f"semantic {report_html.pct((lc.get('semantic') or {}).get('share'))}, pixel "
        f"{report_html.pct((lc.get('pixel') or {}).get('share'))}; support "
        f"{report_html.fmt(c.get('support_estimate') or c.get('support_lower_bound'))}"
        f"{' (lower bound)' if c.get('support_estimate') is None else ''}; 50% crossing: "
        f"{data['birthday']['crossing']['semantic']['text']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
