"""Train a small face generator on a known set of people, with checkpoints along the way.

    python scripts/train_generator.py --family ddpm --members build/mem/members.txt \
        --root ../shared/data/celeba10k/img_align_celeba --seed 0 --steps 3000 --out build/mem/ddpm

The members file lists ``file [identity]`` per line. Audit the checkpoints with
``--generator 'diffusers:OUT/step-*'`` (DDPM) or ``--generator 'dcgan32:OUT/step-*.pth'`` (DCGAN).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from service.generators.train import FAMILIES, read_members, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=FAMILIES, required=True, help="ddpm (diffusers UNet) or dcgan (32 px)")
    ap.add_argument("--members", required=True, help="the training images: `file [identity]` per line")
    ap.add_argument("--root", help="folder the members' files are relative to (default: the members file's)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    ap.add_argument("--steps", type=int, required=True, help="training updates")
    ap.add_argument("--batch", type=int, default=32, help="images per update (drawn with replacement)")
    ap.add_argument("--size", type=int, default=32, help="image size in px (the DCGAN is 32 px only)")
    ap.add_argument("--checkpoints", type=int, default=7, help="log-spaced checkpoints, the last at --steps")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's; 1 for side-by-side runs)"
    )
    ap.add_argument("--out", required=True, help="folder for the checkpoints and manifest.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        members = read_members(args.members, args.root)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    train(
        args.family,
        members,
        args.out,
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        size=args.size,
        checkpoints=args.checkpoints,
        threads=args.threads,
        command=command,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
