"""Identity concentration: do the generated faces keep resembling the same few training people?

Why a null: the nearest training identity of real strangers is already concentrated — a few
training people are "average-looking" and are many strangers' nearest face (1,000 strangers against
celeba10k give about 840 distinct identities and a most-matched identity 4–5 times). So the counts
of the generated faces' top-1 identities are compared with those of strangers: a *pool* of
stranger-like faces' top-1 identities (from the training side: one face per training identity, its
nearest *other-identity* face; or, with a real reference sample, the reference faces' own top-1
identities).

Why a permutation test: under "the generator's faces match training people like strangers do", the
generated faces and the pool's faces are exchangeable, so the generated sample's largest count is
compared with the largest count of random samples of the same size drawn *without replacement from
the generated and pool faces together*. That is exact whatever the pool's size. A null drawn from the
pool alone is not: drawn without replacement it degenerates as the sample size nears the pool size
(every draw the same set: sd 0 when n equals the pool), and drawn with replacement it leans on the
pool as if it were the population. The p-value of the largest count is the share of permutations
whose largest count is at least as large: the maximum over all identities, so it is corrected for
looking at every identity. A pool much smaller than the sample (< 5n) keeps the test exact but
weak, and the report says so.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

NULL_DRAWS = 999  # permutations: p-values resolve 0.001
POOL_PER_FACE = 5  # a pool smaller than this many times the sample: exact, but with little power


def pool_from_training(
    diff_face: np.ndarray,
    face_identity: np.ndarray,
    identity_names: np.ndarray | list,
    n: int,
    seed: int = 0,
    rows: np.ndarray | None = None,
    distances: np.ndarray | None = None,
) -> dict | None:
    """A pool of stranger-like top-1 identities from the training side: ``diff_face[i]`` is face
    ``rows[i]``'s nearest other-identity face (``rows``: every face when None; a sampled
    calibration's ``sem_rows`` otherwise), ``face_identity`` the identity code of every face (−1
    unknown) and ``identity_names[code]`` its label (as the service's entries name it). One face
    per identity (a seeded pick), so two photos of one person do not count as two strangers; ``n`` =
    the audit's sample size. ``distances`` (aligned with ``diff_face``: each face's nearest
    other-identity distance) add the pool faces' own distances and every identity's number of faces,
    the stranger null of :mod:`service.stats.leaks`."""
    diff_face = np.asarray(diff_face, np.int64)
    ids = np.asarray(face_identity, np.int64)
    own = ids if rows is None else ids[np.asarray(rows, np.int64)]
    ok = np.flatnonzero((own >= 0) & (diff_face >= 0))
    if n < 1 or not len(ok):
        return None
    perm = np.random.default_rng(seed).permutation(ok)
    _, first = np.unique(own[perm], return_index=True)
    pool = np.sort(perm[first])
    names = np.asarray(identity_names, dtype=object)
    out = _pool(
        [str(names[c]) for c in ids[diff_face[pool]]],
        n,
        "training faces of distinct identities, their nearest other-identity face",
    )
    if distances is not None:
        d = np.asarray(distances, np.float64)[pool]
        out["distances"] = [None if not np.isfinite(v) else float(v) for v in d]
        counts = np.bincount(ids[ids >= 0], minlength=len(names))
        out["identity_images"] = {str(names[c]): int(k) for c, k in enumerate(counts) if k}
    return out


def pool_from_reference(identities: list[str | None], n: int) -> dict | None:
    """The pool from a real reference sample's top-1 identities (``--reference-real``)."""
    ids = [str(i) for i in identities if i is not None]
    if n < 1 or not ids:
        return None
    return _pool(ids, n, "real reference faces (--reference-real), their top-1 training identity")


def _pool(identities: list[str], n: int, source: str) -> dict:
    return {"faces": int(n), "pool": identities, "pool_size": len(identities), "source": source}


def pool_warning(pool_size: int, n: int) -> str | None:
    """Why the test may miss concentration: a pool much smaller than the sample."""
    if pool_size >= POOL_PER_FACE * n:
        return None
    return (
        f"the stranger pool ({pool_size:,} faces) is smaller than {POOL_PER_FACE}× the sample ({n:,} faces): "
        f"the permutation test stays exact but has little power"
    )


def permutation_null(
    generated: list[str], pool: list[str], draws: int = NULL_DRAWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(largest count, distinct identities) of ``draws`` random samples of len(generated) faces drawn
    without replacement from the generated and pool faces together."""
    n = len(generated)
    codes = np.unique(np.asarray(list(generated) + list(pool), dtype=object).astype(str), return_inverse=True)[1]
    rng = np.random.default_rng([seed, 23])
    maxes, distinct = np.empty(draws, np.int64), np.empty(draws, np.int64)
    for b in range(draws):
        counts = np.bincount(codes[rng.permutation(len(codes))[:n]])
        maxes[b], distinct[b] = counts.max(), int((counts > 0).sum())
    return maxes, distinct


def _summary(maxes: np.ndarray, distinct: np.ndarray, pool: dict, n: int) -> dict:
    out = {
        "faces": int(n),
        "draws": int(len(maxes)),
        "source": pool["source"],
        "pool_size": pool["pool_size"],
        "test": "permutation: random samples of the generated and pool faces together, without replacement",
        "max_count_median": float(np.median(maxes)),
        "max_count_p95": float(np.percentile(maxes, 95)),
        "distinct_median": float(np.median(distinct)),
    }
    warning = pool_warning(pool["pool_size"], n)
    if warning:
        out["warning"] = warning
    return out


def concentration(entries: list[dict], pool: dict | None, seed: int = 0) -> dict:
    """Counts of the generated faces' top-1 training identities, with the null's p-values.

    ``entries`` are the service's per-image entries; faces without a known identity count by file.
    ``pool``: :func:`pool_from_training` or :func:`pool_from_reference` (None: no test).
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
    if pool is not None and n > 0:
        generated = [k for k, c in top1.items() for _ in range(c)]
        maxes, distinct = permutation_null(generated, pool["pool"], seed=seed)
        out["null"] = _summary(maxes, distinct, pool, n)
        out["p_value_max"] = float((1 + np.sum(maxes >= max_count)) / (len(maxes) + 1))
        out["p_value_distinct"] = float((1 + np.sum(distinct <= len(top1))) / (len(distinct) + 1))
    out["text"] = (
        f"{n} faces have their nearest training face among {len(top1)} distinct identities (the most-matched "
        f"one {max_count} times); {out['same_person']} are under the identity threshold, spread over "
        f"{out['distinct_same_person']} identities."
        + (
            f" Random samples of the same size from these faces and {out['null']['pool_size']:,} strangers "
            f"together: {out['null']['distinct_median']:.0f} distinct identities and a most-matched identity "
            f"{out['null']['max_count_median']:.0f} times (median of {out['null']['draws']} permutations; 95th "
            f"percentile {out['null']['max_count_p95']:.0f})."
            if out["null"]
            else " No stranger null is available for this index (no identities), so the counts have no baseline."
        )
    )
    return out
