"""The audit's passes over the images and the statistics over what they return.

Data flow: source → requests to a backend (``POST /neighbors`` with ``vectors=1``, in chunks) →
per-image entries plus descriptors and pixel crops → every pair of every batch (collisions) → the
statistics modules (support, baselines, C_T, identities, distribution) against the training side
(``GET /v1/reference``) → the report's data dict, format ``facemem-audit/2``.

Passes:

* the main sample (``n`` images, a seeded subset of a folder, or generator samples);
* generator only: ``trials`` fresh batches per birthday batch size s, each embedded in chunks;
* with ``reference_real``: real faces of people not in the index, through the same detector.

Every request asks for ``attributes=1`` too: the omission statistics (:mod:`service.stats.omissions`)
read each face's attribute probabilities and pose/expression geometry from the entries.

Every pair of faces inside the main sample and inside each trial batch is compared locally from the
returned vectors, with the service's own :func:`service.stats.collisions.close_pairs`, so an in-process audit
and a server audit (which post the same chunks) give identical numbers.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer import faces, pixels
from indexer.progress import progress_bar

from ..stats import baselines, collisions, ct, identities, memorization, omissions, support, thresholds, verdict
from .backends import EXIT_SERVER, EXIT_USAGE, AuditError
from .defaults import GENERATOR_N

log = logging.getLogger(__name__)

FORMAT = "facemem-audit/2"
PAIRS_LISTED = 1000  # colliding pairs listed per channel in the JSON (all are counted)


def sub_seed(seed: int, *path: int) -> int:
    """Independent, reproducible seeds for the main sample, each chunk and each trial."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


@dataclass
class Batch:
    """What came back for one set of images: the per-image entries (vectors removed) and the vectors
    of the ok faces, in entry order."""

    entries: list[dict] = field(default_factory=list)
    desc: list[np.ndarray] = field(default_factory=list)
    pix: list[np.ndarray] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)  # entry position of each ok face

    def add(self, body: dict) -> None:
        for e in body["images"]:
            d, p = e.pop("descriptor", None), e.pop("pixels", None)
            if e["status"] == "ok":
                if d is None or p is None:
                    raise AuditError(EXIT_SERVER, "the service returned no vectors (is it an older facemem?)")
                self.ok.append(len(self.entries))
                self.desc.append(np.asarray(d, np.float32))
                self.pix.append(np.frombuffer(base64.b64decode(p), np.uint8))
            self.entries.append(e)

    @property
    def descriptors(self) -> np.ndarray:
        return np.stack(self.desc) if self.desc else np.zeros((0, 128), np.float32)

    @property
    def pixels(self) -> np.ndarray:
        return np.stack(self.pix) if self.pix else np.zeros((0, pixels.PIXEL_DIM), np.uint8)


def pair_batch(desc: np.ndarray, pix: np.ndarray, th: thresholds.Thresholds) -> dict[str, list[tuple[int, int, float]]]:
    """Colliding pairs of one batch in each channel (positions among its ok faces)."""
    out = {}
    for ch, x, pt, metric in (
        ("semantic", desc, th.collision_semantic, "euclidean"),
        ("pixel", pix, th.collision_pixel, "cityblock"),
    ):
        out[ch] = collisions.close_pairs(x, pt.threshold, metric) if pt is not None else []
    return out


