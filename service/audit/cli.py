"""The audit's command line: ``python scripts/audit.py``, ``facemem audit``, ``python -m service.audit.cli``.

A thin layer over :func:`service.audit.audit`: the options and their defaults come from
:data:`service.audit.defaults.OPTIONS`; the outputs are the HTML report (``--out``), the numbers
(``--json``) and one row per image (``--csv``).

Exit codes: 0 ok; 2 bad arguments, folder, generator or index; 3 server unreachable or not a
facemem service; 4 token missing or refused; 5 any other error answer from the server.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from indexer import faces

from .defaults import OPTIONS


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 2:
        raise argparse.ArgumentTypeError("batch sizes must be integers >= 2")
    return vals


def parser(prog: str = "python scripts/audit.py") -> argparse.ArgumentParser:
    from .sources import ADAPTERS

    o = OPTIONS
    p = argparse.ArgumentParser(
        prog=prog,
        description="Audit generated faces for memorization of a training set: a self-contained HTML report "
        "(nearest-neighbour grid, memorization against strangers with exact p-values, birthday-paradox support "
        "beside the training data's, the data-copying test C_T, identity concentration, distribution distances), "
        "its numbers as JSON and one CSV row per image.",
        epilog="Generator specs: ADAPTER:CHECKPOINT (built-in adapters: "
        + ", ".join(ADAPTERS)
        + "), module:callable (callable(n, seed) -> images), or module:callable:CHECKPOINT (callable(checkpoint, "
        "device) -> sampler). A series of checkpoints of one training run: a wildcard in the path "
        "(--generator 'dcgan32:runs/mem/step-*.pth') or a comma list ('dcgan32:a/step-100.pth,b/step-200.pth'): "
        "every checkpoint is audited against the one index (loaded once), ordered by the training step (the last "
        "integer in each file or folder name), and the report of the last one gets a 'Memorization across training' "
        "section (data['trend']). --trend-log FILE renders the JSONL log of the training-loop hook "
        "(service.audit.hook.track) instead. Exit codes: 0 ok, 2 bad input, 3 server unreachable, 4 token refused, "
        "5 other server error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generated", metavar="DIR", help="folder of generated images (searched recursively)")
    src.add_argument(
        "--generator",
        metavar="SPEC",
        help="PyTorch generator to sample fresh faces from; a glob ('dcgan32:runs/step-*.pth', "
        "'diffusers:runs/ddpm/step-*') or a comma list of checkpoints: memorization across training",
    )
    src.add_argument(
        "--trend-log",
        metavar="FILE",
        help="render the JSONL log of the training-loop hook (service.audit.hook.track) as the 'Memorization "
        "across training' page (--out) and its trend block (--json); no audit is run",
    )
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--index", help="index directory (in-process; no server needed)")
    tgt.add_argument("--server", metavar="URL", help="a running facemem service, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="bearer token for --server (default: $FACEMEM_TOKEN)")
    p.add_argument("--out", help="HTML report to write")
    p.add_argument("--json", metavar="OUT", help="write the numbers (facemem-audit/3) as JSON")
    p.add_argument(
        "--csv",
        metavar="OUT",
        help="write one row per image as CSV (default with --out/--json: <stem>.csv beside them; the HTML links it)",
    )
    p.add_argument("--n", type=int, default=o["n"].default, help=o["n"].help)
    p.add_argument("--batch-sizes", type=_ints, default=o["batch_sizes"].default, help=o["batch_sizes"].help)
    for name, typ in (
        ("trials", int),
        ("seed", int),
        ("k", int),
        ("chunk", int),
        ("grid_expanded", int),
        ("grid_max", int),
        ("upscale", int),
        ("steps", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=o[name].default, help=o[name].help)
    p.add_argument("--detector", default=o["detector"].default, choices=list(faces.DETECTORS), help=o["detector"].help)
    p.add_argument(
        "--false-match-rate",
        type=float,
        default=None,
        help=o["false_match_rate"].help + f" (default {o['false_match_rate'].default:g})",
    )
    p.add_argument("--threshold", type=float, default=None, help=o["threshold"].help + " (wins over the rate)")
    p.add_argument(
        "--pair-false-match-rate",
        type=float,
        default=o["pair_false_match_rate"].default,
        help=o["pair_false_match_rate"].help,
    )
    p.add_argument(
        "--no-resolution-match",
        dest="resolution_match",
        action="store_const",
        const=False,
        default=None,
        help="turn resolution matching off (" + o["resolution_match"].help + ")",
    )
    p.add_argument("--reference-real", metavar="DIR", default=None, help=o["reference_real"].help)
    p.add_argument(
        "--reference-detector", default=None, choices=list(faces.DETECTORS), help=o["reference_detector"].help
    )
    p.add_argument("--reference-downscale", type=int, metavar="PX", default=None, help=o["reference_downscale"].help)
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--reference-cache", metavar="DIR", default=None, help=o["reference_cache"].help)
    cache.add_argument(
        "--no-reference-cache",
        dest="reference_cache",
        action="store_const",
        const=False,
        help="process the reference faces again, without reading or writing the cache",
    )
    p.add_argument("--held-out-identities", metavar="FILE", default=None, help=o["held_out_identities"].help)
    p.add_argument("--training-set-size", type=int, default=None, help=o["training_set_size"].help)
    p.add_argument("--ct-cells", type=int, default=None, help=o["ct_cells"].help)
    p.add_argument("--alpha", type=float, default=o["alpha"].default, help=o["alpha"].help)
    p.add_argument("--device", default=o["device"].default, choices=["auto", "cpu", "cuda"], help=o["device"].help)
    p.add_argument("--detect-processes", type=int, default=None, help=o["detect_processes"].help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def parse_args(argv: list[str] | None = None, prog: str = "python scripts/audit.py") -> argparse.Namespace:
    p = parser(prog)
    a = p.parse_args(argv)
    for name in ("trials", "chunk", "k", "grid_max"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.n is not None and a.n < 1:
        p.error("--n must be >= 1")
    if a.token and not a.server:
        p.error("--token applies to --server")
    if a.trend_log:
        if a.index or a.server or a.csv:
            p.error("--trend-log renders a log: no --index, --server or --csv")
    elif not (a.index or a.server):
        p.error("one of the arguments --index --server is required")
    if not (a.out or a.json or a.csv):
        p.error("give at least one of --out (HTML), --json and --csv")
    if not 0 < a.alpha < 1:
        p.error("--alpha must be in (0, 1)")
    return a


def main(argv: list[str] | None = None, prog: str = "python scripts/audit.py") -> int:
    from . import audit
    from .backends import AuditError
    from .sources import SourceError

    args = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(args, prog)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    command = (
        prog + " " + " ".join(shlex.quote("***" if prev == "--token" else x) for prev, x in zip([""] + args, args))
    )
    opts = {k: getattr(a, k) for k in OPTIONS if k != "progress" and hasattr(a, k)}
    opts["progress"] = not a.no_progress
    t0 = time.perf_counter()
    if a.trend_log:
        given = any(x == "--alpha" or x.startswith("--alpha=") for x in args)
        return _trend_log(a, t0, a.alpha if given else None)
    try:
        res = audit(
            generated=a.generated,
            generator=a.generator,
            index=a.index,
            server=a.server,
            token=a.token,
            command=command,
            **opts,
        )
        written = []
        if a.csv:  # first: the HTML and the JSON link it (without --csv they write one beside themselves)
            written.append(str(res.to_csv(a.csv)))
        for path, write in ((a.out, res.to_html), (a.json, res.to_json)):
            if path:
                written.append(str(write(path)))
        if res.csv_path is not None and str(res.csv_path) not in written:
            written.append(str(res.csv_path))
    except AuditError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.code
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    sizes = ", ".join(f"{w} ({Path(w).stat().st_size / 1e6:.1f} MB)" for w in written)
    print(f"wrote {sizes} in {time.perf_counter() - t0:.1f} s: {res.summary_line()}")
    return 0


def _trend_log(a: argparse.Namespace, t0: float, alpha: float | None) -> int:
    """``--trend-log FILE``: the hook's log as the trend page and the trend block, no audit; decided
    at ``--alpha`` when given, else at the alpha the lines were audited at."""
    import json

    from . import _write_atomic
    from .formats import json_safe
    from .hook import read_trend
    from .report.trend import render_page

    try:
        trend = read_trend(a.trend_log, alpha)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = []
    if a.out:
        written.append(str(_write_atomic(a.out, render_page(trend))))
    if a.json:
        blob = json.dumps(json_safe({"trend": trend}), allow_nan=False, indent=1) + "\n"
        written.append(str(_write_atomic(a.json, blob)))
    first = trend["first_detected"]
    where = f"first detected at step {first['step']}" if first else "not detected"
    print(
        f"wrote {', '.join(written)} in {time.perf_counter() - t0:.1f} s: {len(trend['checkpoints'])} checkpoints, "
        f"memorization {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m service.audit.cli"))
