"""Memorization across training: one decision per checkpoint, family-wise error at most ``alpha``.

Why a fixed sequence, tested from the last checkpoint backwards: auditing K checkpoints of one
training run makes K decisions. Testing each at ``alpha`` would let a generator that never memorizes
get *some* detection up to 1 − (1 − alpha)^K of the time (23% for five checkpoints at 5%);
Bonferroni (alpha/K each) keeps the error but loses power as checkpoints are added. Memorization
grows with training, so the hypotheses have a natural order: the last checkpoint is the most likely
to memorize. The fixed-sequence procedure (Maurer, Hothorn & Lehmacher 1995; a closed testing
procedure) tests them in that order, each at the full ``alpha``:

* test the last checkpoint's primary p-value at ``alpha``; if it rejects, test the one before at
  ``alpha``, and so on; stop at the first checkpoint that does not reject.

Each hypothesis is tested only when every later one was rejected, so the first true null met is
tested at ``alpha`` and nothing before it is ever tested: the chance of rejecting any true null is
at most ``alpha``, whatever the set of true nulls and whatever the dependence between checkpoints.
Its adjusted p-value is the running maximum of the p-values from the last checkpoint back to it.

The caveat: a checkpoint that comes before a non-rejected one is never declared, even when its own
p-value would reject alone (a run that memorizes and then forgets is reported from where it stops
being rejected onwards only). ``first_detected`` is the earliest checkpoint of the rejected run
that ends at the last checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MULTIPLICITY = (
    "fixed-sequence (hierarchical) testing over the checkpoints: the last checkpoint's primary test (same person "
    "against strangers) at alpha, then each earlier one at alpha only while every later one was rejected, stopping "
    "at the first non-rejection; this is a closed testing procedure, so the family-wise error over all checkpoints "
    "is at most alpha whatever the dependence; caveat: a checkpoint before a non-rejected one is never declared, "
    "even where it would reject alone"
)


def fixed_sequence(p_values: Sequence[float | None], alpha: float) -> dict:
    """The fixed-sequence procedure over ``p_values`` in training order (the first checkpoint first),
    tested from the last backwards (see the module docstring).

    Returns ``detected`` (one bool per checkpoint), ``tested`` (whether each was reached),
    ``p_adjusted`` (the running maximum from the last checkpoint back; None where not reached) and
    ``first_detected`` (the index of the earliest checkpoint in the rejected run, or None). A None or
    NaN p-value (the checkpoint could not be tested) does not reject, so the sequence stops there."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = len(p_values)
    detected, tested = [False] * n, [False] * n
    adjusted: list[float | None] = [None] * n
    running = 0.0
    for i in range(n - 1, -1, -1):
        tested[i] = True
        p = p_values[i]
        if p is None or not math.isfinite(float(p)):
            break
        running = max(running, min(1.0, float(p)))
        adjusted[i] = running
        if running > alpha:
            break
        detected[i] = True
    first = next((i for i in range(n) if detected[i]), None)
    return {"detected": detected, "tested": tested, "p_adjusted": adjusted, "first_detected": first, "alpha": alpha}
