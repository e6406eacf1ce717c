"""The measure registry: every evidence quantity a claim can use, in one place.

An entry says what the quantity is (description, unit), which leg of a verdict it can serve (``attention``,
``causal``, ``representational``, or ``context`` for numbers shown beside a verdict but never deciding one), how
it is tested across heads, which :class:`~probes.claims.types.Thresholds` field it is judged against, and how to
gather it: a function of the evidence context (:class:`probes.claims.gathering.EvidenceContext`) returning one
value per prompt and head, ``[prompt, layer, head]``. Claims, ``results.json``, the tables and the report all read
this registry; adding a measure is one :func:`register` call plus its gather function.

A measure with ``of_gap=True`` gathers logits and is estimated as a fraction of the clean-corrupt gap: a ratio
of means whose numerator and denominator are resampled together. Head-level measures that are not a mean over
prompts (a correlation, a share of groups, the task gap, a probe's selectivity) have ``gather=None``:
:mod:`probes.claims.evaluation` computes them.

Light on purpose (numpy only): the report reads the registry without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from jaxtyping import Float

from probes.claims.types import Thresholds
from probes.core.stats import CONFIDENCE, simultaneous_confidence

Leg = Literal["attention", "causal", "representational", "context"]
LEGS: tuple[Leg, ...] = ("attention", "causal", "representational", "context")
Test = Literal["greater", "two-sided"]
Gather = Callable[[Any], Float[np.ndarray, "prompt layer head"]]


@dataclass(frozen=True)
class Measure:
    """One evidence quantity: a column of ``heads.parquet`` (with ``_ci_low``/``_ci_high``), a row of a claim."""

    name: str
    leg: Leg
    description: str
    unit: str
    gather: Gather | None = None  # per prompt and head; None for head-level measures computed by evaluate
    test: Test | None = None  # Wilcoxon signed-rank alternative over group means, Bonferroni over the family
    threshold: str | None = None  # the Thresholds field this measure is judged against
    panel: bool = False  # shown as a per-head heatmap in the report (the first of each leg is its headline)
    of_gap: bool = False  # gathered in logits, estimated as a fraction of the mean clean-corrupt gap
    optional: bool = False  # no verdict or sentence reads it: a quick run may skip it (``pattern_patching = false``)


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    if measure.name in MEASURES:
        raise ValueError(f"measure '{measure.name}' is registered twice")
    if measure.leg not in LEGS:
        raise ValueError(f"measure '{measure.name}' has leg '{measure.leg}'; legs: {', '.join(LEGS)}")
    MEASURES[measure.name] = measure
    return measure


# measures whose intervals are at CONFIDENCE whatever the family: the task gate's (one question per run, not per
# claim) and a probe's selectivity (from probing)
FIXED_LEVEL = ("gap_logits", "clean_accuracy", "probe_selectivity")


def interval_level(name: str, alpha: float, family: int) -> float:
    """The confidence of measure ``name``'s interval for a claim tested among ``family``: simultaneous
    (``1 - alpha/family``) except the fixed-level measures; the report prints it instead of assuming 95%."""
    return CONFIDENCE if name in FIXED_LEVEL else simultaneous_confidence(alpha, family)


def thresholds_by_measure(thresholds: Thresholds) -> dict[str, float]:
    """Each threshold keyed by the measure it applies to; thresholds that apply to no measure by their own name."""
    fields = dict(vars(thresholds))
    out = {m.name: fields[m.threshold] for m in MEASURES.values() if m.threshold in fields}
    used = {m.threshold for m in MEASURES.values()}
    return out | {name: value for name, value in fields.items() if name not in used}


register(Measure(
    "attention", "attention", "attention margin: alpha(src -> dst) - alpha(src -> foil), mean over prompts",
    "attention weight", gather=lambda ctx: ctx.attention_target - ctx.attention_foil, test="greater",
    threshold="attention_margin", panel=True,
))
register(Measure(
    "attention_target", "context", "attention weight alpha(src -> dst)", "attention weight",
    gather=lambda ctx: ctx.attention_target,
))
register(Measure(
    "attention_sink_aware", "context",
    "sink-aware attention: alpha(src -> dst) / (1 - alpha(src -> first token)), the share of the attention not "
    "parked on the first-token sink", "share of non-sink attention",
    gather=lambda ctx: ctx.attention_target / np.clip(1.0 - ctx.attention_sink, 1e-6, None),
))
register(Measure(
    "attention_sink", "context", "attention on the first token (the BOS attention sink)", "attention weight",
    gather=lambda ctx: ctx.attention_sink,
))
register(Measure(
    "attends_fraction", "context",
    "share of groups of prompts whose mean attention margin is above 0 (more on dst than on the foil)",
    "fraction of groups",
))
register(Measure(
    "norm_attention", "attention",
    "norm-weighted attention margin: alpha * ||v W_O|| (Kobayashi et al. 2020)", "norm of the head's write",
    gather=lambda ctx: ctx.norm_target - ctx.norm_foil, panel=True,
))
register(Measure(
    "edge_knockout", "causal",
    "knocking out the head's attention from src to dst in the clean run: fraction of the clean-corrupt gap moved",
    "fraction of the mean gap", gather=lambda ctx: ctx.edge_effect("knockout"), test="two-sided",
    threshold="effect", panel=True, of_gap=True,
))
register(Measure(
    "effect_z", "causal", "patching the head's output: fraction of the clean-corrupt gap moved",
    "fraction of the mean gap", gather=lambda ctx: ctx.effect("z"), test="two-sided",
    threshold="effect", panel=True, of_gap=True,
))
register(Measure(
    "effect_z_logits", "context", "patching the head's output: change of the logit difference", "logits",
    gather=lambda ctx: ctx.effect("z"),
))
register(Measure(
    "effect_pattern", "causal", "patching the head's attention pattern only: fraction of the gap moved",
    "fraction of the mean gap", gather=lambda ctx: ctx.effect("pattern"), test="two-sided",
    panel=True, of_gap=True, optional=True,
))
register(Measure(
    "path_effect", "causal",
    "path patching: the sender's output from the other run reaching only the receiver's q, k or v input, as a "
    "fraction of the clean-corrupt gap", "fraction of the mean gap", test="two-sided", threshold="effect",
    of_gap=True,
))
register(Measure(
    "attention_effect_correlation", "context",
    "Spearman correlation over prompts of attention to dst and effect_z", "rank correlation",
))
register(Measure(
    "probe_selectivity", "representational",
    "linear probe accuracy minus control-task accuracy at the head's output (Hewitt & Liang 2019)",
    "accuracy difference",
))
register(Measure(
    "clean_accuracy", "context",
    "share of groups of clean prompts whose mean logit difference is above 0: the answer beats the foil there "
    "(the task gate needs it high)", "fraction of groups",
))
register(Measure(
    "gap_logits", "context", "clean minus corrupt logit difference: the gap every effect is a fraction of",
    "logits",
))
