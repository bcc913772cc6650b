"""The browser page in real headless Chromium (selenium + Debian chromedriver), and the Python client,
against one live server with a token. Nothing is mocked: the page's numbers are compared with the
JSON API's answer for the same upload, and overload is produced by a real long request.

The server admits one search at a time and queues none (``--max-inflight 1 --max-queue 0``), so a
second search during a slow one gets a real 503 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import http.server
import io
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import CELEBA10K, NET_ATOL, REPO, live_server
from PIL import Image
from test_audit import CHROMIUM_FLAGS

from service import client as fc

TOKEN = "web-test-token"
IMG = CELEBA10K / "img_align_celeba"
IN_INDEX = "000001.jpg"  # one of the small index's 300 images
NOT_IN_INDEX = "009001.jpg"
EVIL = "<img src=x onerror=alert(1)>.jpg"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = REPO / "build" / "page-screenshots"


@pytest.fixture(scope="module")
def server(small_index_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "token").write_text(TOKEN)
    args = ["--token-file", str(tmp / "token"), "--max-inflight", "1", "--max-queue", "0"]
    with live_server(small_index_dir, tmp / "server.log", *args) as (url, proc):
        yield {"url": url, "proc": proc, "log": tmp / "server.log"}
    assert proc.returncode == 0, (tmp / "server.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def api(server):
    with fc.Client(server["url"], token=TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Upload files on disk: two real faces, an image without a face, a text file named .jpg, and
    the XSS file name."""
    d = tmp_path_factory.mktemp("uploads")
    out = {}
    for name in (IN_INDEX, NOT_IN_INDEX):
        out[name] = d / name
        shutil.copy(IMG / name, out[name])
    yy, xx = np.mgrid[0:160, 0:200]
    flat = np.stack([xx * 255 // 199, yy * 255 // 159, np.full_like(xx, 128)], -1).astype(np.uint8)
    out["gradient.png"] = d / "gradient.png"
    Image.fromarray(flat).save(out["gradient.png"])
    out["notes.jpg"] = d / "notes.jpg"
    out["notes.jpg"].write_text("this is not an image\n")
    out[EVIL] = d / EVIL
    shutil.copy(IMG / NOT_IN_INDEX, out[EVIL])
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    if not chromium or not Path(CHROMEDRIVER).is_file():
        pytest.fail("chromium and chromium-driver are needed: run `make system-deps`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium  # with the driver path below: no Selenium Manager, no download
    for f in [*CHROMIUM_FLAGS, "--window-size=1300,2200"]:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    d.set_script_timeout(60)
    try:
        yield d
    finally:
        d.quit()


# ----------------------------------------------------------------------------- helpers


def pct(x: float) -> str:
    """The page's percentage format (app.js pct)."""
    v = 100 * x
    if v in (0, 100):
        return f"{v:g}%"
    return f"{v:.{2 if v < 0.1 or v > 99.9 else 1}f}%"


def open_page(driver, url: str, token: str | None) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    field = driver.find_element(By.ID, "token")
    field.clear()
    if token:
        field.send_keys(token)


def choose(driver, paths: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def search(driver, detector: str, k: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "detector")).select_by_value(detector)
    kf = driver.find_element(By.ID, "k")
    kf.clear()
    kf.send_keys(str(k))
    driver.find_element(By.ID, "search").click()


def wait_for_thumbnails(driver, cards: int, timeout: float = 120) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    js = (
        "const c=document.querySelectorAll('article.card');"
        "const im=[...document.querySelectorAll('figure.neighbor img')];"
        f"return c.length==={cards} && im.length>0 && im.every(i=>i.complete&&i.naturalWidth>0);"
    )
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(js))


def csp_problems(driver) -> list[str]:
    return [
        e["message"]
        for e in driver.get_log("browser")
        if re.search(r"Content Security Policy|Trusted Type|Refused to", e["message"])
    ]


def page_cards(driver) -> list[dict]:
    """What the page shows, read back from its DOM."""
    return driver.execute_script(
        """return [...document.querySelectorAll('article.card')].map(c => ({
          name: c.querySelector('h3 .name').textContent,
          status: c.dataset.status,
          reason: (c.querySelector('.reason') || {textContent: null}).textContent,
          neighbors: [...c.querySelectorAll('figure.neighbor')].map(f => ({
            channel: f.dataset.channel, rank: +f.dataset.rank, file: f.dataset.file,
            distance: f.dataset.distance, stranger: f.dataset.strangerQuantile, loo: f.dataset.looQuantile,
            caption: f.querySelector('figcaption').textContent,
            thumb: [f.querySelector('img').naturalWidth, f.querySelector('img').naturalHeight]}))}))"""
    )


# ----------------------------------------------------------------------------- the page


def test_page_is_self_contained_with_a_strict_csp(server):
    url = server["url"]
    r = requests.get(url + "/", timeout=30)  # no token: the page itself holds no data
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and "unsafe" not in csp and "http" not in csp
    assert directives["require-trusted-types-for"] == "'script'"
    html = r.text
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(x.startswith("static/") for x in refs), refs
    assert not re.search(r"<script(?![^>]*\ssrc=)|<style|\sstyle=|\son\w+=", html)  # nothing inline
    for name in ("app.js", "app.css"):
        s = requests.get(f"{url}/static/{name}", timeout=30)
        assert s.status_code == 200 and "Content-Security-Policy" in s.headers
        assert not re.search(r"https?://|@import|url\(", s.text), name
    js = requests.get(url + "/static/app.js", timeout=30).text
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", js)
    for other in ("page.py", "index.html"):  # only the two files the page loads are served
        assert requests.get(f"{url}/static/{other}", timeout=30).status_code == 404, other


def test_page_shows_the_neighbours_the_api_returns(server, api, files, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = server["url"]
    upload = [files[IN_INDEX], files[NOT_IN_INDEX], files["gradient.png"], files["notes.jpg"]]
    # Without the token the page says so, as text.
    open_page(driver, url, None)
    WebDriverWait(driver, 30).until(lambda d: "needs a token" in d.find_element(By.ID, "index-summary").text)
    choose(driver, upload)
    search(driver, "hog", 3)
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 60).until(lambda d: "401" in status.text)
    assert "unauthorized" in status.text and "bearer token" in status.text
    # With it: the results, compared with the JSON API for the same files and parameters.
    open_page(driver, url, TOKEN)
    choose(driver, upload)
    search(driver, "hog", 3)
    wait_for_thumbnails(driver, cards=4)
    body = api.neighbors(upload, detector="hog", k=3)
    shown = page_cards(driver)
    assert [c["name"] for c in shown] == [im["image"] for im in body["images"]]
    assert (
        [c["status"] for c in shown]
        == [im["status"] for im in body["images"]]
        == [
            "ok",
            "ok",
            "no_face",
            "unreadable",
        ]
    )
    cal = body["calibration"]
    thumb = Image.open(io.BytesIO(api.thumbnail(body["images"][0]["pixel"][0]["file"], size=128)))
    for card, im in zip(shown, body["images"]):
        assert card["reason"] == (im["reason"] or None)  # shown only when there is one
        want = [(ch, n) for ch in ("pixel", "semantic") for n in im[ch]]
        assert len(card["neighbors"]) == len(want) == (6 if im["status"] == "ok" else 0)
        for got, (ch, n) in zip(card["neighbors"], want):
            assert (got["channel"], got["rank"], got["file"]) == (ch, n["rank"], n["file"])
            # The page's numbers come from its own request: semantic ones to NET_ATOL (the network ran
            # again, conftest.NET_ATOL); a stranger quantile is a step in the distance, so to one null sample.
            assert float(got["distance"]) == pytest.approx(n["distance"], abs=NET_ATOL if ch == "semantic" else 0)
            assert got["thumb"][0] > 0 and max(got["thumb"]) <= 128
            if ch == "semantic":
                assert float(got["stranger"]) == pytest.approx(n["stranger_quantile"], abs=1 / cal["null_samples"])
                assert f"distance {n['distance']:.3f}" in got["caption"]
                if n["stranger_quantile"] > 0:
                    assert (
                        f"closer than {pct(1 - n['stranger_quantile'])} of strangers' nearest training face"
                        in (got["caption"])
                    )
                else:
                    assert (
                        f"no stranger's nearest training face in the calibration ({cal['null_samples']})"
                        in (got["caption"])
                    )
                assert ("same person" in got["caption"]) == n["same_person"]
            else:
                assert float(got["loo"]) == n["loo_quantile"]
                assert f"L1 {n['distance_per_value']:.3f} per value" in got["caption"]
                if n["loo_quantile"] > 0:
                    assert (
                        f"closer than {pct(1 - n['loo_quantile'])} of training faces' nearest other face in"
                        in (got["caption"])
                    )
    assert tuple(shown[0]["neighbors"][0]["thumb"]) == thumb.size
    first = body["images"][0]
    assert first["semantic"][0]["file"] == IN_INDEX and "likely copy" in shown[0]["neighbors"][3]["caption"]
    stranger = body["images"][1]["semantic"][0]
    assert stranger["stranger_quantile"] > 0  # a face not in the index: its distance has a real context
    # batch results
    counts = driver.find_element(By.CSS_SELECTOR, "#batch-summary [data-counts]").get_attribute("data-counts")
    assert counts == '{"ok":2,"no_face":1,"unreadable":1}'
    same = body["memorization"]["same_person"]
    row = driver.find_element(By.CSS_SELECTOR, "#memorization tr[data-kind=same_person]").text
    assert f"{same['count']} of {same['faces']}" in row and "of the index's strangers" in row
    assert f"vs {pct(same['baseline']['null_rate'])} of the index's strangers (p = " in row
    coll = driver.find_element(By.ID, "collisions").text
    sem = body["collisions"]["semantic"]
    assert (
        f"semantic: {sem['colliding_pairs']} of {sem['pairs_compared']} pairs" in coll and "expected by chance" in coll
    )
    assert not csp_problems(driver)
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / "page.png"
    driver.save_screenshot(str(png))
    shot = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert shot.shape[0] > 500 and shot.std() > 20, "blank screenshot"


def test_file_names_and_server_strings_are_text_not_html(server, api, files, driver):
    """The XSS file name, chosen with the file input, plus the same face dropped onto the page (a
    drag-and-drop DataTransfer): both are shown literally, the pair between them too, and no script runs."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    open_page(driver, server["url"], TOKEN)
    driver.execute_script("window.__ran = 0; window.alert = () => { window.__ran++; };")
    choose(driver, [files[EVIL]])
    data = base64.b64encode(files[NOT_IN_INDEX].read_bytes()).decode()
    driver.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], arguments[1], {type: 'image/jpeg'}));
        const drop = document.getElementById('drop');
        for (const t of ['dragenter', 'dragover', 'drop'])
          drop.dispatchEvent(new DragEvent(t, {dataTransfer: dt, bubbles: true, cancelable: true}));""",
        data,
        "dropped.jpg",
    )
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#chosen li")] == [EVIL, "dropped.jpg"]
    search(driver, "hog", 2)
    wait_for_thumbnails(driver, cards=2)
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "article.card h3 .name")]
    assert names == [EVIL, "dropped.jpg"]
    pair = driver.find_elements(By.CSS_SELECTOR, "table.pairs[data-channel=semantic] tbody td")
    assert [td.text for td in pair[:2]] == [EVIL, "dropped.jpg"]  # the same face twice collides
    injected = driver.execute_script(
        "return document.querySelectorAll('img[src=\"x\"], [onerror], script:not([src])').length"
    )
    assert injected == 0
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert driver.execute_script("return window.__ran") == 0
    assert not csp_problems(driver)
    body = api.neighbors([(EVIL, files[EVIL]), ("dropped.jpg", files[NOT_IN_INDEX])], detector="hog", k=2)
    assert body["images"][0]["image"] == EVIL and body["collisions"]["semantic"]["colliding_pairs"] == 1


