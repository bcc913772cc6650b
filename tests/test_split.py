"""The held-out split's tests (service.stats.split): exact under H0 in worlds they were not designed on
(hubs that take most faces, several photos per person, faces far from every real person), and able to
see copies. Small here; BENCHMARKS.md has 300 worlds a row (scripts/sim_tests.py --study split)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from service.stats import split, verdict

TESTS = ("same_person", "copies_semantic", "copies_pixel", "ct_copying", "identity_concentration")


def _world(rng: np.random.Generator, people: int = 400, hub_power: float = 1.0) -> tuple[list[str], dict[str, int]]:
    """People with 1-20 photos each and Zipf-like pull: the identities generated faces land on."""
    names = [f"p{i}" for i in range(people)]
    images = {n: int(k) for n, k in zip(names, rng.integers(1, 21, people))}
    return names, images


def _landings(rng, names, n, hub_power, copies=0, trained=None):
    """Faces landing on people with probability ∝ rank^-hub_power, under the identity threshold for a
    fifth of them; ``copies`` more, each on a trained person, under every threshold."""
    w = 1.0 / np.arange(1, len(names) + 1) ** hub_power
    pick = rng.choice(len(names), n, p=w / w.sum())
    top1 = [{"semantic": (names[k], 0.7 if rng.random() < 0.8 else 0.5), "pixel": (names[k], 9.0)} for k in pick]
    for k in rng.choice(sorted(trained or []), copies):
        top1.append({"semantic": (k, 0.1), "pixel": (k, 1.0)})
    return split.landings(top1, {"identity": 0.6, "semantic_copy": 0.3, "pixel_copy": 2.0})


def test_memberships_draw_exact_random_splits():
    m = split.memberships(5, 3, 10, 20000, seed=1)
    assert m.shape == (20000, 5)
    assert abs(m.mean() - 0.3) < 0.01  # each is trained with probability n_t / n_all
    assert m.sum(axis=1).max() <= 3  # never more trained than there are
    # pairs are negatively dependent as in sampling without replacement: P(both) = 3/10 * 2/9
    assert abs((m[:, 0] & m[:, 1]).mean() - 3 / 10 * 2 / 9) < 0.01


@pytest.mark.parametrize("hub_power", [0.0, 1.2])
def test_every_test_is_valid_under_h0_with_hubs_and_several_photos(hub_power):
    """The p-values of all five tests are uniform (never small too often) when the split is random,
    even when hubs take most of the faces; and the whole verdict keeps its family-wise error."""
    ps = {t: [] for t in TESTS}
    anyf = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        names, images = _world(rng)
        held = set(rng.choice(names, len(names) // 2, replace=False))
        res = split.split_tests(_landings(rng, names, 300, hub_power), images, held, permutations=499, seed=seed)
        p = {t: res["tests"][t]["p_value"] for t in TESTS}
        for t in TESTS:
            ps[t].append(p[t])
        w, g = verdict.weights_and_graph((verdict.PRIMARY, *verdict.SECONDARY))
        anyf += any(d["reject"] for d in verdict.graphical(p, w, g, 0.05).values())
    for t in ("same_person", "ct_copying", "identity_concentration"):
        assert np.mean(np.asarray(ps[t]) <= 0.05) <= 0.12, (t, np.mean(np.asarray(ps[t]) <= 0.05))
        assert sps.kstest(ps[t], "uniform").pvalue > 0.001 or np.mean(ps[t]) > 0.45, t  # not piled up low
    assert anyf / 120 <= 0.11


def test_copies_of_trained_people_are_found():
    rng = np.random.default_rng(5)
    names, images = _world(rng)
    held = set(rng.choice(names, len(names) // 2, replace=False))
    trained = set(names) - held
    res = split.split_tests(_landings(rng, names, 300, 1.0, copies=30, trained=trained), images, held, seed=0)
    t = res["tests"]
    assert t["copies_semantic"]["on_trained"] == 30 and t["copies_semantic"]["expected"] < 20
    assert t["copies_semantic"]["p_value"] < 1e-3 and t["copies_pixel"]["p_value"] < 1e-3
    assert t["same_person"]["on_trained"] >= 30 + 0.3 * (t["same_person"]["landed"] - 30)  # copies + some chance
    assert res["held_out_identities"] == 200 and res["trained_identities"] == 200


def test_held_out_lists_are_read_and_checked(tmp_path):
    f = tmp_path / "held.txt"
    f.write_text("# held out before training\n000001.jpg 17\n42\n\n  7  # a comment\n")
    assert split.read_held_out(f) == {"17", "42", "7"}
    with pytest.raises(split.SplitError, match="cannot read"):
        split.read_held_out(tmp_path / "missing.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(split.SplitError):
        split.read_held_out(tmp_path / "bin")
    images = {str(i): 1 for i in range(30)}
    with pytest.raises(split.SplitError, match="at least"):
        split.sides({"1", "2", "not-indexed"}, images)  # 2 held out in the index: too few
    held, n_t, n_h = split.sides({str(i) for i in range(12)} | {"x"}, images)
    assert (n_t, n_h) == (18, 12) and "x" not in held


def test_study_held_out_split_beside_the_training_null():
    """The known-truth study at CI scale (BENCHMARKS.md has 300 worlds a row): in descriptor worlds
    with half the people held out, generators that never saw the index are rarely flagged by the
    split, where the training null flags the off-domain and look-alike ones nearly always; copies
    of trained people are found."""
    from service.audit.study_split import split_rows, split_study

    rows = {r["generator"]: r for r in split_rows(split_study(12, specs=("2",)))}
    for kind in ("new people", "off-domain", "look-alikes"):
        assert rows[kind]["split_any"]["k"] <= 2, (kind, rows[kind]["split_any"])
    assert rows["off-domain"]["training_any"]["k"] >= 10 and rows["look-alikes"]["training_any"]["k"] >= 10
    assert rows["1% copies"]["split_any"]["k"] >= 3, rows["1% copies"]["split_any"]


def test_a_held_out_list_that_cannot_split_is_refused_early_or_reported(tmp_path):
    """An unreadable or empty list fails before any sampling (exit code 2); one that leaves too few
    people on a side is reported in the audit and the ordinary null decides, with a caveat."""
    from service.audit import audit
    from service.audit.backends import EXIT_USAGE, AuditError

    for bad in (tmp_path / "missing.txt", tmp_path / "empty.txt"):
        if bad.name == "empty.txt":
            bad.write_text("# nobody\n")
        with pytest.raises(AuditError) as e:
            audit(generated=tmp_path, index=tmp_path, held_out_identities=str(bad))
        assert e.value.code == EXIT_USAGE and "held-out" in e.value.message

    block = {"error": "the held-out identities leave 5 trained and 3 held-out people", "source": "x"}
    mem = {"p_values": {"same_person": 0.5, "copies_semantic": 0.5, "copies_pixel": None}}
    out = verdict.decide(mem, {"p_value_copying": 0.5}, {"p_value_max": 0.5}, 0.05, "reference_real", split=block)
    assert out["decisions"]["null"] == "reference_real" and "not used" in out["caveat"]
    ok = {"tests": {t: {"p_value": 1e-4 if t == "copies_pixel" else 0.5} for t in TESTS}}
    out = verdict.decide(mem, {"p_value_copying": 0.5}, {"p_value_max": 0.5}, 0.05, "reference_real", split=ok)
    assert out["decisions"]["null"] == "held_out_identities" and out["verdict"].endswith("copies_pixel")
