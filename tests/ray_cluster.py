"""A real 2-node Ray cluster on loopback only, for the multi-node tests.

The network namespace is private and holds only ``lo``: a holder process
``unshare -n sh -c 'ip link set lo up && exec sleep infinity'`` creates it, and every Ray node
and every build driver joins it with ``nsenter --net=/proc/<holder>/ns/net``, so no traffic can
reach any address but 127.0.0.1. Both nodes are ``ray start ... --block`` child processes of the
test (each in its own process group), with ``--node-ip-address=127.0.0.1``, one CPU each, no
dashboard and a small object store; they are stopped by their process ids. The head's GCS is
told to check node health every 0.5 s, so that a killed node is declared dead in ~2 s instead
of ~15 s (a test-time setting only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE = str(80 * 1000 * 1000)  # bytes per node; the build's results are ~1 MB per task
# Token authentication off: the namespace has only loopback, and Ray 2.60 would otherwise turn it on
# for the head whenever ~/.ray/auth_token exists (a shared home) while clients do not use it.
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
HEALTH = {
    "RAY_health_check_initial_delay_ms": "500",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def available() -> str | None:
    """Why a loopback cluster cannot run here (None: it can)."""
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"unshare -n is not permitted here: {r.stderr.strip()}"
    return None


class LoopbackCluster:
    """Head + one worker node in a private loopback-only network namespace."""

    def __init__(self, log_dir: Path, port: int = 6380):
        self.log_dir = Path(log_dir)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        # Ray's socket paths must stay under 108 bytes: a short private temp dir, not pytest's.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fmray-"))
        self.holder: subprocess.Popen | None = None
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self._logs: list = []
        self.head_node = self.worker_node = ""
        self.nodes: list[str] = []

    # -------------------------------------------------------------- the namespace
    def ns(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the cluster's network namespace."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *cmd]

    def run(self, *cmd: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.ns(*cmd),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **ENV, **(env or {})},
        )

    def popen(self, *cmd: str, log: str | Path, env: dict | None = None) -> subprocess.Popen:
        """``cmd`` in the namespace, in its own process group, output to ``log`` (relative: in log_dir)."""
        f = open(self.log_dir / log, "w")
        self._logs.append(f)
        return subprocess.Popen(
            self.ns(*cmd),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **ENV, **(env or {})},
        )

    # -------------------------------------------------------------- nodes
    def start(self, timeout: float = 90) -> LoopbackCluster:
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep infinity"])
        deadline = time.time() + 10
        while time.time() < deadline:  # the holder has exec'd into the namespace with lo up
            r = subprocess.run(self.ns("ip", "-o", "link", "show", "up"), capture_output=True, text=True)
            if r.returncode == 0 and "lo:" in r.stdout:
                break
            time.sleep(0.05)
        links = subprocess.run(self.ns("ip", "-o", "link"), capture_output=True, text=True).stdout
        assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
        self.head = self.popen(
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--port",
            str(self.port),
            "--num-cpus",
            "1",
            "--block",
            "--include-dashboard=false",
            "--object-store-memory",
            OBJECT_STORE,
            "--temp-dir",
            str(self.temp_dir),
            "--disable-usage-stats",
            log="ray-head.log",
            env=HEALTH,
        )
        try:
            (self.head_node,) = self.wait_nodes(1, timeout)
            self.start_worker(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, timeout: float = 120) -> None:
        self.worker = self.popen(
            RAY,
            "start",
            "--address",
            self.address,
            "--node-ip-address=127.0.0.1",
            "--num-cpus",
            "1",
            "--block",
            "--object-store-memory",
            OBJECT_STORE,
            "--disable-usage-stats",
            log=f"ray-worker-{int(time.time())}.log",
        )
        self.nodes = self.wait_nodes(2, timeout)
        (self.worker_node,) = set(self.nodes) - {self.head_node}

    def alive_nodes(self) -> list[str]:
        code = (
            f"import ray, logging; ray.init(address={self.address!r}, logging_level=logging.ERROR); "
            "print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
        )
        r = self.run(sys.executable, "-c", code, timeout=60)
        return r.stdout.split() if r.returncode == 0 else []

    def wait_nodes(self, n: int, timeout: float) -> list[str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in (self.head, self.worker):
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"a ray node exited with {p.returncode}; logs in {self.log_dir}")
            nodes = self.alive_nodes()
            if len(nodes) == n:
                return nodes
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not reach {n} nodes in {timeout} s; logs in {self.log_dir}")

    def kill_worker_node(self) -> None:
        """The worker node dies at once: SIGKILL to its whole process group (raylet, actors, all)."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()
        self.worker = None

    def stop(self) -> None:
        """Stop the nodes (SIGTERM by pid: ``ray start --block`` stops its node's processes), then the holder."""
        for p in (self.worker, self.head):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (self.worker, self.head):
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for p in (self.worker, self.head):  # anything of a node still in its group (an actor being restarted)
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
        for f in self._logs:
            f.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