# ----------------------------------------------------------------------------- the client


def test_client_sends_paths_bytes_arrays_and_named_pairs(api, files, small_index):
    assert api.healthz()["status"] == "ok"
    info = api.index_info()
    assert info["summary"]["faces"] == small_index.n_faces and info["limits"]["max_files"] == 64
    path = files[IN_INDEX]
    arr = np.asarray(Image.open(path).convert("RGB"))
    body = api.neighbors(
        [path, path.read_bytes(), arr, ("named.png", arr), ("float.png", arr / 255.0)],
        detector="aligned",
        k=2,
        channels=["semantic", "pixel"],
    )
    names = [im["image"] for im in body["images"]]
    assert names == [IN_INDEX, "image-2", "array-3.png", "named.png", "float.png"]
    # the JPEG as sent and its decoded pixels as PNG are the same face: the same neighbours, the same
    # pixel distances exactly (integer L1 of the same chip), the same semantic distances to NET_ATOL (one
    # batch, five positions: fp32 batched GEMM may sum in a position-dependent order, conftest.NET_ATOL)
    ref = body["images"][0]
    for im in body["images"][1:]:
        assert im["status"] == "ok"
        assert [n["file"] for n in im["semantic"]] == [n["file"] for n in ref["semantic"]]
        for n, r in zip(im["semantic"], ref["semantic"]):
            assert n["distance"] == pytest.approx(r["distance"], abs=NET_ATOL)
        assert [(n["file"], n["distance"]) for n in im["pixel"]] == [(n["file"], n["distance"]) for n in ref["pixel"]]
    assert ref["semantic"][0]["file"] == IN_INDEX and body["params"]["k"] == 2
    # the audit's form: (name, bytes) pairs and a params dict, the JSON body back
    again = api.post_images([(IN_INDEX, path.read_bytes())], {"detector": "aligned", "k": 2})
    assert again["images"][0]["semantic"][0]["file"] == IN_INDEX
    jpeg = api.thumbnail(IN_INDEX, size=48)
    assert max(Image.open(io.BytesIO(jpeg)).size) == 48
    assert api.openapi()["openapi"].startswith("3.1")


