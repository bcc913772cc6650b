"""Security: the image route cannot be steered outside the index, no route fetches or opens what a
client names, and the bearer token guards every route but /healthz without leaking into logs.

The file-access proof uses Python's audit hooks (PEP 578): every ``open`` and network call made while
hostile requests are served in-process is recorded, and each must be a module file or one of the
index's own images.
"""

from __future__ import annotations

import hmac
import io
import json
import mimetypes
import os
import re
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import requests
from conftest import CELEBA10K, REPO, build_index, live_server

from service import create_app
from service.http.auth import token_matches

IMG_DIR = CELEBA10K / "img_align_celeba"
TOKEN = "tok-\u00e9-0123456789abcdef"  # non-ASCII on purpose

# Paths that try to leave the index's file list: dot segments, absolute paths, encodings, unicode
# look-alikes, NUL bytes, backslashes, the dataset's own non-image files, URLs.
TRAVERSALS = [
    "../identity_CelebA.txt",
    "../../../../etc/passwd",
    "..%2fidentity_CelebA.txt",
    "%2e%2e/identity_CelebA.txt",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5c..%5cetc%5cpasswd",
    "..\\..\\etc\\passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "//etc/passwd",
    "%c0%ae%c0%ae/etc/passwd",
    "%ef%bc%8e%ef%bc%8e%ef%bc%8fetc%ef%bc%8fpasswd",
    "\u2025/etc/passwd",
    "000001.jpg%00.png",
    "000001.jpg%00",
    "./000001.jpg",
    "000001.jpg/",
    "000001.jpg/.",
    "img_align_celeba/000001.jpg",
    "000001.JPG",
    " 000001.jpg",
    "identity_CelebA.txt",
    "list_eval_partition.txt",
    "manifest.json",
    "../manifest.json",
    "/proc/self/environ",
    "file:///etc/passwd",
    "http://127.0.0.1:1/x.jpg",
    "~/.ssh/id_rsa",
    "$HOME/x",
    "000001.jpg;ls",
]


@pytest.fixture(scope="module")
def symlinked_index(tmp_path_factory) -> Path:
    """A folder index whose root holds a file symlink and a directory symlink that leave the root."""
    tmp = tmp_path_factory.mktemp("symlinks")
    outside = tmp / "outside"
    outside.mkdir()
    for f in ("000010.jpg", "000011.jpg"):
        (outside / f).write_bytes((IMG_DIR / f).read_bytes())
    root = tmp / "root"
    root.mkdir()
    for f in ("000001.jpg", "000002.jpg", "000003.jpg"):
        (root / f).write_bytes((IMG_DIR / f).read_bytes())
    (root / "file-link.jpg").symlink_to(outside / "000010.jpg")
    (root / "dir-link").symlink_to(outside, target_is_directory=True)
    return build_index(tmp / "idx", root=root, dataset="folder", detector="aligned", workers=1)


@pytest.fixture(scope="module")
def client(symlinked_index):
    app = create_app(symlinked_index, {"detect_processes": 0, "device": "cpu", "token": TOKEN, "verify": True})
    return app.test_client()


AUTH = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}  # as a WSGI header carries it


def test_images_route_serves_only_files_of_the_index(client, symlinked_index):
    st = client.application.extensions["facemem"]
    assert client.get("/images/000002.jpg", headers=AUTH).status_code == 200
    for p in TRAVERSALS:
        r = client.get("/images/" + p, headers=AUTH)
        assert r.status_code in (400, 404), (p, r.status_code)
        assert r.is_json and r.get_json()["error"] in ("not_found", "bad_parameter"), p
    # The symlinked file is indexed (the folder reader follows it) but resolves outside the root.
    assert "file-link.jpg" in st.face_files
    for f in [f for f in st.face_files if "link" in f]:
        r = client.get("/images/" + f, headers=AUTH)
        assert r.status_code == 404 and r.get_json()["error"] == "not_found", f


