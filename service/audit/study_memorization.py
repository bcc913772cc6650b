"""Known-truth scoring of audits of generators trained with known membership (issue "real memorizers").

A training run (:mod:`service.generators.train`) records its members: the people the generator saw.
For a *memorizing* run those people are in the audited index; for a *control* run of the same recipe
they are not (the index was built with ``--exclude-identities``). :func:`membership_scores` scores
one audit against that truth: which share of the flagged copies, same-person matches and leaking
identities name a member, beside what chance would give (members / identities in the index).
``scripts/bench_memorization.py`` runs the audits of every checkpoint and prints the table.
"""

from __future__ import annotations

from pathlib import Path

from ..stats.memorization import share_with_interval


def members_of(manifest: dict) -> set[str]:
    """The identities a run trained on (its manifest's ``members``)."""
    return {str(m["identity"]) for m in manifest["members"] if m.get("identity") is not None}


def adapter_spec(run: Path, manifest: dict, checkpoint: dict) -> str:
    """The audit's ``--generator`` spec of one checkpoint of a run."""
    adapter = {"ddpm": "diffusers", "dcgan": "dcgan32"}[manifest["family"]]
    return f"{adapter}:{run / checkpoint['path']}"


def membership_scores(data: dict, identity_of: dict[str, str | None], members: set[str]) -> dict:
    """One audit (``AuditResult.data``) against the truth: for flagged copies (either channel),
    same-person matches and significant leaking identities, how many name a member, with exact
    intervals; ``chance`` is the share a member would get if matches fell on people at random."""
    rows = [r for r in data["rows"] if r["status"] == "ok"]

    def share(identities: list[str | None]) -> dict:
        known = [i for i in identities if i is not None]
        return share_with_interval(sum(str(i) in members for i in known), len(known))

    copies = [
        identity_of.get(r["pixel_file"] if r["copy_pixel"] else r["semantic_file"])
        for r in rows
        if r["copy_pixel"] or r["copy_semantic"]
    ]
    same = [r["semantic_identity"] for r in rows if r["same_person"]]
    leaks = [row["identity"] for row in (data.get("leaks") or {}).get("rows", [])]
    people = {i for i in identity_of.values() if i is not None}
    decisions = data["summary"]["decisions"]
    return {
        "members": len(members),
        "members_in_index": len(members & {str(p) for p in people}),
        "chance": len(members & {str(p) for p in people}) / max(1, len(people)),
        "faces": len(rows),
        "copies": share(copies),
        "copy_share": share_with_interval(len(copies), len(rows)),
        "same_person": share(same),
        "leaks": share(leaks),
        "primary_p": decisions["primary"]["p_value"],
        "primary_rejects": bool(decisions["primary"]["reject"]),
        "any_finding": bool(decisions["primary"]["reject"]) or any(d["reject"] for d in decisions["secondary"]),
        "verdict": data["summary"]["verdict"],
    }