def test_threshold_wins_over_false_match_rate_when_both_are_given(api, files, small_index):
    body = api.neighbors([files[NOT_IN_INDEX]], detector="aligned", k=3, threshold=0.5, false_match_rate=0.2)
    cal = body["calibration"]
    assert cal["source"] == "user" and cal["identity"] == 0.5 and cal["false_match_rate"] is None
    null = small_index.calibration["sem_diff_id"]
    null = null[np.isfinite(null)].astype(np.float64)
    assert cal["expected_false_match_rate"] == np.mean(null < 0.5)
    for n in body["images"][0]["semantic"]:
        assert n["same_person"] == (n["distance"] < 0.5)
        assert n["stranger_quantile"] == np.mean(null < n["distance"])  # recomputed from the index's arrays
    with pytest.raises(fc.ServiceError) as e:  # both are still validated
        api.neighbors([files[NOT_IN_INDEX]], threshold=0.5, false_match_rate=1.5)
    assert e.value.status == 400 and e.value.code == "bad_parameter"


def test_client_raises_typed_errors(server, files):
    url = server["url"]
    with fc.Client(url, token=TOKEN) as c:
        with pytest.raises(fc.ServiceError) as e:
            c.neighbors([files[IN_INDEX]], k=0)
        assert (e.value.status, e.value.code) == (400, "bad_parameter") and "k must be" in e.value.message
        with pytest.raises(fc.ServiceError) as e:
            c.thumbnail("no-such-face.jpg")
        assert (e.value.status, e.value.code) == (404, "not_found")
        with pytest.raises(fc.ServiceError) as e:
            c.neighbors([files[IN_INDEX]], colour="red")
        assert e.value.code == "unknown_parameter"
        with pytest.raises(TypeError):
            c.neighbors([12345])
    for token in ("", "wrong"):
        with fc.Client(url, token=token) as c:
            assert c.healthz()["status"] == "ok"  # needs no token
            with pytest.raises(fc.Unauthorized) as e:
                c.index_info()
            assert (e.value.status, e.value.code) == (401, "unauthorized")
    with socket_closed_port() as port, pytest.raises(fc.Unreachable):
        fc.Client(f"http://127.0.0.1:{port}", timeout=5).healthz()
    with other_http_server() as other, pytest.raises(fc.NotFacemem):
        fc.Client(other).healthz()


