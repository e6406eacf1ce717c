"""The verdict rule, as code and as the words the report and each verdict's sentence show: both come from the data
below.

A claim ("head L.H attends from src to dst") has three legs, each judged from one registered measure's interval
(a bootstrap over groups of prompts, simultaneous over the claims tested together: confidence 1 - alpha/family
each) and its signed-rank p-value over groups (Bonferroni-adjusted for the same family): a leg *holds* when the
interval clears its threshold on the claimed side and the test agrees, *fails* when the interval lies wholly on
the other side, and is otherwise undecided. Holding and failing use the same adjusted interval, so a negative
verdict is as protected as a positive one.

- it ATTENDS: the attention margin (target minus foil);
- the EDGE matters: knocking out the head's attention from src to dst in the clean run moves the answer (is this
  edge necessary?);
- the HEAD matters somewhere: patching its whole output (every position) moves the answer.

The claim is about the edge, so the verdict reads the edge leg when the head attends and the head leg when it does
not. Before any leg, a gate: too few independent groups of prompts, or a model that does not do the task (the
answer must beat the foil in most groups of clean prompts, and the clean-corrupt gap every effect is a fraction of
must be large), makes every verdict ``inconclusive``. A leg whose interval clears its threshold but whose adjusted p
does not leaves the verdict waiting: the sentence then quotes that p (:func:`held_back_by_p`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from probes.claims.types import Claim, Composition, Thresholds, Verdict
from probes.core.stats import Estimate, level_text, simultaneous_confidence

if TYPE_CHECKING:  # the report reads the rule without the model stack
    from probes.evidence.patching import Direction

VERDICTS: dict[Verdict, str] = {
    "supported": "the head attends as claimed and knocking out that edge moves the answer: the edge does the work "
    "(for a composition: patching along the claimed path moves the answer)",
    "attention_only": "the head attends as claimed but knocking out that edge changes nothing: the story is "
    "decorative (the head may still matter through other positions)",
    "effect_only": "the head matters for the answer, but not by attending where the claim says",
    "refuted": "the head neither attends as claimed nor matters for the answer (for a composition: the path "
    "does not move it)",
    "inconclusive": "the intervals are too wide to decide with this many groups of prompts, or the model does not do "
    "the task",
    "not applicable": "the claim's premise does not hold here (an essay claim: e.g. a head whose self-attention does "
    "not vary, so how its update moves with it cannot be asked)",
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
        clears, misses = self._sides(estimate, t)
        if clears and estimate.p_value is not None and estimate.p_value < t.alpha:
            return True
        return False if misses else None

    def held_back_by_p(self, estimate: Estimate, t: Thresholds) -> bool:
        """The interval clears the threshold but the adjusted p is not below alpha: the test alone leaves the leg
        undecided (a sentence must then quote p, or the verdict has no visible reason)."""
        return self._sides(estimate, t)[0] and not (estimate.p_value is not None and estimate.p_value < t.alpha)

    def _sides(self, estimate: Estimate, t: Thresholds) -> tuple[bool, bool]:
        """(the interval clears the threshold on the claimed side, it lies wholly on the other side)."""
        bound = getattr(t, self.threshold)
        if self.side == "above":
            return estimate.ci_low > bound, estimate.ci_high < bound
        return estimate.excludes(-bound, bound), estimate.within(-bound, bound)


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
    holds="the path-patching effect's interval lies outside [-{effect}, +{effect}] and its adjusted p < {alpha}",
    fails="the path-patching effect's interval lies inside (-{effect}, +{effect})",
)
LEGS = (ATTENDS, EDGE, HEAD)
# the first outcome whose legs all hold as listed; none decided (an undecided leg): inconclusive
OUTCOMES: tuple[tuple[tuple[tuple[Leg, bool], ...], Verdict], ...] = (
    (((ATTENDS, True), (EDGE, True)), "supported"),
    (((ATTENDS, True), (EDGE, False)), "attention_only"),
    (((ATTENDS, False), (HEAD, True)), "effect_only"),
    (((ATTENDS, False), (HEAD, False)), "refuted"),
)
GATE = (
    "fewer than {min_prompts} independent groups of prompts, the answer beating the foil in less than "
    "{min_accuracy:.0%} of the groups (a group counts when its mean clean logit difference is above 0; or that "
    "share's interval reaching 50%), or a mean clean-corrupt gap below {min_gap} logits (or its interval reaching 0)"
)


def gate_failure(evidence: dict[str, Estimate], t: Thresholds) -> str | None:
    """Why the task gate stops this claim (None when it passes): reads ``gap_logits`` and ``clean_accuracy``."""
    gap, accuracy = evidence["gap_logits"], evidence.get("clean_accuracy")
    if gap.n is not None and gap.n < t.min_prompts:
        return f"only {gap.n} independent groups of prompts; at least {t.min_prompts} are needed"
    if accuracy is not None and not (accuracy.value >= t.min_accuracy and accuracy.ci_low > 0.5):
        return (f"the model does not do the task: the answer beats the foil in {accuracy.value:.0%} of the groups "
                f"[{accuracy.ci_low:.0%}, {accuracy.ci_high:.0%}]; the gate needs {t.min_accuracy:.0%} and a lower "
                "bound above 50%")
    if not (gap.value >= t.min_gap and gap.ci_low > 0):
        return (f"the clean-corrupt gap is {gap.value:+.2f} logits [{gap.ci_low:+.2f}, {gap.ci_high:+.2f}]; the "
                f"gate needs at least {t.min_gap} with an interval above 0")
    return None


def judge_legs(evidence: dict[str, Estimate], t: Thresholds) -> dict[str, bool | None]:
    """Each leg's state by name: True (holds), False (fails), None (undecided)."""
    return {leg.name: leg.judge(evidence[leg.measure], t) for leg in LEGS}


