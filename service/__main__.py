"""``python -m service --index INDEX``: serve the index over HTTP with waitress (threads, no dev server).

The options are one table (:data:`OPTIONS`); :func:`service.http.serve.serve` does the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .http.app import DEFAULTS

DESCRIPTION = (
    "facemem HTTP service: POST /neighbors finds each uploaded face's nearest training "
    "faces (semantic and pixel) and reports collision and memorization statistics."
)

# options that must be at least 1 (POSITIVE) or at least 0 (NON_NEGATIVE), or > 0 for floats
POSITIVE = ("workers", "max_inflight", "max_files", "max_pixels", "connection_limit", "ivf_nprobe", "pixel_candidates")
POSITIVE_FLOATS = ("max_request_mb", "queue_wait_s", "min_read_kib_s")
NON_NEGATIVE = ("exact_max_faces", "pixel_exact_max_faces")


def _queue_arg(raw: str) -> int | None:
    if raw.lower() in ("none", "unbounded"):
        return None
    v = int(raw)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'none'")
    return v


# Every option of ``python -m service``: (flag, argparse keywords); the app's DEFAULTS where it has one.
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--index", dict(required=True, help="index directory built by `python -m indexer build`")),
    (
        "--host",
        dict(
            default="127.0.0.1",
            help="address to bind (loopback by default; use a token before binding anything else)",
        ),
    ),
    ("--port", dict(type=int, default=8000, help="TCP port (0 picks a free one)")),
    (
        "--workers",
        dict(
            type=int,
            default=None,
            help="request threads (waitress); default: "
            "max-inflight + max-queue + 2, so that refusals and /healthz never wait behind searches",
        ),
    ),
    (
        "--max-inflight",
        dict(type=int, default=None, help="POST /neighbors requests computing at once (default: one per core)"),
    ),
    (
        "--max-queue",
        dict(
            type=_queue_arg,
            default=DEFAULTS["max_queue"],
            help="POST /neighbors requests waiting for a slot; beyond it 503 + Retry-After "
            "('none': unbounded, the naive baseline)",
        ),
    ),
    (
        "--queue-wait-s",
        dict(type=float, default=DEFAULTS["queue_wait_s"], help="longest wait for a slot before 503"),
    ),
    (
        "--connection-limit",
        dict(
            type=int,
            default=100,
            help="open connections waitress accepts; beyond it new ones wait in the TCP backlog",
        ),
    ),
    (
        "--read-timeout-s",
        dict(
            type=float,
            default=30.0,
            help="a request must arrive within this many seconds plus 1 s per --min-read-kib-s KiB, "
            "else 408 and the connection is closed; idle connections close after it too "
            "(slow-loris defence; 0: off, waitress's 120 s idle timeout only)",
        ),
    ),
    (
        "--min-read-kib-s",
        dict(type=float, default=64.0, help="upload rate (KiB/s) that --read-timeout-s allows for beyond its base"),
    ),
    (
        "--drain-s",
        dict(
            type=float,
            default=10.0,
            help="on SIGTERM: answer 503 to new requests and wait this long for running ones",
        ),
    ),
    (
        "--token",
        dict(
            default=None,
            help="require 'Authorization: Bearer TOKEN' on every route "
            "except /healthz (default: $FACEMEM_TOKEN; no authentication when neither is set). "
            "Prefer --token-file or the variable: a command line is visible to other users",
        ),
    ),
    ("--token-file", dict(default=None, help="read the token from this file (first line)")),
    (
        "--no-verify",
        dict(
            action="store_true",
            help="skip the sha256 check of every index file at "
            "start-up (sizes are still checked); for very large indexes on trusted disks",
        ),
    ),
    ("--max-files", dict(type=int, default=DEFAULTS["max_files"], help="images per request")),
    (
        "--max-request-mb",
        dict(type=float, default=DEFAULTS["max_request_mb"], help="request body limit in MiB (413 above it)"),
    ),
    (
        "--max-pixels",
        dict(
            type=int,
            default=DEFAULTS["max_pixels"],
            help="per-image pixel cap, checked from the header before decoding",
        ),
    ),
    ("--device", dict(choices=("auto", "cpu", "cuda"), default="auto", help="embedding/search device")),
    (
        "--detect-processes",
        dict(
            type=int,
            default=None,
            help="face-detection worker processes (default: one per core; 0: in the request thread)",
        ),
    ),
    (
        "--semantic-search",
        dict(
            choices=("auto", "exact", "ivf"),
            default=DEFAULTS["semantic_search"],
            help="semantic channel: exact (float64-re-ranked flat search), ivf (the index's IVF, approximate; "
            "trained in memory if the index has none), auto (exact up to --exact-max-faces, ivf above)",
        ),
    ),
    (
        "--exact-max-faces",
        dict(
            type=int,
            default=DEFAULTS["exact_max_faces"],
            help="--semantic-search auto: largest index searched exactly",
        ),
    ),
    ("--ivf-nprobe", dict(type=int, default=DEFAULTS["ivf_nprobe"], help="IVF clusters scanned per query")),
    (
        "--pixel-exact-max-faces",
        dict(
            type=int,
            default=DEFAULTS["pixel_exact_max_faces"],
            help="largest index whose pixel channel is exact L1 over every face (its bound tables take "
            "2,120 bytes per face in RAM); above it, exact L1 over --pixel-candidates semantic neighbours",
        ),
    ),
    (
        "--pixel-candidates",
        dict(
            type=int,
            default=DEFAULTS["pixel_candidates"],
            help="semantic neighbours whose crops the pixel channel compares above --pixel-exact-max-faces",
        ),
    ),
    ("--log-level", dict(default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m service", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for flag, kw in OPTIONS:
        p.add_argument(flag, **kw)
    a = p.parse_args(argv)
    if (
        any(getattr(a, k) is not None and getattr(a, k) < 1 for k in POSITIVE)
        or any(getattr(a, k) <= 0 for k in POSITIVE_FLOATS)
        or any(getattr(a, k) < 0 for k in NON_NEGATIVE)
    ):
        p.error(
            "--workers, --max-inflight, --max-files, --max-request-mb, --max-pixels, --queue-wait-s, "
            "--connection-limit, --min-read-kib-s, --ivf-nprobe and --pixel-candidates must be positive "
            "(--exact-max-faces and --pixel-exact-max-faces >= 0)"
        )
    if a.token and a.token_file:
        p.error("give --token or --token-file, not both")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .http.serve import serve

    return serve(a)


if __name__ == "__main__":
    sys.exit(main())
