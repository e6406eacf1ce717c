"""Settle a claim: gather every registered measure per prompt and head, estimate over groups, decide, say it.

:func:`evaluate` gathers, per prompt, the measures of :mod:`probes.claims.measures` (attention margin, norm-weighted
attention, edge knockout, patching effects, ...) through one :class:`EvidenceContext` (:func:`gather`), then
:func:`judge` estimates each on a set of prompts with intervals that resample whole groups, simultaneous over the
claims tested together, and applies the rule of :mod:`probes.claims.verdicts`.

A head chosen from data is never judged on the prompts it was chosen on: :func:`split_groups` holds out groups,
:func:`rank_heads` ranks on the discovery side and :func:`judge` confirms on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from probes.claims.measures import MEASURES
from probes.claims.essay import EssayClaim
from probes.claims.types import Claim, ClaimResult, Composition, Head, Thresholds
from probes.claims.verdicts import (
    HEAD, PATH, VERDICTS, Leg, decide, decide_composition, gate_failure, held_back_by_p, judge_legs,
)
from probes.core.errors import ProbesError
from probes.core.stats import (
    CONFIDENCE, Estimate, bootstrap_mean, bootstrap_spearman, cluster_bootstrap_means, estimate_mean, family_p,
    group_means, level_text, n_units, percentile_interval, ratio_draws, ratio_estimate, resamples_for,
    share_of_groups_above_zero, signed_rank_p, simultaneous_confidence,
)
from probes.evidence.attention import norm_weighted_attention, role_attention
from probes.evidence.patching import (
    Direction, PatchingResult, edge_effects, patch_activations, patch_paths, shared_runs,
)
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import PREVIOUS

Rows = Int[np.ndarray, " row"]


@dataclass
class EvidenceContext:
    """What the measures' gather functions read: each underlying measurement runs once, on first use.

    Arrays are ``[prompt, layer, head]`` (NaN for heads not patched when ``heads`` restricts the sweep).
    """

    model: HookedModel
    prompts: PromptSet
    src: str
    dst: str
    foil: str | None
    heads: list[Head] | None  # None: every head
    direction: Direction = "denoising"

    @cached_property
    def attention_target(self) -> Float[np.ndarray, "prompt layer head"]:
        return role_attention(self.model, self.prompts, self.src, self.dst).numpy()

    @cached_property
    def attention_sink(self) -> Float[np.ndarray, "prompt layer head"]:
        """Attention from src to the first token, where heads park attention they do not use."""
        first = torch.zeros(len(self.prompts), dtype=torch.long)
        return role_attention(self.model, self.prompts, self.src, first).numpy()

    @cached_property
    def attention_foil(self) -> Float[np.ndarray, "prompt layer head"]:
        if self.foil is None:
            # uniform: the non-sink attention spread evenly over the src positions after the first token
            src = self.prompts.role(self.src).double().numpy()[:, None, None]
            return np.where(src > 0, (1.0 - self.attention_sink) / np.maximum(src, 1.0), 1.0)
        return role_attention(self.model, self.prompts, self.src, self.foil).numpy()

    @cached_property
    def norm_target(self) -> Float[np.ndarray, "prompt layer head"]:
        return norm_weighted_attention(self.model, self.prompts, self.src, self.dst).numpy()

    @cached_property
    def norm_foil(self) -> Float[np.ndarray, "prompt layer head"]:
        if self.foil is None:  # no foil: the norm-weighted attention to the target itself
            return np.zeros_like(self.norm_target)
        return norm_weighted_attention(self.model, self.prompts, self.src, self.foil).numpy()

    def patching(self, component: str) -> PatchingResult:
        """The sweep patching ``component`` of the heads (each sweep runs once)."""
        return self._once(component, lambda: patch_activations(
            self.model, self.prompts, component, self.direction, cells=self.heads, progress=self.heads is None
        ))

    def effect(self, component: str) -> Float[np.ndarray, "prompt layer head"]:
        """Patched minus the run patched into, in logits."""
        return self.patching(component).effect.double().numpy()

    def edge_effect(self, intervention: str) -> Float[np.ndarray, "prompt layer head"]:
        """An intervention on the claimed edge src -> dst (:func:`probes.evidence.patching.edge_effects`), in logits."""
        result = self._once(f"edge:{intervention}", lambda: edge_effects(
            self.model, self.prompts, self.src, self.dst, heads=self.heads, intervention=intervention,
            direction=self.direction, progress=self.heads is None,
        ))
        return result.effect.double().numpy()

    def _once(self, key: str, measure: Callable[[], PatchingResult]) -> PatchingResult:
        if key not in self._results:
            self._results[key] = measure()
        return self._results[key]

    def __post_init__(self) -> None:
        self._results: dict[str, PatchingResult] = {}


@dataclass
class Gathered:
    """Every registered measure per prompt for some heads, with what every estimate needs beside it: the
    clean-corrupt gap and the clean metric per prompt, and each prompt's group."""

    heads: list[Head]
    values: dict[str, Float[np.ndarray, "prompt head"]]
    gap: Float[np.ndarray, " prompt"]
    clean: Float[np.ndarray, " prompt"]
    groups: Int[np.ndarray, " prompt"]

    def column(self, head: Head) -> int:
        return self.heads.index(head)


