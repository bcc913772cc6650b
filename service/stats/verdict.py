"""The audit's decisions: one primary test, the others corrected together with Holm.

Why: an audit makes several 95% decisions (same person, two copy channels, C_T, identity
concentration). Read one by one, a generator that does nothing wrong would still fail one of five
about 23% of the time. So one test is named primary in advance and decided at ``alpha`` alone; the
other four are a family whose p-values are adjusted with Holm's step-down method (which controls the
family-wise error at ``alpha`` whatever their dependence).

The primary test is "the generated faces match training identities more often than strangers do"
(same person under the identity threshold): it is the broadest memorization signal — an exact copy,
a re-rendered training image and a regenerated training person all pass it — and the one with a
calibrated null in every index with identities.
"""

from __future__ import annotations

from . import baselines

PRIMARY = "same_person"
SECONDARY = ("copies_semantic", "copies_pixel", "ct_copying", "identity_concentration")
LABELS = {
    "same_person": "generated faces are the same person as their nearest training face more often than strangers",
    "copies_semantic": "more semantic copies (closer than 99% of training faces' own nearest face) than strangers",
    "copies_pixel": "more pixel copies than strangers",
    "ct_copying": "C_T < 0: generated faces closer to the training set than unseen real faces",
    "identity_concentration": "the most-matched training identity is matched more often than among strangers",
}


def decide(mem: dict, ct_block: dict, idents: dict, alpha: float, null: str) -> dict:
    """The ``decisions`` and ``verdict`` of the report's summary."""
    p = dict(mem["p_values"])
    p["ct_copying"] = ct_block.get("p_value_copying")
    p["identity_concentration"] = idents.get("p_value_max")
    primary_p = p.get(PRIMARY)
    family = baselines.holm({k: p.get(k) for k in SECONDARY}, alpha)
    decisions = {
        "alpha": alpha,
        "null": null,
        "primary": {
            "name": PRIMARY,
            "hypothesis": LABELS[PRIMARY],
            "p_value": primary_p,
            "reject": None if primary_p is None else primary_p < alpha,
        },
        "secondary": [{"name": k, "hypothesis": LABELS[k], **family[k]} for k in SECONDARY],
        "correction": "Holm step-down over the secondary tests; the primary test alone at alpha",
    }
    flagged = [d["name"] for d in decisions["secondary"] if d["reject"]]
    if decisions["primary"]["reject"]:
        head = "memorization detected: " + LABELS[PRIMARY]
    elif flagged:
        head = "no primary finding; secondary finding(s): " + ", ".join(flagged)
    elif primary_p is None:
        head = "no decision: the index has no identities for a stranger baseline"
    else:
        head = "no evidence of memorization at the indexed faces"
    out = {"decisions": decisions, "verdict": head}
    if null == "training" and (decisions["primary"]["reject"] or flagged):
        # Measured: the 32 px DCGAN's C_T and identity concentration reject against training strangers
        # and not against real strangers degraded to 32 px (README, "Measured here").
        out["caveat"] = (
            "decided against training-domain strangers: faces from another domain (lower resolution, blur, "
            "another detector or crop) can give these findings without copying; rerun with --reference-real "
            "holding real faces of people not in the index, in the generator's domain"
        )
        out["verdict"] = head + " (against training-domain strangers: see the caveat)"
    return out