def test_client_honours_retry_after_with_bounded_retries(server, api, files):
    """A slow search (CNN detection of 16 faces) holds the only slot; a second search meanwhile
    gets a real 503 overloaded + Retry-After. With retries=0 the client raises it, typed; with
    retries it waits as told and gets the answer. /metrics counts the refusal and the search in flight."""
    slow = [(f"slow-{i}.jpg", (IMG / f"{i + 1:06d}.jpg").read_bytes()) for i in range(16)]
    done: dict = {}

    def block() -> None:
        with fc.Client(server["url"], token=TOKEN, retries=0) as own:  # a session per thread
            done["body"] = own.post_images(slow, {"detector": "cnn"})

    blocker = threading.Thread(target=block)
    blocker.start()
    try:
        deadline = time.monotonic() + 60
        while api.healthz()["admission"]["active"] == 0:
            assert time.monotonic() < deadline and blocker.is_alive(), "the slow search never started"
            time.sleep(0.05)
        with fc.Client(server["url"], token=TOKEN, retries=0) as c, pytest.raises(fc.Overloaded) as e:
            c.neighbors([files[IN_INDEX]], detector="aligned")
        assert (e.value.status, e.value.code) == (503, "overloaded") and e.value.retry_after >= 1
        metrics = api.metrics()
        assert re.search(r"^facemem_admission_inflight 1\.0$", metrics, re.M)
        assert re.search(r"^facemem_admission_refusals_total [1-9]", metrics, re.M)
        assert re.search(
            r'^facemem_http_requests_total\{method="POST",route="/neighbors",status="503"\} [1-9]', metrics, re.M
        )
        waits: list[float] = []
        t0 = time.monotonic()
        with fc.Client(
            server["url"], token=TOKEN, retries=30, max_retry_wait_s=5, on_retry=lambda a, w, err: waits.append(w)
        ) as c:
            body = c.neighbors([files[IN_INDEX]], detector="aligned")
        elapsed = time.monotonic() - t0
    finally:
        blocker.join(timeout=300)
    assert body["images"][0]["status"] == "ok" and done["body"]["counts"]["ok"] >= 14
    assert waits and all(1 <= w <= 5 for w in waits) and elapsed >= sum(waits)
    assert fc.parse_retry_after("7") == 7.0 and fc.parse_retry_after("soon") is None
    assert fc.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


# ----------------------------------------------------------------------------- local helpers


class socket_closed_port:
    """A loopback port with nothing listening (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def __exit__(self, *exc) -> None:
        pass


class other_http_server:
    """A loopback HTTP server that is not facemem (every path: 404 text)."""

    def __enter__(self) -> str:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
