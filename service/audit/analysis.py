"""The audit's statistics: plain functions of what the passes returned (:class:`service.audit.run.Passes`)
and the options, no backend; :func:`report_data` assembles the report's data dict, ``facemem-audit/3``.

Every pair of faces inside the main sample and inside each trial batch is compared locally from the
returned vectors, with the service's own :func:`service.stats.collisions.close_pairs`; the statistics
modules of :mod:`service.stats` (support, baselines, C_T, identities, omissions, distribution,
verdict) do the rest, against the training side and the null of :mod:`service.audit.strangers`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from indexer import faces, pixels

from ..stats import ct, identities, leaks, memorization, omissions, split, support, verdict
from ..stats.collisions import batch_pairs
from ..stats.thresholds import Thresholds
from . import views
from .progress import Stages
from .run import Answers, Passes, Trial, sub_seed
from .strangers import TrainingStrangers, strangers

log = logging.getLogger(__name__)

FORMAT = "facemem-audit/3"
CHANNELS = ("semantic", "pixel")
STAGES = [  # the statistics' steps, as the progress bar names them
    "colliding pairs",
    "support",
    "memorization, C_T, identities",
    "leaks",
    "distribution distances",
    "per-image views",
    "closest pairs",
    "omissions",
]
SUPPORT_CAVEAT = (
    "no real faces of the generated domain (--reference-real): the support has no number, only the excess "
    "collision rate over the training domain's chance rate f; generated faces of another domain collide by "
    "chance far more often (46× f for wild photos, 2,400× at 32 px), which would make a generator of new people "
    "look small"
)


def report_data(passes: Passes, options: dict, provenance: dict) -> dict:
    """The report's data dict (without ``timing``); ``provenance`` holds ``command``, ``source``,
    ``backend`` and ``index`` (what was audited against what), which the statistics do not read."""
    thresholds = Thresholds.from_dict(passes.first["calibration"])
    main, training = passes.main, passes.training
    st = Stages(STAGES, "statistics", enabled=bool(options.get("progress")))
    with st("colliding pairs"):
        null = strangers(training, passes.reference, options)
        pairs = batch_pairs(main.descriptors, main.pixels, thresholds)
    generator = provenance["source"]["kind"] == "generator"
    with st("support"):
        support_blocks = support_statistics(len(main.ok), pairs, passes.trials, thresholds, null, options, generator)
    with st("memorization, C_T, identities"):
        mem = memorization_statistics(main, thresholds, null)
        ct_block = ct_test(main, null, training)
        idents = identity_concentration(main, null, options["seed"])
        held_out = held_out_split(main, thresholds, training, options)
        decisions = verdict.decide(mem, ct_block, idents, options["alpha"], null.name, split=held_out)
    with st("leaks"):
        leak_block = leak_statistics(main, null, training, thresholds)
    counts = Counter(e["status"] for e in main.entries)
    data = {
        "format": FORMAT,
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": provenance["command"],
        "seed": options["seed"],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if k != "progress"},
        "source": provenance["source"],
        "backend": provenance["backend"],
        "params": passes.first["params"],
        "index": provenance["index"],
        "calibration": passes.first["calibration"],
        "scope": training["scope"],
        "summary": {
            "images": len(main.entries),
            "faces": counts.get("ok", 0),
            "counts": {s: counts.get(s, 0) for s in faces.STATUSES},
            "reference_real": null.summary(),
            **decisions,
        },
        "neighbors": {"images": main.entries},
        "memorization": mem,
        "support": support_blocks["support"],
        "support_reference": training["support_reference"],
        "crossing": support_blocks["crossing"],
        "collisions": views.collisions(main, pairs, thresholds),
        "birthday": support_blocks["birthday"],
        "ct_test": ct_block,
        "identities": idents,
        "leaks": leak_block,
        "held_out_split": held_out,
    }
    with st("distribution distances"):
        data["distribution"] = distribution(main.descriptors, passes.train_descriptors, options["seed"])
    with st("per-image views"):
        data["grid"] = views.grid(main.entries, thresholds, options["grid_max"], options["grid_expanded"])
        data["rows"] = views.rows(main, pairs, thresholds, {r["identity"] for r in leak_block["rows"]})
    with st("closest pairs"):
        data["birthday"]["top_pairs"] = views.top_pairs(main, pairs, thresholds)
    with st("omissions"):
        om = omissions.analyse(main.entries, training["omissions"], seed=options["seed"])
    data["attributes"], data["geometry"] = om["attributes"], om["geometry"]
    data["histograms"] = views.histograms(main.ok_entries, null, thresholds)
    if null.name == "training":
        data["summary"]["support_caveat"] = SUPPORT_CAVEAT
    st.close()
    data["statistics_stages"] = st.seconds
    return data


# ----------------------------------------------------------------------------- support (birthday paradox)


def support_statistics(
    n_faces: int,
    pairs: dict,
    trials: list[Trial],
    thresholds: Thresholds,
    null: TrainingStrangers,
    options: dict,
    generator: bool,
) -> dict:
    """Support from every pair of the main sample and of every trial batch, the 50% crossing, and
    the trial rows of the birthday plot."""
    trial_pairs = [batch_pairs(t.answers.descriptors, t.answers.pixels, thresholds) for t in trials]
    trial_faces = [len(t.answers.ok) for t in trials]
    if generator:
        rows = _generator_rows(trials, trial_faces, trial_pairs, options["batch_sizes"])
        protocol = (
            f"Generator mode: every trial is a fresh batch of s samples (seeded); a trial collides when two of its "
            f"faces are under the channel's collision threshold. The support estimate pools every pair of the "
            f"{n_faces} main-sample faces and of all {len(trials)} trial batches."
        )
    else:
        rows = _subset_rows(n_faces, pairs, options)
        protocol = (
            f"Folder mode: the {n_faces} audited faces are the population. The support estimate uses every pair "
            f"among them; the trial rows are random subsets of s of them (seeded), shown for the classic "
            f"birthday plot, and the 50% crossing is read from the pooled pair rate (subsets of one folder are "
            f"not independent trials)."
        )
    reference_rates = null.pair_rates(thresholds)
    reference_batches = null.pair_batches(thresholds)
    out: dict = {"support": {}, "crossing": {}}
    for ch in CHANNELS:
        pair_threshold = getattr(thresholds, f"collision_{ch}")
        if pair_threshold is None:
            out["support"][ch] = out["crossing"][ch] = None
            continue
        f = pair_threshold.per_pair_false_match_rate
        batches = [support.Batch.from_pairs(n_faces, pairs[ch])]
        batches += [support.Batch.from_pairs(n, found[ch]) for n, found in zip(trial_faces, trial_pairs)]
        out["support"][ch] = {
            **support.in_domain(batches, f, reference_batches.get(ch), seed=options["seed"]),
            "threshold": pair_threshold.threshold,
            "per_pair_false_match_rate": f,
            "same_identity_recall": pair_threshold.same_identity_recall,
            "reference_real_pair_rate": reference_rates.get(ch),
            "chance_rate_check": support.chance_rate_check(batches, f, reference_rates.get(ch), options["seed"]),
        }
        if generator and trials:
            collided = [len(found[ch]) > 0 for found in trial_pairs]
            sizes = [t.s for t in trials]
            out["crossing"][ch] = support.crossing_fit(trial_faces, collided, f, sizes=sizes, seed=options["seed"])
        else:
            out["crossing"][ch] = support.crossing_from_rate(out["support"][ch], f)
    out["birthday"] = {
        "protocol": protocol,
        "trials": options["trials"],
        "batch_sizes": list(options["batch_sizes"]),
        "rows": rows,
    }
    return out


def _generator_rows(trials: list[Trial], trial_faces: list[int], trial_pairs: list[dict], sizes: tuple) -> list[dict]:
    """The birthday table of a generator: one row per batch size, over its fresh trial batches."""
    rows = []
    for s in sizes:
        picked = [k for k, t in enumerate(trials) if t.s == s]
        counts = {ch: [len(trial_pairs[k][ch]) for k in picked] for ch in CHANNELS}
        rows.append(_row(s, [trial_faces[k] for k in picked], counts) | {"seeds": [trials[k].seed for k in picked]})
    return rows


def _subset_rows(n_faces: int, pairs: dict, options: dict) -> list[dict]:
    """The birthday table of a folder: seeded random subsets of s of its faces, counted from the
    main sample's pairs."""
    ends = {ch: _ends(pairs[ch]) for ch in CHANNELS}
    rows = []
    for s in options["batch_sizes"]:
        if s > n_faces:
            continue
        rng = np.random.default_rng(sub_seed(options["seed"], 1, s))
        subsets = [np.sort(rng.choice(n_faces, s, replace=False)) for _ in range(options["trials"])]
        counts = {ch: [_pairs_within(n_faces, x, *ends[ch]) for x in subsets] for ch in CHANNELS}
        rows.append(_row(s, [s] * len(subsets), counts))
    return rows


