"""``python -m service --index INDEX``: serve the index over HTTP with waitress (threads, no dev server)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("service")

# After a drain, how long to wait for the last responses to be written to their sockets.
FLUSH_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .http.app import DEFAULTS

    p = argparse.ArgumentParser(
        prog="python -m service",
        description="facemem HTTP service: POST /neighbors finds each uploaded face's nearest training "
        "faces (semantic and pixel) and reports collision and memorization statistics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--index", required=True, help="index directory built by `python -m indexer build`")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (loopback by default; use a token before binding anything else)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="request threads (waitress); default: "
        "max-inflight + max-queue + 2, so that refusals and /healthz never wait behind searches",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="POST /neighbors requests computing at once (default: one per core)",
    )
    p.add_argument(
        "--max-queue",
        type=_queue_arg,
        default=DEFAULTS["max_queue"],
        help="POST /neighbors requests waiting for a slot; beyond it 503 + Retry-After "
        "('none': unbounded, the naive baseline)",
    )
    p.add_argument(
        "--queue-wait-s", type=float, default=DEFAULTS["queue_wait_s"], help="longest wait for a slot before 503"
    )
    p.add_argument(
        "--connection-limit",
        type=int,
        default=100,
        help="open connections waitress accepts; beyond it new ones wait in the TCP backlog",
    )
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=30.0,
        help="a request must arrive within this many seconds plus 1 s per --min-read-kib-s KiB, "
        "else 408 and the connection is closed; idle connections close after it too "
        "(slow-loris defence; 0: off, waitress's 120 s idle timeout only)",
    )
    p.add_argument(
        "--min-read-kib-s",
        type=float,
        default=64.0,
        help="upload rate (KiB/s) that --read-timeout-s allows for beyond its base",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=10.0,
        help="on SIGTERM: answer 503 to new requests and wait this long for running ones",
    )
    p.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every route "
        "except /healthz (default: $FACEMEM_TOKEN; no authentication when neither is set). "
        "Prefer --token-file or the variable: a command line is visible to other users",
    )
    p.add_argument("--token-file", default=None, help="read the token from this file (first line)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the sha256 check of every index file at "
        "start-up (sizes are still checked); for very large indexes on trusted disks",
    )
    p.add_argument("--max-files", type=int, default=DEFAULTS["max_files"], help="images per request")
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULTS["max_request_mb"],
        help="request body limit in MiB (413 above it)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULTS["max_pixels"],
        help="per-image pixel cap, checked from the header before decoding",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="embedding/search device")
    p.add_argument(
        "--detect-processes",
        type=int,
        default=None,
        help="face-detection worker processes (default: one per core; 0: in the request thread)",
    )
    p.add_argument(
        "--semantic-search",
        choices=("auto", "exact", "ivf"),
        default=DEFAULTS["semantic_search"],
        help="semantic channel: exact (float64-re-ranked flat search), ivf (the index's IVF, approximate; "
        "trained in memory if the index has none), auto (exact up to --exact-max-faces, ivf above)",
    )
    p.add_argument(
        "--exact-max-faces",
        type=int,
        default=DEFAULTS["exact_max_faces"],
        help="--semantic-search auto: largest index searched exactly",
    )
    p.add_argument("--ivf-nprobe", type=int, default=DEFAULTS["ivf_nprobe"], help="IVF clusters scanned per query")
    p.add_argument(
        "--pixel-exact-max-faces",
        type=int,
        default=DEFAULTS["pixel_exact_max_faces"],
        help="largest index whose pixel channel is exact L1 over every face (its bound tables take "
        "2,120 bytes per face in RAM); above it, exact L1 over --pixel-candidates semantic neighbours",
    )
    p.add_argument(
        "--pixel-candidates",
        type=int,
        default=DEFAULTS["pixel_candidates"],
        help="semantic neighbours whose crops the pixel channel compares above --pixel-exact-max-faces",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    a = p.parse_args(argv)
    if (
        (a.workers is not None and a.workers < 1)
        or a.max_files < 1
        or a.max_request_mb <= 0
        or a.max_pixels < 1
        or (a.max_inflight is not None and a.max_inflight < 1)
        or a.queue_wait_s <= 0
        or a.connection_limit < 1
        or a.min_read_kib_s <= 0
        or a.exact_max_faces < 0
        or a.ivf_nprobe < 1
        or a.pixel_exact_max_faces < 0
        or a.pixel_candidates < 1
    ):
        p.error(
            "--workers, --max-inflight, --max-files, --max-request-mb, --max-pixels, --queue-wait-s, "
            "--connection-limit, --min-read-kib-s, --ivf-nprobe and --pixel-candidates must be positive "
            "(--exact-max-faces and --pixel-exact-max-faces >= 0)"
        )
    if a.token and a.token_file:
        p.error("give --token or --token-file, not both")
    return a


def _queue_arg(raw: str) -> int | None:
    if raw.lower() in ("none", "unbounded"):
        return None
    v = int(raw)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'none'")
    return v


def _read_token(a: argparse.Namespace) -> str | None:
    if a.token_file:
        with open(a.token_file) as f:
            tok = f.readline().strip()
        if not tok:
            raise ValueError(f"--token-file {a.token_file} is empty")
        return tok
    return (a.token or os.environ.get("FACEMEM_TOKEN") or "").strip() or None


def json_server_errors() -> None:
    """Make waitress's own refusals JSON too (malformed request line, oversize body, bad headers).

    Those never reach the app, and waitress writes them as text/plain; clients parse every error
    of this service as ``{"error", "message"}``. Patches ``waitress.utilities.Error.to_response``
    (waitress pinned in requirements.txt; tests/test_security.py checks the result).
    """
    import json

    from waitress import utilities

    same_as_app = {"request_entity_too_large": "request_too_large"}  # one code per condition

    def to_response(self, ident=None):
        code = self.reason.lower().replace(" ", "_")
        body = json.dumps({"error": same_as_app.get(code, code), "message": f"{self.reason}: {self.body}"}).encode()
        return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body

    utilities.Error.to_response = to_response


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from waitress import create_server

    json_server_errors()

    from indexer.store import IndexLoadError

    from .http import slow_clients
    from .http.app import create_app

    try:
        token = _read_token(a)
        app = create_app(
            a.index,
            {
                "token": token,
                "max_files": a.max_files,
                "max_request_mb": a.max_request_mb,
                "max_pixels": a.max_pixels,
                "device": a.device,
                "detect_processes": a.detect_processes,
                "max_inflight": a.max_inflight,
                "max_queue": a.max_queue,
                "queue_wait_s": a.queue_wait_s,
                "verify": not a.no_verify,
                "semantic_search": a.semantic_search,
                "exact_max_faces": a.exact_max_faces,
                "ivf_nprobe": a.ivf_nprobe,
                "pixel_exact_max_faces": a.pixel_exact_max_faces,
                "pixel_candidates": a.pixel_candidates,
            },
        )
    except (IndexLoadError, OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.host not in ("127.0.0.1", "::1", "localhost") and not token:
        log.warning("binding %s without --token: anyone who can reach this port can query the index", a.host)
    state = app.extensions["facemem"]
    state.pool.start()
    limit = app.config["MAX_CONTENT_LENGTH"]
    # waitress buffers a body before the app sees it; its own cap (plain-text 413, checked from
    # Content-Length before reading) sits well above ours, so an oversize upload normally gets
    # the app's JSON 413 and a huge one is refused without being read.
    adm = state.admission
    threads = a.workers or (adm.inflight + (adm.queue if adm.queue is not None else 2) + 2)
    server = create_server(
        app,
        host=a.host,
        port=a.port,
        threads=threads,
        ident="facemem",
        max_request_body_size=max(2 * limit, limit + (16 << 20)),
        connection_limit=a.connection_limit,
        clear_untrusted_proxy_headers=True,
    )
    slow_clients.install(server, a.read_timeout_s, a.min_read_kib_s)
    listeners = slow_clients.listeners(server)

    stopping = threading.Event()

    def _written_out() -> bool:
        """No connection waits for a thread, and every response's bytes have reached its socket."""
        if server.task_dispatcher.queue:
            return False
        return all(not c.total_outbufs_len for s in listeners for c in list(s.active_channels.values()))

    def _drain_then_stop() -> None:
        log.info("SIGTERM: draining for up to %g s", a.drain_s)  # not in the handler: it could re-enter a log write
        done = adm.drain(a.drain_s)
        deadline = time.monotonic() + FLUSH_S
        while time.monotonic() < deadline and not _written_out():
            time.sleep(0.02)
        log.info("drained (%s); stopping", "all requests finished" if done else f"timeout {a.drain_s:g} s")
        if not stopping.is_set():
            stopping.set()
            try:
                signal.pthread_kill(main_thread, signal.SIGINT)  # wakes the event loop; the handler stops it
            except ProcessLookupError:  # the main thread is already gone
                pass

    def _stop(signum, frame):
        # First SIGTERM: drain (new requests get 503 + Retry-After, running ones finish), then stop.
        # A second SIGTERM stops at once.
        if stopping.is_set() or adm.draining:
            stopping.set()
            raise KeyboardInterrupt
        adm.draining = True  # here, not in the thread: a quick second signal sees it
        threading.Thread(target=_drain_then_stop, name="facemem-drain", daemon=True).start()

    def _interrupt(signum, frame):  # installed explicitly: a shell's `cmd &` or nohup starts us with SIGINT ignored
        stopping.set()
        raise KeyboardInterrupt

    main_thread = threading.main_thread().ident
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _interrupt)
    urls = " and ".join(
        f"http://{f'[{s.effective_host}]' if ':' in str(s.effective_host) else s.effective_host}:{s.effective_port}"
        for s in listeners
    )
    print(
        f"facemem serving {state.index.n_faces} faces from {a.index} on {urls} "
        f"({threads} threads, {adm.inflight} searching at once, queue {adm.queue}, "
        f"{state.pool.processes} detection processes, device {state.searcher.device}, "
        f"search {', '.join(c + ' ' + v['method'] for c, v in state.searcher.search_info().items())}, "
        f"auth {'on' if token else 'off'})",
        flush=True,
    )
    try:
        server.run()  # returns on SIGTERM / Ctrl-C (waitress catches the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a late signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        server.close()
        state.pool.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