def decide(evidence: dict[str, Estimate], t: Thresholds) -> Verdict:
    """The verdict, by the rule :func:`rule_lines` states."""
    if gate_failure(evidence, t) is not None:
        return "inconclusive"
    return decide_legs(evidence, t)


def decide_legs(evidence: dict[str, Estimate], t: Thresholds) -> Verdict:
    """The verdict the legs give once the gate has passed (a sweep judges pooled estimates with it)."""
    legs = judge_legs(evidence, t)
    for conditions, verdict in OUTCOMES:
        if all(legs[leg.name] is wanted for leg, wanted in conditions):
            return verdict
    return "inconclusive"


def held_back_by_p(evidence: dict[str, Estimate], t: Thresholds) -> list[Leg]:
    """The legs the verdict waits on that only their adjusted p leaves undecided: the attention leg, and once it
    is decided the leg its outcome reads next (the edge when the head attends, the head when it does not)."""
    attends = ATTENDS.judge(evidence[ATTENDS.measure], t)
    needed = [ATTENDS] if attends is None else [ATTENDS, EDGE if attends else HEAD]
    return [leg for leg in needed if leg.held_back_by_p(evidence[leg.measure], t)]


def decide_composition(evidence: dict[str, Estimate], t: Thresholds) -> Verdict:
    """A composition claim (sender -> receiver via q/k/v) has one leg, the path: supported, refuted or inconclusive."""
    if gate_failure(evidence, t) is not None:
        return "inconclusive"
    return decide_path(evidence, t)


def decide_path(evidence: dict[str, Estimate], t: Thresholds) -> Verdict:
    """The verdict the path leg gives once the gate has passed (a sweep judges a pooled estimate with it)."""
    return {True: "supported", False: "refuted", None: "inconclusive"}[PATH.judge(evidence[PATH.measure], t)]


