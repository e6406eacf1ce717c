"""Settle a claim: gather every registered measure per prompt and head, estimate, test, decide, say it in words.

:func:`evaluate` gathers, per prompt, the measures of :mod:`probes.claims.measures` (attention margin, norm-weighted
attention, denoising/noising patching effects, ...) through one :class:`EvidenceContext`, estimates each with a
bootstrap interval, adjusts p-values over the heads tested together, and applies the rule of
:mod:`probes.claims.verdicts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from jaxtyping import Float
from transformer_lens import HookedTransformer

from probes.claims.measures import MEASURES
from probes.claims.types import Claim, ClaimResult, Composition, Head, Thresholds
from probes.claims.verdicts import HEAD, VERDICTS, decide, decide_composition, gate_passes, judge_legs
from probes.core.errors import ProbesError
from probes.core.stats import Estimate, adjust_p, bootstrap_mean, bootstrap_spearman, estimate_mean, signed_rank_p
from probes.evidence.attention import norm_weighted_attention, role_attention
from probes.evidence.patching import Direction, PatchingResult, edge_effects, patch_activations, patch_paths
from probes.evidence.patching.sites import PatchedMetric
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import PREVIOUS


@dataclass
class EvidenceContext:
    """What the measures' gather functions read: each underlying measurement runs once, on first use.

    Arrays are ``[prompt, layer, head]`` (NaN for heads not patched when ``heads`` restricts the sweep).
    """

    model: HookedTransformer
    prompts: PromptSet
    src: str
    dst: str
    foil: str | None
    heads: list[Head] | None  # None: every head
    direction: Direction = "denoising"
    seed: int = 0  # of every bootstrap

    @cached_property
    def attention_target(self) -> Float[np.ndarray, "prompt layer head"]:
        return role_attention(self.model, self.prompts, self.src, self.dst).numpy()

    @cached_property
    def attention_foil(self) -> Float[np.ndarray, "prompt layer head"]:
        if self.foil is None:  # uniform attention over the positions the source can see: 1 / (src + 1)
            per_prompt = 1.0 / (self.prompts.role(self.src).double().numpy() + 1.0)
            return np.broadcast_to(per_prompt[:, None, None], self.attention_target.shape).copy()
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

    @cached_property
    def gap(self) -> Estimate:
        """Mean clean - corrupt logit difference, with its interval."""
        return gap_estimate(self.patching("z"), self.seed)

    @cached_property
    def gap_scale(self) -> float:
        return per_unit_gap(self.gap)

    def _once(self, key: str, measure: Callable[[], PatchingResult]) -> PatchingResult:
        if key not in self._results:
            self._results[key] = measure()
        return self._results[key]

    def __post_init__(self) -> None:
        self._results: dict[str, PatchingResult] = {}


def gap_estimate(result: PatchedMetric, seed: int) -> Estimate:
    """The mean clean - corrupt metric of the prompts behind ``result``, with its bootstrap interval."""
    return estimate_mean((result.clean - result.corrupt).double().numpy(), seed=seed)


def per_unit_gap(gap: Estimate) -> float:
    """What effects are divided by to be fractions of the gap (NaN when there is no gap)."""
    return gap.value if gap.value != 0 else np.nan


def _sentence(
    claim: Claim, verdict: str, ev: dict[str, Estimate], gap: Estimate, n: int, t: Thresholds, direction: Direction
) -> str:
    """The verdict in words, quoting the numbers it rests on and saying which intervention asked what."""
    foil = "uniform attention" if claim.foil is None else f"the {claim.foil}"
    attends, edge, effect, logits = ev["attends_fraction"], ev["edge_knockout"], ev["effect_z"], ev["effect_z_logits"]
    whole = (
        "patching its clean output into the corrupt run at every position (is the head sufficient to restore the "
        "answer?)" if direction == "denoising" else
        "patching its corrupt output into the clean run at every position (is the head necessary?)"
    )
    text = (
        f"{claim} more than to {foil} in {attends.value:.0%} of {n} prompts [{attends.ci_low:.0%}, "
        f"{attends.ci_high:.0%}]; knocking out that edge in the clean run (is it necessary?) moves the answer by "
        f"{edge.value:+.0%} of the clean-corrupt gap [{edge.ci_low:+.0%}, {edge.ci_high:+.0%}]; {whole} moves it by "
        f"{effect.value:+.0%} [{effect.ci_low:+.0%}, {effect.ci_high:+.0%}] ({logits.value:+.2f} logits)"
    )
    if verdict == "attention_only" and judge_legs(ev, t)[HEAD.name]:
        text += "; the head matters, but its effect runs through other positions than this edge"
    if n < t.min_prompts:
        text += f" (only {n} prompts; at least {t.min_prompts} are needed)"
    elif not gate_passes(n, gap, t):
        text += f" (the model does not do the task: clean-corrupt gap {gap.value:+.2f} [{gap.ci_low:.2f}, {gap.ci_high:.2f}])"
    return f"{text}: {verdict}"


def _head_estimates(
    ctx: EvidenceContext, heads: list[Head], seed: int
) -> tuple[dict[Head, dict[str, Estimate]], dict[str, np.ndarray]]:
    """Estimates of every per-prompt measure for each head; p-values adjusted over the heads tested together."""
    layers, cols = zip(*heads)
    per_prompt = {
        name: m.gather(ctx)[:, list(layers), list(cols)] for name, m in MEASURES.items() if m.gather is not None
    }
    p_values = {
        name: adjust_p(signed_rank_p(per_prompt[name], alternative=m.test))
        for name, m in MEASURES.items() if m.test is not None and name in per_prompt
    }
    bounds = {name: bootstrap_mean(values, seed=seed) for name, values in per_prompt.items()}
    out = {}
    for j, head in enumerate(heads):
        est = {
            name: Estimate(float(mean[j]), float(low[j]), float(high[j]), n=per_prompt[name].shape[0],
                           p_value=float(p_values[name][j]) if name in p_values else None)
            for name, (mean, low, high) in bounds.items()
        }
        est["attention_effect_correlation"] = bootstrap_spearman(
            per_prompt["attention_target"][:, j], per_prompt["effect_z"][:, j], seed=seed
        )
        out[head] = est
    return out, per_prompt


def _probe_selectivity(probe_table: pd.DataFrame | None, head: Head) -> Estimate | None:
    """The best selectivity any probe target reached at this head's output."""
    if probe_table is None:
        return None
    rows = probe_table[(probe_table["layer"] == head[0]) & (probe_table["head"] == head[1])]
    if rows.empty:
        return None
    best = rows.sort_values("selectivity", ascending=False).iloc[0]
    return Estimate(float(best["selectivity"]), float(best["selectivity_ci_low"]), float(best["selectivity_ci_high"]),
                    n=int(best["n"]) if "n" in best else None)


