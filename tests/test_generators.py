"""The generators facemem trains (service/generators) and the diffusers adapter, on real CelebA faces.

Training runs here are a few steps: these tests check the mechanics (members, checkpoints, loading,
seeding, bad folders); whether a trained model is caught memorizing is the benchmark's job
(scripts/bench_memorization.py, README "Memorizing generators").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CELEBA10K, REPO, checkout_env

from service.audit import sources
from service.generators import train as training

ROOT = CELEBA10K / "img_align_celeba"


@pytest.fixture(scope="module")
def members_file(tmp_path_factory):
    lines = training.choose_members(CELEBA10K / "identity_CelebA.txt", 6, seed=3)
    path = tmp_path_factory.mktemp("members") / "members.txt"
    path.write_text("# six people\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, members_file):
    """A DDPM trained for 4 steps through the CLI (2 checkpoints)."""
    out = tmp_path_factory.mktemp("ddpm")
    cmd = [sys.executable, "scripts/train_generator.py", "train", "--family", "ddpm", "--members", str(members_file)]
    cmd += ["--root", str(ROOT), "--steps", "4", "--batch", "4", "--checkpoints", "2", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=checkout_env(), check=True, capture_output=True, timeout=300)
    return out


def test_members_are_distinct_people_and_seeded(members_file):
    lines = training.choose_members(CELEBA10K / "identity_CelebA.txt", 6, seed=3)
    assert lines == training.choose_members(CELEBA10K / "identity_CelebA.txt", 6, seed=3)
    assert lines != training.choose_members(CELEBA10K / "identity_CelebA.txt", 6, seed=4)
    people = [line.split()[1] for line in lines]
    assert len(set(people)) == 6
    others = training.choose_members(CELEBA10K / "identity_CelebA.txt", 6, seed=3, exclude=set(people))
    assert not {line.split()[1] for line in others} & set(people)
    members = training.read_members(members_file, ROOT)
    assert [m.identity for m in members] == people
    imgs = training.load_images(members, 32)
    assert imgs.shape == (6, 3, 32, 32) and imgs.min() >= -1 and imgs.max() <= 1 and imgs.std() > 0.1


def test_bad_members_files_are_refused(tmp_path, members_file):
    (tmp_path / "missing.txt").write_text("no_such_image.jpg 1\n")
    with pytest.raises(ValueError, match="not found"):
        training.read_members(tmp_path / "missing.txt", ROOT)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no images"):
        training.read_members(tmp_path / "empty.txt", ROOT)
    r = subprocess.run(
        [
            sys.executable,
            "scripts/train_generator.py",
            "train",
            "--family",
            "dcgan",
            "--members",
            str(tmp_path / "missing.txt"),
        ]
        + ["--root", str(ROOT), "--steps", "2", "--out", str(tmp_path / "o")],
        cwd=REPO,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "not found" in r.stderr and not (tmp_path / "o").exists()
    # `choose` writes the same members as the library, leaving out the people of --exclude.
    ids = CELEBA10K / "identity_CelebA.txt"
    cmd = [sys.executable, "scripts/train_generator.py", "choose", "--identities", str(ids), "--k", "6"]
    cmd += ["--seed", "3", "--exclude", str(members_file), "--out", str(tmp_path / "m.txt")]
    subprocess.run(cmd, cwd=REPO, env=checkout_env(), check=True, capture_output=True, timeout=120)
    excluded = {line.split()[1] for line in members_file.read_text().splitlines() if not line.startswith("#")}
    assert (tmp_path / "m.txt").read_text().splitlines() == training.choose_members(ids, 6, 3, excluded)


def test_checkpoints_are_log_spaced_and_end_at_the_last_step():
    steps = training.checkpoint_steps(3000, 7)
    assert steps[-1] == 3000 and len(steps) == 7 and steps == sorted(set(steps))
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, ratios[0], atol=0.05)
    assert training.checkpoint_steps(3, 7)[-1] == 3


def test_ddpm_run_saves_loadable_pipelines_with_a_manifest(ddpm_run, members_file):
    manifest = json.loads((ddpm_run / "manifest.json").read_text())
    assert manifest["family"] == "ddpm" and manifest["steps"] == 4 and manifest["seed"] == 0
    assert [c["step"] for c in manifest["checkpoints"]] == training.checkpoint_steps(4, 2)
    assert [m["identity"] for m in manifest["members"]] == [
        m.identity for m in training.read_members(members_file, ROOT)
    ]
    assert "train_generator.py" in manifest["command"]
    src = sources.load_generator(f"diffusers:{ddpm_run / 'step-000004'}", steps=3)
    a = src.sampler(3, 11)
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    assert src.sampler.sampling["steps"] == 3 and src.sampler.sampling["scheduler"] == "DDIMScheduler"
    # Every sample has its own seed: sample 0 alone is sample 0 of the batch. Not bit for bit: the UNet's
    # fp32 convolutions may sum in another order for another batch size, which moves a pixel by at most
    # one grey level after three denoising steps.
    alone = src.sampler(1, 11)
    assert np.abs(alone[0].astype(int) - a[0].astype(int)).max() <= 1
    assert np.abs(src.sampler(3, 12).astype(int) - a.astype(int)).max() > 10  # another seed, other faces


def test_dcgan_run_loads_in_the_dcgan32_adapter(tmp_path, members_file):
    threads = torch.get_num_threads()
    manifest = training.train("dcgan", training.read_members(members_file, ROOT), tmp_path, steps=3, batch=4, threads=1)
    # Training flushes denormals to zero and caps threads; both are process-wide and must be given back,
    # or the next test in this worker (hypothesis needs subnormal floats) fails.
    assert sys.float_info.min / 2 > 0.0
    assert torch.get_num_threads() == threads
    last = tmp_path / manifest["checkpoints"][-1]["path"]
    s = sources.load_generator(f"dcgan32:{last}")
    assert sources.to_uint8(s.sampler(2, 0)).shape == (2, 32, 32, 3)


def test_checkpoints_and_pipeline_folders_that_do_not_load_get_a_clear_error(ddpm_run, tmp_path):
    bad = {
        "empty": lambda d: None,
        "garbage_index": lambda d: (d / "model_index.json").write_text("{not json"),
        "no_unet_weights": lambda d: (
            shutil.copytree(ddpm_run / "step-000004", d, dirs_exist_ok=True),
            [p.unlink() for p in (d / "unet").glob("*.safetensors")],
        ),
    }
    for name, make in bad.items():
        d = tmp_path / name
        d.mkdir()
        make(d)
        with pytest.raises(sources.SourceError, match="diffusers|pipeline"):
            sources.load_generator(f"diffusers:{d}")
    import torch

    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(sources.SourceError, match="not a dcgan32 checkpoint"):
        sources.load_generator(f"dcgan32:{tmp_path / 'other.pth'}")
    (tmp_path / "zeros.pth").write_bytes(b"\0" * 64)
    with pytest.raises(sources.SourceError, match="cannot load"):
        sources.load_generator(f"dcgan32:{tmp_path / 'zeros.pth'}")
    # The audit opens its source before the index: the reason reaches the caller as a SourceError
    # (the CLI's exit code 2), not a traceback from diffusers.
    from service.audit import audit

    with pytest.raises(sources.SourceError, match="model_index.json"):
        audit(generator=f"diffusers:{tmp_path / 'empty'}", index=tmp_path)


def test_membership_scores_count_matches_naming_members():
    """The benchmark's scoring against known membership, on a hand-made audit result."""
    from service.audit.study_memorization import membership_scores

    identity_of = {"a1.jpg": "A", "a2.jpg": "A", "b1.jpg": "B", "c1.jpg": "C", "d1.jpg": "D"}

    def row(sem, pix, same, copy_sem=False, copy_pix=False, status="ok"):
        return {
            "status": status,
            "semantic_file": sem,
            "semantic_identity": identity_of.get(sem),
            "pixel_file": pix,
            "same_person": same,
            "copy_semantic": copy_sem,
            "copy_pixel": copy_pix,
        }

    rows = [
        row("a1.jpg", "a2.jpg", True, copy_pix=True),  # a pixel copy of member A's photo
        row("b1.jpg", "c1.jpg", True, copy_sem=True),  # a semantic copy of B (the semantic file counts)
        row("c1.jpg", "c1.jpg", True),  # same person, not a copy, C is not a member
        row("d1.jpg", "d1.jpg", False),
        row(None, None, None, status="no_face"),
    ]
    decisions = {"primary": {"p_value": 0.001, "reject": True}, "secondary": [{"reject": False}]}
    data = {
        "rows": rows,
        "leaks": {"rows": [{"identity": "A"}, {"identity": "C"}]},
        "summary": {"decisions": decisions, "verdict": "memorization detected"},
    }
    s = membership_scores(data, identity_of, members={"A", "B", "Z"})
    assert s["members_in_index"] == 2 and s["chance"] == 2 / 4 and s["faces"] == 4
    assert (s["copies"]["count"], s["copies"]["faces"]) == (2, 2)
    assert (s["same_person"]["count"], s["same_person"]["faces"]) == (2, 3)
    assert (s["leaks"]["count"], s["leaks"]["faces"]) == (1, 2)
    assert s["copy_share"]["count"] == 2 and s["primary_rejects"] and s["any_finding"]


def test_held_out_lists_for_the_split():
    """hold_out: a random share, never a member; untrained: everyone but the members, or random
    stand-ins for a run whose members are not among the people (service.stats.split)."""
    people = [str(i) for i in range(100)]
    half = training.hold_out(people, 0.5, 0, {"1", "2", "3"})
    assert len(half) == 50 and not {"1", "2", "3"} & set(half)
    assert half == training.hold_out(people, 0.5, 0, {"1", "2", "3"}) != training.hold_out(people, 0.5, 1)
    with pytest.raises(ValueError):
        training.hold_out(people, 1.0, 0)
    assert training.untrained(people, {"1", "2", "x"}, 0) == [p for p in people if p not in ("1", "2")]
    control = training.untrained(people, {"x", "y", "z"}, 0)
    assert len(control) == 97 and set(control) < set(people)
