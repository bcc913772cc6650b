"""Real generators trained here with known membership, audited end to end (issue "real memorizers").

``tests/fixtures/generators/`` holds the last checkpoints of the benchmark's training runs (its
README has the commands that made them): each family trained once on 32 people who all have an
image among celeba10k's first 3,000 files (the *members* run) and once, with the same recipe, on 32
people who have none there (the *control* run). ``part_index_dir`` is exactly those 3,000 files,
so the members are in the audited index and the control's people are not. The audit runs against
real strangers rendered at the generators' 32 px (celeba_test), as a user auditing a 32 px model
should. Smaller than the benchmark (n = 96 samples, 10 DDIM steps), so the thresholds here are
looser than the benchmark's table (README, "Memorizing generators").
"""

from __future__ import annotations

import pytest
from conftest import DATA

from indexer.store import load_index
from service.audit import audit
from service.audit.study_memorization import membership_scores

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "generators"
REFERENCE_N = 300  # celeba_test faces: the chance rate at 32 px
SPECS = {
    "ddpm": "diffusers:{}",
    "dcgan": "dcgan32:{}",
}


RUNS = [("ddpm", "members"), ("ddpm", "control")]  # each a committed checkpoint: a missing one fails


def _path(family: str, role: str):
    return FIXTURES / (f"{family}_{role}" if family == "ddpm" else f"{family}_{role}.pth")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference32")
    for f in sorted((DATA / "celeba_test").glob("*.jpg"))[:REFERENCE_N]:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="module")
def identity_of(part_index_dir):
    return {r["file"]: r["identity"] for r in load_index(part_index_dir).rows}


def _members(family: str, role: str) -> set[str]:
    lines = (FIXTURES / f"{family}_{role}.members.txt").read_text().splitlines()
    return {line.split()[1] for line in lines if line.strip()}


@pytest.mark.parametrize("family,role", RUNS)
def test_trained_generators_are_caught_when_they_memorize_and_not_otherwise(
    family, role, part_index_dir, reference, identity_of
):
    res = audit(
        generator=SPECS[family].format(_path(family, role)),
        index=part_index_dir,
        n=96,
        steps=10,
        trials=2,
        batch_sizes=(16,),
        detector="aligned",
        reference_real=str(reference),
        reference_downscale=32,
        reference_detector="aligned",
        progress=False,
    )
    members = _members(family, role)
    s = membership_scores(res.data, identity_of, members)
    decisions = res.data["summary"]["decisions"]
    if role == "members":
        assert s["members_in_index"] == len(members)
        assert decisions["primary"]["reject"], decisions["primary"]
        assert s["same_person"]["share"] >= 0.8, s["same_person"]  # by chance: 32 of 2,437 people, 1.3%
        leaks = res.data["leaks"]
        assert leaks["count"] >= 1 and s["leaks"]["share"] >= 0.8, leaks["rows"][:5]
    else:
        assert s["members_in_index"] == 0
        assert not decisions["primary"]["reject"], decisions["primary"]
        assert not any(d["reject"] for d in decisions["secondary"]), decisions["secondary"]
        assert res.data["leaks"]["count"] == 0, res.data["leaks"]["rows"][:5]
