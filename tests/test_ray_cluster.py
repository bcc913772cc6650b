"""``--engine ray`` on a real 2-node Ray cluster, in a private network namespace with only loopback.

One cluster for the module (tests/ray_cluster.py: head and worker node, one CPU each, started as
child processes with ``--node-ip-address=127.0.0.1`` and stopped by pid). Every build runs as
``python -m indexer build`` inside the namespace. The reference is the local engine's build of the
same images; the Ray index must equal it: the same rows, descriptors within 1e-5, identical pixel
vectors, the same geometry, attribute probes, calibration and manifest (plus ``build.engine`` and
``build.nodes``), and the same answers from a sharded Ray index as from the monolithic local one.
Faults are real, mid-build: ``SIGKILL`` to the driver (then ``--resume``), ``kill -9`` of the
actor process on the worker node, and ``SIGKILL`` to the worker node's whole process group.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CELEBA10K, build_index
from PIL import Image
from ray_cluster import LoopbackCluster, available
from test_indexer import _write_bad_folder

from indexer import store

N_IMAGES = 240
CHUNK = 32  # 8 chunks of one 32-image task each: both actors get several
BUILD = [sys.executable, "-m", "indexer", "build", "--device", "cpu", "--no-progress", "--engine", "ray"]
CELEBA = ["--dataset", "celeba", "--root", str(CELEBA10K), "--limit", str(N_IMAGES), "--chunk-size", str(CHUNK)]

pytestmark = pytest.mark.skipif(available() is not None, reason=f"no loopback Ray cluster here: {available()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("ray-logs")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory) -> store.FaceIndex:
    return store.load_index(build_index(tmp_path_factory.mktemp("ref") / "local", limit=N_IMAGES, chunk_size=CHUNK))


def assert_same_index(ray_idx: store.FaceIndex, ref: store.FaceIndex) -> None:
    assert list(ray_idx.rows) == list(ref.rows)
    d = np.abs(np.asarray(ray_idx.descriptors) - ref.descriptors)
    assert d.max() <= 1e-5, d.max()
    np.testing.assert_array_equal(np.asarray(ray_idx.pixels), np.asarray(ref.pixels))
    for k in ref.calibration:
        np.testing.assert_allclose(ray_idx.calibration[k], ref.calibration[k], atol=1e-5, equal_nan=True)
    assert ref.geometry is not None and ray_idx.geometry is not None
    np.testing.assert_allclose(ray_idx.geometry, ref.geometry, atol=1e-5)
    assert (ray_idx.attributes is None) == (ref.attributes is None)
    for k, v in (ref.attributes or {}).items():  # probes fitted on the same faces: the same probes
        if v.dtype.kind in "fc":
            np.testing.assert_allclose(ray_idx.attributes[k], v, atol=1e-4, equal_nan=True)
        else:
            np.testing.assert_array_equal(ray_idx.attributes[k], v)
    skip = {"build", "files", "written_at", "layout", "shard_size", "shards"}
    assert {k: v for k, v in ray_idx.manifest.items() if k not in skip} == {
        k: v for k, v in ref.manifest.items() if k not in skip
    }
    assert ray_idx.manifest["build"]["engine"] == "ray" and ref.manifest["build"]["engine"] == "local"


def _kill_mid_build(cluster: LoopbackCluster, out: Path, kill) -> str:
    """Start a build, wait until the worker node's actor is ready and a first chunk is
    checkpointed, call ``kill(actor pid)``, and return the build's log once it has finished."""
    log = out.with_name(out.name + ".log")
    p = cluster.popen(*BUILD, *CELEBA, "--ray-address", cluster.address, "--out", str(out), log=log)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        m = re.search(rf"ready on node {cluster.worker_node} \(pid (\d+)\)", log.read_text())
        if m and list(partial.glob("chunk-*.npz")):
            break
        time.sleep(0.02)
    assert p.poll() is None, f"the build ended (exit {p.returncode}) before the kill:\n{log.read_text()[-3000:]}"
    done = len(list(partial.glob("chunk-*.npz")))
    kill(int(m.group(1)))
    assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert done < -(-N_IMAGES // CHUNK), "the kill came after the last chunk"
    return log.read_text()


def test_two_node_ray_build_equals_the_local_build(cluster, local_ref, tmp_path):
    """Killed (the driver, SIGKILL) after two checkpointed chunks, then --resume: the same index and,
    sharded on the way (--shard-size), the same answers as the monolithic local build."""
    from service.search import Searcher

    out = tmp_path / "ray"
    args = [*BUILD, *CELEBA, "--ray-address", cluster.address, "--out", str(out), "--shard-size", "100"]
    p = cluster.popen(*args, log=tmp_path / "first.log")
    partial = tmp_path / "ray.partial"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and len(list(partial.glob("chunk-*.npz"))) < 2:
        time.sleep(0.02)
    assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    kept = len(list(partial.glob("chunk-*.npz")))
    assert 2 <= kept < -(-N_IMAGES // CHUNK) and not out.exists()
    r = cluster.run(*args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming: {kept} of {-(-N_IMAGES // CHUNK)} chunks already done" in r.stderr
    idx = store.load_index(out, verify_hashes=True)
    assert_same_index(idx, local_ref)
    build = idx.manifest["build"]
    assert build["resumed"] is True
    assert len(cluster.nodes) == 2 and sorted(build["nodes"]) == sorted(cluster.nodes), build
    assert build["ray"]["actors"] == 2 and build["workers"] == 2
    assert [s["rows"] for s in idx.manifest["shards"]] == [[0, 100], [100, 200], [200, 240]]
    # exact mode: the sharded Ray index answers as the monolithic local one, in both channels
    a, b = Searcher(local_ref, device="cpu"), Searcher(idx, device="cpu")
    rng = np.random.default_rng(0)
    q = local_ref.descriptors[::7] + rng.normal(0, 0.02, local_ref.descriptors[::7].shape).astype(np.float32)
    px = np.asarray(local_ref.pixels[3::9])
    pairs = [*zip(a.semantic_search(q, 5), b.semantic_search(q, 5)), *zip(a.pixel_search(px, 5), b.pixel_search(px, 5))]
    for x, y in pairs:
        np.testing.assert_array_equal(x, y)
    assert b.search_info()["semantic"] == {"method": "exact", "exact": True, "faces": 240, "shards": 3}


def test_bad_input_gets_the_local_statuses_on_a_local_ray_instance(cluster, tmp_path):
    """Unreadable, truncated, empty and faceless files; --engine ray without an address starts its
    own Ray instance (inside the namespace too, so it can only use loopback). With one embed
    actor: the split that GPU clusters get (face actors cut chips, the embed actor embeds them)."""
    ds = tmp_path / "ds"
    ds.mkdir()
    _write_bad_folder(ds)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(ds / "grey.png")  # decodes, no face for HOG
    args = ["--dataset", "folder", "--root", str(ds), "--detector", "hog", "--identity-from-folders"]
    ref = store.load_index(
        build_index(tmp_path / "local", root=ds, dataset="folder", detector="hog", identity_from_folders=True)
    )
    out = tmp_path / "ray"
    env = {"RAY_TMPDIR": str(cluster.temp_dir)}  # the instance's session files go with the cluster's
    r = cluster.run(*BUILD, *args, "--ray-embed-actors", "1", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    idx = store.load_index(out)
    assert list(idx.rows) == list(ref.rows)
    assert idx.manifest["counts"] == ref.manifest["counts"]
    by_file = {r["file"]: r for r in idx.rows}
    assert {f for f, r in by_file.items() if r["status"] == "unreadable"} == {"zero.jpg", "truncated.jpg", "text.jpg"}
    assert by_file["grey.png"]["status"] == "no_face" and idx.manifest["counts"]["ok"] >= 1
    assert idx.manifest["build"]["ray"] == {"address": "local", "actors": 1, "embed_actors": 1, "gpu_actors": False}
    np.testing.assert_allclose(np.asarray(idx.descriptors), ref.descriptors, atol=1e-5)


def test_a_killed_worker_process_is_restarted_and_the_index_is_equal(cluster, local_ref, tmp_path):
    out = tmp_path / "killed-actor"
    log = _kill_mid_build(cluster, out, lambda pid: os.kill(pid, signal.SIGKILL))  # Ray restarts the actor
    assert_same_index(store.load_index(out), local_ref)
    assert "resubmitting" not in log  # Ray itself restarted the actor and retried its tasks


def test_a_killed_worker_node_does_not_fail_the_build(cluster, local_ref, tmp_path):
    """Last in the module: the worker node stays dead."""
    out = tmp_path / "killed-node"
    log = _kill_mid_build(cluster, out, lambda pid: cluster.kill_worker_node())
    assert f"Ray node {cluster.worker_node} died: resubmitting" in log, log[-3000:]
    assert_same_index(store.load_index(out), local_ref)
