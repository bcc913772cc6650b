"""The audit's decisions: five tests, one procedure, family-wise error at most ``alpha``.

Why one procedure: an audit makes five decisions (same person, two copy channels, C_T, identity
concentration). Deciding the primary test at ``alpha`` and the other four with Holm at ``alpha`` as
well lets a generator that does nothing wrong get *some* finding about 2α of the time (measured: 13.5–15.5%
of clean audits at n = 1,000). So all five go through one graphical multiple-testing procedure
(Bretz, Maurer, Brannath & Posch, Statistics in Medicine 2009), which controls the family-wise error
at ``alpha`` whatever the tests' dependence:

* the primary test starts with 80% of ``alpha``, each secondary test with 5%;
* a rejected test hands its share on: the primary's to the four secondary tests equally, a secondary
  test's to the primary and the other secondary tests equally (a quarter each).

So the primary test keeps nearly all its power (it is decided at 0.8·alpha, or at up to the whole alpha
once secondary tests reject), and a secondary finding still needs strong evidence on its own.

The primary test is "the generated faces match training identities more often than strangers do"
(same person under the identity threshold): it is the broadest memorization signal — an exact copy,
a re-rendered training image and a regenerated training person all pass it — and the one with a
calibrated null in every index with identities.
"""

from __future__ import annotations

PRIMARY = "same_person"
SECONDARY = ("copies_semantic", "copies_pixel", "ct_copying", "identity_concentration")
LABELS = {
    "same_person": "generated faces are the same person as their nearest training face more often than strangers",
    "copies_semantic": "more semantic copies (closer than 99% of training faces' own nearest face) than strangers",
    "copies_pixel": "more pixel copies than strangers",
    "ct_copying": "C_T < 0: generated faces closer to the training set than unseen real faces",
    "identity_concentration": "the most-matched training identity is matched more often than among strangers",
}
SPLIT_LABELS = {  # the same five questions against a held-out split of the index's people (service.stats.split)
    "same_person": "generated faces are the same person as a trained person more often than a random split of the "
    "index's people into trained and held out predicts",
    "copies_semantic": "more semantic copies land on trained than on held-out people than a random split predicts",
    "copies_pixel": "more pixel copies land on trained than on held-out people than a random split predicts",
    "ct_copying": "generated faces' nearest indexed person is a trained one more often than a random split predicts",
    "identity_concentration": "one trained person gets more of the generated faces than under a random split",
}
PRIMARY_WEIGHT = 0.8
CORRECTION = (
    "one graphical procedure over all five tests (Bretz et al. 2009): the primary test at 80% of alpha and "
    "each secondary test at 5%, a rejected test's share passed on; family-wise error at most alpha"
)


def weights_and_graph(names: tuple[str, ...] = (PRIMARY, *SECONDARY)) -> tuple[dict, dict]:
    """The initial weights and the transition graph of :data:`CORRECTION`."""
    secondary = [n for n in names if n != PRIMARY]
    weights = {PRIMARY: PRIMARY_WEIGHT, **{n: (1 - PRIMARY_WEIGHT) / len(secondary) for n in secondary}}
    graph = {PRIMARY: {n: 1 / len(secondary) for n in secondary}}
    for n in secondary:
        graph[n] = {m: 1 / len(names[1:]) for m in names if m != n}
    return weights, graph


def graphical(p_values: dict[str, float | None], weights: dict, graph: dict, alpha: float) -> dict[str, dict]:
    """Adjusted p-values and decisions of the graphical procedure (Bretz et al. 2009, algorithm 2).

    A test whose p-value is None was not run: it is taken out of the graph first (its weight passed on
    as the graph says), which depends only on which tests ran, never on their outcome."""
    w = {n: float(weights.get(n, 0.0)) for n in p_values}
    g = {n: {m: float(graph.get(n, {}).get(m, 0.0)) for m in p_values if m != n} for n in p_values}

    def remove(i: str) -> None:
        for j in w:
            if j != i:
                w[j] += w[i] * g[i].get(j, 0.0)
        new = {}
        for j in g:
            if j == i:
                continue
            new[j] = {}
            for k in g[j]:
                if k in (i, j):
                    continue
                denom = 1.0 - g[j].get(i, 0.0) * g[i].get(j, 0.0)
                new[j][k] = (g[j][k] + g[j].get(i, 0.0) * g[i].get(k, 0.0)) / denom if denom > 1e-12 else 0.0
        g.clear()
        g.update(new)
        del w[i]

    for name in [n for n, p in p_values.items() if p is None]:
        remove(name)
    out = {n: {"p_value": None, "p_adjusted": None, "reject": None} for n in p_values}
    running = 0.0
    while w:
        ratio = {n: (p_values[n] / w[n] if w[n] > 0 else float("inf")) for n in w}
        i = min(ratio, key=lambda n: (ratio[n], n))
        running = max(running, min(1.0, ratio[i]))
        out[i] = {"p_value": p_values[i], "p_adjusted": running, "reject": running <= alpha}
        remove(i)
    return out


def decide(mem: dict, ct_block: dict, idents: dict, alpha: float, null: str, split: dict | None = None) -> dict:
    """The ``decisions`` and ``verdict`` of the report's summary. With a held-out split
    (:mod:`service.stats.split`, no ``error``) its five permutation tests decide, each asking the same
    question of where the generated faces land; otherwise the tests against ``null``'s strangers."""
    labels = LABELS
    if split is not None and "tests" in split:
        p = {k: t["p_value"] for k, t in split["tests"].items()}
        null, labels = "held_out_identities", SPLIT_LABELS
    else:
        p = dict(mem["p_values"])
        p["ct_copying"] = ct_block.get("p_value_copying")
        p["identity_concentration"] = idents.get("p_value_max")
    names = (PRIMARY, *SECONDARY)
    weights, graph = weights_and_graph(names)
    result = graphical({k: p.get(k) for k in names}, weights, graph, alpha)
    decisions = {
        "alpha": alpha,
        "null": null,
        "primary": {"name": PRIMARY, "hypothesis": labels[PRIMARY], **result[PRIMARY]},
        "secondary": [{"name": k, "hypothesis": labels[k], **result[k]} for k in SECONDARY],
        "correction": CORRECTION,
        "weights": weights,
    }
    flagged = [d["name"] for d in decisions["secondary"] if d["reject"]]
    primary_p = result[PRIMARY]["p_value"]
    if decisions["primary"]["reject"]:
        head = "memorization detected: " + labels[PRIMARY]
    elif flagged:
        head = "no primary finding; secondary finding(s): " + ", ".join(flagged)
    elif primary_p is None:
        head = "no decision: the index has no identities for a stranger baseline"
    else:
        head = "no evidence of memorization at the indexed faces"
    out = {"decisions": decisions, "verdict": head}
    unused = split is not None and "error" in split
    if null == "training" and (decisions["primary"]["reject"] or flagged):
        # Measured: the 32 px DCGAN's C_T and identity concentration reject against training strangers
        # and not against real strangers degraded to 32 px (README, "Measured here").
        out["caveat"] = (
            "decided against training-domain strangers: faces from another domain (lower resolution, blur, "
            "another detector or crop) can give these findings without copying; rerun with --reference-real "
            "holding real faces of people not in the index, in the generator's domain"
        )
        out["verdict"] = head + " (against training-domain strangers: see the caveat)"
    if unused:
        note = f"the held-out identities were not used ({split['error']}); decided against {null} strangers"
        out["caveat"] = note + ("; " + out["caveat"] if "caveat" in out else "")
    return out