def raw_get(host: str, port: int, target: bytes) -> tuple[int, bytes]:
    """Send a request line byte for byte (http.client would refuse non-ASCII, requests would normalise)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_traversal_over_raw_http_is_404_json(symlinked_index, tmp_path):
    """Raw request lines through waitress, including raw UTF-8 and dot segments."""
    with live_server(symlinked_index, tmp_path / "server.log", "--detect-processes", "0") as (url, _):
        host, port = url.removeprefix("http://").split(":")
        assert raw_get(host, int(port), b"/images/000002.jpg")[0] == 200
        for p in TRAVERSALS + ["../../../../etc/passwd", "/../../etc/passwd", "file-link.jpg", "dir-link/000011.jpg"]:
            status, body = raw_get(host, int(port), b"/images/" + p.replace(" ", "%20").encode())
            assert status in (400, 404), (p, status, body[:200])
            assert json.loads(body)["error"] in ("not_found", "bad_request", "bad_parameter"), (p, body[:200])


def _allowed_roots() -> list[Path]:
    roots = {Path(sys.prefix), Path(sys.base_prefix), REPO}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        roots.add(Path(sysconfig.get_paths()[key]))
    return [r.resolve() for r in roots]


_events: list[tuple[str, tuple]] = []
_recording = [False]


def _hook(event: str, args: tuple) -> None:
    if _recording[0] and (
        event == "open" or event.startswith(("socket.", "urllib.", "subprocess.", "os.system", "http.client"))
    ):
        _events.append((event, args))


def test_no_route_opens_a_client_chosen_path_or_fetches_a_url(client, symlinked_index):
    """Serve hostile requests in-process with an audit hook on: every file opened must be a module
    file or an indexed image, and nothing may touch the network or start a process."""
    sys.addaudithook(_hook)  # cannot be removed; it records only while _recording is set
    st = client.application.extensions["facemem"]
    indexed = {(st.index.dataset_root / f).resolve() for f in st.face_files}
    hostile_names = ["../../etc/passwd", "/etc/passwd", "http://127.0.0.1:9/x.jpg", "file:///etc/shadow"]
    good = (IMG_DIR / "000005.jpg").read_bytes()
    _events.clear()
    _recording[0] = True
    try:
        for p in TRAVERSALS:
            client.get("/images/" + p, headers=AUTH)
        client.get("/images/000001.jpg", headers=AUTH)
        data = {"images": [(io.BytesIO(good), n) for n in hostile_names]}
        r = client.post("/neighbors?detector=aligned", data=data, headers=AUTH, content_type="multipart/form-data")
        assert r.status_code == 200 and [i["image"] for i in r.get_json()["images"]] == hostile_names
        for body in (
            {"images": [{"name": "/etc/passwd", "data": "http://127.0.0.1:9/x.jpg"}]},
            {"images": [{"name": "x", "url": "http://127.0.0.1:9/x.jpg"}]},
            {"images": "file:///etc/passwd"},
        ):
            r = client.post("/neighbors", json=body, headers=AUTH)
            assert r.status_code == 400, body
        for q in ("?detector=/etc/passwd", "?k=../../x", "?channels=file:///etc/passwd"):
            assert (
                client.post(
                    "/neighbors" + q,
                    data={"images": [(io.BytesIO(good), "a.jpg")]},
                    headers=AUTH,
                    content_type="multipart/form-data",
                ).status_code
                == 400
            )
    finally:
        _recording[0] = False
    net = [e for e in _events if e[0] != "open"]
    assert net == [], net
    roots = _allowed_roots()
    system_files = set(mimetypes.knownfiles)  # read once by mimetypes' lazy init, names fixed in the stdlib
    opened = []
    for _, args in _events:
        path = args[0]
        if isinstance(path, int):
            continue  # an already-open descriptor
        p = Path(os.fsdecode(path)).resolve()
        opened.append(p)
        ok = (
            p in indexed
            or any(p.is_relative_to(r) for r in roots)
            or str(p) in system_files
            or (p.is_relative_to(Path(tempfile.gettempdir()).resolve()) and re.match(r"tmp\w+$", p.name))
        )
        assert ok, f"opened {p} while serving hostile requests"
    assert (st.index.dataset_root / "000001.jpg").resolve() in opened  # the hook did see the real read


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN.encode().decode("latin-1")},
        {"Authorization": "Basic " + TOKEN.encode().decode("latin-1")},
        {"Authorization": "bearer " + TOKEN.encode().decode("latin-1")},
        {"Authorization": "Bearer " + TOKEN.encode().decode("latin-1")[:-1]},
        {"Authorization": "Bearer " + TOKEN.encode().decode("latin-1") + "x"},
        {"Authorization": "Bearer " + "A" * 8000},
        {"X-Token": TOKEN.encode().decode("latin-1")},
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "wrong",
        "no-scheme",
        "basic",
        "lowercase",
        "prefix",
        "longer",
        "huge",
        "other-header",
    ],
)
def test_every_route_but_healthz_needs_the_token(client, headers):
    app = client.application
    routes = [
        (m, re.sub(r"<(?:\w+:)?\w+>", "000001.jpg", r.rule))
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
        for m in sorted(r.methods - {"HEAD"})
    ]
    routes += [("GET", "/no/such/route"), ("DELETE", "/neighbors"), ("PUT", "/v1/index"), ("GET", "/images/../x")]
    assert {p for _, p in routes} >= {
        "/healthz",
        "/v1/index",
        "/neighbors",
        "/images/000001.jpg",
        "/openapi.json",
        "/metrics",
        "/",
        "/static/000001.jpg",
    }
    for method, path in routes:
        r = client.open(path, method=method, headers=headers)
        if path == "/healthz":
            assert r.status_code == 200 or (method == "OPTIONS" and r.status_code == 200), (method, path)
            continue
        if path in ("/", "/static/000001.jpg"):  # the browser page asks for the token; it holds no data
            assert r.status_code != 401, (method, path)
            continue
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.get_json()["error"] == "unauthorized" and r.headers["WWW-Authenticate"].startswith("Bearer")
    for method, path in routes:  # and with the token nothing is 401
        assert client.open(path, method=method, headers=AUTH).status_code != 401, (method, path)


def test_token_compare_is_constant_time_over_fixed_length_digests(monkeypatch):
    """Every guess, whatever its length or how much of it is right, ends in one compare_digest of two
    32-byte sha256 digests (compare_digest alone returns early when lengths differ)."""
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = "correct horse battery staple"
    guesses = ["", "c", "correct", token[:-1] + "X", token, token + "!", "x" * 10_000, "\udcff\u00e9"]
    results = [token_matches(f"Bearer {g}", token) for g in guesses]
    assert results == [g == token for g in guesses]
    assert seen == [(32, 32)] * len(guesses)
    assert token_matches("Bearer " + token, "") is False and token_matches("", token) is False


def test_tokens_never_reach_the_log(small_index_dir, tmp_path):
    secret = "s3cret-" + os.urandom(8).hex()
    wrong = "guess-" + os.urandom(8).hex()
    tok_file = tmp_path / "token"
    tok_file.write_text(secret + "\n")
    log_path = tmp_path / "server.log"
    with live_server(
        small_index_dir, log_path, "--token-file", str(tok_file), "--log-level", "DEBUG", "--detect-processes", "0"
    ) as (url, proc):
        assert secret not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        good = (IMG_DIR / "000001.jpg").read_bytes()
        for tok in (secret, wrong):
            h = {"Authorization": f"Bearer {tok}"}
            for path in ("/v1/index", "/openapi.json", "/images/000001.jpg", "/images/nope.jpg", "/nowhere"):
                requests.get(url + path, headers=h, timeout=30)
            requests.post(
                url + "/neighbors?detector=aligned",
                headers=h,
                timeout=60,
                files=[("images", ("a.jpg", good, "image/jpeg"))],
            )
            requests.post(url + "/neighbors?bogus=1", headers=h, timeout=60, files=[("images", ("a.jpg", good))])
        assert requests.get(url + "/v1/index", headers={"Authorization": f"Bearer {secret}"}, timeout=30).ok
        assert (
            requests.get(url + "/v1/index", headers={"Authorization": f"Bearer {wrong}"}, timeout=30).status_code == 401
        )
    text = log_path.read_text()
    assert "GET /v1/index -> 401" in text and "DEBUG" in text  # the log is there and verbose
    assert secret not in text and wrong not in text
