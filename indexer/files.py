"""The files of an index directory: their names, how each is written, and the atomic swap.

Why a module of its own: a monolithic index (:mod:`indexer.store`) and a sharded one
(:mod:`indexer.shards`) write the same kinds of files the same way (into a locked temp directory,
through Python's file objects so a full disk raises, manifest last, then one atomic swap), so both
take these helpers from here and neither imports the other to get them. The layout itself is
described in :mod:`indexer.store`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import faces, pixels, watchdog

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("rows.jsonl", "descriptors.npy", "semantic.faiss", "pixels.npy", "calibration.npz")
IVF_FILE = "semantic_ivf.faiss"  # optional in either layout (indexer.ivf); absent = exact search only
OPTIONAL_FILES = ("geometry.npy", "attributes.npz", IVF_FILE)  # absent = the behaviour before they existed
EXTRA_FILES = ("geometry.npy", "attributes.npz")  # per-face optional files written by write_extras


class IndexWriteError(RuntimeError):
    """Writing an index failed (disk full, permissions); the previous index is untouched."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("dlib-bin", "face_recognition_models", "faiss-cpu", "faiss-gpu-cu12", "torch", "numpy", "Pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def remove_debris(out: Path) -> list[Path]:
    """Remove what killed writers left beside ``out``: their ``.<out>.tmp-<pid>`` directories, and
    ``.<out>.old-<pid>`` (the previous index, mid-swap where the filesystem lacks an atomic exchange),
    which is put back instead when ``out`` itself is missing. A live writer's directories (locked,
    or not yet locked by a running pid) are left alone."""
    out = Path(out)
    pat = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)$")
    removed = []
    if out.parent.is_dir():
        for p in sorted(out.parent.iterdir()):
            m = pat.match(p.name)
            if not m or watchdog.dir_in_use(p, int(m.group(2))):
                continue
            if m.group(1) == "old" and not out.exists() and (p / MANIFEST).is_file():
                os.replace(p, out)
                log.warning("restored the previous index %s from %s (a writer was killed mid-swap)", out, p.name)
                continue
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
    if removed:
        log.info("removed debris of interrupted builds: %s", ", ".join(p.name for p in removed))
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    # Unsupported by the kernel or filesystem, or refused by a seccomp filter or security module
    # that does not know the call: the two-rename fallback (a real permission problem fails there).
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM, errno.EACCES):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out``; the old ``out`` (if any) ends up in ``tmp`` and is deleted."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not _exchange(tmp, out):  # fallback: a short window in which ``out`` is missing
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        lock = watchdog.lock_dir(out)  # a concurrent writer's debris pass must not take ``old`` for debris
        try:
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)  # put the previous index back before reporting the error
                raise
        finally:
            watchdog.unlock_dir(lock)
        tmp = old
    shutil.rmtree(tmp, ignore_errors=True)


def _write_error(e: OSError, out: Path, tmp: Path) -> IndexWriteError:
    """The message for a failed write: what happened, in which file, and what is left."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif e.errno == errno.EFBIG:
        what = "a file is larger than the filesystem or the process's file-size limit allows"
    else:
        what = "an OS error"
    before = f"the previous index at {out} is untouched" if out.exists() else f"nothing was written at {out}"
    return IndexWriteError(
        f"could not write the index: {what} ({e.strerror or e} while writing {e.filename or tmp}); {before}"
    )


def atomic_write(out: Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Create an index directory at ``out`` atomically: ``fill(tmp)`` writes every file (the
    manifest last, with :func:`finish_index_dir`) into a locked temp dir in the same parent, which
    then replaces ``out`` in one atomic swap.

    Any OS error (a full disk, above all) removes the temp dir and raises :class:`IndexWriteError`;
    the index that was at ``out`` before is untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_debris(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    lock = None
    try:
        tmp.mkdir()
        lock = watchdog.lock_dir(tmp)  # held until the swap: tells a later writer we are alive
        fill(tmp)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, out, tmp) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        watchdog.unlock_dir(lock)
    return out


def save_npy(path: Path, arr: np.ndarray, block: int = 64 << 20) -> None:
    """``np.save`` through Python's file object: the same bytes, but a failed write raises an OSError
    that says why (numpy's own C writer reports only "N requested and M written")."""
    arr = np.ascontiguousarray(arr)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        flat = memoryview(arr.reshape(-1).view(np.uint8))
        for lo in range(0, len(flat), block):
            f.write(flat[lo : lo + block])


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps, so equal arrays give a byte-identical file
    (a resumed build is then byte-for-byte equal to an uninterrupted one)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[name]), allow_pickle=False)


def save_faiss(path: Path, index: object) -> None:
    """Serialised here and written by Python: faiss.write_index ignores errors at fclose, so a
    full disk could leave a short file behind a manifest that vouches for it."""
    import faiss

    with open(path, "wb") as f:
        f.write(memoryview(faiss.serialize_index(index)))


def write_extras(tmp: Path, extras: dict) -> None:
    """The optional per-face files: names of :data:`EXTRA_FILES` → an array (``.npy``) or a dict of
    arrays (``.npz``)."""
    unknown = set(extras) - set(EXTRA_FILES)
    if unknown:
        raise ValueError(f"unknown optional index files {sorted(unknown)}")
    for name, value in extras.items():
        if name.endswith(".npz"):
            save_npz(tmp / name, value)
        else:
            save_npy(tmp / name, value)


def finish_index_dir(tmp: Path, manifest: dict, names: list[str]) -> None:
    """Hash the data files ``names``, write the manifest (last: a directory without it is never
    taken for an index) and fsync everything before the swap makes it live."""
    files = {}
    for name in names:
        p = tmp / name
        files[name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = dict(
        manifest,
        format_version=FORMAT_VERSION,
        model_sha256=faces.model_hashes(),
        pipeline_signature=pipeline_signature(),
        files=files,
        libraries=library_versions(),
        written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    with open(tmp / (MANIFEST + ".part"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp / (MANIFEST + ".part"), tmp / MANIFEST)
    for p in (*(tmp / n for n in names), tmp / MANIFEST):  # on disk before the swap makes them live
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in {(tmp / n).parent for n in names} - {tmp}:  # the shard directories' entries too
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pipeline_signature() -> dict:
    """The face pipeline's constants and the pixel size: an index built with others is refused."""
    return dict(faces.pipeline_signature(), pixel_size=pixels.PIXEL_SIZE)