def _ends(pairs) -> tuple[np.ndarray, np.ndarray]:
    """The two ends of each pair, as arrays (:class:`service.stats.collisions.Pairs` has them)."""
    if hasattr(pairs, "i"):
        return pairs.i, pairs.j
    a = np.asarray([(i, j) for i, j, _ in pairs], np.int64).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def _pairs_within(n: int, subset: np.ndarray, i: np.ndarray, j: np.ndarray) -> int:
    """How many of the pairs (i, j) have both ends in ``subset``: from the pair list, never an n×n
    adjacency matrix (2.5 GB at 50,000 faces)."""
    inside = np.zeros(n, bool)
    inside[subset] = True
    return int(np.count_nonzero(inside[i] & inside[j]))


def _row(s: int, faces_found: list[int], counts: dict[str, list[int]]) -> dict:
    """One row of the birthday table: the trials of batch size ``s`` and their pair counts per channel."""

    def block(c: list[int]) -> dict:
        return {
            "with_collision": int(sum(v > 0 for v in c)),
            "share": float(np.mean([v > 0 for v in c])) if c else None,
            "mean_pairs": float(np.mean(c)) if c else None,
            "pairs": c,
        }

    return {
        "s": s,
        "trials": len(counts["semantic"]),
        "faces_mean": float(np.mean(faces_found)) if faces_found else 0.0,
        "semantic": block(counts["semantic"]),
        "pixel": block(counts["pixel"]),
    }