def gather(ctx: EvidenceContext, heads: list[Head], skip: Collection[str] = ()) -> Gathered:
    """Run every measurement the registry needs (each once) and keep the columns of ``heads``.

    ``skip`` names measures not to gather: those the verdict does not read (e.g. ``effect_pattern``, a sweep as
    costly as the output sweep) may be left out of a run that must be quick.
    """
    optional = [name for name, m in MEASURES.items() if m.optional]
    if set(skip) - set(optional):
        raise ProbesError(f"cannot skip {', '.join(sorted(set(skip) - set(optional)))}: only measures no verdict "
                          f"reads may be skipped ({', '.join(optional)})")
    layers, cols = (list(x) for x in zip(*heads))
    values = {
        name: m.gather(ctx)[:, layers, cols] for name, m in MEASURES.items() if m.gather is not None and name not in skip
    }
    z = ctx.patching("z")
    return Gathered(heads, values, (z.clean - z.corrupt).double().numpy(), z.clean.double().numpy(),
                    ctx.prompts.group_index)


def split_groups(
    groups: Int[np.ndarray, " prompt"], confirm_fraction: float, seed: int, min_units: int
) -> tuple[Rows, Rows]:
    """Prompt indices of a discovery and a confirmation split that share no group (seeded).

    Refuses a split that leaves either side fewer than ``min_units`` groups: a head chosen on too little, or
    confirmed on too little, says nothing.
    """
    if not 0 < confirm_fraction < 1:
        raise ProbesError(f"confirm_fraction must lie strictly between 0 and 1, got {confirm_fraction!r}")
    units = np.unique(groups)
    held_out = np.random.default_rng(seed).permutation(units)[: int(round(len(units) * confirm_fraction))]
    confirmation = np.isin(groups, held_out)
    n_confirm, n_discover = len(held_out), len(units) - len(held_out)
    if min(n_confirm, n_discover) < min_units:
        raise ProbesError(
            f"choosing heads from data needs at least {min_units} groups of prompts on each side of the "
            f"discovery/confirmation split; {len(units)} groups at confirm_fraction={confirm_fraction} give "
            f"{n_discover} and {n_confirm}: raise n (or name the heads instead of selecting them)"
        )
    return np.flatnonzero(~confirmation), np.flatnonzero(confirmation)


def _measure_draws(g: Gathered, name: str, rows: Rows, cols: list[int], n_resamples: int, seed: int) -> tuple:
    """A measure's point estimate per column and its bootstrap draws over groups (ratios drawn with the gap)."""
    x = g.values[name][np.ix_(rows, cols)]
    if not MEASURES[name].of_gap:
        return x.mean(axis=0), cluster_bootstrap_means(x, g.groups[rows], n_resamples, seed)
    return ratio_draws(x, g.gap[rows], g.groups[rows], n_resamples, seed)


