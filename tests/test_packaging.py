"""The `facemem` distribution and command, installed (not editable) into a throwaway folder and run
from outside the checkout, so that what is tested is what pyproject.toml packages; and progress bars
that draw only on a terminal.

The shared .venv is never touched: ``pip install --target`` writes only under tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import CELEBA10K, REPO

import service
from indexer.progress import is_terminal, progress_bar


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build and install the project from a copy of its sources (pyproject.toml, README.md, the two
    packages) into ``site/``, with the shared venv's setuptools (no build isolation, no download)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    for pkg in ("indexer", "service"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    p = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FACEMEM_TOKEN", None)
    return {"tmp": tmp, "site": site, "exe": site / "bin" / "facemem", "env": env}


def run(inst: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(inst["exe"]), *args], capture_output=True, text=True, timeout=timeout, cwd=inst["tmp"], env=inst["env"]
    )


def test_the_distribution_holds_both_packages_and_the_page_and_schema_files(installed):
    site = installed["site"]
    for rel in (
        "indexer/build.py",
        "indexer/progress.py",
        "service/cli.py",
        "service/client.py",
        "service/audit/__init__.py",
        "service/http/openapi.json",
        "service/http/static/index.html",
        "service/http/static/app.js",
        "service/http/static/app.css",
    ):
        assert (site / rel).is_file(), rel
    assert not (site / "tests").exists() and not (site / "scripts").exists()
    # run from outside the checkout, the installed copy is what gets imported
    p = subprocess.run(
        [sys.executable, "-c", "import service, indexer; print(service.__file__); print(indexer.__file__)"],
        capture_output=True,
        text=True,
        cwd=installed["tmp"],
        env=installed["env"],
    )
    assert p.returncode == 0 and all(Path(x).is_relative_to(site) for x in p.stdout.split()), p.stdout + p.stderr
    meta = next(site.glob("facemem-*.dist-info"))
    assert (meta / "entry_points.txt").read_text().count("facemem = service.cli:main") == 1


def test_facemem_command_version_help_and_unknown_commands(installed):
    p = run(installed, "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"facemem {service.__version__}"
    p = run(installed, "--help")
    assert p.returncode == 0 and re.search(r"^\s+index\s", p.stdout, re.M) and re.search(r"^\s+serve\s", p.stdout, re.M)
    p = run(installed)
    assert p.returncode == 2 and "usage: facemem" in p.stderr
    p = run(installed, "frobnicate")
    assert p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr
    p = run(installed, "serve", "--help")  # the module's own parser: same options as python -m service
    assert p.returncode == 0 and "--max-inflight" in p.stdout and "--token-file" in p.stdout
    p = run(installed, "index", "build", "--help")
    assert p.returncode == 0 and "--identity-from-folders" in p.stdout
    p = run(installed, "index", "info", str(installed["tmp"] / "no-such-index"))
    assert p.returncode == 2 and p.stderr.startswith("error:")
    # the same entry point from the checkout, as a module
    p = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and p.stdout.startswith("facemem ")


def test_facemem_index_build_info_and_serve_from_the_installed_copy(installed):
    """A real (tiny) build with stderr to a pipe draws no progress bar; info reads it back; serve
    answers the browser page from the installed package data, and nothing from its working directory."""
    tmp = installed["tmp"]
    ds = tmp / "faces"
    ds.mkdir()
    for i in range(1, 5):
        shutil.copy(CELEBA10K / "img_align_celeba" / f"{i:06d}.jpg", ds / f"{i:06d}.jpg")
    out = tmp / "idx"
    p = run(installed, "index", "build", "--dataset", "folder", "--root", str(ds), "--out", str(out), "--workers", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\r" not in p.stderr and "indexing:" not in p.stderr and "img/s]" not in p.stderr, p.stderr[-500:]
    p = run(installed, "index", "info", str(out), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["faces"] == 4
    (tmp / "static").mkdir()  # Flask's implicit static folder would serve this from the working directory
    (tmp / "static" / "secret.txt").write_text("not for the web")
    log = tmp / "serve.log"
    with open(log, "w") as lf:
        proc = subprocess.Popen(
            [str(installed["exe"]), "serve", "--index", str(out), "--port", "0", "--detect-processes", "0"],
            cwd=tmp,
            env=installed["env"],
            stdout=lf,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, url = time.time() + 120, None
        while url is None:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.2)
        page = requests.get(url + "/", timeout=30)
        page_file = installed["site"] / "service/http/static/index.html"
        assert page.status_code == 200 and page_file.read_text() == page.text
        assert requests.get(url + "/static/app.js", timeout=30).status_code == 200
        assert requests.get(url + "/static/secret.txt", timeout=30).status_code == 404
        assert requests.get(url + "/healthz", timeout=30).json()["faces"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_progress_bars_draw_only_on_a_terminal():
    buf = io.StringIO()
    bar = progress_bar(total=50, file=buf, desc="x")
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert bar.disable and buf.getvalue() == "" and not is_terminal(buf)
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            assert is_terminal(tty)
            off = progress_bar(enabled=False, total=5, file=tty)
            assert off.disable
            off.close()
            bar = progress_bar(total=5, file=tty, desc="drawn", mininterval=0, ncols=80, dynamic_ncols=False)
            assert not bar.disable
            bar.update(5)
            bar.close()
        os.set_blocking(master, False)
        drawn = b""
        try:
            while chunk := os.read(master, 65536):
                drawn += chunk
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(master)
    assert b"drawn" in drawn and b"5/5" in drawn
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(None)
