"""The verdict rule, as code and as the words the report shows: both come from the data below.

A claim's verdict joins two legs. Each leg is judged from one measure's interval (95% bootstrap over prompts) and
its Benjamini-Hochberg adjusted signed-rank p-value: it *holds* when the interval clears the threshold on the
claimed side and the test agrees, it *fails* when the interval lies wholly on the other side, and otherwise it is
undecided. Before either leg, a gate: too few prompts, or a model that does not do the task (a clean-corrupt gap
whose interval reaches 0), makes every verdict ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.claims.types import Thresholds
from probes.core.stats import Estimate

VERDICTS: dict[str, str] = {
    "supported": "the head attends as claimed and patching it moves the answer: attention and effect agree",
    "attention_only": "the head attends as claimed but patching it changes nothing: the story is decorative",
    "effect_only": "the head matters for the answer, but not by attending where the claim says",
    "refuted": "the head neither attends as claimed nor matters for the answer",
    "inconclusive": "the intervals are too wide to decide with this many prompts",
}


@dataclass(frozen=True)
class Leg:
    """One leg of the rule: the measure it reads, the Thresholds field it is judged against, and on which side.

    ``side="above"``: the leg holds when the interval lies above the threshold; ``"outside"``: when it lies
    outside ``[-threshold, +threshold]`` (an effect either way). Holding also needs adjusted p < ``alpha``.
    """

    name: str
    measure: str
    threshold: str
    side: str
    holds: str
    fails: str

    def judge(self, estimate: Estimate, t: Thresholds) -> bool | None:
        """True (holds), False (fails) or None (undecided)."""
        bound = getattr(t, self.threshold)
        if self.side == "above":
            clears, misses = estimate.ci_low > bound, estimate.ci_high < bound
        else:
            clears, misses = estimate.excludes(-bound, bound), estimate.within(-bound, bound)
        if clears and estimate.p_value < t.alpha:
            return True
        return False if misses else None


ATTENDS = Leg(
    "attends", "attention", "attention_margin", "above",
    holds="the attention margin's interval lies above {attention_margin} and its adjusted p < {alpha}",
    fails="the attention margin's interval lies below {attention_margin}",
)
MATTERS = Leg(
    "matters", "effect_z", "effect", "outside",
    holds="the effect_z interval lies outside [-{effect}, +{effect}] and its adjusted p < {alpha}",
    fails="the effect_z interval lies inside (-{effect}, +{effect})",
)
# (attends, matters) -> verdict; any undecided leg gives "inconclusive"
OUTCOMES: dict[tuple[bool, bool], str] = {
    (True, True): "supported",
    (True, False): "attention_only",
    (False, True): "effect_only",
    (False, False): "refuted",
}
GATE = (
    "fewer than {min_prompts} prompts, or a clean-corrupt gap whose interval reaches 0 (the model does not do the "
    "task, so an effect on the answer means nothing): inconclusive"
)


def gate_passes(n: int, gap: Estimate, t: Thresholds) -> bool:
    return n >= t.min_prompts and gap.ci_low > 0


def decide(n: int, gap: Estimate, attention: Estimate, effect: Estimate, t: Thresholds) -> str:
    """The verdict, by the rule :func:`rule_lines` states."""
    if not gate_passes(n, gap, t):
        return "inconclusive"
    legs = (ATTENDS.judge(attention, t), MATTERS.judge(effect, t))
    return "inconclusive" if None in legs else OUTCOMES[legs]


def rule_lines(t: Thresholds) -> list[str]:
    """The rule in plain words, with this run's thresholds filled in: the gate, each leg, each outcome."""
    values = vars(t)
    lines = [GATE.format(**values)]
    for leg in (ATTENDS, MATTERS):
        lines.append(f"{leg.name}: {leg.holds.format(**values)}; does not {leg.name.rstrip('s')}: {leg.fails.format(**values)}")
    for (attends, matters), verdict in OUTCOMES.items():
        first = "attends" if attends else "does not attend"
        second = "matters" if matters else "does not matter"
        lines.append(f"{first} and {second}: {verdict}")
    lines.append("any leg undecided (an interval straddling its threshold): inconclusive")
    return lines