def estimates(
    g: Gathered, heads: list[Head], rows: Rows, family: int, alpha: float, seed: int
) -> list[dict[str, Estimate]]:
    """Each head's measures on ``rows``: means (effects as fractions of the gap, a ratio of means) with intervals
    over groups, simultaneous over ``family`` claims, and signed-rank p-values over groups, adjusted for it."""
    cols = [g.column(h) for h in heads]
    groups = g.groups[rows]
    confidence = simultaneous_confidence(alpha, family)
    n_resamples = resamples_for(confidence)
    units = n_units(groups, len(rows))
    out: list[dict[str, Estimate]] = [{} for _ in heads]
    for name, m in MEASURES.items():
        if name not in g.values:
            continue
        value, draws = _measure_draws(g, name, rows, cols, n_resamples, seed)
        low, high = percentile_interval(draws, confidence)
        p = None
        if m.test is not None:
            p = family_p(signed_rank_p(g.values[name][np.ix_(rows, cols)], alternative=m.test, groups=groups), family)
        for j, est in enumerate(out):
            est[name] = Estimate(float(value[j]), float(low[j]), float(high[j]), n=units,
                                 p_value=None if p is None else float(p[j]))
    context = _task_estimates(g.gap[rows], g.clean[rows], groups, seed)
    correlations = bootstrap_spearman(g.values["attention_target"][np.ix_(rows, cols)],
                                      g.values["effect_z"][np.ix_(rows, cols)], seed=seed, groups=groups,
                                      confidence=confidence)
    attends = share_of_groups_above_zero(g.values["attention"][np.ix_(rows, cols)], groups, confidence, seed)
    for est, correlation, share in zip(out, correlations, attends):
        est |= context | {"attention_effect_correlation": correlation, "attends_fraction": share}
    return out


def _task_estimates(
    gap: Float[np.ndarray, " prompt"], clean: Float[np.ndarray, " prompt"], groups: Int[np.ndarray, " prompt"],
    seed: int,
) -> dict[str, Estimate]:
    """What the task gate reads, with 95% intervals over groups: the clean-corrupt gap, and the share of groups
    where the answer beats the foil (a group counts when its mean clean logit difference is above 0: the gate
    asks whether the model does the task in most groups, "answer beats foil in 75% of groups")."""
    (accuracy,) = share_of_groups_above_zero(clean[:, None], groups, CONFIDENCE, seed)
    return {"gap_logits": estimate_mean(gap, seed=seed, groups=groups), "clean_accuracy": accuracy}


def rank_heads(g: Gathered, rows: Rows, by: str) -> list[Head]:
    """Heads from best to worst on ``rows``: ``top_attention`` by mean attention margin, ``top_effect`` by the
    size of the whole-output effect either way (denoising raises the metric, noising lowers it)."""
    if by == "top_attention":
        score = g.values["attention"][rows].mean(axis=0)
    elif by == "top_effect":
        score = np.abs(np.nan_to_num(g.values["effect_z"][rows].mean(axis=0)))
    else:
        raise ProbesError(f"unknown head ranking '{by}'; use 'top_attention' or 'top_effect'")
    return [g.heads[j] for j in np.argsort(-score, kind="stable")]


def judge(
    claim: Claim,
    g: Gathered,
    heads: list[Head],
    rows: Rows | None = None,
    *,
    thresholds: Thresholds = Thresholds(),
    family: int = 1,
    direction: Direction = "denoising",
    seed: int = 0,
    probe_table: pd.DataFrame | None = None,
    discovery: Rows | None = None,
) -> list[ClaimResult]:
    """The verdict on ``claim`` for each of ``heads``, from the prompts ``rows`` (all by default) alone.

    ``discovery``: the prompts the heads were chosen on (they are then reported as selected, and ``rows`` must
    not share a group with them).
    """
    if not heads:
        return []
    rows = np.arange(len(g.gap)) if rows is None else np.asarray(rows)
    if discovery is not None and np.isin(g.groups[rows], g.groups[discovery]).any():
        raise ProbesError("confirmation prompts share a group with the discovery prompts the heads were chosen on")
    results = []
    for head, est in zip(heads, estimates(g, heads, rows, family, thresholds.alpha, seed)):
        selectivity = _probe_selectivity(probe_table, head)
        if selectivity is not None:
            est["probe_selectivity"] = selectivity
        head_claim = Claim(head, claim.src, claim.dst, claim.foil)
        verdict = decide(est, thresholds)
        result = ClaimResult(
            claim=head_claim, verdict=verdict, sentence="", evidence=est, thresholds=thresholds,
            per_prompt=_per_prompt(g, head, rows), selected=discovery is not None,
            discovery=None if discovery is None else discovery.tolist(),
            confirmation=None if discovery is None else rows.tolist(), family=family,
        )
        result.sentence = _sentence(result, direction)
        results.append(result)
    return results


