"""Injected faults: kill -9 during builds, a full disk during the index write, damaged index files.

Every fault here is real (SIGKILL, a small tmpfs or the kernel's file-size limit, bytes changed on
disk); nothing is mocked. What must hold: no work is lost, nothing half-written ever loads, the
previous index survives, and every refusal says what is wrong.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CELEBA10K, REPO

from indexer import files, store

BUILD = [
    sys.executable,
    "-m",
    "indexer",
    "build",
    "--dataset",
    "celeba",
    "--root",
    str(CELEBA10K),
    "--device",
    "cpu",
    "--no-progress",
]


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def _debris(parent: Path) -> list[str]:
    """Anything a killed build could leave that a later one might trip over."""
    return sorted(
        str(p.relative_to(parent))
        for p in parent.rglob("*")
        if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".partial") or p.name.endswith(".part")
    )


def _data_files(idx: Path) -> dict:
    return json.loads((idx / "manifest.json").read_text())["files"]


KILL_IMAGES = 640  # 20 chunks of 32: room for three kills between chunks 2 and 17


def test_kill9_five_times_then_resume_is_byte_identical(tmp_path):
    """kill -9 five times at seeded random points: once during start-up, three times after a random
    number of finished chunks (plus random jitter, so inside a chunk's work or its checkpoint write),
    and once while the index directory is being written. Then --resume must finish the job."""
    args = [*BUILD, "--limit", str(KILL_IMAGES), "--chunk-size", "32", "--workers", "1"]
    ref = tmp_path / "ref"
    r = _run([*args, "--out", str(ref)])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    partial = out.with_name("killed.partial")
    n_chunks = -(-KILL_IMAGES // 32)
    rng = random.Random(6)
    targets = sorted(rng.sample(range(2, n_chunks - 2), 3))
    kills: list[str] = []

    def done() -> int:
        return len(list(partial.glob("chunk-*.npz"))) - len(list(partial.glob("chunk-*.tmp.npz")))

    for k in range(5):
        p = subprocess.Popen(
            [*args, "--out", str(out), "--resume"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        if k == 0:
            delay = rng.uniform(0.2, 1.5)
            time.sleep(delay)
            when = f"start-up, after {delay:.2f} s"
        elif k <= 3:
            while time.time() < deadline and p.poll() is None and done() < targets[k - 1]:
                time.sleep(0.005)
            jitter = rng.uniform(0, 0.1)
            time.sleep(jitter)
            when = f"after chunk {targets[k - 1]} + {jitter * 1000:.0f} ms"
        else:
            while time.time() < deadline and p.poll() is None and not list(tmp_path.glob(".killed.tmp-*")):
                time.sleep(0.002)
            when = "while writing the index directory"
        assert p.poll() is None, f"the build ended (exit {p.returncode}) before kill {k + 1} ({when})"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kills.append(f"{when}: {done()} of {n_chunks} chunks kept")
        with pytest.raises(store.IndexLoadError):
            store.load_index(out)  # nothing half-written loads as an index
    print("\nkills:", "; ".join(kills))
    assert len(kills) == 5, kills
    # As a power cut can leave them: one finished checkpoint cut short, one emptied. Both are redone.
    finished = sorted(partial.glob("chunk-*.npz"))
    assert len(finished) >= 2
    with open(finished[0], "r+b") as f:
        f.truncate(os.path.getsize(finished[0]) // 2)
    finished[-1].write_bytes(b"")
    r = _run([*args, "--out", str(out), "--resume"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("is damaged; redoing it") == 2, r.stderr
    a, b = _data_files(ref), _data_files(out)
    assert a == b, "resumed index differs from the uninterrupted one"  # sha256 and size of every file
    for name in store.FILES:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert json.loads((out / "manifest.json").read_text())["build"]["resumed"] is True
    assert _debris(tmp_path) == []
    store.load_index(out, verify_hashes=True)


def _holder(path: Path) -> subprocess.Popen:
    """Another live process holding ``path``'s writer lock (as a running build does)."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from indexer import watchdog; "
        "watchdog.lock_dir(sys.argv[2]); print('locked', flush=True); time.sleep(120)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_stale_temp_dirs_of_dead_builds_are_removed(tmp_path, small_index_dir):
    out = tmp_path / "idx"
    shutil.copytree(small_index_dir, out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".idx.tmp-{dead.pid}"
    shutil.copytree(small_index_dir, stale)  # as a kill between the swap and the clean-up leaves it
    (stale / "manifest.json").unlink()
    sleeper = subprocess.Popen(["sleep", "120"])
    starting = tmp_path / f".idx.tmp-{sleeper.pid}"  # a running writer that has not locked yet
    starting.mkdir()
    # A writer in another pid namespace (a container on the same volume): its pid means nothing
    # here, but it holds the lock.
    foreign = tmp_path / f".idx.tmp-{dead.pid + 100000}"
    foreign.mkdir()
    holder = _holder(foreign)
    try:
        removed = store.remove_debris(out)
        assert removed == [stale] and starting.exists() and foreign.exists()
    finally:
        sleeper.kill()
        holder.kill()
        sleeper.wait()
        holder.wait()
    assert sorted(store.remove_debris(out)) == sorted([starting, foreign])  # both writers gone now
    assert _debris(tmp_path) == []


def test_index_moved_aside_by_a_killed_fallback_swap_is_put_back(tmp_path, small_index_dir):
    """Without renameat2 the swap is two renames; a kill between them leaves ``out`` missing and the
    previous index at ``.out.old-<pid>``. The next write's debris pass puts it back, not away."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "idx"
    shutil.copytree(small_index_dir, tmp_path / f".idx.old-{dead.pid}")
    assert store.remove_debris(out) == []
    assert store.load_index(out, verify_hashes=True).n_faces > 0 and _debris(tmp_path) == []


def test_fallback_swap_replaces_the_index_and_restores_it_on_failure(tmp_path, small_index, monkeypatch):
    out = tmp_path / "idx"
    shutil.copytree(small_index.root, out)
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    real_replace = os.replace

    def second_rename_fails(src, dst):
        if Path(src).name.startswith(".idx.tmp-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real_replace(src, dst)

    args = (
        small_index.rows,
        small_index.descriptors,
        small_index.pixels,
        small_index.calibration,
        dict(small_index.manifest, note="second"),
    )
    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(store.IndexWriteError, match="previous index .* untouched"):
        store.write_index(out, *args, overwrite=True)
    assert (out / "manifest.json").read_bytes() == before and _debris(tmp_path) == []
    monkeypatch.setattr(os, "replace", real_replace)
    store.write_index(out, *args, overwrite=True)
    assert store.load_index(out, verify_hashes=True).manifest["note"] == "second"
    assert _debris(tmp_path) == []


def test_kill9_while_overwriting_keeps_the_previous_index(tmp_path, small_index_dir):
    """SIGKILL while a rebuild's new index directory is being written over an existing index: the
    old one stays in place, byte for byte, and the next build clears the debris."""
    out = tmp_path / "idx"
    shutil.copytree(small_index_dir, out)
    before = {n: (out / n).read_bytes() for n in (*store.FILES, store.MANIFEST)}
    args = [*BUILD, "--limit", "400", "--workers", "1", "--out", str(out), "--overwrite"]
    for _attempt in range(3):  # the window is tens of ms; a missed one is retried, never passed
        p = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not list(tmp_path.glob(".idx.tmp-*")):
            time.sleep(0.002)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            break
        assert p.returncode == 0
        shutil.rmtree(out)
        shutil.copytree(small_index_dir, out)
    else:
        pytest.fail("the index write was never caught in 3 builds")
    assert list(tmp_path.glob(".idx.tmp-*")), "killed outside the index write"
    assert {n: (out / n).read_bytes() for n in before} == before
    store.load_index(out, verify_hashes=True)
    r = _run([*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert store.load_index(out).manifest["dataset"]["items"] == 400 and _debris(tmp_path) == []


def test_a_second_build_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "idx"
    partial = tmp_path / "idx.partial"
    partial.mkdir()
    (partial / "params.json").write_text("{}")
    (partial / "chunk-000000.npz").write_bytes(b"finished work of the running build")
    holder = _holder(partial)  # the running build holds its checkpoint directory's lock
    try:
        for extra in ([], ["--resume"]):
            r = _run([*BUILD, "--limit", "50", "--out", str(out), *extra])
            assert r.returncode != 0 and "another build is running" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in partial.iterdir()) == ["chunk-000000.npz", "params.json"]


@pytest.fixture(scope="module")
def old_index(tmp_path_factory) -> Path:
    """An old 100-image index, built once for the module by the command line; tests overwrite copies."""
    idx = tmp_path_factory.mktemp("old") / "idx"
    r = _run([*BUILD, "--limit", "100", "--out", str(idx)])
    assert r.returncode == 0, r.stderr
    return idx


def _build_old_and_fill(old: Path, where: Path, preexec=None) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the old 100-image index at ``where/idx``, then a 600-image rebuild over it that runs out of space."""
    idx = where / "idx"
    shutil.copytree(old, idx)
    before = {n: (idx / n).read_bytes() for n in (*store.FILES, store.MANIFEST)}
    r = _run([*BUILD, "--limit", "600", "--chunk-size", "64", "--out", str(idx), "--overwrite"], preexec_fn=preexec)
    assert r.returncode != 0, "the build should have run out of space"
    after = {n: (idx / n).read_bytes() for n in (*store.FILES, store.MANIFEST)}
    assert after == before, "the previous index was changed"
    assert store.load_index(idx, verify_hashes=True).n_faces > 90
    return idx, r


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("size,phase", [("12m", "index"), ("8m", "checkpoint")])
def test_disk_full_keeps_the_previous_index_and_the_finished_work(tmp_path, old_index, size, phase):
    """A real ENOSPC on a small tmpfs holding an old 100-face index (1.4 MB) and a 600-face rebuild.
    12 MiB: the checkpoints (7.8 MB) fit, the new index (7.8 MB) does not. 8 MiB: a checkpoint
    does not fit. Where mounting is not permitted, the kernel's file-size limit (RLIMIT_FSIZE: EFBIG)
    cuts the index write short instead."""
    mnt = tmp_path / "small-disk"
    if _mount_tmpfs(mnt, size):
        try:
            idx, r = _build_old_and_fill(old_index, mnt)
            assert "No space left on device" in r.stderr and "--resume" in r.stderr, r.stderr  # the OS reason
            if phase == "index":
                assert "could not write the index: the disk is full" in r.stderr, r.stderr
                assert "the previous index" in r.stderr and "untouched" in r.stderr
            else:
                assert "could not write a checkpoint" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
            assert not list(mnt.glob(".idx.tmp-*")) and not list(mnt.glob("idx.partial/*.tmp*"))
            kept = len(list((mnt / "idx.partial").glob("chunk-*.npz")))
            assert kept == (10 if phase == "index" else kept) and kept > 0
            # No work lost: move the checkpoints to a disk with room and finish from them.
            big = tmp_path / "big"
            big.mkdir()
            shutil.move(str(mnt / "idx.partial"), str(big / "idx.partial"))
            r2 = _run([*BUILD, "--limit", "600", "--chunk-size", "64", "--out", str(big / "idx"), "--resume"])
            assert r2.returncode == 0, r2.stderr
            assert json.loads((big / "idx" / "manifest.json").read_text())["build"]["resumed"] is True
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    else:
        if phase == "checkpoint":
            pytest.skip("tmpfs cannot be mounted here; the index-write case runs with RLIMIT_FSIZE instead")

        def limit():  # 3 MiB per file: checkpoints (0.8 MB) fit, pixels.npy (7.4 MB) does not
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))

        mnt.mkdir(exist_ok=True)
        idx, r = _build_old_and_fill(old_index, mnt, preexec=limit)
        assert "larger than the filesystem or the process's file-size limit allows" in r.stderr, r.stderr
        assert "File too large" in r.stderr and "untouched" in r.stderr, r.stderr
        assert not list(mnt.glob(".idx.tmp-*"))


