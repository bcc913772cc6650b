"""Every audit option and its default, in one table (the CLI, the notebook call and the README read it).

Why one table: torch-fidelity's lesson. An option documented in three places drifts; here the CLI's
``--help``, :func:`service.audit.audit` and the report's method section all take their defaults and
descriptions from :data:`OPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..params import DEFAULT_DETECTOR
from ..stats import thresholds


@dataclass(frozen=True)
class Option:
    default: Any
    help: str


OPTIONS: dict[str, Option] = {
    "n": Option(None, "images audited: a seeded subset of a folder (default all); generator samples (default 100)"),
    "batch_sizes": Option((16, 32, 64, 128), "birthday batch sizes s (generator: fresh batches; folder: subsets)"),
    "trials": Option(20, "birthday-paradox trials per batch size"),
    "seed": Option(0, "seed for subsets, generator samples, bootstraps and nulls"),
    "k": Option(5, "neighbours per image and channel (service parameter k)"),
    "detector": Option(DEFAULT_DETECTOR, "face detector (service parameter): hog, cnn, or aligned (no detection)"),
    "false_match_rate": Option(
        thresholds.DEFAULT_FALSE_MATCH_RATE, "target false-match rate of the identity threshold"
    ),
    "threshold": Option(None, "identity threshold override (a descriptor distance)"),
    "pair_false_match_rate": Option(
        thresholds.DEFAULT_PAIR_FALSE_MATCH_RATE,
        "per-pair false-match rate of the collision thresholds (birthday paradox)",
    ),
    "resolution_match": Option(
        None,
        "degrade faces much sharper than the index's before embedding (service parameter; default: on when the "
        "index records its faces' resolution)",
    ),
    "chunk": Option(64, "images per request (the same chunk gives bit-identical numbers in both modes)"),
    "reference_real": Option(
        None,
        "folder of real faces of people not in the index, run through the same detector: the domain-matched null",
    ),
    "reference_detector": Option(
        None,
        "detector for the reference faces (default: --detector); e.g. hog for unaligned real photos when the "
        "generator's faces are aligned crops",
    ),
    "reference_downscale": Option(
        None,
        "render each reference face at this size first (centre square, downscaled, then enlarged like generator "
        "samples, --upscale): a null in a low-resolution generator's domain, e.g. 32 for a 32 px generator",
    ),
    "reference_cache": Option(
        None,
        "folder that keeps the processed reference faces between audits (default: $FACEMEM_CACHE/references or "
        "~/.cache/facemem/references); false (--no-reference-cache): process them every time",
    ),
    "held_out_identities": Option(
        None,
        "file of indexed people the generator never trained on, chosen at random before training (one identity a "
        "line, or a members file's 'file identity' lines): the five decisions then ask whether the generated faces "
        "land on trained rather than held-out people, a null that holds whatever the generated faces look like",
    ),
    "training_set_size": Option(None, "images in the full training set, when the dataset does not say (coverage)"),
    "ct_cells": Option(None, "k-means cells of the C_T test (default: one per 50 generated faces, 2 to 20)"),
    "grid_expanded": Option(24, "grid rows shown before the collapsed rest"),
    "grid_max": Option(300, "grid rows drawn at all"),
    "upscale": Option(128, "generator samples smaller than this are upscaled (bicubic) before the face pipeline"),
    "steps": Option(None, "denoising steps of a diffusers:DIR generator (default: the pipeline's own, 50 for DDIM)"),
    "device": Option("cpu", "in-process embedding device: auto, cpu or cuda"),
    "detect_processes": Option(
        None,
        "in-process face-pipeline worker processes, the index build's: each detects and embeds its own images "
        "(default one per core; 0 = everything in this process)",
    ),
    "alpha": Option(
        0.05,
        "family-wise significance level of the five decisions (one graphical procedure over all of them), and of "
        "the decisions across the checkpoints of a series (a fixed sequence)",
    ),
    "progress": Option(True, "progress bar on a terminal"),
}

DEFAULTS: dict[str, Any] = {k: v.default for k, v in OPTIONS.items()}
GENERATOR_N = 100  # generator samples audited when n is not given
