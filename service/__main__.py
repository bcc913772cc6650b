"""``python -m service --index INDEX``: serve the index over HTTP with waitress (threads, no dev server)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

log = logging.getLogger("service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .app import DEFAULTS

    p = argparse.ArgumentParser(
        prog="python -m service",
        description="facemem HTTP service: POST /neighbors finds each uploaded face's nearest training "
                    "faces (semantic and pixel) and reports collision and memorization statistics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--index", required=True, help="index directory built by `python -m indexer build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default; use a "
                   "token before binding anything else)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument("--workers", type=int, default=4, help="request threads (waitress)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every route "
                   "except /healthz (default: $FACEMEM_TOKEN; no authentication when neither is set)")
    p.add_argument("--max-files", type=int, default=DEFAULTS["max_files"], help="images per request")
    p.add_argument("--max-request-mb", type=float, default=DEFAULTS["max_request_mb"],
                   help="request body limit in MiB (413 above it)")
    p.add_argument("--max-pixels", type=int, default=DEFAULTS["max_pixels"],
                   help="per-image pixel cap, checked from the header before decoding")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="embedding/search device")
    p.add_argument("--detect-processes", type=int, default=None,
                   help="face-detection worker processes (default: one per core; 0: in the request thread)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    a = p.parse_args(argv)
    if a.workers < 1 or a.max_files < 1 or a.max_request_mb <= 0 or a.max_pixels < 1:
        p.error("--workers, --max-files, --max-request-mb and --max-pixels must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from waitress import create_server

    from indexer.store import IndexLoadError

    from .app import create_app

    token = a.token or os.environ.get("FACEMEM_TOKEN") or None
    try:
        app = create_app(a.index, {"token": token, "max_files": a.max_files, "max_request_mb": a.max_request_mb,
                                   "max_pixels": a.max_pixels, "device": a.device,
                                   "detect_processes": a.detect_processes})
    except (IndexLoadError, FileNotFoundError, ValueError, RuntimeError) as e:
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
    server = create_server(app, host=a.host, port=a.port, threads=a.workers, ident="facemem",
                           max_request_body_size=max(2 * limit, limit + (16 << 20)),
                           clear_untrusted_proxy_headers=True)

    def _stop(signum, frame):  # SIGTERM: close the listener and exit cleanly (pool shut down at exit)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    host, port = server.effective_host, server.effective_port  # type: ignore[attr-defined]
    print(f"facemem serving {state.index.n_faces} faces from {a.index} on http://{host}:{port} "
          f"({a.workers} threads, {state.pool.processes} detection processes, device {state.searcher.device}, "
          f"auth {'on' if token else 'off'})", flush=True)
    try:
        server.run()  # returns on SIGTERM / Ctrl-C (waitress catches the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        state.pool.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
