"""Attribute, pose and expression omissions (issue 13), with known truth.

End to end on real images through the real pipeline: an index of the first 3,000 celeba10k images (its
probes fitted at build time), and held-back faces 5,001–6,000 sent through ``service.query.neighbors`` with
``attributes=1`` in-process. The planted omission removes every held-back face with Eyeglasses or
Bangs (labels from list_attr_celeba.txt); the random control is a random sample of the same faces.
The estimators are tested by simulation with known rates.
"""

from __future__ import annotations

import io
import json
import shutil

import jsonschema
import numpy as np
import pytest
from conftest import CELEBA10K, PART_INDEX, REPO, assert_json_close, build_index

from indexer import attributes, geometry
from indexer.store import load_index
from service import create_app, query
from service.audit.report import omissions as omissions_section
from service.search import Searcher
from service.stats import omissions

IMG = CELEBA10K / "img_align_celeba"
N_INDEX = PART_INDEX
POOL = [f"{i:06d}.jpg" for i in range(5001, 6001)]
PLANTED = ("Eyeglasses", "Bangs")
OPENAPI = json.loads((REPO / "service" / "http" / "openapi.json").read_text())


def celeba_labels() -> dict[str, set[str]]:
    lines = (CELEBA10K / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    return {p[0]: {n for n, v in zip(names, p[1:]) if v == "1"} for p in (line.split() for line in lines[2:]) if p}


def check_schema(path: str, method: str, body) -> None:
    schema = OPENAPI["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**OPENAPI, **schema}).validate(body)


@pytest.fixture(scope="module")
def attr_index_dir(part_index_dir):
    return part_index_dir


@pytest.fixture(scope="module")
def attr_index(attr_index_dir):
    return load_index(attr_index_dir)


@pytest.fixture(scope="module")
def searcher(attr_index):
    return Searcher(attr_index, device="cpu")


@pytest.fixture(scope="module")
def pool_entries(searcher) -> dict[str, dict]:
    """Every held-back face through the real service function, in requests of 64 like the audit."""
    out = {}
    for lo in range(0, len(POOL), 64):
        names = POOL[lo : lo + 64]
        body = query.neighbors(
            searcher,
            [(n, (IMG / n).read_bytes()) for n in names],
            {"attributes": 1, "detector": "aligned", "k": 1, "channels": "semantic"},
        )
        for e in body["images"]:
            out[e["image"]] = e
    return out


# ----------------------------------------------------------------------------- index side


def test_build_stores_probes_measured_on_held_out_identities(attr_index):
    m = attr_index.manifest
    block = m["attributes"]
    assert block["available"] and block["source"] == "fitted" and block["identity_disjoint"]
    assert set(m["files"]) >= {"geometry.npy", "attributes.npz"}
    names = (CELEBA10K / "list_attr_celeba.txt").read_text().splitlines()[1].split()
    assert block["names"] == names and len(names) == 40
    probes = {p["name"]: p for p in block["probes"]}
    # Identity-disjoint: no identity of the held-out split is in the fit split.
    rows = [attr_index.rows[int(r)] for r in attr_index.face_rows]
    groups = attributes.identity_groups([r["identity"] for r in rows], [r["file"] for r in rows])
    held = attributes.group_split(groups, attributes.HELDOUT_FRACTION, "heldout-0")
    assert not set(groups[held]) & set(groups[~held])
    assert 0.2 < held.mean() < 0.4
    labels = celeba_labels()
    for name in PLANTED + ("Male", "Smiling"):
        p = probes[name]
        assert p["status"] == "ok"
        assert p["n_heldout_pos"] == sum(name in labels[r["file"]] for r, h in zip(rows, held) if h)
        assert p["tpr"] == p["tp"] / p["n_heldout_pos"] and p["fpr"] == p["fp"] / p["n_heldout_neg"]
    assert probes["Male"]["auc"] > 0.95 and probes["Eyeglasses"]["auc"] > 0.9
    # The descriptor-only probes reach ~0.75 for expression; landmarks must do better.
    assert probes["Smiling"]["auc"] > 0.85
    assert attr_index.geometry.shape == (attr_index.n_faces, len(geometry.NAMES))


def test_training_side_carries_each_identity_s_counts(attr_index):
    """What the identity bootstrap resamples: per attribute, the held-out identities' [pos, tp, neg,
    fp] and the training identities' [faces, positives], each adding up to the counts they refine."""
    rows = [attr_index.rows[int(r)] for r in attr_index.face_rows]
    groups = attributes.identity_groups([r["identity"] for r in rows], [r["file"] for r in rows])
    held = attributes.group_split(groups, attributes.HELDOUT_FRACTION, "heldout-0")
    side = attributes.training_side(attr_index)["attributes"]
    for row in side["rows"]:
        p = row["probe"]
        if row["status"] != "ok":
            continue
        h = np.asarray(p["heldout_identity_counts"])
        assert h[:, -1].sum() == len(set(groups[held]))
        assert (h[:, :4] * h[:, 4:]).sum(axis=0).tolist() == [p["n_heldout_pos"], p["tp"], p["n_heldout_neg"], p["fp"]]
        t = np.asarray(row["training_identity_counts"])
        assert (t[:, :2] * t[:, 2:]).sum(axis=0).tolist() == [row["n_training"], row["n_training_pos"]]


def test_index_without_optional_files_loads_and_the_section_says_why(attr_index_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(attr_index_dir, old)
    man = json.loads((old / "manifest.json").read_text())
    for f in ("geometry.npy", "attributes.npz"):
        (old / f).unlink()
        del man["files"][f]
    man.pop("attributes"), man.pop("geometry")
    (old / "manifest.json").write_text(json.dumps(man))
    idx = load_index(old, verify_hashes=True)
    assert idx.geometry is None and idx.attributes is None
    side = attributes.training_side(idx)
    assert not side["attributes"]["available"] and "before attribute probes" in side["attributes"]["reason"]
    body = query.neighbors(Searcher(idx, device="cpu"), [("a", (IMG / POOL[0]).read_bytes())], {"attributes": 1})
    assert body["images"][0]["attributes"] is None and body["images"][0]["geometry"] is not None
    res = omissions.analyse(body["images"], side)
    assert not res["attributes"]["available"] and not res["geometry"]["available"]
    html = omissions_section.render(res, {})
    assert "before attribute probes" in html and "before geometry" in html
    # A damaged optional file is refused like any other.
    (old / "extra.npy").write_bytes(b"")
    man["files"]["extra.npy"] = {"bytes": 0, "sha256": "0"}
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(Exception, match="file list is damaged"):
        load_index(old)


# ----------------------------------------------------------------------------- known truth, end to end


def test_planted_omission_is_flagged_under_produced(attr_index, pool_entries):
    labels = celeba_labels()
    kept = [e for n, e in pool_entries.items() if not labels[n] & set(PLANTED)]
    assert len(kept) < len(pool_entries) - 40  # the planted attributes were really there to remove
    res = omissions.analyse(kept, attributes.training_side(attr_index), seed=0)
    rows = {r["name"]: r for r in res["attributes"]["rows"]}
    for name in PLANTED:
        r = rows[name]
        assert r["direction"] == "under" and r["q_value"] < 0.05 and r["flagged"], r
        assert r["interval"][0] <= r["generated_rate"] <= r["interval"][1]
        assert r["interval"][1] < r["training_rate"], r  # the whole interval below the training rate
    flagged_under = [r["name"] for r in res["attributes"]["rows"] if r["flagged"] and r["direction"] == "under"]
    assert set(PLANTED) <= set(flagged_under)


def test_random_control_flags_at_most_two(attr_index, pool_entries):
    rng = np.random.default_rng(1)
    names = sorted(pool_entries)
    sample = [pool_entries[n] for n in rng.choice(names, 600, replace=False)]
    res = omissions.analyse(sample, attributes.training_side(attr_index), seed=1)
    a = res["attributes"]
    assert a["n_generated"] == 600 and a["n_tested"] >= 30
    flagged = [r["name"] for r in a["rows"] if r["flagged"]]
    assert len(flagged) <= 2, flagged
    tested = [r for r in a["rows"] if r["q_value"] is not None]
    assert sum(r["resampled"]["heldout_pos"] == "identities" for r in tested) >= 0.8 * len(tested)
    # Same faces as the index's population: the corrected rates sit near the labels' rates.
    labels = celeba_labels()
    for r in a["rows"]:
        if r["q_value"] is not None and r["probe_auc"] > 0.9:
            truth = np.mean([r["name"] in labels[e["image"]] for e in sample])
            assert abs(r["generated_rate"] - truth) < 0.08, (r["name"], r["generated_rate"], truth)
    geo = res["geometry"]
    assert geo["available"] and len(geo["stats"]) == len(geometry.NAMES)
    assert sum(s["flagged"] for s in geo["stats"]) <= 1


def test_geometry_detects_a_planted_pose_omission(attr_index, pool_entries):
    entries = [e for e in pool_entries.values() if e["status"] == "ok"]
    yaw = np.array([e["geometry"]["yaw"] for e in entries])
    frontal = [e for e, y in zip(entries, yaw) if abs(y) < 0.25]  # every turned head removed
    res = omissions.analyse(frontal, attributes.training_side(attr_index))
    st = {s["name"]: s for s in res["geometry"]["stats"]}
    assert st["yaw"]["flagged"] and st["yaw"]["q_value"] < 1e-6 and st["yaw"]["spread_ratio"] < 0.7


def test_server_mode_gives_identical_numbers(attr_index_dir, attr_index, searcher):
    names = POOL[:24]
    images = [(n, (IMG / n).read_bytes()) for n in names]
    params = {"attributes": 1, "detector": "aligned", "k": 1, "channels": "semantic"}
    local = query.neighbors(searcher, images, params)
    c = create_app(attr_index_dir, {"detect_processes": 0, "device": "cpu"}).test_client()
    r = c.get("/v1/attributes")
    assert r.status_code == 200
    check_schema("/v1/attributes", "get", r.json)
    data = {"images": [(io.BytesIO(b), n) for n, b in images]}
    resp = c.post("/neighbors?attributes=1&detector=aligned&k=1&channels=semantic", data=data)
    assert resp.status_code == 200
    check_schema("/neighbors", "post", resp.json)
    assert resp.json["params"]["attributes"] is True
    for a, b in zip(local["images"], resp.json["images"]):
        assert a["geometry"] == b["geometry"]
        assert a["attributes"].keys() == b["attributes"].keys()
        assert all(abs((a["attributes"][k] or 0) - (b["attributes"][k] or 0)) < 1e-6 for k in a["attributes"])
    res_local = omissions.analyse(local["images"], attributes.training_side(attr_index), seed=3)
    res_server = omissions.analyse(resp.json["images"], r.json, seed=3)
    # from the attribute scores of two requests (the network ran twice): floats to conftest.NET_ATOL
    assert_json_close(json.loads(json.dumps(res_local)), json.loads(json.dumps(res_server)))
    for bad in ("2", "yes", ""):
        assert (
            c.post(f"/neighbors?attributes={bad}", data={"images": [(io.BytesIO(images[0][1]), "a")]}).status_code
            == 400
        )


def test_report_section_renders_escaped(attr_index, pool_entries):
    labels = celeba_labels()
    kept = [e for n, e in pool_entries.items() if not labels[n] & set(PLANTED)][:300]
    res = omissions.analyse(kept, attributes.training_side(attr_index))
    res["attributes"]["rows"][0]["name"] = "<script>alert(1)</script>"
    thumbs = {f: "data:image/jpeg;base64,AAAA" for r in res["attributes"]["rows"] for f in r["examples"]}
    html = omissions_section.render(res, thumbs)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") >= len(geometry.NAMES)  # the histograms
    assert "data:image/jpeg;base64,AAAA" in html  # example training faces of the omitted attributes
    assert "label shift" in html.lower()


def test_index_without_labels_borrows_probes(attr_index_dir, pool_entries, tmp_path):
    """A folder dataset (no labels) built with --attribute-probes: its training rates come from the
    borrowed probes on its own faces, corrected like the generated side; probes that read other
    features are refused before any work."""
    folder = tmp_path / "faces"
    folder.mkdir()
    own = POOL[-150:]
    for n in own:
        shutil.copy(IMG / n, folder / n)
    out = build_index(tmp_path / "borrowed", root=folder, dataset="folder", attribute_probes=str(attr_index_dir))
    idx = load_index(out)
    block = idx.manifest["attributes"]
    assert block["source"] == "borrowed" and block["training_rate_source"] == "probe"
    side = attributes.training_side(idx)
    assert side["attributes"]["source"] == "borrowed" and side["attributes"]["borrowed_from"] == attr_index_dir.name
    sample = [pool_entries[n] for n in POOL[:600]]
    res = omissions.analyse(sample, side)
    labels = celeba_labels()
    rows = {r["name"]: r for r in res["attributes"]["rows"]}
    for name in ("Male", "Eyeglasses", "Blond_Hair", "Smiling"):
        truth = np.mean([name in labels[n] for n in own])
        assert abs(rows[name]["training_rate"] - truth) < 0.15, (name, rows[name]["training_rate"], truth)
    assert res["attributes"]["n_flagged_under"] + res["attributes"]["n_flagged_over"] <= 2
    bad = tmp_path / "bad"
    shutil.copytree(attr_index_dir, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["attributes"]["feature_signature"]["crop_size"] = 99
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="read other features"):
        build_index(tmp_path / "never", root=folder, dataset="folder", attribute_probes=str(bad))
    assert not (tmp_path / "never").exists()
