"""The load generator behind ``scripts/loadtest.py`` and the load tests (tests/test_load.py, test_fuzz.py,
test_slow_clients.py): N concurrent clients post real face images to a live ``POST /neighbors``.

Why: admission control is only trustworthy if, under overload, the server refuses cleanly (503 +
Retry-After), never errors, never answers wrongly and keeps its memory bounded. So each payload of
a fixed pool is first sent once, sequentially, to record its reference answer; during the load
every 200 answer is compared with it (files exactly, distances to 1e-4 relative), and the RSS of
the server (and of its worker processes) is polled every 50 ms. The command line is
``scripts/loadtest.py``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("loadtest")
MAX_MESSAGES = 5  # first error / mismatch messages kept per client
RETRY_AFTER_CAP_S = 5.0


def default_data() -> Path:
    return Path(os.environ.get("FACEMEM_DATA") or REPO.parent / "shared" / "data")


# ----------------------------------------------------------------------------- payloads and references


@dataclass(frozen=True)
class Payload:
    """One request body: real files of one kind, sent as they are on disk with that kind's detector."""

    kind: str  # 'celeba' (aligned crops) or 'pggan' (1024 px faces)
    detector: str  # celeba: 'aligned' (no detection needed); pggan: 'hog'
    files: tuple[tuple[str, bytes], ...]


def make_payloads(
    data: Path | str | None = None, n: int = 32, batch: int = 1, mix: float = 0.25, seed: int = 0
) -> list[Payload]:
    """A fixed, seeded pool of ``n`` distinct payloads, ``round(mix * n)`` of them PGGAN.

    A pool rather than fresh images per request is what makes answer checking possible: each
    payload's answer is known before the load starts.
    """
    data = Path(data) if data else default_data()
    rng = random.Random(seed)
    pools = {
        "celeba": sorted((data / "celeba10k" / "img_align_celeba").glob("*.jpg")),
        "pggan": sorted((data / "generated" / "pggan_celebahq").glob("*.jpg")),
    }
    order = {k: rng.sample(v, len(v)) for k, v in pools.items()}  # consumed in chunks, wrapping around
    used: Counter[str] = Counter()
    n_pggan = round(mix * n)
    out = []
    for kind in ["pggan"] * n_pggan + ["celeba"] * (n - n_pggan):
        if not order[kind]:
            raise FileNotFoundError(f"no {kind} images under {data}")
        picks = [order[kind][(used[kind] + i) % len(order[kind])] for i in range(batch)]
        used[kind] += batch
        detector = "aligned" if kind == "celeba" else "hog"
        out.append(Payload(kind, detector, tuple((p.name, p.read_bytes()) for p in picks)))
    rng.shuffle(out)
    return out


def post(session: requests.Session, url: str, payload: Payload, timeout: float) -> requests.Response:
    files = [("images", (name, body, "image/jpeg")) for name, body in payload.files]
    return session.post(
        url.rstrip("/") + "/neighbors", params={"detector": payload.detector, "k": 5}, files=files, timeout=timeout
    )


def answer_of(body: dict) -> list[dict]:
    """What must not change between identical requests: per image, status and both neighbour lists."""
    return [
        {
            "status": im["status"],
            **{ch: [(nb["file"], float(nb["distance"])) for nb in im.get(ch) or []] for ch in ("semantic", "pixel")},
        }
        for im in body.get("images", body.get("results"))
    ]


def compare(got: list[dict], ref: list[dict], rtol: float = 1e-4) -> str | None:
    """None when ``got`` matches ``ref``, else why not (statuses and files exactly, distances to ``rtol``)."""
    if len(got) != len(ref):
        return f"{len(got)} images answered, {len(ref)} expected"
    for i, (g, r) in enumerate(zip(got, ref)):
        if g["status"] != r["status"]:
            return f"image {i}: status {g['status']!r}, expected {r['status']!r}"
        for ch in ("semantic", "pixel"):
            if [f for f, _ in g[ch]] != [f for f, _ in r[ch]]:
                return f"image {i}: {ch} files {[f for f, _ in g[ch]]} != {[f for f, _ in r[ch]]}"
            for (_, dg), (_, dr) in zip(g[ch], r[ch]):
                if abs(dg - dr) > rtol * max(abs(dr), 1e-6):
                    return f"image {i}: {ch} distance {dg!r} != {dr!r}"
    return None