def test_write_error_message_names_the_cause(tmp_path, small_index, monkeypatch):
    """An injected ENOSPC on the pixel file (in-process): IndexWriteError, old index untouched."""
    out = tmp_path / "idx"
    shutil.copytree(small_index.root, out)
    before = (out / "manifest.json").read_bytes()
    real_save = files.save_npy

    def full_disk(path, arr, *a, **kw):
        if str(path).endswith("pixels.npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(path, arr, *a, **kw)

    monkeypatch.setattr(files, "save_npy", full_disk)
    with pytest.raises(store.IndexWriteError, match=r"disk is full .*pixels\.npy.*previous index .* untouched"):
        store.write_index(
            out,
            small_index.rows,
            small_index.descriptors,
            small_index.pixels,
            small_index.calibration,
            dict(small_index.manifest),
            overwrite=True,
        )
    assert (out / "manifest.json").read_bytes() == before
    assert _debris(tmp_path) == []


def _damaged_copies(src: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of an index and the words the refusal must contain."""
    out = {}

    def copy(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    d = copy("truncated-faiss")
    with open(d / "semantic.faiss", "r+b") as f:
        f.truncate(os.path.getsize(d / "semantic.faiss") // 2)
    out["truncated-faiss"] = (d, "semantic.faiss is missing or has the wrong size")

    d = copy("faiss-bytes-changed")  # same size, different bytes: only the sha256 check sees it
    with open(d / "semantic.faiss", "r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 64)
    out["faiss-bytes-changed"] = (d, "semantic.faiss fails its sha256 check")

    d = copy("manifest-not-json")
    (d / "manifest.json").write_text((d / "manifest.json").read_text()[:-40])
    out["manifest-not-json"] = (d, "manifest.json is corrupt")

    d = copy("manifest-edited-size")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["descriptors.npy"]["bytes"] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    out["manifest-edited-size"] = (d, "descriptors.npy is missing or has the wrong size")

    d = copy("manifest-edited-type")
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = "all fine"
    (d / "manifest.json").write_text(json.dumps(m))
    out["manifest-edited-type"] = (d, "not a valid manifest")

    d = copy("manifest-edited-version")
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 0
    (d / "manifest.json").write_text(json.dumps(m))
    out["manifest-edited-version"] = (d, "format version 0")

    d = copy("rows-missing")
    (d / "rows.jsonl").unlink()
    out["rows-missing"] = (d, "rows.jsonl is missing")
    return out


def test_damaged_index_service_refuses_and_info_explains(small_index_dir, tmp_path):
    cases = _damaged_copies(small_index_dir, tmp_path)
    for name, (d, words) in cases.items():
        s = _run(
            [sys.executable, "-m", "service", "--index", str(d), "--port", "0"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert s.returncode == 2, (name, s.stdout, s.stderr)
        assert words in s.stderr and "Traceback" not in s.stderr, (name, s.stderr)
        i = _run([sys.executable, "-m", "indexer", "info", str(d), "--verify"])
        assert i.returncode == 2 and words in i.stderr and "Traceback" not in i.stderr, (name, i.stderr)
    # Without --verify, `info` still catches everything but the same-size byte change.
    quick = _run([sys.executable, "-m", "indexer", "info", str(cases["truncated-faiss"][0])])
    assert quick.returncode == 2 and "wrong size" in quick.stderr


def test_damage_inside_a_file_with_the_right_size_is_refused_without_a_traceback(small_index_dir, tmp_path):
    """Sizes and manifest consistent, contents garbage (the sha256 check skipped): still a clear refusal."""
    d = tmp_path / "garbage"
    shutil.copytree(small_index_dir, d)
    size = os.path.getsize(d / "semantic.faiss")
    (d / "semantic.faiss").write_bytes(b"\x00" * size)
    with pytest.raises(store.IndexLoadError, match="semantic.faiss is damaged"):
        store.load_index(d)

    # The same bytes read as another array: float64 (N, 64) is exactly as long as float32 (N, 128).
    d = tmp_path / "retyped"
    shutil.copytree(small_index_dir, d)
    desc = np.load(d / "descriptors.npy")
    np.save(d / "descriptors.npy", np.zeros((len(desc), 64), np.float64))
    assert os.path.getsize(d / "descriptors.npy") == os.path.getsize(small_index_dir / "descriptors.npy")
    with pytest.raises(store.IndexLoadError, match=r"descriptors.npy holds float64 \(\d+, 64\)"):
        store.load_index(d)

    # A header that asks for an enormous array (same file size): refused, not a MemoryError traceback.
    d = tmp_path / "huge-header"
    shutil.copytree(small_index_dir, d)
    raw = (d / "descriptors.npy").read_bytes()
    end = 10 + int.from_bytes(raw[8:10], "little")  # magic, version, header length, header
    head = raw[10:end].decode("latin-1")
    huge = head.replace(f"({len(desc)}, 128)", f"({len(desc) * 10**6}, 128)").rstrip().ljust(len(head) - 1) + "\n"
    assert huge != head and len(huge) == len(head)
    (d / "descriptors.npy").write_bytes(raw[:10] + huge.encode("latin-1") + raw[end:])
    with pytest.raises(store.IndexLoadError, match="descriptors.npy is damaged"):
        store.load_index(d)