def closest_pairs(desc: np.ndarray, m: int = 20, block: int = 512) -> list[tuple[int, int, float]]:
    """The ``m`` closest pairs (i < j) by descriptor distance, exactly, in bounded memory."""
    from scipy.spatial.distance import cdist

    x = np.asarray(desc, np.float64)
    n = len(x)
    best: list[tuple[float, int, int]] = []
    for s in range(0, n, block):
        e = min(s + block, n)
        d = cdist(x[s:e], x)
        d[(np.arange(s, e)[:, None] >= np.arange(n)[None, :])] = np.inf  # keep j > i
        flat = d.ravel()
        take = min(m, flat.size)
        for f in np.argpartition(flat, take - 1)[:take] if take else []:
            if np.isfinite(flat[f]):
                best.append((float(flat[f]), s + int(f) // n, int(f) % n))
        best = sorted(best)[:m]
    return [(i, j, d) for d, i, j in best]


class Audit:
    """One audit of one source against one backend; :meth:`run` returns (data, thumbnails, plots)."""

    def __init__(self, opts: dict, source: Any, backend: Any, command: str = ""):
        self.o, self.source, self.backend, self.command = opts, source, backend, command
        self.images: list[tuple[str, bytes]] = []  # generator: the main sample's bytes, for thumbnails
        self.sample_seeds: list[dict] = []
        self.timing: dict[str, float] = {}
        self.bar = None

    # -- requests -------------------------------------------------------------------------------

    def params(self) -> dict:
        o = self.o
        p: dict[str, Any] = {"k": o["k"], "detector": o["detector"], "vectors": 1, "attributes": 1}
        if o.get("threshold") is not None:
            p["threshold"] = float(o["threshold"])
        elif o.get("false_match_rate") is not None:
            p["false_match_rate"] = float(o["false_match_rate"])
        if o.get("resolution_match") is not None:
            p["resolution_match"] = int(bool(o["resolution_match"]))
        if o.get("pair_false_match_rate") is not None:
            p["pair_false_match_rate"] = float(o["pair_false_match_rate"])
        return p

    def chunk(self) -> int:
        limit = getattr(self.backend, "max_files", None)
        return min(self.o["chunk"], limit) if limit else self.o["chunk"]

    def post(
        self, images: list[tuple[str, bytes]], into: Batch, first: list[dict], detector: str | None = None
    ) -> None:
        """Post ``images`` in chunks; every answer must carry the same thresholds (one index)."""
        c = self.chunk()
        params = self.params() | ({"detector": detector} if detector else {})
        for s in range(0, len(images), c):
            body = self.backend.neighbors(images[s : s + c], params)
            if not first:
                first.append(body)
            elif body["calibration"] != first[0]["calibration"]:
                raise AuditError(EXIT_SERVER, "the thresholds changed between requests (was the index replaced?)")
            into.add(body)
            if self.bar is not None:
                self.bar.update(len(images[s : s + c]))

    def gen_sample(self, n: int, seed: int, prefix: str) -> list[tuple[str, bytes]]:
        return self.source.sample(n, seed, prefix=prefix, upscale=self.o["upscale"])

    def main_plan(self) -> tuple[int, list]:
        """(images, loaders of the main sample's chunks): loaded lazily, so a huge folder streams."""
        o, src, c = self.o, self.source, self.chunk()
        if src.kind == "folder":
            total = len(src.files)
            n = total if o["n"] is None else min(o["n"], total)
            idx = (
                list(range(total))
                if n == total
                else sorted(np.random.default_rng(sub_seed(o["seed"], 0)).choice(total, n, replace=False).tolist())
            )
            return n, [lambda ix=idx[i : i + c]: src.read(ix) for i in range(0, n, c)]
        n = o["n"] or GENERATOR_N
        plan = []
        for ci, start in enumerate(range(0, n, c)):
            m, seed = min(c, n - start), sub_seed(o["seed"], 0, ci)
            self.sample_seeds.append({"n": m, "seed": seed, "prefix": f"sample{ci:03d}_"})
            plan.append(lambda m=m, seed=seed, ci=ci: self.gen_sample(m, seed, f"sample{ci:03d}_"))
        return n, plan

    # -- the audit ------------------------------------------------------------------------------

    def run(self) -> tuple[dict, dict[str, str], dict[str, str]]:
        o = self.o
        t_all = time.perf_counter()
        n_main, plan = self.main_plan()
        ref_source = None
        if o.get("reference_real"):
            from .sources import FolderSource

            ref_source = FolderSource.open(o["reference_real"])
        n_trials = sum(o["batch_sizes"]) * o["trials"] if self.source.kind == "generator" else 0
        total = n_main + n_trials + (len(ref_source.files) if ref_source else 0)
        self.bar = progress_bar(total=total, unit="img", desc="auditing", enabled=o["progress"])
        first: list[dict] = []
        try:
            t0 = time.perf_counter()
            main = Batch()
            for load in plan:
                imgs = load()
                if self.source.kind == "generator":
                    self.images.extend(imgs)
                self.post(imgs, main, first)
            if len({e["image"] for e in main.entries}) != len(main.entries):
                raise AuditError(EXIT_USAGE, "image names in the sample are not unique")
            self.timing["main_pass_s"] = time.perf_counter() - t0
            th = thresholds.Thresholds.from_dict(first[0]["calibration"])
            t0 = time.perf_counter()
            trials = self.trials(th, first) if self.source.kind == "generator" else []
            self.timing["trials_s"] = time.perf_counter() - t0
            ref = None
            if ref_source is not None:
                t0 = time.perf_counter()
                ref = Batch()
                ref_imgs = ref_source.read(list(range(len(ref_source.files))))
                if o.get("reference_downscale"):
                    from .sources import render_at

                    ref_imgs = [(n, render_at(b, o["reference_downscale"], o["upscale"])) for n, b in ref_imgs]
                self.post(ref_imgs, ref, first, o.get("reference_detector"))
                self.timing["reference_real_s"] = time.perf_counter() - t0
        finally:
            self.bar.close()
            self.bar = None
        t0 = time.perf_counter()
        training = self.backend.reference(
            faces=len(main.ok),
            seed=o["seed"],
            false_match_rate=None if o.get("threshold") is not None else o.get("false_match_rate"),
            threshold=o.get("threshold"),
            pair_false_match_rate=o.get("pair_false_match_rate"),
            cells=o.get("ct_cells"),
            training_set_size=o.get("training_set_size"),
        )
        if training["calibration"] != first[0]["calibration"]:
            raise AuditError(EXIT_SERVER, "the training side's thresholds differ from the requests' (another index?)")
        self.timing["training_side_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = self.statistics(main, trials, ref, th, training, first[0])
        self.timing["statistics_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        from .report.assets import figures, thumbnails

        thumbs = thumbnails(data, self.source, self.backend, self.images, o["progress"])
        figs = figures(data, training)
        self.timing["thumbnails_plots_s"] = time.perf_counter() - t0
        self.timing["total_s"] = time.perf_counter() - t_all
        data["timing"] = self.timing
        return data, thumbs, figs

    def trials(self, th: thresholds.Thresholds, first: list[dict]) -> list[dict]:
        """Generator: fresh batches of each size; their pairs, compared locally."""
        out = []
        for s in self.o["batch_sizes"]:
            for t in range(self.o["trials"]):
                seed = sub_seed(self.o["seed"], 1, s, t)
                b = Batch()
                self.post(self.gen_sample(s, seed, f"trial_s{s}_t{t:03d}_"), b, first)
                pairs = pair_batch(b.descriptors, b.pixels, th)
                out.append({"s": s, "trial": t, "seed": seed, "faces": len(b.ok), "pairs": pairs})
        return out

    # -- statistics -----------------------------------------------------------------------------

    def statistics(
        self, main: Batch, trials: list[dict], ref: Batch | None, th: thresholds.Thresholds, training: dict, first: dict
    ) -> dict:
        o = self.o
        entries = main.entries
        ok = [entries[i] for i in main.ok]
        desc, pix = main.descriptors, main.pixels
        nulls = {
            k: np.asarray([np.nan if v is None else v for v in a], np.float64) for k, a in training["nulls"].items()
        }
        pairs = pair_batch(desc, pix, th)
        support_blocks = self.support(len(main.ok), pairs, trials, th, ref)
        mem = self.memorization(entries, main, ref, th, nulls)
        ct_block = self.ct_test(main, ref, training)
        ident_null = training["identity_null"]
        ident_source = "training"
        if ref is not None:
            rn = identities.pool_from_reference(
                [e["semantic"][0]["identity"] for e in (ref.entries[i] for i in ref.ok) if e["semantic"]],
                len(ok),
            )
            if rn is not None:
                ident_null, ident_source = rn, "reference_real"
        idents = identities.concentration(entries, ident_null, seed=o["seed"])
        idents["null_source"] = ident_source if idents["null"] else None
        dist = self.distribution(desc)
        decisions = verdict.decide(
            mem, ct_block, idents, o["alpha"], "reference_real" if ref is not None else "training"
        )
        counts = Counter(e["status"] for e in entries)
        collisions = {
            ch: {
                "threshold": (getattr(th, f"collision_{ch}").threshold if getattr(th, f"collision_{ch}") else None),
                "count": len(pairs[ch]),
                "pairs": [
                    {
                        "a": entries[main.ok[i]]["image"],
                        "b": entries[main.ok[j]]["image"],
                        "a_index": main.ok[i],
                        "b_index": main.ok[j],
                        "distance": float(d) if ch == "semantic" else int(round(d)),
                    }
                    for i, j, d in pairs[ch][:PAIRS_LISTED]
                ],
                "listed": min(len(pairs[ch]), PAIRS_LISTED),
            }
            for ch in ("semantic", "pixel")
        }
        data = {
            "format": FORMAT,
            "created_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": self.command,
            "seed": o["seed"],
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items() if k != "progress"},
            "source": {
                "kind": self.source.kind,
                "describe": self.source.describe,
                "upscale": o["upscale"] if self.source.kind == "generator" else None,
                "sample_seeds": self.sample_seeds or None,
            },
            "backend": {"mode": self.backend.mode, "where": self.backend.where},
            "params": first["params"],
            "index": self.backend.info(),
            "calibration": first["calibration"],
            "scope": training["scope"],
            "summary": {
                "images": len(entries),
                "faces": counts.get("ok", 0),
                "counts": {s: counts.get(s, 0) for s in faces.STATUSES},
                "reference_real": None
                if ref is None
                else {
                    "folder": str(o["reference_real"]),
                    "detector": o.get("reference_detector") or o["detector"],
                    "downscale": o.get("reference_downscale"),
                    "images": len(ref.entries),
                    "faces": len(ref.ok),
                },
                **decisions,
            },
            "neighbors": {"images": entries},
            "memorization": mem,
            "support": support_blocks["support"],
            "support_reference": training["support_reference"],
            "crossing": support_blocks["crossing"],
            "collisions": collisions,
            "birthday": support_blocks["birthday"],
            "ct_test": ct_block,
            "identities": idents,
            "distribution": dist,
            "grid": self.grid(entries, th),
            "rows": self.rows(entries, main, pairs, th),
        }
        data["birthday"]["top_pairs"] = self.top_pairs(entries, main, pairs, th)
        om = omissions.analyse(entries, training["omissions"], seed=o["seed"])
        data["attributes"], data["geometry"] = om["attributes"], om["geometry"]
        data["histograms"] = self.histograms(ok, ref, nulls, th)
        return data

    def support(
        self, n_faces: int, pairs: dict, trials: list[dict], th: thresholds.Thresholds, ref: Batch | None = None
    ) -> dict:
        """Support from every pair of the main sample and of every trial batch, the 50% crossing, and
        the trial rows of the birthday plot."""
        o = self.o
        out: dict = {"support": {}, "crossing": {}}
        generator = self.source.kind == "generator"
        rows = []
        if generator:
            for s in o["batch_sizes"]:
                ts = [t for t in trials if t["s"] == s]
                rows.append(
                    self._row(
                        s,
                        [t["faces"] for t in ts],
                        [len(t["pairs"]["semantic"]) for t in ts],
                        [len(t["pairs"]["pixel"]) for t in ts],
                    )
                    | {"seeds": [t["seed"] for t in ts]}
                )
            protocol = (
                f"Generator mode: every trial is a fresh batch of s samples (seeded); a trial collides when two of its "
                f"faces are under the channel's collision threshold. The support estimate pools every pair of the "
                f"{n_faces} main-sample faces and of all {len(trials)} trial batches."
            )
        else:
            A = {ch: self._adjacency(n_faces, pairs[ch]) for ch in ("semantic", "pixel")}
            for s in o["batch_sizes"]:
                if s > n_faces:
                    continue
                rng = np.random.default_rng(sub_seed(o["seed"], 1, s))
                subs = [np.sort(rng.choice(n_faces, s, replace=False)) for _ in range(o["trials"])]
                cs = {ch: [int(np.triu(A[ch][np.ix_(x, x)], 1).sum()) for x in subs] for ch in A}
                rows.append(self._row(s, [s] * len(subs), cs["semantic"], cs["pixel"]))
            protocol = (
                f"Folder mode: the {n_faces} audited faces are the population. The support estimate uses every pair "
                f"among them; the trial rows are random subsets of s of them (seeded), shown for the classic "
                f"birthday plot, and the 50% crossing is read from the pooled pair rate (subsets of one folder are "
                f"not independent trials)."
            )
        ref_rates: dict[str, dict] = {}
        if ref is not None and len(ref.ok) > 1:
            # A check of the chance rate f in the generated faces' domain: how often pairs of real faces
            # of (almost surely) different people collide after the same pipeline.
            n_ref = len(ref.ok)
            for ch, found in pair_batch(ref.descriptors, ref.pixels, th).items():
                ref_rates[ch] = {
                    "pairs": n_ref * (n_ref - 1) // 2,
                    "colliding": len(found),
                    "rate": len(found) / (n_ref * (n_ref - 1) / 2),
                    "interval": baselines.clopper_pearson(len(found), n_ref * (n_ref - 1) // 2),
                }
        for ch in ("semantic", "pixel"):
            pt = getattr(th, f"collision_{ch}")
            if pt is None:
                out["support"][ch] = out["crossing"][ch] = None
                continue
            batches = [support.Batch(n_faces, tuple((i, j) for i, j, _ in pairs[ch]))]
            batches += [support.Batch(t["faces"], tuple((i, j) for i, j, _ in t["pairs"][ch])) for t in trials]
            f = pt.per_pair_false_match_rate
            est = support.estimate(batches, f, seed=o["seed"])
            out["support"][ch] = {
                **est,
                "threshold": pt.threshold,
                "per_pair_false_match_rate": f,
                "same_identity_recall": pt.same_identity_recall,
                "reference_real_pair_rate": ref_rates.get(ch),
                "chance_rate_check": self._chance_rate_check(batches, f, ref_rates.get(ch), o["seed"]),
            }
            if generator and trials:
                faces_found = [t["faces"] for t in trials]
                collided = [len(t["pairs"][ch]) > 0 for t in trials]
                cr = support.crossing_fit(faces_found, collided, pt.per_pair_false_match_rate)
            else:
                cr = self._crossing_from_rate(est, pt.per_pair_false_match_rate)
            out["crossing"][ch] = cr
        out["birthday"] = {
            "protocol": protocol,
            "trials": o["trials"],
            "batch_sizes": list(o["batch_sizes"]),
            "rows": rows,
        }
        return out

    @staticmethod
    def _chance_rate_check(batches: list, f: float, ref_rate: dict | None, seed: int) -> dict | None:
        """Whether the calibrated chance rate f holds in the generated faces' domain, from the real
        reference faces' own pair collisions; and the support with the reference's rate as the chance
        rate. Why: f is measured on training-domain pairs; where real strangers collide more often after
        the same pipeline (sharper or wilder photos, another detector), f·C(s,2) undercounts the chance
        pairs and the support estimate is biased low."""
        if ref_rate is None:
            return None
        lo, hi = ref_rate["interval"]
        out = {
            "ratio": ref_rate["rate"] / f if f > 0 else None,
            "consistent": bool(lo <= f <= hi),
            "support_at_reference_rate": None,
        }
        if ref_rate["colliding"] > 0:
            alt = support.estimate(batches, ref_rate["rate"], seed=seed)
            out["support_at_reference_rate"] = {
                k: alt[k] for k in ("estimate", "interval", "lower_bound", "note") if k in alt
            }
        if not out["consistent"]:
            out["note"] = (
                f"real faces of different people collide {ref_rate['rate'] / f:.3g}x as often as the calibrated "
                f"f in this domain: the chance pairs are {'under' if ref_rate['rate'] > f else 'over'}counted, and "
                f"the support estimate is biased {'low' if ref_rate['rate'] > f else 'high'}"
            )
        return out

    @staticmethod
    def _adjacency(n: int, pairs: list) -> np.ndarray:
        a = np.zeros((n, n), bool)
        for i, j, _ in pairs:
            a[i, j] = a[j, i] = True
        return a

    @staticmethod
    def _row(s: int, nf: list[int], cs: list[int], cp: list[int]) -> dict:
        def block(c: list[int]) -> dict:
            return {
                "with_collision": int(sum(v > 0 for v in c)),
                "share": float(np.mean([v > 0 for v in c])) if c else None,
                "mean_pairs": float(np.mean(c)) if c else None,
                "pairs": c,
            }

        return {
            "s": s,
            "trials": len(cs),
            "faces_mean": float(np.mean(nf)) if nf else 0.0,
            "semantic": block(cs),
            "pixel": block(cp),
        }

    @staticmethod
    def _crossing_from_rate(est: dict, f: float) -> dict:
        """Folder mode: the crossing of P(s) = 1 − exp(−C(s,2)·q) at the pooled rate q, its interval
        from the rate's interval."""
        out = {
            "s50": None,
            "interval": None,
            "support": est["estimate"],
            "support_interval": est["interval"],
            "rule_s2": None,
            "rate": est["rate"],
            "method": "from the pooled pair rate of all audited faces: C(s50,2)·q = ln 2; interval from the rate's",
        }
        q = est["rate"]
        if q:
            out["s50"] = support.s50(q)
            out["rule_s2"] = out["s50"] ** 2
        if est["rate_interval"]:
            lo, hi = est["rate_interval"]
            out["interval"] = [support.s50(hi), support.s50(lo) if lo > 0 else None]
        return out

    def memorization(
        self,
        entries: list[dict],
        main: Batch,
        ref: Batch | None,
        th: thresholds.Thresholds,
        nulls: dict[str, np.ndarray],
    ) -> dict:
        """:func:`service.stats.memorization.memorization` over the whole sample, against the training side's
        strangers; with a reference sample, also two-sample tests against it (then the p-values
        that decide)."""
        pos = main.ok
        names = [entries[i]["image"] for i in pos]
        sem = [entries[i]["semantic"][0] for i in pos]
        pix = [entries[i]["pixel"][0] for i in pos]
        sem_d = np.array([s["distance"] for s in sem], np.float64)
        pix_d = np.array([p["distance"] for p in pix], np.float64)
        mem = memorization.memorization(
            names,
            sem_d,
            [{"file": s["file"], "identity": s["identity"]} for s in sem],
            pix_d,
            [{"file": p["file"], "identity": p["identity"]} for p in pix],
            th,
            pixels.PIXEL_DIM,
            positions=pos,
            calibration=nulls,
        )
        n = len(pos)
        p_values = {
            "same_person": (mem["same_person"] or {}).get("baseline", {}).get("p_value"),
            "copies_semantic": ((mem["likely_copies"].get("semantic") or {}).get("baseline") or {}).get("p_value"),
            "copies_pixel": ((mem["likely_copies"].get("pixel") or {}).get("baseline") or {}).get("p_value"),
        }
        null = "training"
        if ref is not None and ref.ok:
            rs = np.array([ref.entries[i]["semantic"][0]["distance"] for i in ref.ok], np.float64)
            rp = np.array([ref.entries[i]["pixel"][0]["distance"] for i in ref.ok], np.float64)
            for key, block, values, thr, d in (
                ("same_person", mem["same_person"], rs, th.identity, sem_d),
                ("copies_semantic", mem["likely_copies"].get("semantic"), rs, th.semantic_copy, sem_d),
                ("copies_pixel", mem["likely_copies"].get("pixel"), rp, th.pixel_copy, pix_d),
            ):
                if block is None or thr is None:
                    continue
                block["reference_real"] = baselines.rate_test(int(np.sum(d < thr)), n, values, thr, False)
                p_values[key] = block["reference_real"]["p_value"]
            null = "reference_real"
        mem["null"] = null
        mem["p_values"] = p_values
        return mem

    def ct_test(self, main: Batch, ref: Batch | None, training: dict) -> dict:
        cells = training["ct"]
        centroids = np.asarray(cells["centroids"], np.float64)
        gen_d = np.array([main.entries[i]["semantic"][0]["distance"] for i in main.ok], np.float64)
        gen_c = ct.assign(main.descriptors, centroids) if len(gen_d) else np.zeros(0, np.int64)
        if ref is not None and ref.ok:
            held_d = np.array([ref.entries[i]["semantic"][0]["distance"] for i in ref.ok], np.float64)
            held_c = ct.assign(ref.descriptors, centroids)
            source = "real reference faces (--reference-real), their nearest training face"
        else:
            held_d = np.asarray(cells["held_out_distance"], np.float64)
            held_c = np.asarray(cells["held_out_cells"], np.int64)
            source = cells["held_out_source"]
        out = ct.ct_test(gen_d, gen_c, held_d, held_c, cells["cells"])
        out["held_out_source"] = source
        return out

    def distribution(self, desc: np.ndarray) -> dict:
        from ..stats.distribution import NOT_COMPARABLE, distribution_distances

        train = self.backend.train_descriptors()
        if train is None:
            return {
                "note": NOT_COMPARABLE,
                "error": "Server mode: the service never hands out training descriptors, so the distribution "
                "distances need an in-process audit (--index).",
            }
        if len(desc) < 5:
            return {"note": NOT_COMPARABLE, "error": f"only {len(desc)} faces: too few for distribution distances"}
        return distribution_distances(desc, train, k=3, seed=self.o["seed"])

    # -- per-image views ------------------------------------------------------------------------

    def grid(self, entries: list[dict], th: thresholds.Thresholds) -> dict:
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
        return {
            "rows": rows[: self.o["grid_max"]],
            "expanded": self.o["grid_expanded"],
            "omitted": max(0, len(rows) - self.o["grid_max"]),
            "no_face": [
                {"image": e["image"], "status": e["status"], "reason": e["reason"]}
                for e in entries
                if e["status"] != "ok"
            ],
        }

    @staticmethod
    def rows(entries: list[dict], main: Batch, pairs: dict, th: thresholds.Thresholds) -> list[dict]:
        """One row per audited image (the CSV): status, top-1 in each channel, the flags."""
        partners = {ch: Counter() for ch in pairs}
        for ch, ps in pairs.items():
            for i, j, _ in ps:
                partners[ch][main.ok[i]] += 1
                partners[ch][main.ok[j]] += 1
        out = []
        for i, e in enumerate(entries):
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
                    "copy_semantic": (sem["distance"] < th.semantic_copy)
                    if ok and th.semantic_copy is not None
                    else None,
                    "copy_pixel": (pix["distance"] < th.pixel_copy) if ok and th.pixel_copy is not None else None,
                    "collisions_semantic": partners["semantic"][i] if ok else None,
                    "collisions_pixel": partners["pixel"][i] if ok else None,
                }
            )
        return out

    @staticmethod
    def top_pairs(entries: list[dict], main: Batch, pairs: dict, th: thresholds.Thresholds) -> list[dict]:
        pix = {(i, j): d for i, j, d in pairs["pixel"]}
        sem_thr = th.collision_semantic.threshold if th.collision_semantic else None
        out = []
        for r, (i, j, d) in enumerate(closest_pairs(main.descriptors, 20)):
            out.append(
                {
                    "rank": r + 1,
                    "a": entries[main.ok[i]]["image"],
                    "b": entries[main.ok[j]]["image"],
                    "a_index": main.ok[i],
                    "b_index": main.ok[j],
                    "distance": d,
                    "collides": sem_thr is not None and d < sem_thr,
                    "pixel_duplicate": (i, j) in pix,
                    "pixel_distance": pix.get((i, j)),
                }
            )
        return out

    @staticmethod
    def histograms(ok: list[dict], ref: Batch | None, nulls: dict[str, np.ndarray], th: thresholds.Thresholds) -> dict:
        g_sem = [e["semantic"][0]["distance"] for e in ok]
        g_pix = [e["pixel"][0]["distance"] for e in ok]
        out: dict = {"generated_semantic": g_sem, "generated_pixel": g_pix, "stats": {}}

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
        summ("training → training leave-one-out, semantic", nulls["sem_loo"], th.semantic_copy)
        summ("training → nearest other identity, semantic", nulls["sem_diff_id"], th.semantic_copy)
        summ("training → training leave-one-out, pixel L1", nulls["pix_loo"], th.pixel_copy)
        summ("training → nearest other identity, pixel L1", nulls["pix_diff_id"], th.pixel_copy)
        if ref is not None and ref.ok:
            rs = [ref.entries[i]["semantic"][0]["distance"] for i in ref.ok]
            rp = [ref.entries[i]["pixel"][0]["distance"] for i in ref.ok]
            out["reference_semantic"], out["reference_pixel"] = rs, rp
            summ("reference real faces → training, semantic", rs, th.semantic_copy)
            summ("reference real faces → training, pixel L1", rp, th.pixel_copy)
        return out