def rule_lines(t: Thresholds) -> list[str]:
    """The rule as sentences, with this run's thresholds filled in: the gate, each leg, each outcome."""
    values = vars(t)
    lines = [
        f"First the task gate: with {GATE.format(**values)}, every verdict is inconclusive, because an effect on an "
        "answer the model does not give, or a fraction of a gap that is not there, means nothing."
    ]
    lines += [
        f"The leg “{leg.name}” holds when {leg.holds.format(**values)}; it fails (“{leg.negation}”) when "
        f"{leg.fails.format(**values)}."
        for leg in LEGS
    ]
    for conditions, verdict in OUTCOMES:
        said = " and ".join(f"“{leg.name if wanted else leg.negation}”" for leg, wanted in conditions)
        lines.append(f"{verdict.replace('_', ' ').capitalize()}: {said}.")
    lines.append(
        "Inconclusive otherwise: a leg the outcome needs is undecided (its interval straddles the threshold)."
    )
    lines.append(
        "Every interval is simultaneous over the claims tested together (confidence 1 - {alpha}/family each, "
        "Bonferroni) and resamples groups of prompts; a head chosen from data is judged only on held-out "
        "groups it was not chosen on.".format(**values)
    )
    lines.append(
        f"A composition claim (sender → receiver via q, k or v) has one leg, “{PATH.name}”: supported when "
        f"{PATH.holds.format(**values)}; refuted when {PATH.fails.format(**values)}; otherwise inconclusive."
    )
    return lines


def head_sentence(
    claim: Claim, verdict: Verdict, ev: dict[str, Estimate], t: Thresholds, direction: Direction, scope: str
) -> str:
    """A head claim's verdict in words, quoting the statistics it rests on and saying which intervention asked
    what; ``scope`` (:func:`scope_text`) says where the numbers come from."""
    foil = "uniform attention (the non-sink attention spread over the earlier tokens)" if claim.foil is None else f"the {claim.foil}"
    margin, attends = ev["attention"], ev["attends_fraction"]
    edge, effect, logits = ev["edge_knockout"], ev["effect_z"], ev["effect_z_logits"]
    whole = (
        "patching its clean output into the corrupt run at every position (is the head sufficient to restore the "
        "answer?)" if direction == "denoising" else
        "patching its corrupt output into the clean run at every position (is the head necessary?)"
    )
    if margin.ci_high < 0:
        opening = f"{claim.head_name} attends to {foil} more than to the {claim.dst} (from the {claim.src})"
    else:
        opening = str(claim)
    # the share of groups is quoted only where it agrees with the margin's sign: a mean margin below 0 with most
    # groups above it (a few groups far below) would read as a contradiction
    agrees = (attends.value > 0.5) == (margin.value > 0)
    share = f" (more on the {claim.dst} in {attends.value:.0%} of groups)" if agrees else ""
    text = (
        f"{opening}: attention margin over {foil} {margin.value:+.2f} [{margin.ci_low:+.2f}, {margin.ci_high:+.2f}]"
        f"{share}; knocking out that edge in the clean run (is it necessary?) moves the answer by {edge.value:+.0%} "
        f"of the clean-corrupt gap [{edge.ci_low:+.0%}, {edge.ci_high:+.0%}]; {whole} moves it by "
        f"{effect.value:+.0%} [{effect.ci_low:+.0%}, {effect.ci_high:+.0%}] ({logits.value:+.2f} logits)"
    )
    if verdict == "attention_only" and judge_legs(ev, t)[HEAD.name]:
        text += "; the head matters, but its effect runs through other positions than this edge"
    text += why_not_decided(ev, t, held_back_by_p(ev, t))
    return f"{text} [{scope}]: {verdict}"


def why_not_decided(ev: dict[str, Estimate], t: Thresholds, held_back: list[Leg]) -> str:
    """The gate's reason when it stops the claim; otherwise each leg the verdict waits on whose interval clears
    its threshold but whose adjusted p does not (without it "+49% [+48%, +51%] ...: inconclusive" has no reason)."""
    reason = gate_failure(ev, t)
    if reason is not None:
        return f" ({reason})"
    return "".join(
        f"; {leg.measure}'s interval clears its threshold but its adjusted p = {ev[leg.measure].p_value:.2g} is not "
        f"below {t.alpha}, so “{leg.name}” is undecided"
        for leg in held_back
    )


def scope_text(t: Thresholds, family: int, tested_on: str) -> str:
    """Where a verdict's numbers come from (``tested_on``: :func:`probes.claims.types.tested_on`) and how wide
    its intervals are."""
    level = simultaneous_confidence(t.alpha, family)
    return f"{tested_on}; intervals {level_text(level)} each, over groups of prompts"


