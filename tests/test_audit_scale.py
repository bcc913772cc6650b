"""Audits at scale (issue 23): the pair statistics computed in blocks equal the dense computations
they replaced, and the files stay bounded when n grows (a synthetic n = 50,000 report path, no
detections), with one CSV row per image. The dense references below are the code the blocked
versions replaced, kept here verbatim as the oracle."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from service.audit import analysis, views
from service.stats import collisions, distribution, support
from service.stats.collisions import Pairs

# ----------------------------------------------------------------------------- dense oracles (the old code)


def dense_close_pairs(x: np.ndarray, threshold: float, metric: str) -> list[tuple[int, int, float]]:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    d = cdist(x, x, metric=metric)
    ii, jj = np.nonzero(d < threshold)
    return sorted((int(i), int(j), float(d[i, j])) for i, j in zip(ii, jj) if i < j)


def dense_closest_pairs(x: np.ndarray, m: int) -> list[tuple[int, int, float]]:
    x = np.asarray(x, np.float64)
    d = cdist(x, x)
    iu = np.triu_indices(len(x), 1)
    best = sorted(zip(d[iu].tolist(), iu[0].tolist(), iu[1].tolist()))[:m]
    return [(i, j, dd) for dd, i, j in best]


def dense_bootstrap_rates(batches: list, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for b in batches:
        if b.n < 2:
            continue
        w = rng.poisson(1.0, size=(n_boot, b.n)).astype(np.float64)
        den += (w.sum(axis=1) ** 2 - (w * w).sum(axis=1)) / 2.0
        if len(b.pairs):
            num += (w[:, b.pairs[:, 0]] * w[:, b.pairs[:, 1]]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def dense_knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = cdist(x, x)
        np.fill_diagonal(d, np.inf)
        return np.partition(d, k - 1, axis=1)[:, k - 1]

    r_real, r_fake = radii(real), radii(fake)
    d = cdist(fake, real)
    return float((d <= r_real[None, :]).any(axis=1).mean()), float((d.T <= r_fake[None, :]).any(axis=1).mean())


def descriptors(n: int, seed: int, modes: int = 0) -> np.ndarray:
    """Random descriptors with planted exact duplicates, near-duplicates and (``modes``) clusters."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 128)) * 0.09).astype(np.float32)
    if modes:
        centres = rng.normal(size=(modes, 128)) * 0.09
        pick = rng.random(n) < 0.3
        x[pick] = (centres[rng.integers(0, modes, pick.sum())] + rng.normal(size=(pick.sum(), 128)) * 0.01).astype(
            np.float32
        )
    if n > 4:
        x[n // 2] = x[1]
        x[n - 1] = x[2] + np.float32(1e-4)
    return x


# ----------------------------------------------------------------------------- blocked == dense


@pytest.mark.parametrize("n", [2, 3, 97, 700])
def test_screened_close_pairs_equal_a_dense_cdist(n, monkeypatch):
    monkeypatch.setattr(collisions, "_GRAM_BLOCK", 64)  # many blocks, ragged edges
    x = descriptors(n, seed=n, modes=5)
    for threshold in (0.05, 0.4, 1.2):
        got = collisions.close_pairs(x, threshold, "euclidean")
        want = dense_close_pairs(x, threshold, "euclidean")
        assert isinstance(got, Pairs) and got == want  # same pairs, bit-identical distances
        assert list(got) == want and len(got) == len(want)


@pytest.mark.parametrize("n", [2, 5, 300, 1000])
def test_screened_closest_pairs_equal_a_dense_cdist(n):
    x = descriptors(n, seed=n + 1, modes=3)
    for m in (1, 20, 300):
        assert collisions.closest_pairs(x, m, block=128) == dense_closest_pairs(x, m)


def test_chunked_l1_pairs_equal_brute_force_with_many_partners(monkeypatch):
    """Crops with hundreds of partners (k grows several times) in chunks of rows, against brute force."""
    monkeypatch.setattr(collisions, "_L1_ROWS", 96)
    monkeypatch.setattr(collisions, "_L1_CELLS", 4096)
    rng = np.random.default_rng(7)
    n, dim = 420, 12288
    base = rng.integers(0, 256, (6, dim))
    x = rng.integers(0, 256, (n, dim)).astype(np.uint8)
    mode = rng.random(n) < 0.5  # half the crops: near copies of 6 faces (~35 partners each)
    x[mode] = np.clip(base[rng.integers(0, 6, mode.sum())] + rng.integers(-3, 4, (mode.sum(), dim)), 0, 255)
    xi = x.astype(np.int32)
    d = np.stack([np.abs(xi - row).sum(1, dtype=np.int64) for row in xi])
    thr = 40_000
    want = sorted((int(i), int(j), float(d[i, j])) for i, j in zip(*np.nonzero(d < thr)) if i < j)
    got = collisions.close_pairs(x, thr, "cityblock")
    assert got == want and len(want) > 2000


def test_blocked_bootstrap_equals_the_dense_one(monkeypatch):
    """The same random stream and exact integer sums: bit-identical rates, blocks or not."""
    x = descriptors(300, seed=3, modes=4)
    pairs = collisions.close_pairs(x, 0.3, "euclidean")
    batches = [support.Batch.from_pairs(300, pairs), support.Batch(40, [(0, 1), (2, 3)]), support.Batch(1)]
    assert len(pairs) > 100
    want = dense_bootstrap_rates(batches, 500, seed=9)
    monkeypatch.setattr(support, "_BOOT_CELLS", 1000)  # 3 replicates a block
    assert np.array_equal(support.bootstrap_rates(batches, 500, seed=9), want, equal_nan=True)
    deg = np.zeros(300)
    for i, j, _ in pairs:
        deg[i] += 1
        deg[j] += 1
    assert np.array_equal(batches[0].degrees(), deg)


def test_blocked_knn_precision_recall_equals_the_dense_one(monkeypatch):
    monkeypatch.setattr(distribution, "_ROWS", 37)
    real, fake = descriptors(400, seed=11).astype(np.float64), descriptors(350, seed=12, modes=6).astype(np.float64)
    assert distribution.knn_precision_recall(real, fake, 3) == dense_knn_precision_recall(real, fake, 3)


def test_folder_subset_counts_from_the_pair_list_equal_the_adjacency_matrix():
    n = 500
    pairs = collisions.close_pairs(descriptors(n, seed=5, modes=8), 0.3, "euclidean")
    a = np.zeros((n, n), bool)
    for i, j, _ in pairs:
        a[i, j] = a[j, i] = True
    rng = np.random.default_rng(0)
    for s in (2, 16, 128, 500):
        x = np.sort(rng.choice(n, s, replace=False))
        assert analysis._pairs_within(n, x, *analysis._ends(pairs)) == int(np.triu(a[np.ix_(x, x)], 1).sum())
        assert analysis._pairs_within(n, x, *analysis._ends(list(pairs))) == int(np.triu(a[np.ix_(x, x)], 1).sum())


def test_pairs_read_like_a_list_of_tuples():
    p = Pairs.sorted(np.array([3, 0, 0]), np.array([9, 5, 2]), np.array([1.5, 2.0, 0.5]))
    assert p == [(0, 2, 0.5), (0, 5, 2.0), (3, 9, 1.5)] and p[1] == (0, 5, 2.0) and p[1:] == [(0, 5, 2.0), (3, 9, 1.5)]
    assert p.distance(3, 9) == 1.5 and p.distance(9, 3) is None and p.distance(0, 3) is None and len(p) == 3
    assert Pairs() == [] and Pairs().distance(0, 1) is None and not Pairs()


# ----------------------------------------------------------------------------- bounded files at n = 50,000


@pytest.fixture(scope="module")
def tiny_passes(small_index_dir):
    """A real audit's passes (16 celeba10k faces against the 300-image index): the training side,
    calibration and entries a synthetic large sample is made of."""
    from conftest import CELEBA10K

    from service.audit import _resolve_options
    from service.audit.backends import LocalBackend
    from service.audit.run import Audit, request_params
    from service.audit.sources import ImagesSource

    files = sorted((CELEBA10K / "img_align_celeba").glob("*.jpg"))[5000:5016]
    opts = _resolve_options({"n": 16, "trials": 1, "batch_sizes": (4,), "detector": "aligned", "progress": False})
    backend = LocalBackend(small_index_dir, device="cpu", detect_processes=0)
    try:
        passes = Audit(opts, request_params(opts), ImagesSource.of([str(f) for f in files]), backend).run()
    finally:
        backend.close()
    return passes, opts


def synthetic(passes, opts: dict, n: int):
    """``passes`` with a main sample of ``n`` faces cloned from the real ones (new names, random
    descriptors, a few no-face images), and its colliding pairs planted (the n² searches are tested
    above against dense oracles)."""
    import dataclasses

    from service.audit.run import Answers

    real = passes.main.ok_entries
    rng = np.random.default_rng(n)
    main = Answers()
    for k in range(n):
        if k % 997 == 5:
            main.entries.append({"image": f"s{k:06d}.png", "status": "no_face", "reason": "none", "semantic": [],
                                 "pixel": []})  # fmt: skip
            continue
        main.entries.append({**real[k % len(real)], "image": f"s{k:06d}.png"})
        main.ok.append(k)
    main.desc = list(rng.normal(size=(len(main.ok), 128)).astype(np.float32) * 0.09)
    main.pix = [np.zeros(0, np.uint8)] * len(main.ok)
    m = len(main.ok)
    i = rng.integers(0, m - 1, 20 * m)
    ij = np.unique(np.column_stack((i, np.minimum(i + 1 + rng.integers(0, 50, len(i)), m - 1))), axis=0)
    planted = Pairs.sorted(ij[:, 0], ij[:, 1], rng.random(len(ij)))
    pairs = {"semantic": planted[: m // 5], "pixel": planted}
    return dataclasses.replace(passes, main=main, trials=[], train_descriptors=None), pairs


def write_report(passes, opts: dict, n: int, tmp_path, monkeypatch) -> dict:
    from service.audit import AuditResult

    big, pairs = synthetic(passes, opts, n)
    monkeypatch.setattr(analysis, "batch_pairs", lambda desc, pix, th: pairs)
    monkeypatch.setattr(views, "closest_pairs", lambda desc, m: [(0, 1, 0.01), (2, 3, 0.02)])
    provenance = {"command": "synthetic", "source": {"kind": "generator", "describe": "synthetic"}}
    provenance |= {"backend": {"mode": "in-process", "where": "here"}, "index": {"summary": {"faces": 300}}}
    data = analysis.report_data(big, opts, provenance)
    data["timing"] = {"statistics_stages": data.pop("statistics_stages")}
    res = AuditResult(data)
    out = tmp_path / f"n{n}"
    sizes = {"csv": res.to_csv(out / "rows.csv"), "html": res.to_html(out / "report.html")}
    sizes["json"] = res.to_json(out / "report.json")
    return {"res": res, "pairs": pairs, **{k: p for k, p in sizes.items()}}


def test_a_50000_image_report_stays_bounded_with_one_csv_row_per_image(tiny_passes, tmp_path, monkeypatch):
    passes, opts = tiny_passes
    small = write_report(passes, opts, 2_000, tmp_path, monkeypatch)
    big = write_report(passes, opts, 50_000, tmp_path, monkeypatch)
    mb = {k: {s: r[s].stat().st_size / 1e6 for s in ("html", "json", "csv")} for k, r in (("2k", small), ("50k", big))}
    assert mb["50k"]["csv"] > 20 * mb["2k"]["csv"]  # the CSV grows with n ...
    for kind in ("html", "json"):  # ... the report and the JSON do not
        assert mb["50k"][kind] <= 1.2 * mb["2k"][kind] + 0.5 and mb["50k"][kind] < 50, mb
    with open(big["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50_000 and [r["image"] for r in rows] == [f"s{k:06d}.png" for k in range(50_000)]
    assert sum(r["status"] != "ok" for r in rows) == sum(k % 997 == 5 for k in range(50_000))
    # The partner counts come from the planted pairs, every one of them (not only the listed ones).
    ok = [r for r in rows if r["status"] == "ok"]
    p = big["pairs"]["pixel"]
    deg = np.bincount(p.i, minlength=len(ok)) + np.bincount(p.j, minlength=len(ok))
    assert [int(r["collisions_pixel"]) for r in ok] == deg.tolist() and deg.sum() == 2 * len(p)
    data = json.loads(big["json"].read_text(encoding="utf-8"))
    per = data["per_image"]
    assert per == {"images": 50_000, "listed": 1000, "cap": 1000, "csv": "rows.csv", "columns": list(rows[0])}
    assert len(data["neighbors"]["images"]) == len(data["rows"]) == 1000 == len(data["histograms"]["generated_pixel"])
    assert data["collisions"]["pixel"]["count"] == len(big["pairs"]["pixel"]) > 500_000
    assert data["summary"]["images"] == 50_000  # the statistics cover every image
    html = big["html"].read_text(encoding="utf-8")
    assert 'href="rows.csv"' in html and "50,000 rows" in html and "the first 1,000 of 50,000 images" in html
    assert big["res"].data["neighbors"]["images"][-1]["image"] == "s049999.png"  # in memory: everything


# ----------------------------------------------------------------------------- progress


def test_progress_names_the_stage_with_an_eta_on_a_terminal_and_logs_otherwise(caplog, tmp_path):
    import io
    import logging

    from service.audit.progress import LogBar, Stages, eta_words, stage_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = stage_bar(total=10, desc="main sample", unit="img", file=tty)
    bar.update(4)
    bar.set_description("birthday trials")
    bar.update(6)
    bar.close()
    assert "birthday trials" in tty.getvalue() and "10/10" in tty.getvalue()
    with open(tmp_path / "log.txt", "w") as f:  # a file, not a terminal: log lines, nothing drawn
        assert isinstance(stage_bar(total=10, desc="x", unit="img", file=f), LogBar)
        assert not isinstance(stage_bar(total=10, desc="x", unit="img", file=f, enabled=False), LogBar)
    caplog.set_level(logging.INFO, logger="service.audit.progress")
    log_bar = LogBar(total=100, desc="main sample", unit="img", every=0.0)
    log_bar.update(25)
    log_bar.set_description("birthday trials")
    log_bar.close()
    text = caplog.text
    assert "main sample: 25/100 img (25%)" in text and "ETA" in text and "stage: birthday trials" in text
    assert eta_words(None) == "—" and eta_words(30) == "30 s" and eta_words(600) == "10.0 min"
    steps = Stages(["a", "b"], "statistics", enabled=False)
    with steps("a"):
        pass
    with steps("b"):
        pass
    steps.close()
    assert list(steps.seconds) == ["a", "b"] and all(v >= 0 for v in steps.seconds.values())