def _per_prompt(g: Gathered, head: Head, rows: Rows) -> dict[str, Float[np.ndarray, " prompt"]]:
    """The values behind each estimate, one per prompt of ``rows``, as gathered (effects in logits), and each
    prompt's clean-corrupt gap (``gap_logits``): an effect's share of the gap is the ratio of their means."""
    j = g.column(head)
    return {name: values[rows, j] for name, values in g.values.items()} | {"gap_logits": g.gap[rows]}


def _sentence(result: ClaimResult, direction: Direction) -> str:
    """The verdict in words, quoting the statistics it rests on and saying which intervention asked what."""
    claim, ev, t = result.claim, result.evidence, result.thresholds
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
    if result.verdict == "attention_only" and judge_legs(ev, t)[HEAD.name]:
        text += "; the head matters, but its effect runs through other positions than this edge"
    text += _why_not_decided(ev, t, held_back_by_p(ev, t))
    return f"{text} [{_scope(result)}]: {result.verdict}"


def _why_not_decided(ev: dict[str, Estimate], t: Thresholds, held_back: list[Leg]) -> str:
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


def _scope(result: ClaimResult) -> str:
    level = simultaneous_confidence(result.thresholds.alpha, result.family)
    return f"{result.provenance_note}; intervals {level_text(level)} each, over groups of prompts"


def _probe_selectivity(probe_table: pd.DataFrame | None, head: Head) -> Estimate | None:
    """The best selectivity any valid probe target reached at this head's output (a target the probed token's
    type determines, or with too few types, is never evidence for a head: ``attachable`` is False)."""
    if probe_table is None:
        return None
    attachable = probe_table["attachable"] if "attachable" in probe_table else True
    rows = probe_table[(probe_table["layer"] == head[0]) & (probe_table["head"] == head[1]) & attachable]
    if rows.empty:
        return None
    best = rows.sort_values("selectivity", ascending=False).iloc[0]
    return Estimate(float(best["selectivity"]), float(best["selectivity_ci_low"]), float(best["selectivity_ci_high"]),
                    n=int(best["n"]) if "n" in best else None)


def evaluate_composition(
    model: HookedModel,
    prompts: PromptSet,
    claim: Composition,
    thresholds: Thresholds = Thresholds(),
    *,
    direction: Direction = "denoising",
    seed: int = 0,
    family: int = 1,
) -> ClaimResult:
    """Settle "head R reads head S's output through its q/k/v" by path patching."""
    if claim.via not in ("q", "k", "v"):
        raise ProbesError(f"{claim.head_name}: via must be 'q', 'k' or 'v', not {claim.via!r}")
    paths = patch_paths(model, prompts, [claim.sender], [(*claim.receiver, claim.via)], direction, progress=False)
    groups = prompts.group_index
    gap_rows = (paths.clean - paths.corrupt).double().numpy()
    effect = paths.effect[:, 0, 0].double().numpy()
    confidence = simultaneous_confidence(thresholds.alpha, family)
    p_value = float(family_p(signed_rank_p(effect, groups=groups), family))
    evidence = {
        "path_effect": ratio_estimate(effect, gap_rows, groups, seed=seed, p_value=p_value, confidence=confidence),
        "path_effect_logits": estimate_mean(effect, seed=seed, groups=groups, confidence=confidence),
    } | _task_estimates(gap_rows, paths.clean.double().numpy(), groups, seed)
    verdict = decide_composition(evidence, thresholds)
    path = evidence["path_effect"]
    patching = "from the clean run into the corrupt one" if direction == "denoising" else "from the corrupt run into the clean one"
    result = ClaimResult(claim, verdict, "", evidence, thresholds, family=family,
                         per_prompt={"path_effect": effect, "path_effect_logits": effect, "gap_logits": gap_rows})
    sentence = (
        f"{claim}: its output patched {patching} along that path only moves the answer by {path.value:+.0%} of the "
        f"clean-corrupt gap [{path.ci_low:+.0%}, {path.ci_high:+.0%}] in {path.n} groups of prompts"
    )
    held_back = [PATH] if PATH.held_back_by_p(path, thresholds) else []
    sentence += _why_not_decided(evidence, thresholds, held_back)
    result.sentence = f"{sentence} [{_scope(result)}]: {verdict}"
    return result