# ----------------------------------------------------------------------------- against strangers


def memorization_statistics(main: Answers, thresholds: Thresholds, null: TrainingStrangers) -> dict:
    """:func:`service.stats.memorization.memorization` over the whole sample, against the training side's
    strangers; then the null's tests (with a real reference, two-sample tests against it) give the
    p-values that decide."""
    names = [e["image"] for e in main.ok_entries]
    sem = [e["semantic"][0] for e in main.ok_entries]
    pix = [e["pixel"][0] for e in main.ok_entries]
    generated = {"semantic": main.top1_distances("semantic"), "pixel": main.top1_distances("pixel")}
    mem = memorization.memorization(
        names,
        generated["semantic"],
        [{"file": s["file"], "identity": s["identity"]} for s in sem],
        generated["pixel"],
        [{"file": p["file"], "identity": p["identity"]} for p in pix],
        thresholds,
        pixels.PIXEL_DIM,
        positions=main.ok,
        calibration=null.nulls,
    )
    null.test_rates(mem, generated, thresholds)
    return mem


def ct_test(main: Answers, null: TrainingStrangers, training: dict) -> dict:
    """Meehan et al.'s C_T: the generated faces' nearest-training distances against the null's
    held-out faces', cell by cell (the training side's k-means cells)."""
    cells = training["ct"]
    centroids = np.asarray(cells["centroids"], np.float64)
    gen_d = main.top1_distances("semantic")
    gen_c = ct.assign(main.descriptors, centroids) if len(gen_d) else np.zeros(0, np.int64)
    held_d, held_c, source = null.held_out(centroids)
    out = ct.ct_test(gen_d, gen_c, held_d, held_c, cells["cells"])
    out["held_out_source"] = source
    return out


def identity_concentration(main: Answers, null: TrainingStrangers, seed: int) -> dict:
    """The generated faces' top-1 training identities against the null's pool of strangers (a permutation test)."""
    pool, source = null.identity_null(len(main.ok), seed)
    out = identities.concentration(main.entries, pool, seed=seed)
    out["null_source"] = source if out["null"] else None
    return out


def held_out_split(main: Answers, thresholds: Thresholds, training: dict, options: dict) -> dict | None:
    """The five tests against a random split of the index's people into trained and held out
    (:mod:`service.stats.split`), when ``held_out_identities`` names the held-out ones; None otherwise.
    A list that cannot split this index gives a block with an ``error`` (the decisions then use the
    ordinary null and say why) rather than losing the audit's work."""
    given = options.get("held_out_identities")
    if not given:
        return None
    path = isinstance(given, (str, Path))
    try:
        held = split.read_held_out(given) if path else {str(x) for x in given}
        images = (training.get("identity_null") or {}).get("identity_images") or {}
        top1 = [
            {
                ch: (e[ch][0]["identity"], e[ch][0]["distance"]) if e[ch] and e[ch][0]["identity"] else None
                for ch in CHANNELS
            }
            for e in main.ok_entries
        ]
        rule = {
            "identity": thresholds.identity,
            "semantic_copy": thresholds.semantic_copy,
            "pixel_copy": thresholds.pixel_copy,
        }
        out = split.split_tests(split.landings(top1, rule), images, held, seed=options["seed"])
    except split.SplitError as e:
        log.warning("held-out identities not used: %s", e)
        return {"error": str(e), "source": str(given) if path else "a list"}
    out["source"] = str(given) if path else f"a list of {len(held)} identities"
    return out


def leak_statistics(main: Answers, null: TrainingStrangers, training: dict, thresholds: Thresholds) -> dict:
    """Which training people leak (:mod:`service.stats.leaks`): each identity's same-person matches
    among the generated faces against the null's, Benjamini–Hochberg over identities."""
    generated = [
        {
            "image": e["image"],
            "identity": e["semantic"][0]["identity"],
            "file": e["semantic"][0]["file"],
            "same_person": e["semantic"][0]["same_person"],
        }
        for e in main.ok_entries
        if e["semantic"]
    ]
    null_ids, null_same, source = null.leak_null(thresholds)
    images = (training.get("identity_null") or {}).get("identity_images")
    return leaks.leaks(generated, null_ids, null_same, images, null_source=source)


def distribution(descriptors: np.ndarray, train: np.ndarray | None, seed: int) -> dict:
    """Fréchet distance and k-NN precision/recall against the training descriptors (in-process only)."""
    from ..stats.distribution import NOT_COMPARABLE, distribution_distances

    if train is None:
        return {
            "note": NOT_COMPARABLE,
            "error": "Server mode: the service never hands out training descriptors, so the distribution "
            "distances need an in-process audit (--index).",
        }
    if len(descriptors) < 5:
        return {"note": NOT_COMPARABLE, "error": f"only {len(descriptors)} faces: too few for distribution distances"}
    return distribution_distances(descriptors, train, k=3, seed=seed)
