"""Settle a claim: gather its evidence, estimate it over groups, decide, say it.

:func:`evaluate` gathers, per prompt, the measures of :mod:`probes.claims.measures` (attention margin, norm-weighted
attention, edge knockout, patching effects, ...) through one :class:`~probes.claims.gathering.EvidenceContext`
(:func:`~probes.claims.gathering.gather`), then :func:`judge` estimates each on a set of prompts with intervals
that resample whole groups, simultaneous over the claims tested together (:mod:`probes.claims.estimation`), and
applies the rule of :mod:`probes.claims.verdicts`, which also words the verdict.

A head chosen from data is never judged on the prompts it was chosen on: :func:`~probes.core.stats.split_groups`
holds out groups, and :func:`select_and_confirm` ranks on the discovery side and judges on the other (``evaluate``
with ``head=None`` and ``probes run``'s ``top_attention:K`` / ``top_effect:K`` both go through it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from probes.claims.estimation import (
    Rows,
    estimates,
    per_prompt,
    probe_selectivity,
    task_estimates,
)
from probes.claims.essay import EssayClaim
from probes.claims.gathering import EvidenceContext, Gathered, gather
from probes.claims.types import (
    Claim,
    ClaimResult,
    Composition,
    Head,
    Thresholds,
    tested_on,
)
from probes.claims.verdicts import (
    VERDICTS,
    composition_sentence,
    decide,
    decide_composition,
    head_sentence,
    scope_text,
)
from probes.core.errors import ProbesError
from probes.core.stats import split_groups
from probes.core.stats import (
    estimate_mean,
    family_p,
    ratio_estimate,
    signed_rank_p,
    simultaneous_confidence,
)
from probes.evidence.patching import Direction, patch_paths, shared_runs
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import PREVIOUS


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
    selected = discovery is not None
    chosen_on = None if discovery is None else discovery.tolist()
    confirmed_on = None if discovery is None else rows.tolist()
    scope = scope_text(thresholds, family, tested_on(selected, chosen_on, confirmed_on, family))
    results = []
    for head, est in zip(heads, estimates(g, heads, rows, family, thresholds.alpha, seed)):
        selectivity = probe_selectivity(probe_table, head)
        if selectivity is not None:
            est["probe_selectivity"] = selectivity
        head_claim = Claim(head, claim.src, claim.dst, claim.foil)
        verdict = decide(est, thresholds)
        results.append(ClaimResult(
            claim=head_claim, verdict=verdict, sentence=head_sentence(head_claim, verdict, est, thresholds, direction, scope),
            evidence=est, thresholds=thresholds, per_prompt=per_prompt(g, head, rows), selected=selected,
            discovery=chosen_on, confirmation=confirmed_on, family=family,
        ))
    return results


BEST_VERDICT = "best_verdict"  # the ranking evaluate chooses "some head" by


def select_and_confirm(
    claim: Claim,
    g: Gathered,
    selectors: Sequence[tuple[str, int]],
    discovery: Rows,
    confirmation: Rows,
    *,
    exclude: Collection[Head] = (),
    family_besides: int = 0,
    thresholds: Thresholds = Thresholds(),
    direction: Direction = "denoising",
    seed: int = 0,
    probe_table: pd.DataFrame | None = None,
    held_out_probes: pd.DataFrame | None = None,
) -> list[ClaimResult]:
    """Heads chosen from data on the ``discovery`` prompts, judged on the held-out ``confirmation`` prompts only.

    Each selector ``(by, k)`` adds its ``k`` best heads not chosen already nor in ``exclude`` (heads named
    outright): ``by`` is a :func:`rank_heads` ranking, or :data:`BEST_VERDICT` (the verdict each head gets on the
    discovery prompts, best first, ties broken by the size of its whole-output effect; ``probe_table`` serves this
    screening). The chosen heads are one family with ``family_besides`` other claims; ``held_out_probes`` is probe
    evidence fitted on the confirmation prompts alone (None: the confirmed heads carry none).
    """
    selected: list[Head] = []
    for by, k in selectors:
        if by == BEST_VERDICT:
            on_discovery = judge(claim, g, g.heads, discovery, family=len(g.heads), thresholds=thresholds,
                                 direction=direction, seed=seed, probe_table=probe_table)
            order = {v: i for i, v in enumerate(VERDICTS)}
            ranked = [r.claim.head for r in sorted(
                on_discovery, key=lambda r: (order[r.verdict], -abs(np.nan_to_num(r.evidence["effect_z"].value)))
            )]
        else:
            ranked = rank_heads(g, discovery, by)
        selected += [h for h in ranked[:k] if h not in selected and h not in exclude]
    return judge(claim, g, selected, confirmation, family=family_besides + len(selected), thresholds=thresholds,
                 direction=direction, seed=seed, probe_table=held_out_probes, discovery=discovery)


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
    } | task_estimates(gap_rows, paths.clean.double().numpy(), groups, seed)
    verdict = decide_composition(evidence, thresholds)
    scope = scope_text(thresholds, family, tested_on(False, None, None, family))
    return ClaimResult(claim, verdict, composition_sentence(claim, verdict, evidence, thresholds, direction, scope),
                       evidence, thresholds, family=family,
                       per_prompt={"path_effect": effect, "path_effect_logits": effect, "gap_logits": gap_rows})


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
    from probes.claims.essay_evaluation import SETTLE  # it imports this module's evidence stages

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
    options = dict(thresholds=thresholds, direction=direction, seed=seed)
    if claim.head is None:  # fail before any model work when the split cannot be made
        discovery, confirmation = split_groups(prompts.group_index, thresholds.confirm_fraction, seed, thresholds.min_prompts)
    ctx = EvidenceContext(model, prompts, claim.src, claim.dst, claim.foil, [claim.head] if claim.head else None, direction)
    with shared_runs():  # the sweeps of one claim share their clean and corrupt passes
        g = gather(ctx, heads)
    if claim.head is not None:
        return judge(claim, g, heads, family=family, probe_table=probe_table, **options)[0]
    screened = judge(claim, g, heads, family=len(heads), probe_table=probe_table, **options)
    # the table's folds were not the confirmation prompts alone: the confirmed head carries no probe evidence
    (confirmed,) = select_and_confirm(claim, g, [(BEST_VERDICT, 1)], discovery, confirmation, family_besides=family - 1,
                                      probe_table=probe_table, held_out_probes=None, **options)
    return replace(confirmed, claim=claim, heads=screened)

