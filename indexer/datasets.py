"""Dataset readers: a CelebA-layout root or any image folder → an ordered list of :class:`Item`.

Readers only list files and labels; they never decode images (that happens in the face pipeline,
in worker processes), so a corrupt file becomes an ``unreadable`` row later instead of an error here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# The standard CelebA split by file number, used when list_eval_partition.txt is absent.
CELEBA_SPLIT_BOUNDS = (162770, 182637)


@dataclass
class Item:
    """One input file. ``file`` is relative to the dataset root and is the row's stable name."""

    path: Path
    file: str
    identity: str | None = None
    split: str | None = None
    extra: dict = field(default_factory=dict)


def _read_pairs(path: Path) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#"):
                out[parts[0]] = parts[1]
    return out


def _read_celeba_table(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """CelebA's landmark/attribute tables: a count line, a header line, then ``file v1 v2 ...``."""
    with open(path) as f:
        lines = f.read().splitlines()
    header = lines[1].split()
    rows = {}
    for line in lines[2:]:
        parts = line.split()
        if parts:
            rows[parts[0]] = [int(v) for v in parts[1:]]
    return header, rows


def _split_by_number(name: str) -> str | None:
    try:
        n = int(Path(name).stem)
    except ValueError:
        return None
    a, b = CELEBA_SPLIT_BOUNDS
    return "train" if n <= a else "val" if n <= b else "test"


def read_celeba(root: Path, split: str = "all", limit: int | None = None) -> list[Item]:
    """CelebA layout: ``img_align_celeba/``, ``identity_CelebA.txt``, ``list_eval_partition.txt``.

    Works for the full 178×218 dataset and for resized copies. Optional
    ``list_landmarks_align_celeba.txt`` and ``list_attr_celeba.txt`` are attached per row.
    """
    root = Path(root)
    img_dir = root / "img_align_celeba"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} not found: a CelebA root contains img_align_celeba/")
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected train, val, test or all)")
    names = sorted(p.name for p in img_dir.iterdir() if p.is_file())
    ident = _read_pairs(root / "identity_CelebA.txt") if (root / "identity_CelebA.txt").exists() else {}
    if not ident:
        log.warning("%s has no identity_CelebA.txt: identities unknown", root)
    part_file = root / "list_eval_partition.txt"
    code_to_split = {str(v): k for k, v in SPLITS.items()}
    parts = {k: code_to_split.get(v) for k, v in _read_pairs(part_file).items()} if part_file.exists() else {}
    extras: dict[str, dict] = {}
    for fname, key in (("list_landmarks_align_celeba.txt", "celeba_landmarks"), ("list_attr_celeba.txt", "attrs")):
        if (root / fname).exists():
            header, table = _read_celeba_table(root / fname)
            for n, vals in table.items():
                extras.setdefault(n, {})[key] = (
                    vals if key == "celeba_landmarks" else [h for h, v in zip(header, vals) if v == 1]
                )
    items = []
    for n in names:
        sp = parts.get(n) or _split_by_number(n)
        if split != "all" and sp != split:
            continue
        items.append(Item(img_dir / n, n, ident.get(n), sp, extras.get(n, {})))
        if limit is not None and len(items) >= limit:
            break
    return items


def celeba_attribute_names(root: Path) -> list[str]:
    """The attribute names of ``list_attr_celeba.txt`` in file order ([] without the file)."""
    path = Path(root) / "list_attr_celeba.txt"
    if not path.is_file():
        return []
    with open(path) as f:
        f.readline()
        return f.readline().split()


def read_folder(root: Path, identity_from_folders: bool = False, limit: int | None = None) -> list[Item]:
    """Every image file under ``root`` (recursive, sorted). With ``identity_from_folders`` the
    parent folder's name is the identity (LFW layout: ``Name/Name_0001.jpg``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    items = []
    for p in paths[:limit] if limit is not None else paths:
        rel = p.relative_to(root).as_posix()
        ident = p.parent.name if identity_from_folders and p.parent != root else None
        items.append(Item(p, rel, ident, None))
    return items


def excluded_identities(path: str | Path | None) -> list[str]:
    """The identities named in ``path`` (one per line; a ``file identity`` line counts by its last
    field, so a generator's members file with identities works as is), sorted. Why a file: the
    control run of a memorization benchmark trains on people the audited index must not hold."""
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"--exclude-identities {path}: {e.strerror or e}") from None
    return sorted({line.split()[-1] for line in text.splitlines() if line.strip() and not line.startswith("#")})


def read_dataset(
    kind: str, root: Path, split: str = "all", limit: int | None = None, identity_from_folders: bool = False
) -> list[Item]:
    if kind == "celeba":
        return read_celeba(root, split, limit)
    if kind == "folder":
        if split != "all":
            raise ValueError("--split applies to --dataset celeba only")
        return read_folder(root, identity_from_folders, limit)
    raise ValueError(f"unknown dataset kind {kind!r} (expected celeba or folder)")
