"""What a build is asked to do: the options of ``python -m indexer build``, as one record.

Kept apart from :mod:`indexer.build` so that every part of a build (the engines, the per-task work)
can name it without importing the build itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ivf as ivf_mod


@dataclass
class BuildConfig:
    dataset: str
    root: str
    out: str
    split: str = "all"
    limit: int | None = None
    exclude_identities: str | None = None  # a file of identities whose images are left out (held-out people)
    workers: int = 0  # 0 = all cores
    detector: str = "aligned"
    device: str = "auto"
    embedder: str = "torch"
    chunk_size: int = 256
    resume: bool = False
    overwrite: bool = False
    identity_from_folders: bool = False
    pixel_calibration_sample: int = 5000
    semantic_calibration_sample: int = 250_000  # above it a seeded sample is calibrated (0: every face)
    progress: bool = True
    embed_in: str = "auto"  # auto | main | workers: where descriptors are computed (see plan_embedding)
    preload_workers: bool = True  # CPU torch: fork pre-loaded workers (False: spawn them, as measured before)
    attribute_probes: str | None = None  # index whose attribute probes to use instead of fitting (see attributes.py)
    flip_average: bool = True  # descriptor = mean of the chip's and its mirror's (faces.describe)
    descriptor_precision: str = "auto"  # auto | fp32 | bf16 (resnet.resolve_precision; recorded in the manifest)
    engine: str = "local"  # local (worker processes here) | ray (actors on a Ray cluster, indexer/ray_engine.py)
    ray_address: str | None = None  # engine ray: None starts a local Ray instance; "auto" or host:port joins one
    ray_embed_actors: int | None = None  # engine ray: actors that only embed (None: one per GPU, none without)
    shard_size: int | None = None  # write a sharded index of this many rows (images) per shard (indexer/shards.py)
    ivf: str = "auto"  # auto (when faces >= ivf_min_faces) | on | off: store an IVF index (indexer/ivf.py)
    ivf_min_faces: int = 1_000_000
    ivf_spec: str = ivf_mod.DEFAULT_SPEC
