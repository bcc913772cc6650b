"""Shared fixtures: real data from ../shared/data (override with FACEMEM_DATA), indexes built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEMEM_DATA", REPO.parent / "shared" / "data")).resolve()
CELEBA10K = DATA / "celeba10k"
WILD = DATA / "celeba_wild"


def pytest_configure(config):
    if not (CELEBA10K / "img_align_celeba").is_dir():
        raise pytest.UsageError(f"test data not found at {DATA}: set FACEMEM_DATA to the shared data folder")


def build_index(out: Path, root: Path = CELEBA10K, dataset: str = "celeba", **kw) -> Path:
    """Build an index in-process with the real pipeline (no progress bar)."""
    from indexer.build import BuildConfig, build

    cfg = BuildConfig(dataset=dataset, root=str(root), out=str(out), progress=False, overwrite=True,
                      device="cpu", **kw)
    return build(cfg)


@pytest.fixture(scope="session")
def small_index_dir(tmp_path_factory) -> Path:
    """300 celeba10k images, aligned mode (the indexer issue's test set)."""
    return build_index(tmp_path_factory.mktemp("idx") / "small", limit=300)


@pytest.fixture(scope="session")
def small_index(small_index_dir):
    from indexer.store import load_index

    return load_index(small_index_dir)


@pytest.fixture(scope="session")
def full_index_dir(tmp_path_factory) -> Path:
    """All of celeba10k (10,000 images, aligned mode): realistic calibration for the service tests."""
    return build_index(tmp_path_factory.mktemp("idx") / "celeba10k")


@pytest.fixture(scope="session")
def full_index(full_index_dir):
    from indexer.store import load_index

    return load_index(full_index_dir)


@pytest.fixture(scope="session")
def wild_labels() -> list[tuple[str, str, str]]:
    out = []
    for line in (WILD / "labels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            f, ident, rel = line.split()
            out.append((f, ident, rel))
    return out