def reference_answers(url: str, payloads: list[Payload], timeout: float = 120.0) -> list[list[dict]]:
    """Each payload's answer, sent once and sequentially (a 503 is retried after its Retry-After)."""
    refs = []
    with requests.Session() as s:
        for i, p in enumerate(payloads):
            for _ in range(20):
                r = post(s, url, p, timeout)
                if r.status_code != 503:
                    break
                time.sleep(min(float(r.headers.get("Retry-After", 1)), RETRY_AFTER_CAP_S))
            if r.status_code != 200:
                raise RuntimeError(f"reference request {i} ({p.kind}) -> {r.status_code}: {r.text[:300]}")
            refs.append(answer_of(r.json()))
    log.info("recorded %d reference answers", len(refs))
    return refs


# ----------------------------------------------------------------------------- peak RSS


def descendants(pid: int) -> list[int]:
    """All descendants: from /proc/PID/task/*/children where the kernel has it, else one /proc scan."""
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if files:
        kids = [int(k) for f in files for k in _read(f).split()]
        return kids + [d for k in kids for d in descendants(k)]
    parent = {
        int(p.name): st.rsplit(")", 1)[1].split()[1]
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and (st := _read(p / "stat"))
    }
    out, todo = [], [pid]
    while todo:
        up = str(todo.pop())
        kids = [k for k, pp in parent.items() if pp == up]
        out, todo = out + kids, todo + kids
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process exited meanwhile
        return ""


