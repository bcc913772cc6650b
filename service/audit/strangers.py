"""The null the generated faces are compared with: strangers of the training domain, or real ones.

Why one object: a generated face is "close" to its nearest training face only by comparison with how
close a stranger's face gets. Without ``--reference-real`` the strangers are the index's own (each
training face's nearest other-identity face, from the training side); with it, real faces of people
not in the index, run through the same pipeline (:class:`RealStrangers`), which then decide. Each
statistic asks the object for its side of the comparison, so it has one code path for both nulls.
"""

from __future__ import annotations

import logging

import numpy as np

from ..stats import baselines, ct, identities, support
from ..stats.collisions import batch_pairs
from ..stats.thresholds import Thresholds
from .run import Answers

log = logging.getLogger(__name__)


class TrainingStrangers:
    """The training domain's strangers, as the training side (``GET /v1/reference``) describes them."""

    name = "training"  # the decisions' null (``summary.decisions.null``)

    def __init__(self, training: dict):
        self.training = training
        # The training side's null distances (None where JSON had NaN), as float arrays.
        self.nulls = {
            k: np.asarray([np.nan if v is None else v for v in a], np.float64) for k, a in training["nulls"].items()
        }

    def summary(self) -> dict | None:
        """``summary.reference_real``: what the real reference was (None: there is none)."""
        return None

    def test_rates(self, mem: dict, generated: dict[str, np.ndarray], thresholds: Thresholds) -> None:
        """Set ``mem["p_values"]`` (the ones that decide) and ``mem["null"]``; the training-side
        baselines are in ``mem`` already (:func:`service.stats.memorization.memorization`)."""
        likely = mem["likely_copies"]
        mem["null"] = self.name
        mem["p_values"] = {
            "same_person": (mem["same_person"] or {}).get("baseline", {}).get("p_value"),
            "copies_semantic": ((likely.get("semantic") or {}).get("baseline") or {}).get("p_value"),
            "copies_pixel": ((likely.get("pixel") or {}).get("baseline") or {}).get("p_value"),
        }

    def identity_null(self, faces: int, seed: int) -> tuple[dict, str]:
        """(the identity-concentration null for ``faces`` generated faces, its source)."""
        return self.training["identity_null"], "training"

    def leak_null(self, thresholds: Thresholds) -> tuple[list, list, str | None]:
        """The per-identity null of :mod:`service.stats.leaks`: (each stranger's top-1 identity, whether
        it is the same person, the source). Here the identity null's pool — one face per training
        identity, its nearest other-identity face, so photos of one person do not count as several
        strangers — under the identity threshold; empty when the training side has no distances."""
        pool = self.training.get("identity_null") or {}
        distances = pool.get("distances")
        if not distances or thresholds.identity is None:
            return [], [], None
        same = [d is not None and d < thresholds.identity for d in distances]
        return list(pool["pool"]), same, "training"

    def held_out(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """C_T's held-out side: (nearest-training distances, their cells, where they come from)."""
        cells = self.training["ct"]
        return (
            np.asarray(cells["held_out_distance"], np.float64),
            np.asarray(cells["held_out_cells"], np.int64),
            cells["held_out_source"],
        )

    def pair_rates(self, thresholds: Thresholds) -> dict[str, dict]:
        """Per channel, how often pairs of strangers in the generated faces' domain collide (the check
        of the chance rate f); the training domain's rate is f itself, so no check."""
        return {}

    def pair_batches(self, thresholds: Thresholds) -> dict[str, list[support.Batch]]:
        """Per channel, the strangers' own pairs as support batches: the chance rate in the generated
        faces' domain that the support is re-based on (none here: f is the training domain's)."""
        return {}

    def distances(self) -> dict[str, list]:
        """The real strangers' own nearest-training distances per channel, for the histograms (none
        here: the training nulls are drawn in any case)."""
        return {}


class RealStrangers(TrainingStrangers):
    """Real faces of people not in the index (``--reference-real``), through the same pipeline: the
    domain-matched null. Where the reference has too few faces for a statistic, that statistic
    falls back to the training domain's strangers, as it says."""

    name = "reference_real"

    def __init__(self, training: dict, answers: Answers, options: dict):
        super().__init__(training)
        self.answers, self.options = answers, options
        self._pairs: dict[str, list[support.Batch]] | None = None

    def summary(self) -> dict:
        options, answers = self.options, self.answers
        return {
            "folder": str(options["reference_real"]),
            "detector": options.get("reference_detector") or options["detector"],
            "downscale": options.get("reference_downscale"),
            "images": len(answers.entries),
            "faces": len(answers.ok),
        }

    def test_rates(self, mem: dict, generated: dict[str, np.ndarray], thresholds: Thresholds) -> None:
        """Fisher's exact test of the generated and the reference faces' rates under each threshold;
        these p-values decide."""
        super().test_rates(mem, generated, thresholds)
        if not self.answers.ok:
            return
        ref_sem, ref_pix = self.answers.top1_distances("semantic"), self.answers.top1_distances("pixel")
        gen_sem, gen_pix = generated["semantic"], generated["pixel"]
        n = len(gen_sem)
        for key, block, values, threshold, gen in (
            ("same_person", mem["same_person"], ref_sem, thresholds.identity, gen_sem),
            ("copies_semantic", mem["likely_copies"].get("semantic"), ref_sem, thresholds.semantic_copy, gen_sem),
            ("copies_pixel", mem["likely_copies"].get("pixel"), ref_pix, thresholds.pixel_copy, gen_pix),
        ):
            if block is None or threshold is None:
                continue
            block["reference_real"] = baselines.rate_test(int(np.sum(gen < threshold)), n, values, threshold, False)
            mem["p_values"][key] = block["reference_real"]["p_value"]
        mem["null"] = self.name

    def identity_null(self, faces: int, seed: int) -> tuple[dict, str]:
        top1 = [e["semantic"][0]["identity"] for e in self.answers.ok_entries if e["semantic"]]
        null = identities.pool_from_reference(top1, faces)
        return (null, "reference_real") if null is not None else super().identity_null(faces, seed)

    def leak_null(self, thresholds: Thresholds) -> tuple[list, list, str | None]:
        top1 = [e["semantic"][0] for e in self.answers.ok_entries if e["semantic"]]
        if not top1:
            return super().leak_null(thresholds)
        return [t["identity"] for t in top1], [bool(t["same_person"]) for t in top1], "reference_real"

    def held_out(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        if not self.answers.ok:
            return super().held_out(centroids)
        return (
            self.answers.top1_distances("semantic"),
            ct.assign(self.answers.descriptors, centroids),
            "real reference faces (--reference-real), their nearest training face",
        )

    def pair_rates(self, thresholds: Thresholds) -> dict[str, dict]:
        # How often pairs of real faces of (almost surely) different people collide after the same pipeline.
        n = len(self.answers.ok)
        return {ch: support.pair_rate(n, len(b[0].pairs)) for ch, b in self.pair_batches(thresholds).items()}

    def pair_batches(self, thresholds: Thresholds) -> dict[str, list[support.Batch]]:
        n = len(self.answers.ok)
        if n < 2:
            return {}
        if self._pairs is None:  # computed once: the support and the chance-rate check both read them
            found = batch_pairs(self.answers.descriptors, self.answers.pixels, thresholds)
            self._pairs = {channel: [support.Batch.from_pairs(n, pairs)] for channel, pairs in found.items()}
        return self._pairs

    def distances(self) -> dict[str, list]:
        if not self.answers.ok:
            return {}
        ok = self.answers.ok_entries
        return {channel: [e[channel][0]["distance"] for e in ok] for channel in ("semantic", "pixel")}


def strangers(training: dict, reference: Answers | None, options: dict) -> TrainingStrangers:
    """The null of this audit: the real reference when one was audited, else the training domain's."""
    return TrainingStrangers(training) if reference is None else RealStrangers(training, reference, options)