def composition_sentence(
    claim: Composition, verdict: Verdict, ev: dict[str, Estimate], t: Thresholds, direction: Direction, scope: str
) -> str:
    """A composition claim's verdict in words: the path-patching effect, and why it is undecided where it is."""
    path = ev[PATH.measure]
    patching = "from the clean run into the corrupt one" if direction == "denoising" else "from the corrupt run into the clean one"
    sentence = (
        f"{claim}: its output patched {patching} along that path only moves the answer by {path.value:+.0%} of the "
        f"clean-corrupt gap [{path.ci_low:+.0%}, {path.ci_high:+.0%}] in {path.n} groups of prompts"
    )
    held_back = [PATH] if PATH.held_back_by_p(path, t) else []
    sentence += why_not_decided(ev, t, held_back)
    return f"{sentence} [{scope}]: {verdict}"


# The essay's claim kinds (probes.claims.essay): each has one rule, on one measure's interval.


def decide_self_update(rho: Estimate, varies: bool, t: Thresholds) -> Verdict:
    """"Attending to itself, a token changes little": the partial rank correlation of self-attention with the
    update (given position) must lie below ``-t.correlation``; it fails when its interval lies wholly above."""
    if not varies:
        return "not applicable"
    if rho.n is not None and rho.n < t.min_prompts:
        return "inconclusive"
    if rho.ci_high < -t.correlation:
        return "supported"
    return "refuted" if rho.ci_low > -t.correlation else "inconclusive"


def overall_self_update(verdicts: list[Verdict]) -> Verdict:
    """The sentence over every layer is universal: refuted by one layer that refutes it, supported when every
    layer it applies to supports it, not applicable when it applies to none."""
    applicable = [v for v in verdicts if v != "not applicable"]
    if not applicable:
        return "not applicable"
    if "refuted" in applicable:
        return "refuted"
    return "supported" if all(v == "supported" for v in applicable) else "inconclusive"


def depth_state(selectivity: Estimate, t: Thresholds) -> str:
    """One layer of the probe curve: ``reads`` (interval above 0: above chance), ``at chance`` (interval below
    ``t.selectivity``) or ``undecided``."""
    if selectivity.ci_low > 0:
        return "reads"
    return "at chance" if selectivity.ci_high < t.selectivity else "undecided"


def decide_depth(states: list[str], depth: int | None, n_groups: int, t: Thresholds) -> Verdict:
    """"Resolved from layer ``depth`` on and not before": supported when every layer from ``depth`` on reads and
    every layer before it is at chance; refuted when one layer says otherwise on the other side (reads before, or
    is at chance from ``depth`` on). ``depth`` None (none found on the discovery groups): refuted when no layer
    reads (the reference is never resolved), else inconclusive."""
    if n_groups < t.min_prompts:
        return "inconclusive"
    if depth is None:
        return "refuted" if all(s == "at chance" for s in states) else "inconclusive"
    before, after = states[:depth], states[depth:]
    if "reads" in before or "at chance" in after:
        return "refuted"
    return "supported" if all(s == "reads" for s in after) and all(s == "at chance" for s in before) else "inconclusive"


def essay_rule_lines(t: Thresholds) -> list[str]:
    """The essay claims' rules as sentences, with this run's thresholds filled in."""
    return [
        f"Self-update (a token that attends to itself changes little): per head, the partial rank correlation "
        f"(Spearman, given position, positions from 2 on) of its self-attention with the size of its write; per layer, "
        f"of the heads' mean self-attention with the block's relative update. Supported when the interval lies below "
        f"-{t.correlation}, refuted when it lies above, not applicable when the self-attention does not vary, "
        f"inconclusive otherwise or with fewer than {t.min_prompts} groups; over every layer, one refuting layer "
        "refutes it and every applicable layer must support it.",
        f"Resolution depth (the src knows its target from layer L on): a layer reads when the probe's selectivity "
        f"interval lies above 0 and is at chance when it lies below {t.selectivity}. Supported when every layer from L "
        "on reads and every layer before L is at chance; refuted when a layer before L reads or one from L on is at "
        "chance; L chosen from data is the first layer of the final run of reading layers on discovery groups, "
        "judged on held-out ones (none found: refuted when no held-out layer reads).",
    ]
