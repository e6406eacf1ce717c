"""One-sided legs and the verdict they give, shared by the essay claims settled outside the three-leg head rule
(:mod:`probes.claims.querykey`, :mod:`probes.claims.localglobal`)."""

from __future__ import annotations

from dataclasses import dataclass

from probes.core.stats import Estimate


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict word (one of :data:`probes.claims.verdicts.VERDICTS`, or ``not_applicable``) and the
    sentence that says why."""

    verdict: str
    sentence: str


def above(estimate: Estimate, threshold: float) -> bool | None:
    """True when the interval lies above ``threshold``, False when wholly below, None when it straddles it (or is
    NaN: a ratio whose denominator is zero decides nothing)."""
    if estimate.ci_low > threshold:
        return True
    return False if estimate.ci_high < threshold else None