@frozen_model
def evaluate(
    model: HookedModel,
    prompts: PromptSet,
    claim: Claim | Composition | EssayClaim,
    thresholds: Thresholds = Thresholds(),
    *,
    probe_table: pd.DataFrame | None = None,
    direction: Direction = "denoising",
    seed: int = 0,
    family: int = 1,
) -> ClaimResult:
    """Settle ``claim`` on ``prompts``, as one of ``family`` claims tested together (intervals simultaneous over
    them, p-values adjusted for them).

    ``claim.head=None`` ("some head does this"): every head is screened on every prompt (``.heads``, a family of
    all heads), the best-supported head is chosen on a discovery split of the groups, and its verdict comes from
    the held-out confirmation groups only (``thresholds.confirm_fraction`` of them; ``probe_table`` then serves
    the screening only, as it was not fitted on the confirmation prompts alone). A :class:`Composition` is
    settled by path patching (:func:`evaluate_composition`); an essay claim (:mod:`probes.claims.essay`:
    ``SelfUpdate``, ``ResolutionDepth``, ...) by its kind's settling function
    (:data:`probes.claims.essay_evaluation.SETTLE`; ``probe_table`` and ``direction`` do not apply to it).

    ``direction="noising"`` patches corrupt activations into the clean run instead: it asks whether the head is
    *necessary* (e.g. a previous-token head in induction, which cannot restore the answer on its own).
    """
    prompts.check_model(model)
    from probes.claims.essay_evaluation import SETTLE  # it reads split_groups from this module

    if not isinstance(claim, (Claim, Composition)):
        if type(claim) not in SETTLE:
            raise ProbesError(f"cannot settle a {type(claim).__name__}: claims are Claim, Composition or one of "
                              f"{', '.join(kind.__name__ for kind in SETTLE)}")
        return SETTLE[type(claim)](model, prompts, claim, thresholds, seed, family)
    if isinstance(claim, Composition):
        return evaluate_composition(model, prompts, claim, thresholds, direction=direction, seed=seed, family=family)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if claim.head is not None and not (0 <= claim.head[0] < n_layers and 0 <= claim.head[1] < n_heads):
        raise ProbesError(f"{claim.head_name} does not exist: the model has {n_layers} layers x {n_heads} heads")
    for role in (claim.src, claim.dst, claim.foil):
        if role is not None and role != PREVIOUS:
            prompts.role(role)
    every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    heads = [claim.head] if claim.head is not None else every
    options = dict(thresholds=thresholds, direction=direction, seed=seed, probe_table=probe_table)
    if claim.head is None:  # fail before any model work when the split cannot be made
        discovery, confirmation = split_groups(prompts.group_index, thresholds.confirm_fraction, seed, thresholds.min_prompts)
    ctx = EvidenceContext(model, prompts, claim.src, claim.dst, claim.foil, [claim.head] if claim.head else None, direction)
    with shared_runs():  # the sweeps of one claim share their clean and corrupt passes
        g = gather(ctx, heads)
    if claim.head is not None:
        return judge(claim, g, heads, family=family, **options)[0]
    screened = judge(claim, g, heads, family=len(heads), **options)
    on_discovery = judge(claim, g, heads, discovery, family=len(heads), **options)
    order = {v: i for i, v in enumerate(VERDICTS)}
    best = min(on_discovery, key=lambda r: (order[r.verdict], -abs(np.nan_to_num(r.evidence["effect_z"].value))))
    held_out = options | {"probe_table": None}  # the table's folds were not the confirmation prompts alone
    confirmed = judge(claim, g, [best.claim.head], confirmation, family=family, discovery=discovery, **held_out)[0]
    confirmed.claim, confirmed.heads = claim, screened
    return confirmed

