"""The query/key claim: "head L.H's query at the pronoun asks for the antecedent's gender, and the key offers it".

Settled from :func:`probes.evidence.querykey.query_key`: ``supported`` needs (i) attention that follows the feature
(the full swap moves the margin more than a same-feature swap does), (iii) the key alone and (iv) the query alone
each carrying at least a share of that shift; the key probe (ii) is reported beside it, never judged (a name fixes
its gender, so a probe on a name's key reads the word).
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.claims.legs import Verdict, above
from probes.core.notebook import estimate_text
from probes.evidence.querykey import QueryKeyResult
from probes.prompts.tasks.counterfactual import check_feature

Head = tuple[int, int]


@dataclass(frozen=True)
class QueryKey:
    """"Head ``head``'s query at ``src`` asks for the ``feature`` its key at ``dst`` offers"."""

    head: Head
    src: str = "pronoun"
    dst: str = "antecedent"
    feature: str = "gender"

    def __post_init__(self) -> None:
        check_feature(self.feature)

    @property
    def head_name(self) -> str:
        return f"head {self.head[0]}.{self.head[1]}"

    def __str__(self) -> str:
        return f"{self.head_name}'s query at the {self.src} asks for the {self.feature} its key at the {self.dst} offers"

    def describe(self) -> dict:
        """The columns that name this claim in a table."""
        return {"layer": self.head[0], "head": self.head[1], "feature": self.feature}


@dataclass(frozen=True)
class QueryKeyThresholds:
    """What counts as following the feature and as carrying it; modest defaults, change them per analysis."""

    shift: float = 0.1  # attention-margin units: the full swap's shift beyond the same-feature swap's
    share: float = 0.5  # the share of that shift the key alone, and the query alone, must carry


def decide_query_key(result: QueryKeyResult, t: QueryKeyThresholds = QueryKeyThresholds()) -> Verdict:
    """(i) decides alone when it fails or straddles; once it holds, (iii) and (iv) must both hold."""
    follows = above(result.feature_shift, t.shift)
    head = f"head {result.layer}.{result.head}"
    moved = f"the feature shift is {estimate_text(result.feature_shift)} (threshold {t.shift})"
    if follows is None:
        return Verdict("inconclusive", f"{head}: {moved}, an interval that straddles the threshold")
    if not follows:
        return Verdict("refuted", f"{head}'s attention from the {result.src} does not follow {result.feature}: {moved}")
    sides = {"key": above(result.key_share, t.share), "query": above(result.query_share, t.share)}
    shares = (f"key share {estimate_text(result.key_share)}, query share {estimate_text(result.query_share)} "
              f"(threshold {t.share})")
    if all(sides.values()):
        return Verdict("supported", f"{head}'s attention follows {result.feature} ({moved}); {shares}")
    failed = [side for side, state in sides.items() if state is False]
    if failed:
        return Verdict("refuted", f"{head}'s attention follows {result.feature} ({moved}), but the "
                       f"{' and the '.join(failed)} alone does not carry it: {shares}")
    return Verdict("inconclusive", f"{head}'s attention follows {result.feature} ({moved}); {shares}: undecided")
