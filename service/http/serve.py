"""Run the app under waitress: the WSGI server, slow-client protection, JSON refusals, and the
SIGTERM drain (new requests get 503 + Retry-After, running ones finish, then the server stops).

``python -m service`` parses its options and calls :func:`serve`; nothing else here reads argv.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from flask import Flask

log = logging.getLogger("service")

# After a drain, how long to wait for the last responses to be written to their sockets.
FLUSH_S = 5.0

# server option -> create_app config key (the same name, dashes as underscores, unless given here)
APP_CONFIG = (
    "max_files",
    "max_request_mb",
    "max_pixels",
    "device",
    "detect_processes",
    "max_inflight",
    "max_queue",
    "queue_wait_s",
    "semantic_search",
    "exact_max_faces",
    "ivf_nprobe",
    "pixel_exact_max_faces",
    "pixel_candidates",
)


def read_token(a: argparse.Namespace) -> str | None:
    """The bearer token from --token-file, --token or $FACEMEM_TOKEN (in that order); None: no auth."""
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


def load_app(a: argparse.Namespace) -> tuple[Flask, str | None] | None:
    """The app over ``a.index`` and the token; None (after printing why) when the index or token won't load."""
    from indexer.store import IndexLoadError

    from .app import create_app

    try:
        token = read_token(a)
        config = {key: getattr(a, key) for key in APP_CONFIG}
        return create_app(a.index, {**config, "token": token, "verify": not a.no_verify}), token
    except (IndexLoadError, OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def make_server(app: Flask, a: argparse.Namespace):
    """The waitress server for ``app``, with slow-client protection installed."""
    from waitress import create_server

    from . import slow_clients

    limit = app.config["MAX_CONTENT_LENGTH"]
    adm = app.extensions["facemem"].admission
    threads = a.workers or (adm.inflight + (adm.queue if adm.queue is not None else 2) + 2)
    # waitress buffers a body before the app sees it; its own cap (plain-text 413, checked from
    # Content-Length before reading) sits well above ours, so an oversize upload normally gets
    # the app's JSON 413 and a huge one is refused without being read.
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
    return server, threads


def install_signals(server, adm, drain_s: float) -> None:
    """First SIGTERM: drain, then stop; a second SIGTERM or SIGINT: stop at once."""
    from . import slow_clients

    listeners = slow_clients.listeners(server)
    stopping = threading.Event()
    main_thread = threading.main_thread().ident

    def _written_out() -> bool:
        """No connection waits for a thread, and every response's bytes have reached its socket."""
        if server.task_dispatcher.queue:
            return False
        return all(not c.total_outbufs_len for s in listeners for c in list(s.active_channels.values()))

    def _drain_then_stop() -> None:
        log.info("SIGTERM: draining for up to %g s", drain_s)  # not in the handler: it could re-enter a log write
        done = adm.drain(drain_s)
        deadline = time.monotonic() + FLUSH_S
        while time.monotonic() < deadline and not _written_out():
            time.sleep(0.02)
        log.info("drained (%s); stopping", "all requests finished" if done else f"timeout {drain_s:g} s")
        if not stopping.is_set():
            stopping.set()
            try:
                signal.pthread_kill(main_thread, signal.SIGINT)  # wakes the event loop; the handler stops it
            except ProcessLookupError:  # the main thread is already gone
                pass

    def _stop(signum, frame):
        if stopping.is_set() or adm.draining:
            stopping.set()
            raise KeyboardInterrupt
        adm.draining = True  # here, not in the thread: a quick second signal sees it
        threading.Thread(target=_drain_then_stop, name="facemem-drain", daemon=True).start()

    def _interrupt(signum, frame):  # installed explicitly: a shell's `cmd &` or nohup starts us with SIGINT ignored
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _interrupt)


def serve(a: argparse.Namespace) -> int:
    """Load the index, start the detection workers and serve until SIGTERM or Ctrl-C; the exit code."""
    from . import slow_clients

    json_server_errors()
    loaded = load_app(a)
    if loaded is None:
        return 2
    app, token = loaded
    if a.host not in ("127.0.0.1", "::1", "localhost") and not token:
        log.warning("binding %s without --token: anyone who can reach this port can query the index", a.host)
    state = app.extensions["facemem"]
    state.pool.start()
    server, threads = make_server(app, a)
    install_signals(server, state.admission, a.drain_s)
    urls = " and ".join(
        f"http://{f'[{s.effective_host}]' if ':' in str(s.effective_host) else s.effective_host}:{s.effective_port}"
        for s in slow_clients.listeners(server)
    )
    adm = state.admission
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
