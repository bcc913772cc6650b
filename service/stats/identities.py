"""Identity concentration: do the generated faces keep resembling the same few training people?

Why a null: the nearest training identity of real strangers is already concentrated — a few
training people are "average-looking" and are many strangers' nearest face (1,000 strangers against
celeba10k give about 840 distinct identities and a most-matched identity 4–5 times). So the counts
of the generated faces' top-1 identities are compared with the same counts for the same number of
strangers: each null draw takes that many faces of distinct training identities and counts the
identities of their nearest *other-identity* faces (or, with a real reference sample, draws from the
reference faces' own top-1 identities). The p-value of the largest count is the share of null draws
whose largest count is at least as large: the maximum over all identities, so it is corrected for
looking at every identity.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

NULL_DRAWS = 200


def null_from_training(
    diff_face: np.ndarray,
    face_identity: np.ndarray,
    n: int,
    draws: int = NULL_DRAWS,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> dict | None:
    """Null distribution of (largest count, distinct identities) for n strangers, from the training
    side: ``diff_face[i]`` is face ``rows[i]``'s nearest other-identity face (``rows``: every face when
    None; a sampled calibration's ``sem_rows`` otherwise), ``face_identity`` the identity code of every
    face (−1 unknown). Faces are drawn one per identity, like independent strangers."""
    diff_face = np.asarray(diff_face, np.int64)
    ids = np.asarray(face_identity, np.int64)
    own = ids if rows is None else ids[np.asarray(rows, np.int64)]
    ok = np.flatnonzero((own >= 0) & (diff_face >= 0))
    if n < 1 or not len(ok):
        return None
    # one face per identity (a seeded pick), so two photos of one person do not count as two strangers
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ok)
    _, first = np.unique(own[perm], return_index=True)
    pool = perm[first]
    if len(pool) < n:
        return None
    maxes, distinct = np.empty(draws, np.int64), np.empty(draws, np.int64)
    for b in range(draws):
        pick = rng.choice(pool, n, replace=False)
        counts = np.bincount(ids[diff_face[pick]])
        maxes[b], distinct[b] = counts.max(), int((counts > 0).sum())
    return _summary(maxes, distinct, n, "training faces of distinct identities, their nearest other-identity face")


def null_from_reference(identities: list[str | None], n: int, draws: int = NULL_DRAWS, seed: int = 0) -> dict | None:
    """The same null from a real reference sample's top-1 identities (drawn n at a time without
    replacement; needs at least n reference faces)."""
    ids = [i for i in identities if i is not None]
    if n < 1 or len(ids) < n:
        return None
    rng = np.random.default_rng(seed)
    codes = np.unique(np.array(ids), return_inverse=True)[1]
    maxes, distinct = np.empty(draws, np.int64), np.empty(draws, np.int64)
    for b in range(draws):
        counts = np.bincount(codes[rng.choice(len(codes), n, replace=False)])
        maxes[b], distinct[b] = counts.max(), int((counts > 0).sum())
    return _summary(maxes, distinct, n, "real reference faces (--reference-real), their top-1 training identity")


def _summary(maxes: np.ndarray, distinct: np.ndarray, n: int, source: str) -> dict:
    return {
        "faces": int(n),
        "draws": int(len(maxes)),
        "source": source,
        "max_count": [int(v) for v in maxes],
        "distinct": [int(v) for v in distinct],
        "max_count_median": float(np.median(maxes)),
        "max_count_p95": float(np.percentile(maxes, 95)),
        "distinct_median": float(np.median(distinct)),
    }


def concentration(entries: list[dict], null: dict | None) -> dict:
    """Counts of the generated faces' top-1 training identities, with the null's p-values.

    ``entries`` are the service's per-image entries; faces without a known identity count by file.
    """
    top1: Counter = Counter()
    same: Counter = Counter()
    train_files: dict[str, list[str]] = defaultdict(list)
    gen: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e["status"] != "ok" or not e["semantic"]:
            continue
        s = e["semantic"][0]
        ident = s["identity"] if s["identity"] is not None else f"file:{s['file']}"
        top1[ident] += 1
        same[ident] += int(s["same_person"])
        if s["file"] not in train_files[ident]:
            train_files[ident].append(s["file"])
        gen[ident].append(e["image"])
    n = sum(top1.values())
    top = [
        {"identity": k, "top1": c, "same_person": same[k], "train_files": train_files[k], "generated": gen[k]}
        for k, c in sorted(top1.items(), key=lambda kv: (-kv[1], -same[kv[0]], kv[0]))
    ]
    max_count = top[0]["top1"] if top else 0
    out: dict = {
        "faces": n,
        "distinct_top1": len(top1),
        "max_count": max_count,
        "same_person": sum(same.values()),
        "distinct_same_person": sum(1 for v in same.values() if v),
        "top": top[:30],
        "gallery": 10,
        "null": None,
        "p_value_max": None,
        "p_value_distinct": None,
    }
    if null is not None and null["faces"] == n:
        maxes, distinct = np.asarray(null["max_count"]), np.asarray(null["distinct"])
        out["null"] = {k: v for k, v in null.items() if k not in ("max_count", "distinct")}
        out["p_value_max"] = float((1 + np.sum(maxes >= max_count)) / (len(maxes) + 1))
        out["p_value_distinct"] = float((1 + np.sum(distinct <= len(top1))) / (len(distinct) + 1))
    out["text"] = (
        f"{n} faces have their nearest training face among {len(top1)} distinct identities (the most-matched "
        f"one {max_count} times); {out['same_person']} are under the identity threshold, spread over "
        f"{out['distinct_same_person']} identities."
        + (
            f" The same number of strangers: {out['null']['distinct_median']:.0f} distinct identities and a "
            f"most-matched identity {out['null']['max_count_median']:.0f} times (median of {out['null']['draws']} "
            f"draws; 95th percentile {out['null']['max_count_p95']:.0f})."
            if out["null"]
            else " No stranger null is available for this index (no identities), so the counts have no baseline."
        )
    )
    return out
