"""Held-out identities: tests whose null holds in any generated domain.

Why: every other null of the audit is made of real faces. A generator whose faces carry its own
artefacts (32 px, blur, a GAN's texture) can sit closer to *all* real people than real strangers do,
and those tests reject without any copying — measured on two 32 px DCGANs, one trained on people
outside the index: same-person p ≈ 10⁻²², with the matches naming the training people at chance.

If the index's people were split at random, before training, into the ones the generator trained on
(T) and ones held out (H, ``--held-out-identities``), then under H0 — the generator's faces do not
depend on which people were in T — the T/H labels of the people its faces land near are one random
split among all splits of the same sizes, whatever the faces look like. So each test counts what
lands on T and compares the count with the same count under random re-splits of the identities: an
exact permutation test, conditional on where the faces landed (which the labels cannot change).
Photos of one person move together, and look-alike hubs are as likely in H as in T, so neither
several photos per identity nor hubs bias it. The price is power: a copy of a training person
counts against a null in which its landing identity is in T with probability t = |T| / (|T| + |H|),
and copies of one person move together, so k different copied people give p ≈ t^k at best; the
more people are held out, the stronger the test (measured: 1% copies found by the primary test in
57–63% of audits with half held out, 98–99% with 90%; BENCHMARKS.md, "Held-out identities").

The five decisions, from each generated face's nearest indexed face (its identity and distance):

* ``same_person``: faces under the identity threshold whose identity is in T;
* ``copies_semantic`` / ``copies_pixel``: the same under the channel's copy threshold;
* ``ct_copying``: all faces whose nearest indexed person is in T (C_T's question, threshold-free);
* ``identity_concentration``: the largest number of faces landing on one T person.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PERMUTATIONS = 9999  # p-values down to 1e-4: below the secondary tests' starting level 0.05·α
MIN_SIDE = 10  # identities on each side below which the split cannot decide anything


class SplitError(ValueError):
    """A held-out list that cannot split this index (unreadable, or too few people on a side)."""


def read_held_out(path: str | Path) -> set[str]:
    """Identities held out from training, one per line; a line of several fields (a members file:
    ``file identity``) gives its last field; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SplitError(f"cannot read the held-out identities {path}: {e}") from e
    out = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            out.add(fields[-1])
    return out


def sides(held_out: Iterable[str], identity_images: dict[str, int]) -> tuple[set[str], int, int]:
    """(held-out identities that are in the index, identities in T, identities in H); ``identity_images``:
    every indexed identity and its number of faces (the training side's ``identity_null``)."""
    index_ids = set(identity_images)
    held = set(held_out) & index_ids
    n_h, n_t = len(held), len(index_ids) - len(held)
    if min(n_h, n_t) < MIN_SIDE:
        raise SplitError(
            f"the held-out identities leave {n_t} trained and {n_h} held-out people in the index "
            f"(of {len(set(held_out))} listed): at least {MIN_SIDE} of each are needed"
        )
    return held, n_t, n_h


def memberships(distinct: int, n_t: int, n_all: int, permutations: int, seed: int) -> np.ndarray:
    """(permutations, distinct) booleans: whether each of ``distinct`` given identities is in T under a
    uniformly random split of ``n_all`` identities into ``n_t`` trained and the rest held out. Drawn
    sequentially (the k-th is in T with probability (n_t − in T so far) / (n_all − k)), which is exact
    and costs O(distinct) vector steps rather than a shuffle of every identity per permutation."""
    rng = np.random.default_rng([seed, 23])
    out = np.zeros((permutations, distinct), bool)
    taken = np.zeros(permutations)
    for k in range(distinct):
        out[:, k] = rng.random(permutations) < (n_t - taken) / (n_all - k)
        taken += out[:, k]
    return out


def split_tests(
    landings: dict[str, list[str]],
    identity_images: dict[str, int],
    held_out: Iterable[str],
    *,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> dict:
    """The five permutation tests. ``landings[test]``: the identities (with repetition) of the generated
    faces that count for the test (``all`` for the threshold-free ones: every face's nearest identity).
    One set of re-splits serves every test, so their p-values are exact and jointly valid."""
    held, n_t, n_h = sides(held_out, identity_images)
    n_all = n_t + n_h
    names = sorted({x for ids in landings.values() for x in ids})
    col = {x: i for i, x in enumerate(names)}
    observed_t = np.array([x not in held for x in names], bool)
    perm_t = memberships(len(names), n_t, n_all, permutations, seed)
    tests = {}
    for test, ids in landings.items():
        counts = np.bincount([col[x] for x in ids], minlength=len(names)).astype(np.int64)
        if test == "identity_concentration":
            stat = int(counts[observed_t].max(initial=0))
            null = np.where(perm_t, counts, 0).max(axis=1, initial=0)
        else:
            stat = int(counts[observed_t].sum())
            null = perm_t.astype(np.int64) @ counts
        tests[test] = {
            "landed": int(counts.sum()),
            "on_trained": stat,
            "expected": float(null.mean()),
            "p_value": float((1 + np.sum(null >= stat)) / (1 + permutations)),
        }
    return {
        "trained_identities": n_t,
        "held_out_identities": n_h,
        "held_out_share": n_h / n_all,
        "permutations": permutations,
        "tests": tests,
    }


def landings(top1: list[dict], thresholds: dict[str, float | None]) -> dict[str, list[str]]:
    """Each test's landing identities from the generated faces' nearest indexed faces. ``top1``: per face,
    ``semantic`` and ``pixel`` as (identity, distance), None where the channel found nothing or the face
    has no identity; ``thresholds``: identity, semantic_copy, pixel_copy (None: that test is not run)."""
    rules = {
        "same_person": ("semantic", thresholds.get("identity")),
        "copies_semantic": ("semantic", thresholds.get("semantic_copy")),
        "copies_pixel": ("pixel", thresholds.get("pixel_copy")),
        "ct_copying": ("semantic", math.inf),
        "identity_concentration": ("semantic", math.inf),
    }
    out: dict[str, list[str]] = {test: [] for test, (_, t) in rules.items() if t is not None}
    for face in top1:
        for test, found in out.items():
            channel, t = rules[test]
            hit = face.get(channel)
            if hit is not None and hit[1] < t:
                found.append(hit[0])
    return out