def _rss(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", _read(Path(f"/proc/{pid}/status")), re.M)
    return int(m.group(1)) * 1024 if m else 0


class RssMonitor(threading.Thread):
    """Peak VmRSS of ``pid`` alone and of ``pid`` plus all its descendants, polled every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        super().__init__(daemon=True, name="rss-monitor")
        self.pid, self.interval_s, self.peaks = pid, interval_s, [0, 0]
        self._done = threading.Event()

    def run(self) -> None:
        polls, kids = 0, []
        while not self._done.is_set():
            if polls % 20 == 0:  # the face-detection workers rarely change: look for them once a second
                kids = descendants(self.pid)
            polls += 1
            server = _rss(self.pid)
            self.peaks = [max(self.peaks[0], server), max(self.peaks[1], server + sum(map(_rss, kids)))]
            self._done.wait(self.interval_s)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        return {"server": self.peaks[0] / 2**20, "server+children": self.peaks[1] / 2**20}


# ----------------------------------------------------------------------------- the load


@dataclass
class ClientStats:
    """One client's counts; merged after the run, so clients share no locks."""

    sent: int = 0
    ok: int = 0
    images_ok: int = 0
    rejected: int = 0
    wrong: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # kind ('connection', 'timeout', 'http_500', ...) -> n
    retry_after: Counter = field(default_factory=Counter)  # a 503's Retry-After value ('missing') -> n
    messages: list[str] = field(default_factory=list)
    error_at: list[tuple[str, float]] = field(default_factory=list)  # (kind, time.monotonic()) per error

    def error(self, kind: str, msg: str) -> None:
        self.errors[kind] += 1
        self.error_at.append((kind, time.monotonic()))
        self.note(f"{kind}: {msg}")

    def note(self, msg: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(msg[:300])


def _client(
    cid: int,
    url: str,
    n: int,
    payloads: list[Payload],
    refs: list[list[dict]],
    timeout: float,
    honor_retry_after: bool,
    seed: int,
    stop: threading.Event | None = None,
) -> ClientStats:
    """Send ``n`` requests one after another (or until ``stop`` is set); refusals and a dead server
    never end the client early."""
    st, rng = ClientStats(), random.Random(seed * 1000 + cid)
    with requests.Session() as s:
        for _ in range(n):
            if stop is not None and stop.is_set():
                break
            i = rng.randrange(len(payloads))
            st.sent += 1
            t0 = time.perf_counter()
            try:
                r = post(s, url, payloads[i], timeout)
            except requests.Timeout as e:
                st.error("timeout", str(e))
                continue
            except requests.ConnectionError as e:
                st.error("connection", str(e))
                time.sleep(0.2)  # the server may be restarting
                continue
            except requests.RequestException as e:  # e.g. a response cut off mid-body: counted, not fatal
                st.error(type(e).__name__, str(e))
                continue
            dt_ms = (time.perf_counter() - t0) * 1000
            if r.status_code == 200:
                try:
                    why = compare(answer_of(r.json()), refs[i])
                except (ValueError, KeyError, TypeError) as e:
                    st.error("bad_body", f"{type(e).__name__}: {e}")
                    continue
                st.ok += 1
                st.images_ok += len(payloads[i].files)
                st.latencies_ms.append(dt_ms)
                if why:
                    st.wrong += 1
                    st.note(f"wrong answer for payload {i}: {why}")
            elif r.status_code == 503:
                st.rejected += 1
                ra = r.headers.get("Retry-After")
                st.retry_after[ra or "missing"] += 1
                if honor_retry_after and ra:
                    try:
                        time.sleep(min(float(ra), RETRY_AFTER_CAP_S))
                    except ValueError:  # an HTTP date; the server sends seconds
                        pass
            else:
                st.error(f"http_{r.status_code}", r.text[:200])
    return st


def run_load(
    url: str,
    clients: int = 8,
    requests_per_client: int = 25,
    *,
    batch: int = 1,
    data: Path | str | None = None,
    mix: float = 0.25,
    pool: int = 32,
    seed: int = 0,
    timeout: float = 120.0,
    server_pid: int | None = None,
    honor_retry_after: bool = False,
    payloads: list[Payload] | None = None,
    references: list[list[dict]] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Run the load against ``url``; return every count, rate, latency and peak RSS as a dict.

    ``payloads`` default to ``make_payloads(data, pool, batch, mix, seed)``. ``references`` (one per
    payload, from :func:`reference_answers`) are computed first unless given, so a test can compute
    them once and reuse them against a restarted server. Setting ``stop`` ends every client after
    its current request (for runs whose length a test decides, e.g. across server restarts).
    """
    payloads = payloads or make_payloads(data, pool, batch, mix, seed)
    refs = references if references is not None else reference_answers(url, payloads, timeout)
    if len(refs) != len(payloads):
        raise ValueError(f"{len(refs)} references for {len(payloads)} payloads")
    mon = RssMonitor(server_pid) if server_pid else None
    if mon:
        mon.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix="client") as ex:
        res = list(
            ex.map(
                lambda c: _client(c, url, requests_per_client, payloads, refs, timeout, honor_retry_after, seed, stop),
                range(clients),
            )
        )
    wall = time.perf_counter() - t0
    lat = np.array([x for r in res for x in r.latencies_ms])
    out = {
        "url": url,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "batch": batch,
        "mix": mix,
        "honor_retry_after": honor_retry_after,
        "payloads": len(payloads),
        **{k: sum(getattr(r, k) for r in res) for k in ("sent", "ok", "rejected", "wrong")},
        "errors": dict(sum((r.errors for r in res), Counter())),
        "retry_after": dict(sum((r.retry_after for r in res), Counter())),
        "messages": [m for r in res for m in r.messages][: 2 * MAX_MESSAGES],
        "wall_s": wall,
        # when each error happened (time.monotonic()), so a test can line errors up with its events
        "error_at": sorted((t, k) for r in res for k, t in r.error_at),
        "ok_per_s": sum(r.ok for r in res) / wall,
        "images_per_s": sum(r.images_ok for r in res) / wall,
        "latency_ms": {
            q: float(np.percentile(lat, p)) if lat.size else None
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "peak_rss_mib": mon.stop() if mon else None,
    }
    out["error_count"] = sum(out["errors"].values())
    log.info(
        "load done: %(sent)d sent, %(ok)d ok, %(rejected)d rejected, %(error_count)d errors, "
        "%(wrong)d wrong in %(wall_s).1f s",
        out,
    )
    return out


# ----------------------------------------------------------------------------- a server to test


@contextmanager
def serve(
    index_dir: Path | str, *server_args: str, start_timeout: float = 180.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service --index DIR --port 0 ARGS`` until /healthz answers; SIGTERM (drain) at exit.

    Raises RuntimeError with the server's last output lines if it exits or is not ready in time.
    """
    cmd = [sys.executable, "-m", "service", "--index", str(index_dir), "--port", "0", *server_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: deque[str] = deque(maxlen=3)
    urls: list[str] = []

    def drain() -> None:  # read all output so the server never blocks on a full pipe
        for line in proc.stdout or ():
            tail.append(line.strip())
            if not urls and (m := re.search(r"on (http://\S+:\d+)", line)):
                urls.append(m.group(1))

    threading.Thread(target=drain, daemon=True, name="server-output").start()
    try:
        deadline = time.monotonic() + start_timeout
        while not urls or not _healthy(urls[0]):
            if proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)  # let the drain thread catch the last lines
                raise RuntimeError(
                    f"`python {shlex.join(cmd[1:])}` did not start (exit {proc.poll()}): " + " | ".join(tail)
                )
            time.sleep(0.1)
        log.info("server pid %d ready on %s", proc.pid, urls[0])
        yield urls[0], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).ok
    except requests.RequestException:
        return False
