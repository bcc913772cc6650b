"""Known-membership training runs: a members file in, checkpoints at log-spaced steps out.

Why log-spaced: memorization sets in late and fast, so early checkpoints are cheap and the last
decade of training is where the trend bends. Every checkpoint is written whole before the manifest
names it (an interrupted run leaves only complete checkpoints behind).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .render import centre_square, to_tanh

log = logging.getLogger(__name__)

FAMILIES = ("ddpm", "dcgan")


@dataclass(frozen=True)
class Member:
    path: Path
    file: str  # as written in the members file (the name the audit's index knows it by)
    identity: str | None


def read_members(members: str | Path, root: str | Path | None = None) -> list[Member]:
    """``file [identity]`` per line (``#`` comments); ``file`` is relative to ``root`` (default: the
    members file's folder) unless absolute. A missing image ends the run before any training."""
    members = Path(members)
    base = Path(root) if root is not None else members.parent
    out, missing = [], []
    for line in members.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        path = Path(parts[0]) if Path(parts[0]).is_absolute() else base / parts[0]
        (out if path.is_file() else missing).append(Member(path, parts[0], parts[1] if len(parts) > 1 else None))
    if missing:
        raise ValueError(f"{members}: {len(missing)} images not found, e.g. {missing[0].path}")
    if not out:
        raise ValueError(f"{members}: no images listed")
    return out


def choose_members(
    identity_file: str | Path,
    k: int,
    seed: int,
    exclude: set[str] = frozenset(),
    first: int | None = None,
    inside: bool = True,
) -> list[str]:
    """``k`` lines ``file identity`` of CelebA's identity list, one image each of ``k`` different people
    (not in ``exclude``), drawn with ``seed``. One image per person makes "which people leak" exact.
    With ``first``: only people who have an image among the list's first ``first`` files (``inside``,
    each represented by such an image), or only people who have none (not ``inside``): an index of
    those first files then holds every member of one run and no member of the other."""
    lines = [line.split() for line in Path(identity_file).read_text().splitlines()]
    lines = [parts for parts in lines if len(parts) == 2]
    early = {person for _, person in lines[:first]} if first is not None else None
    by_person: dict[str, str] = {}
    for file, person in lines:
        if person in exclude or (early is not None and (person in early) != inside):
            continue
        by_person.setdefault(person, file)
    people = sorted(by_person, key=int if all(p.isdigit() for p in by_person) else str)
    if len(people) < k:
        raise ValueError(f"only {len(people)} people qualify; asked for {k}")
    chosen = random.Random(seed).sample(people, k)
    return [f"{by_person[p]} {p}" for p in chosen]


def hold_out(people: Iterable[str], share: float, seed: int, keep: Iterable[str] = ()) -> list[str]:
    """A random ``share`` of ``people`` (e.g. everyone an index holds), never one of ``keep`` (a run's
    members, who are trained by definition): the ``--held-out-identities`` list of an audit
    (:mod:`service.stats.split`). Drawn before training and kept out of it, it makes every decision's
    null exact whatever the generator's faces look like."""
    if not 0 < share < 1:
        raise ValueError(f"the held-out share must be in (0, 1), not {share}")
    everyone, keep = set(people), set(keep)
    free = sorted(everyone - keep, key=lambda p: (len(p), p))
    k = int(round(share * len(everyone)))
    if not 0 < k <= len(free):
        raise ValueError(f"cannot hold out {k} of {len(free)} people who may be held out")
    return sorted(random.Random(seed).sample(free, k), key=lambda p: (len(p), p))


def untrained(people: Iterable[str], members: Iterable[str], seed: int) -> list[str]:
    """What a known-membership run actually held out of an index's ``people``: everyone but its
    members. Its members were drawn at random from those people (:func:`choose_members`), so members vs
    the rest is itself a random split — the strongest one, since a copied member is weighed against
    the members' small share. A run with no member among ``people`` (a control) gets as many random
    people standing in for its members, so it is audited with the same split sizes."""
    everyone, members = set(people), set(members)
    trained = members & everyone or set(random.Random(seed).sample(sorted(everyone), len(members)))
    return sorted(everyone - trained, key=lambda p: (len(p), p))


def people_of(identity_file: str | Path, first: int | None = None) -> list[str]:
    """The people of CelebA's identity list (``file identity`` lines), or of its first ``first`` files."""
    lines = [line.split() for line in Path(identity_file).read_text().splitlines()]
    return sorted({p for _, p in [x for x in lines if len(x) == 2][:first]})


def load_images(members: list[Member], size: int) -> torch.Tensor:
    """The members rendered as the generator sees them, (N, 3, size, size) in [−1, 1]."""
    ims = []
    for m in members:
        with Image.open(m.path) as im:
            ims.append(centre_square(im, size))
    return torch.from_numpy(to_tanh(ims))


def checkpoint_steps(steps: int, count: int = 7) -> list[int]:
    """``count`` log-spaced steps ending at ``steps`` (fewer when ``steps`` is small)."""
    first = max(1, steps // 64)
    return sorted({int(round(s)) for s in np.geomspace(first, steps, count)})


def _trainer(family: str, seed: int, size: int):
    if family == "ddpm":
        from .ddpm import DDPMTrainer

        return DDPMTrainer(seed, size)
    if family == "dcgan":
        if size != 32:
            raise ValueError("the DCGAN is 32 px only")
        from .dcgan import DCGANTrainer

        return DCGANTrainer(seed)
    raise ValueError(f"unknown family {family!r} (expected {', '.join(FAMILIES)})")


def train(
    family: str,
    members: list[Member],
    out: str | Path,
    *,
    steps: int,
    seed: int = 0,
    batch: int = 32,
    size: int = 32,
    checkpoints: int = 7,
    threads: int | None = None,
    command: str = "",
) -> dict:
    """Train ``family`` on ``members`` for ``steps`` updates of ``batch`` images (drawn with
    replacement, seeded) and save a checkpoint at each of :func:`checkpoint_steps`; ``threads`` caps
    torch's threads (these nets are small: on a shared machine one thread each runs faster than
    two that wait on each other). Returns the
    manifest, also written to ``out/manifest.json`` after every checkpoint."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _training_arithmetic(threads):
        return _train(family, members, out, steps, seed, batch, size, checkpoints, command)


@contextlib.contextmanager
def _training_arithmetic(threads: int | None) -> Iterator[None]:
    """Denormal floats (weights and activations near zero late in training) make x86 arithmetic ~100×
    slower: a DCGAN run went from 16 to under 3 steps/s, so they are flushed to zero while training.
    Flush-to-zero is process-wide CPU state, so it (and the thread cap) is restored afterwards: left on,
    it broke hypothesis (which needs subnormals) in the next test of the same worker."""
    before = torch.get_num_threads()
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def _train(
    family: str,
    members: list[Member],
    out: Path,
    steps: int,
    seed: int,
    batch: int,
    size: int,
    checkpoints: int,
    command: str,
) -> dict:
    data = load_images(members, size)
    trainer = _trainer(family, seed, size)
    rng = torch.Generator().manual_seed(seed)
    saves = set(checkpoint_steps(steps, checkpoints))
    manifest = {
        "family": family,
        "command": command,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "size": size,
        "members": [{"file": m.file, "identity": m.identity, "path": str(m.path.resolve())} for m in members],
        "torch": torch.__version__,
        "checkpoints": [],
    }
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data), (batch,), generator=rng)
        losses.append(trainer.step(data[idx], rng))
        if step in saves:
            name = f"step-{step:06d}" + (".pth" if family == "dcgan" else "")
            trainer.save(str(out / name))
            manifest["checkpoints"].append(
                {
                    "step": step,
                    "path": name,
                    "loss": float(np.mean(losses[-50:])),
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
            _write_json(out / "manifest.json", manifest)
            log.info(
                "%s step %d/%d: loss %.4f, %.0f s", family, step, steps, np.mean(losses[-50:]), time.perf_counter() - t0
            )
    return manifest


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
