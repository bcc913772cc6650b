"""Memorization across training: the fixed-sequence decision across checkpoints (a pure unit and a
null simulation), a real DCGAN checkpoint series audited in one call against a real index, and the
training-loop hook. Checkpoints are the real DCGAN's weights, perturbed; nothing is mocked."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, NET_ATOL, REPO, checkout_env
from scipy import stats

from service.stats.trend import fixed_sequence

log = logging.getLogger(__name__)

DCGAN_CKPT = DATA / "generated" / "dcgan32_celeba" / "checkpoint_G.pth"
AUDIT = [sys.executable, str(REPO / "scripts" / "audit.py")]
SMALL = {"n": 12, "batch_sizes": (4,), "trials": 1, "detector": "aligned", "seed": 3, "progress": False}
ALPHA = 0.05


def report_data(path: Path) -> dict:
    m = re.search(r'<script type="application/json" id="facemem-data">(.*?)</script>', path.read_text(), re.S)
    assert m, "no JSON block"
    return json.loads(m.group(1))


def by_hand(p: list[float | None], alpha: float) -> int | None:
    """The earliest checkpoint of the run of p ≤ alpha that ends at the last one (None: empty)."""
    first = None
    for i in range(len(p) - 1, -1, -1):
        if p[i] is None or p[i] > alpha:
            break
        first = i
    return first


# ----------------------------------------------------------------------------- the procedure, pure


@pytest.mark.parametrize(
    "p, detected, first",
    [
        ([0.2, 0.01, 0.001], [False, True, True], 1),
        ([0.01, 0.2, 0.001], [False, False, True], 2),  # the caveat: 0.01 before a non-rejection is not declared
        ([0.001, 0.001, 0.3], [False, False, False], None),
        ([0.04, 0.03, 0.05], [True, True, True], 0),
        ([None, 0.01], [False, True], 1),
        ([0.01, None], [False, False], None),
        ([], [], None),
    ],
)
def test_fixed_sequence_on_known_p_values(p, detected, first):
    out = fixed_sequence(p, ALPHA)
    assert out["detected"] == detected and out["first_detected"] == first == by_hand(p, ALPHA)


def test_fixed_sequence_adjusted_p_values_are_the_running_maximum_from_the_end():
    out = fixed_sequence([0.03, 0.01, 0.02, 0.5, 0.004], ALPHA)
    assert out["p_adjusted"] == [None, None, None, 0.5, 0.004]  # stops at 0.5: earlier ones never tested
    assert out["tested"] == [False, False, False, True, True]
    out = fixed_sequence([0.03, 0.01, 0.02], ALPHA)
    assert out["p_adjusted"] == [0.03, 0.02, 0.02]
    assert all((a <= ALPHA) == d for a, d in zip(out["p_adjusted"], out["detected"]))
    with pytest.raises(ValueError):
        fixed_sequence([0.1], 1.5)


SEEDS, K = 300, 6


def _null_p(rng: np.random.Generator, rho: float) -> np.ndarray:
    """K uniform p-values, equicorrelated through a Gaussian copula (rho = 0: independent)."""
    z = np.sqrt(rho) * rng.standard_normal() + np.sqrt(1 - rho) * rng.standard_normal(K)
    return stats.norm.cdf(z)


@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_fixed_sequence_keeps_the_familywise_error_on_null_checkpoints(rho):
    """300 seeds of K all-null checkpoints: any detection at most alpha (+3 SE), while testing each
    checkpoint at alpha alone would detect far more often (so this test can fail)."""
    rng = np.random.default_rng(2024)
    fs = naive = 0
    for _ in range(SEEDS):
        p = _null_p(rng, rho).tolist()
        fs += fixed_sequence(p, ALPHA)["first_detected"] is not None
        naive += any(v <= ALPHA for v in p)
    se = np.sqrt(ALPHA * (1 - ALPHA) / SEEDS)
    log.info("rho %.1f: fixed sequence detects %d/%d null series, each-at-alpha %d/%d", rho, fs, SEEDS, naive, SEEDS)
    assert fs / SEEDS <= ALPHA + 3 * se
    if rho == 0.0:
        assert naive / SEEDS > ALPHA + 3 * se  # 1 − 0.95^6 = 26%


def test_fixed_sequence_keeps_the_error_when_later_checkpoints_memorize():
    """Partly null: the first half of training is clean (uniform p), the second memorizes (tiny p).
    A clean checkpoint is declared at most alpha of the time; the memorizing ones nearly always."""
    rng = np.random.default_rng(7)
    false = hits = 0
    for _ in range(SEEDS):
        p = np.concatenate([rng.uniform(size=K // 2), rng.uniform(0, 1e-3, size=K - K // 2)])
        det = fixed_sequence(p.tolist(), ALPHA)["detected"]
        false += any(det[: K // 2])
        hits += all(det[K // 2 :])
    log.info("partly null: a clean checkpoint declared %d/%d, all memorizing ones %d/%d", false, SEEDS, hits, SEEDS)
    assert false / SEEDS <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / SEEDS)
    assert hits == SEEDS


# ----------------------------------------------------------------------------- checkpoint specs


def test_series_specs_expand_and_sort_by_training_step(tmp_path):
    from service.audit.sources import SourceError
    from service.audit.trend import checkpoints, is_series

    run = tmp_path / "run-7"
    run.mkdir()
    for s in (5, 20, 100):
        (run / f"step-{s:d}.pth").write_bytes(b"")
    got = checkpoints(f"dcgan32:{run}/step-*.pth")
    assert [c.step for c in got] == [5, 20, 100]  # numeric, not "100" < "20" < "5"; never the 7 of run-7
    assert [Path(c.spec.split(":", 1)[1]).name for c in got] == ["step-5.pth", "step-20.pth", "step-100.pth"]
    assert all(c.spec.startswith("dcgan32:") for c in got)
    got = checkpoints(f"dcgan32:{run}/step-100.pth,{run}/step-5.pth")  # a comma list; the adapter carries over
    assert [(c.step, c.spec) for c in got] == [(5, f"dcgan32:{run}/step-5.pth"), (100, f"dcgan32:{run}/step-100.pth")]
    (run / "final.pth").write_bytes(b"")
    got = checkpoints(f"dcgan32:{run}/*.pth")  # one name has no step: positions in name order
    assert [c.step for c in got] == [0, 1, 2, 3]

    def sampler_a(n, seed):
        return None

    got = checkpoints([(300, sampler_a), (100, f"dcgan32:{run}/step-5.pth")])
    assert [(c.step, c.label) for c in got] == [(100, f"dcgan32:{run}/step-5.pth"), (300, "sampler_a")]
    assert is_series(f"dcgan32:{run}/step-*.pth") and is_series([sampler_a]) and not is_series("dcgan32:x.pth")
    assert not is_series(sampler_a)
    with pytest.raises(SourceError, match="matches nothing"):
        checkpoints(f"dcgan32:{run}/nothing-*.pth")


# ----------------------------------------------------------------------------- a real series, end to end


def perturbed_checkpoints(folder: Path, steps: list[int], seed: int = 0) -> list[Path]:
    """The real DCGAN's weights with seeded noise: more noise for earlier steps (a run converging to
    the trained generator), saved as ``step-NNNNNN.pth`` state dicts."""
    import torch

    sd = torch.load(DCGAN_CKPT, map_location="cpu", weights_only=False)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, step in enumerate(steps):
        g = torch.Generator().manual_seed(seed + k)
        scale = 0.3 / (k + 1)
        noisy = {
            name: (v + scale * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype)
            if v.is_floating_point() and v.numel() > 1 and "running_" not in name  # BatchNorm variances stay > 0
            else v
            for name, v in sd.items()
        }
        path = folder / f"step-{step:06d}.pth"
        torch.save(noisy, path)
        out.append(path)
    return out


def test_a_checkpoint_series_is_audited_in_one_call(small_index_dir, tmp_path):
    """Three perturbed DCGAN checkpoints through the CLI's glob form: the trend block, in step order,
    the index and the training side processed once, the report's section; the series' numbers for a
    checkpoint equal a standalone audit of it."""
    from service.audit import audit

    run = tmp_path / "run-3"
    paths = perturbed_checkpoints(run, [400, 30, 1200])
    out, js = tmp_path / "series.html", tmp_path / "series.json"
    args = ["--generator", f"dcgan32:{run}/step-*.pth", "--index", str(small_index_dir), "--out", str(out)]
    args += ["--json", str(js), "--n", "12", "--batch-sizes", "4", "--trials", "1", "--detector", "aligned"]
    args += ["--seed", "3", "--no-progress", "-v"]
    p = subprocess.run(AUDIT + args, capture_output=True, text=True, timeout=900, cwd=REPO, env=checkout_env())
    assert p.returncode == 0, p.stderr[-3000:]
    log.info("series: %s", p.stdout.strip())
    assert len(re.findall(r"index loaded from", p.stderr)) == 1, p.stderr[-3000:]
    assert len(re.findall(r"computing the training side", p.stderr)) == 1, p.stderr[-3000:]
    assert len(re.findall(r"checkpoint \d of 3", p.stderr)) == 3

    data = json.loads(js.read_text())
    trend = data["trend"]
    cks = trend["checkpoints"]
    assert [c["step"] for c in cks] == [30, 400, 1200]
    assert [Path(c["generator"].split(":", 1)[1]).name for c in cks] == [paths[1].name, paths[0].name, paths[2].name]
    assert data["source"]["describe"].endswith(paths[2].name)  # the report is the last checkpoint's
    assert trend["computed_once"] == {"training_side": 1, "reference_real": 0}
    for c in cks:
        sp = c["same_person"]
        assert 0 <= sp["lo"] <= sp["share"] <= sp["hi"] <= 1 and 0 <= sp["p"] <= 1
        assert set(c["copies"]) == {"semantic", "pixel"} and set(c["support"]) == {"semantic", "pixel"}
        for ch in ("semantic", "pixel"):
            cp = c["copies"][ch]
            assert cp is None or cp["lo"] <= cp["share"] <= cp["hi"]
        assert isinstance(c["detected"], bool) and c["faces"] == 12 and isinstance(c["leaks"], int) and c["leaks"] >= 0
        assert {"statistic", "p"} <= set(c["ct"]) and c["verdict"]
    first = by_hand([c["same_person"]["p"] for c in cks], trend["alpha"])
    assert trend["first_detected"] == (None if first is None else {"step": cks[first]["step"], "index": first})
    assert cks[-1]["same_person"]["p"] == data["summary"]["decisions"]["primary"]["p_value"]
    assert cks[-1]["leaks"] == data["leaks"]["count"]
    assert "fixed-sequence" in trend["multiplicity"] and "never declared" in trend["multiplicity"]

    # The report: the section, its plot, its table rows in step order, its nav link.
    html = out.read_text()
    assert 'id="trend"' in html and 'href="#trend"' in html and "Memorization across training" in html
    sec = html[html.index('id="trend"') : html.index("</section>", html.index('id="trend"'))]
    assert re.search(r'<img class="plot" src="data:image/png;base64,', sec)
    assert [int(s) for s in re.findall(r'<tr data-step="(\d+)"', sec)] == [30, 400, 1200]
    assert report_data(out)["trend"]["first_detected"] == trend["first_detected"]

    # A standalone audit of the first checkpoint gives the numbers the series gave it.
    alone = audit(generator=f"dcgan32:{paths[1]}", index=small_index_dir, **SMALL)
    assert "trend" not in alone.data
    from service.audit.trend import record

    rec = record(alone.data, 30, "x")
    for key in ("same_person", "ct"):
        for k, v in rec[key].items():
            assert v == pytest.approx(cks[0][key][k], abs=NET_ATOL), (key, k)
    assert rec["verdict"] == cks[0]["verdict"]
    # The checkpoints differ (the same latents through other weights): the perturbation reached the faces.
    first_face = alone.data["neighbors"]["images"][0]["semantic"][0]["distance"]
    assert abs(first_face - data["neighbors"]["images"][0]["semantic"][0]["distance"]) > 1e-3


def test_the_hook_appends_one_line_per_call_and_reads_back_the_trend(small_index_dir, tmp_path):
    from service.audit.hook import read_records, read_trend, render_trend, track
    from service.audit.sources import load_generator

    run = tmp_path / "loop"
    paths = perturbed_checkpoints(run, [100, 200], seed=5)
    trend_log = tmp_path / "trend.jsonl"
    recs = []
    for step, path in zip((100, 200), paths):
        sampler = load_generator(f"dcgan32:{path}").sampler
        recs.append(track(sampler, step, log=trend_log, index=small_index_dir, name=f"G@{step}", **SMALL))
    lines = trend_log.read_text().splitlines()
    assert len(lines) == 2
    back = [json.loads(x) for x in lines]
    assert [r["step"] for r in back] == [100, 200] and all(r["timestamp"] for r in back)
    assert back == read_records(trend_log) == json.loads(json.dumps(recs))
    assert set(back[0]) >= {"step", "generator", "same_person", "copies", "ct", "support", "leaks", "verdict"}
    trend = read_trend(trend_log)
    assert [c["step"] for c in trend["checkpoints"]] == [100, 200]
    first = by_hand([c["same_person"]["p"] for c in trend["checkpoints"]], trend["alpha"])
    assert trend["first_detected"] == (None if first is None else {"step": [100, 200][first], "index": first})
    assert back[1]["detected"] == trend["checkpoints"][1]["detected"]  # the last line: the same decision
    # Decided again at another alpha: the fixed sequence over the lines, not the lines' own flags.
    loose = read_trend(trend_log, alpha=0.9)
    first = by_hand([c["same_person"]["p"] for c in loose["checkpoints"]], 0.9)
    assert [c["detected"] for c in loose["checkpoints"]] == [first is not None and i >= first for i in range(2)]
    html = render_trend(trend_log, tmp_path / "trend.html").read_text()
    assert 'id="trend"' in html and html.count('<tr data-step="') == 2
    # The CLI renders the same log, and its --help names the new forms.
    out, js = tmp_path / "cli-trend.html", tmp_path / "cli-trend.json"
    p = subprocess.run(
        AUDIT + ["--trend-log", str(trend_log), "--out", str(out), "--json", str(js)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=checkout_env(),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(js.read_text())["trend"]["first_detected"] == trend["first_detected"]
    assert 'id="trend"' in out.read_text()
    h = subprocess.run(AUDIT + ["--help"], capture_output=True, text=True, timeout=120, cwd=REPO, env=checkout_env())
    helptext = " ".join(h.stdout.split())
    assert "--trend-log" in helptext and "step-*" in helptext and "comma list" in helptext