def evaluate_composition(
    model: HookedTransformer,
    prompts: PromptSet,
    claim: Composition,
    thresholds: Thresholds = Thresholds(),
    *,
    direction: Direction = "denoising",
    seed: int = 0,
) -> ClaimResult:
    """Settle "head R reads head S's output through its q/k/v" by path patching (one test: no adjustment)."""
    if claim.via not in ("q", "k", "v"):
        raise ProbesError(f"{claim.head_name}: via must be 'q', 'k' or 'v', not {claim.via!r}")
    paths = patch_paths(model, prompts, [claim.sender], [(*claim.receiver, claim.via)], direction, progress=False)
    gap = gap_estimate(paths, seed)
    effect = paths.effect[:, 0, 0].double().numpy()
    fraction = effect / per_unit_gap(gap)
    p_value = float(signed_rank_p(fraction))
    evidence = {
        "path_effect": estimate_mean(fraction, p_value=p_value, seed=seed),
        "path_effect_logits": estimate_mean(effect, seed=seed),
        "gap_logits": gap,
    }
    n = len(prompts)
    verdict = decide_composition(n, gap, evidence["path_effect"], thresholds)
    path = evidence["path_effect"]
    patching = "from the clean run into the corrupt one" if direction == "denoising" else "from the corrupt run into the clean one"
    sentence = (
        f"{claim}: its output patched {patching} along that path only moves the answer by {path.value:+.0%} of the "
        f"clean-corrupt gap [{path.ci_low:+.0%}, {path.ci_high:+.0%}] in {n} prompts"
    )
    if not gate_passes(n, gap, thresholds):
        sentence += f" (needs at least {thresholds.min_prompts} prompts and a clean-corrupt gap above 0)"
    sentence += f": {verdict}"
    return ClaimResult(claim, verdict, sentence, evidence, thresholds,
                       per_prompt={"path_effect": fraction, "path_effect_logits": effect})


def evaluate(
    model: HookedTransformer,
    prompts: PromptSet,
    claim: Claim | Composition,
    thresholds: Thresholds = Thresholds(),
    *,
    probe_table: pd.DataFrame | None = None,
    direction: Direction = "denoising",
    seed: int = 0,
) -> ClaimResult:
    """Settle ``claim`` on ``prompts``; with ``claim.head=None`` every head is tested (multiple-comparison
    adjusted) and the result's verdict is that of the best-supported head, with all heads in ``.heads``.
    A :class:`Composition` is settled by path patching (:func:`evaluate_composition`).

    ``direction="noising"`` patches corrupt activations into the clean run instead: it asks whether the head is
    *necessary* (e.g. a previous-token head in induction, which cannot restore the answer on its own).
    """
    if isinstance(claim, Composition):
        return evaluate_composition(model, prompts, claim, thresholds, direction=direction, seed=seed)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if claim.head is not None and not (0 <= claim.head[0] < n_layers and 0 <= claim.head[1] < n_heads):
        raise ProbesError(f"{claim.head_name} does not exist: the model has {n_layers} layers x {n_heads} heads")
    for role in (claim.src, claim.dst, claim.foil):
        if role is not None and role != PREVIOUS:
            prompts.role(role)
    heads = [claim.head] if claim.head is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    ctx = EvidenceContext(model, prompts, claim.src, claim.dst, claim.foil, [claim.head] if claim.head else None,
                          direction, seed)
    estimates, per_prompt = _head_estimates(ctx, heads, seed)
    n = len(prompts)
    results = []
    for j, head in enumerate(heads):
        est = estimates[head]
        selectivity = _probe_selectivity(probe_table, head)
        if selectivity is not None:
            est["probe_selectivity"] = selectivity
        est["gap_logits"] = ctx.gap
        head_claim = Claim(head, claim.src, claim.dst, claim.foil)
        verdict = decide(n, ctx.gap, est, thresholds)
        results.append(
            ClaimResult(
                claim=head_claim,
                verdict=verdict,
                sentence=_sentence(head_claim, verdict, est, ctx.gap, n, thresholds, direction),
                evidence=est,
                thresholds=thresholds,
                per_prompt={name: values[:, j] for name, values in per_prompt.items()},
            )
        )
    if claim.head is not None:
        return results[0]
    order = {v: i for i, v in enumerate(VERDICTS)}
    best = min(results, key=lambda r: (order[r.verdict], -r.evidence["effect_z"].value))
    return ClaimResult(claim, best.verdict, best.sentence, best.evidence, thresholds, best.per_prompt, heads=results)
