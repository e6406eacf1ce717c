"""The measure registry: every evidence quantity a claim can use, in one place.

An entry says what the quantity is (description, unit), which leg of a verdict it can serve (``attention``,
``causal``, ``representational``, or ``context`` for numbers shown beside a verdict but never deciding one), how
it is tested across heads, which :class:`~probes.claims.types.Thresholds` field it is judged against, and how to
gather it: a function of the evidence context (:class:`probes.claims.gathering.EvidenceContext`) returning one
value per prompt and head, ``[prompt, layer, head]``. Claims, ``results.json``, the tables and the report all read
this registry; adding a measure is one :func:`register` call plus its gather function.

Not every quantity is one value per prompt and head. A measure's ``shape`` says what it is:

- ``"prompt layer head"`` (the default): one value per prompt and head, estimated as a mean over groups (or a
  fraction of the gap); gathered by :class:`probes.claims.evaluation.EvidenceContext` for every head claim;
- ``"prompt layer"``: a curve over layers, one value per prompt and layer (a probe's per-row correctness at the
  pronoun's residual stream, a patching effect at the pronoun's ``resid_pre``), estimated per layer over groups
  with intervals simultaneous over the layers;
- ``"layer head"``: one statistic per head over many rows (a partial rank correlation over every prompt and
  position), its interval from resampled groups: it has no per-prompt value to average.

Only ``"prompt layer head"`` measures are gathered for head claims; the other shapes belong to the essay's claim
kinds (:mod:`probes.claims.essay`), whose settling functions compute them and keep them in
:attr:`probes.claims.types.ClaimResult.profile` (one row per measure, layer and head).

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
Shape = Literal["prompt layer head", "prompt layer", "layer head"]
SHAPES: tuple[Shape, ...] = ("prompt layer head", "prompt layer", "layer head")
PER_HEAD: Shape = "prompt layer head"
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
    shape: Shape = PER_HEAD  # what one value is per: see the module docstring


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    if measure.name in MEASURES:
        raise ValueError(f"measure '{measure.name}' is registered twice")
    if measure.leg not in LEGS:
        raise ValueError(f"measure '{measure.name}' has leg '{measure.leg}'; legs: {', '.join(LEGS)}")
    if measure.shape not in SHAPES or (measure.gather is not None and measure.shape != PER_HEAD):
        raise ValueError(f"measure '{measure.name}' has shape '{measure.shape}' (shapes: {', '.join(SHAPES)}); only "
                         f"'{PER_HEAD}' measures are gathered by the head claims' context")
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


# The essay's claim kinds (probes.claims.essay). SelfUpdate: per head over every (prompt, position) row past the
# first positions; the head-level row of a layer (head -1) reads the heads' mean self-attention and the block.
register(Measure(
    "self_update_correlation", "attention",
    "partial rank correlation (Spearman, given position) over prompts and positions of the attention a token pays "
    "itself with the size of the update there (the head's write; for a layer, the block's relative update)",
    "rank correlation", threshold="correlation", shape="layer head",
))
register(Measure(
    "self_attention", "context", "attention a token pays itself, mean over prompts and positions",
    "attention weight", shape="layer head",
))
register(Measure(
    "sink_attention", "context", "attention a token parks on the first token (the sink), mean over prompts and positions",
    "attention weight", shape="layer head",
))
register(Measure(
    "update_size", "context",
    "the head's write ||z W_O|| as it enters the residual stream (post-norm models: the change of the normalised "
    "sum); for a layer, the block's ||resid_post - resid_pre|| / ||resid_pre||", "norm", shape="layer head",
))
register(Measure(
    "forced_self_update", "causal",
    "the head's write with its attention forced onto the token itself (its pattern row one-hot there)", "norm",
    shape="layer head",
))
register(Measure(
    "forced_sink_update", "causal",
    "the head's write with its attention forced onto the first token (the sink)", "norm", shape="layer head",
))
# ResolutionDepth: curves over layers at the src token (and the end)
register(Measure(
    "depth_selectivity", "representational",
    "linear probe accuracy minus control-task accuracy for 'the target is the first-named candidate' at the src "
    "token's resid_post, per layer", "accuracy difference", threshold="selectivity", shape="prompt layer",
))
register(Measure(
    "depth_accuracy", "context", "that probe's accuracy, per layer (chance: the majority class's share)",
    "accuracy", shape="prompt layer",
))
register(Measure(
    "depth_patch_src", "causal",
    "patching resid_pre at the src token from the clean run, per layer: fraction of the clean-corrupt gap moved",
    "fraction of the mean gap", of_gap=True, shape="prompt layer",
))
register(Measure(
    "depth_patch_end", "causal",
    "patching resid_pre at the end token from the clean run, per layer: fraction of the clean-corrupt gap moved",
    "fraction of the mean gap", of_gap=True, shape="prompt layer",
))
