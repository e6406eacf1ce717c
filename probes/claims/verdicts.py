"""The verdict rule, as code and as the words the report shows: both come from the data below.

A claim ("head L.H attends from src to dst") has three legs, each judged from one registered measure's interval
(95% bootstrap over prompts) and its Benjamini-Hochberg adjusted signed-rank p-value: a leg *holds* when the
interval clears its threshold on the claimed side and the test agrees, *fails* when the interval lies wholly on
the other side, and is otherwise undecided.

- it ATTENDS: the attention margin (target minus foil);
- the EDGE matters: knocking out the head's attention from src to dst in the clean run moves the answer (is this
  edge necessary?);
- the HEAD matters somewhere: patching its whole output (every position) moves the answer.

The claim is about the edge, so the verdict reads the edge leg when the head attends and the head leg when it does
not. Before any leg, a gate: too few prompts, or a model that does not do the task (a clean-corrupt gap whose
interval reaches 0), makes every verdict ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.claims.types import Thresholds
from probes.core.stats import Estimate

VERDICTS: dict[str, str] = {
    "supported": "the head attends as claimed and knocking out that edge moves the answer: the edge does the work "
    "(for a composition: patching along the claimed path moves the answer)",
    "attention_only": "the head attends as claimed but knocking out that edge changes nothing: the story is "
    "decorative (the head may still matter through other positions)",
    "effect_only": "the head matters for the answer, but not by attending where the claim says",
    "refuted": "the head neither attends as claimed nor matters for the answer (for a composition: the path "
    "does not move it)",
    "inconclusive": "the intervals are too wide to decide with this many prompts, or the model does not do the task",
}


@dataclass(frozen=True)
class Leg:
    """One leg of the rule: the measure it reads, the Thresholds field it is judged against, and on which side.

    ``side="above"``: the leg holds when the interval lies above the threshold; ``"outside"``: when it lies
    outside ``[-threshold, +threshold]`` (an effect either way). Holding also needs adjusted p < ``alpha``.
    """

    name: str
    negation: str
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
    "attends", "does not attend", "attention", "attention_margin", "above",
    holds="the attention margin's interval lies above {attention_margin} and its adjusted p < {alpha}",
    fails="the attention margin's interval lies below {attention_margin}",
)
EDGE = Leg(
    "the edge matters", "the edge does not matter", "edge_knockout", "effect", "outside",
    holds="the edge-knockout effect's interval lies outside [-{effect}, +{effect}] and its adjusted p < {alpha}",
    fails="the edge-knockout effect's interval lies inside (-{effect}, +{effect})",
)
HEAD = Leg(
    "the head matters", "the head does not matter", "effect_z", "effect", "outside",
    holds="the effect_z interval lies outside [-{effect}, +{effect}] and its adjusted p < {alpha}",
    fails="the effect_z interval lies inside (-{effect}, +{effect})",
)
PATH = Leg(
    "the path matters", "the path does not matter", "path_effect", "effect", "outside",
    holds="the path-patching effect's interval lies outside [-{effect}, +{effect}] and its p < {alpha}",
    fails="the path-patching effect's interval lies inside (-{effect}, +{effect})",
)
LEGS = (ATTENDS, EDGE, HEAD)
# the first outcome whose legs all hold as listed; none decided (an undecided leg): inconclusive
OUTCOMES: tuple[tuple[tuple[tuple[Leg, bool], ...], str], ...] = (
    (((ATTENDS, True), (EDGE, True)), "supported"),
    (((ATTENDS, True), (EDGE, False)), "attention_only"),
    (((ATTENDS, False), (HEAD, True)), "effect_only"),
    (((ATTENDS, False), (HEAD, False)), "refuted"),
)
GATE = (
    "fewer than {min_prompts} prompts, or a clean-corrupt gap whose interval reaches 0 (the model does not do the "
    "task, so an effect on the answer means nothing): inconclusive"
)


def gate_passes(n: int, gap: Estimate, t: Thresholds) -> bool:
    return n >= t.min_prompts and gap.ci_low > 0


def judge_legs(evidence: dict[str, Estimate], t: Thresholds) -> dict[str, bool | None]:
    """Each leg's state by name: True (holds), False (fails), None (undecided)."""
    return {leg.name: leg.judge(evidence[leg.measure], t) for leg in LEGS}


def decide(n: int, gap: Estimate, evidence: dict[str, Estimate], t: Thresholds) -> str:
    """The verdict, by the rule :func:`rule_lines` states."""
    if not gate_passes(n, gap, t):
        return "inconclusive"
    legs = judge_legs(evidence, t)
    for conditions, verdict in OUTCOMES:
        if all(legs[leg.name] is wanted for leg, wanted in conditions):
            return verdict
    return "inconclusive"


def decide_composition(n: int, gap: Estimate, path: Estimate, t: Thresholds) -> str:
    """A composition claim (sender -> receiver via q/k/v) has one leg, the path: supported, refuted or inconclusive."""
    if not gate_passes(n, gap, t):
        return "inconclusive"
    return {True: "supported", False: "refuted", None: "inconclusive"}[PATH.judge(path, t)]


def rule_lines(t: Thresholds) -> list[str]:
    """The rule in plain words, with this run's thresholds filled in: the gate, each leg, each outcome."""
    values = vars(t)
    lines = [GATE.format(**values)]
    lines += [f"{leg.name}: {leg.holds.format(**values)}; {leg.negation}: {leg.fails.format(**values)}" for leg in LEGS]
    for conditions, verdict in OUTCOMES:
        said = " and ".join(leg.name if wanted else leg.negation for leg, wanted in conditions)
        lines.append(f"{said}: {verdict}")
    lines.append("otherwise (a leg the outcome needs is undecided: an interval straddles its threshold): inconclusive")
    lines.append(
        f"a composition claim (sender -> receiver via q, k or v) has one leg, {PATH.name}: "
        f"{PATH.holds.format(**values)}: supported; {PATH.fails.format(**values)}: refuted; otherwise inconclusive"
    )
    return lines
