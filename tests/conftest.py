"""Shared fixtures: real data from ../shared/data (override with FACEMEM_DATA), indexes built once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEMEM_DATA", REPO.parent / "shared" / "data")).resolve()
CELEBA10K = DATA / "celeba10k"
WILD = DATA / "celeba_wild"
PART_INDEX = 3000  # images in part_index_dir
# The audit's reference cache lives in a folder of this session (shared by its audits, subprocesses
# included), never in the user's ~/.cache.
os.environ.setdefault("FACEMEM_CACHE", tempfile.mkdtemp(prefix="facemem-test-cache-"))

# Network outputs (descriptors, and the distances, quantiles and statistics computed from them) are
# compared to NET_ATOL wherever the network ran on different batches or in different requests: fp32
# batched GEMM may reorder its sums by batch position (on an AMD EPYC Zen 4, the same JPEG sent as a
# path and as bytes in one batch got semantic distance 2.67e-07 vs 0.0). Descriptor distances between
# faces are ~0.3-0.6 and the thresholds ~0.35-0.6, so 1e-5 is far below anything a decision depends
# on. Integers, strings, booleans and the order of neighbours are still compared exactly.
NET_ATOL = 1e-5


def json_diff(a, b, atol: float = NET_ATOL, path: str = "") -> str | None:
    """Where two JSON values first differ (None: they agree): floats by more than ``atol``, anything
    else at all. For answers of the network computed in different batches or requests (NET_ATOL)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a.keys() ^ b.keys())} in one only"
        diffs = (json_diff(a[k], b[k], atol, f"{path}/{k}") for k in a)
        return next((d for d in diffs if d is not None), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} != {len(b)} items"
        diffs = (json_diff(x, y, atol, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
        return next((d for d in diffs if d is not None), None)
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        return None if abs(a - b) <= atol or a == b else f"{path}: {a!r} != {b!r} (by more than {atol:g})"
    if isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
        return json_diff(b, a, atol, path)
    return None if a == b and type(a) is type(b) else f"{path}: {str(a)[:200]} != {str(b)[:200]}"


def assert_json_close(a, b, atol: float = NET_ATOL) -> None:
    """``a == b`` for JSON answers of the network from different batches or requests (see NET_ATOL)."""
    diff = json_diff(a, b, atol)
    assert diff is None, diff


def checkout_env(**extra: str) -> dict:
    """The environment for a script of this checkout run as a subprocess (``python scripts/X.py``):
    its packages come first, as an editable install of this checkout gives them (a .venv shared by
    several checkouts resolves ``indexer`` and ``service`` to whichever installed itself last)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def pytest_configure(config):
    if not (CELEBA10K / "img_align_celeba").is_dir():
        raise pytest.UsageError(f"test data not found at {DATA}: set FACEMEM_DATA to the shared data folder")


def build_index(out: Path, root: Path = CELEBA10K, dataset: str = "celeba", **kw) -> Path:
    """Build an index in-process with the real pipeline (no progress bar)."""
    from indexer.build import BuildConfig, build

    cfg = BuildConfig(dataset=dataset, root=str(root), out=str(out), progress=False, overwrite=True, device="cpu", **kw)
    return build(cfg)


def session_index(tmp_path_factory, name: str, **kw) -> Path:
    """An index built once per test session. Under pytest-xdist (``make test`` runs two workers) the
    workers share one build: the first to take the lock builds it, the other waits and reuses it;
    the index is read-only to every test."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_index(tmp_path_factory.mktemp("idx") / name, **kw)
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared-indexes"  # one per session, seen by every worker
    root.mkdir(exist_ok=True)
    out, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build_index(out, **kw)
            done.touch()
    return out


@pytest.fixture(scope="session")
def small_index_dir(tmp_path_factory) -> Path:
    """300 celeba10k images, aligned mode (the indexer issue's test set)."""
    return session_index(tmp_path_factory, "small", limit=300)


@pytest.fixture(scope="session")
def small_plain_index_dir(tmp_path_factory) -> Path:
    """The same 300 images with plain fp32 descriptors (``--no-flip-average --descriptor-precision
    fp32``): embedder parity of the unaveraged descriptor, and the stand-in for an index written
    before flip averaging and bf16 existed."""
    return session_index(tmp_path_factory, "small-plain", limit=300, flip_average=False, descriptor_precision="fp32")


@pytest.fixture(scope="session")
def small_index(small_index_dir):
    from indexer.store import load_index

    return load_index(small_index_dir)


@pytest.fixture(scope="session")
def part_index_dir(tmp_path_factory) -> Path:
    """The first 3,000 celeba10k images (aligned): enough faces for attribute probes, and the other
    7,000 stay outside it (held-back real faces for planted-generator tests)."""
    return session_index(tmp_path_factory, "part3000", limit=PART_INDEX)


@pytest.fixture(scope="session")
def full_index_dir(tmp_path_factory) -> Path:
    """All of celeba10k (10,000 images, aligned mode): realistic calibration for the service tests."""
    return session_index(tmp_path_factory, "celeba10k")


@pytest.fixture(scope="session")
def full_index(full_index_dir):
    from indexer.store import load_index

    return load_index(full_index_dir)


def read_wild_labels() -> list[tuple[str, str, str]]:
    """celeba_wild/labels.txt as (file, identity, relation) triples."""
    out = []
    for line in (WILD / "labels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            f, ident, rel = line.split()
            out.append((f, ident, rel))
    return out


@pytest.fixture(scope="session")
def wild_labels() -> list[tuple[str, str, str]]:
    return read_wild_labels()


@contextmanager
def live_server(
    index_dir: Path, log_path: Path, *args: str, env: dict | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python -m service`` on a free loopback port, wait for /healthz, stop it (SIGTERM) after."""
    cmd = [sys.executable, "-m", "service", "--index", str(index_dir), "--port", "0", *args]
    logf = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    )
    try:
        import requests

        url, deadline = None, time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            if m:
                url = m.group(1)
                try:
                    if requests.get(url + "/healthz", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"server did not come up:\n{log_path.read_text()}")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
