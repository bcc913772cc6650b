"""Train a small face generator on a known set of people, with checkpoints along the way.

    # 32 people of celeba10k, one image each (a members file: `file identity` per line)
    python scripts/train_generator.py choose --identities ../shared/data/celeba10k/identity_CelebA.txt \\
        --k 32 --seed 1 --inside-first 3000 --out build/mem/members_S.txt
    python scripts/train_generator.py train --family ddpm --members build/mem/members_S.txt \\
        --root ../shared/data/celeba10k/img_align_celeba --seed 0 --steps 3000 --out build/mem/ddpm_S
    # half the indexed people held out, drawn before training; the audit's --held-out-identities
    python scripts/train_generator.py hold-out --identities ../shared/data/celeba10k/identity_CelebA.txt \\
        --first 3000 --keep build/mem/members_S.txt --out build/mem/held_out_S.txt

Audit the checkpoints with ``--generator 'diffusers:OUT/step-*'`` (DDPM) or
``--generator 'dcgan32:OUT/step-*.pth'`` (DCGAN); ``scripts/bench_memorization.py`` scores them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from service.generators.train import FAMILIES, choose_members, hold_out, people_of, read_members, train


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ch = sub.add_parser("choose", help="write a members file: one image each of K different people")
    ch.add_argument("--identities", required=True, help="CelebA's identity list (`file identity` per line)")
    ch.add_argument("--k", type=int, required=True, help="people to choose")
    ch.add_argument("--seed", type=int, default=0, help="which people")
    ch.add_argument("--exclude", help="a members file whose people must not be chosen")
    where = ch.add_mutually_exclusive_group()
    where.add_argument("--inside-first", type=int, metavar="N", help="only people with an image among the first N")
    where.add_argument("--outside-first", type=int, metavar="N", help="only people with no image among the first N")
    ch.add_argument("--out", required=True, help="the members file to write")
    ch.add_argument(
        "--link-folder",
        metavar="DIR",
        help="also make DIR a folder of links to the chosen images (with --root): a --reference-real of held-out "
        "people in the training data's own rendering",
    )
    ch.add_argument("--root", help="folder the identity list's files are in (for --link-folder)")
    ho = sub.add_parser(
        "hold-out",
        help="write --held-out-identities: a random share of the people, chosen before training and never trained on",
    )
    ho.add_argument("--identities", required=True, help="CelebA's identity list (`file identity` per line)")
    ho.add_argument("--share", type=float, default=0.5, help="share of the people to hold out")
    ho.add_argument("--seed", type=int, default=0, help="which people")
    ho.add_argument("--first", type=int, metavar="N", help="only people with an image among the first N (the index)")
    ho.add_argument("--keep", help="a members file whose people are trained (never held out)")
    ho.add_argument("--out", required=True, help="the identity list to write (one a line)")
    tr = sub.add_parser("train", help="train on a members file, saving log-spaced checkpoints")
    tr.add_argument("--family", choices=FAMILIES, required=True, help="ddpm (diffusers UNet) or dcgan (32 px)")
    tr.add_argument("--members", required=True, help="the training images: `file [identity]` per line")
    tr.add_argument("--root", help="folder the members' files are relative to (default: the members file's)")
    tr.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    tr.add_argument("--steps", type=int, required=True, help="training updates")
    tr.add_argument("--batch", type=int, default=32, help="images per update (drawn with replacement)")
    tr.add_argument("--size", type=int, default=32, help="image size in px (the DCGAN is 32 px only)")
    tr.add_argument("--checkpoints", type=int, default=7, help="log-spaced checkpoints, the last at --steps")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 side by side)")
    tr.add_argument("--out", required=True, help="folder for the checkpoints and manifest.json")
    ex = sub.add_parser("export", help="copy a DDPM checkpoint with fp16 weights (half the bytes)")
    ex.add_argument("--checkpoint", required=True, help="a DDPM checkpoint folder (OUT/step-NNNNNN)")
    ex.add_argument("--out", required=True, help="the folder to write")
    return ap


def _people(members: str | None) -> set[str]:
    """The people of a members file (the last field of each line); none without a file."""
    if not members:
        return set()
    return {line.split()[-1] for line in Path(members).read_text().splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "export":
        from service.generators.ddpm import export_half

        export_half(args.checkpoint, args.out)
        return 0
    if args.command == "hold-out":
        try:
            held = hold_out(people_of(args.identities, args.first), args.share, args.seed, _people(args.keep))
        except (OSError, ValueError) as e:
            ap.error(str(e))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(held) + "\n")
        return 0
    if args.command == "choose":
        try:
            exclude = _people(args.exclude)
            first = args.inside_first if args.inside_first is not None else args.outside_first
            lines = choose_members(args.identities, args.k, args.seed, exclude, first, args.outside_first is None)
        except (OSError, ValueError) as e:
            ap.error(str(e))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
        if args.link_folder:
            if not args.root:
                ap.error("--link-folder needs --root")
            folder = Path(args.link_folder)
            folder.mkdir(parents=True, exist_ok=True)
            for line in lines:
                link = folder / line.split()[0]
                link.unlink(missing_ok=True)
                link.symlink_to(Path(args.root).resolve() / line.split()[0])
        return 0
    try:
        members = read_members(args.members, args.root)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    command = shlex.join([Path(sys.executable).name, *sys.argv])
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
