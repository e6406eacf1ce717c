"""Claims about heads and their verdicts: "head L.H attends from the pronoun to its antecedent", tested.

A :class:`Claim` names a head (or ``None``: find the heads, every head tested), a source role, a target role and
a foil role (``None``: chance, i.e. uniform attention over the positions the source can see). :func:`evaluate`
gathers, per prompt:

- ``attention``: alpha(src -> dst) - alpha(src -> foil), the paired attention margin;
- ``norm_attention``: the same with norm-weighted attention alpha * ||v W_O|| (does the head *move* the target?);
- ``effect_z`` / ``effect_pattern``: denoising patch of the head's output / of its attention pattern alone, as a
  fraction of the mean clean-corrupt logit-difference gap (0 = nothing restored, 1 = the whole gap);
- ``attention_effect_correlation``: Spearman correlation over prompts of attention-to-target and effect_z;
- ``probe_selectivity`` when a probe table is given (:mod:`probes.probing`).

Verdict rule (thresholds are :class:`Thresholds` fields; intervals are 95% prompt-bootstrap intervals; p-values are
Wilcoxon signed-rank, Benjamini-Hochberg adjusted over the heads tested together):

- fewer than ``min_prompts`` prompts, or a clean-corrupt gap whose interval reaches 0 (the model does not do the
  task, so "effect on the answer" means nothing): ``inconclusive``;
- *attends*: the attention margin's interval lies above ``attention_margin`` and its adjusted p < ``alpha``;
  *does not attend*: the interval lies below ``attention_margin``;
- *matters*: the effect_z interval lies outside ``[-effect, +effect]`` and its adjusted p < ``alpha``;
  *does not matter*: the interval lies inside ``(-effect, +effect)``;
- attends and matters: ``supported``; attends, does not matter: ``attention_only``; does not attend, matters:
  ``effect_only``; neither: ``refuted``; any interval straddling its threshold: ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float
from transformer_lens import HookedTransformer

from probes.attention import PREVIOUS, norm_weighted_attention, role_attention
from probes.errors import ProbesError
from probes.patching import Direction, patch_activations
from probes.prompts import PromptSet
from probes.verdicts import VERDICTS
from probes.stats import Estimate, adjust_p, bootstrap_mean, bootstrap_spearman, estimate_mean, signed_rank_p

Head = tuple[int, int]


@dataclass(frozen=True)
class Claim:
    """"Head ``head`` attends from ``src`` to ``dst`` (rather than to ``foil``)"; roles are PromptSet role names.

    ``dst="previous"`` means the token before ``src``; ``foil=None`` compares with uniform attention.
    """

    head: Head | None
    src: str
    dst: str
    foil: str | None = None

    @property
    def head_name(self) -> str:
        return "some head" if self.head is None else f"head {self.head[0]}.{self.head[1]}"

    def __str__(self) -> str:
        dst = "the previous token" if self.dst == PREVIOUS else f"the {self.dst}"
        return f"{self.head_name} attends from the {self.src} to {dst}"


@dataclass(frozen=True)
class Thresholds:
    """What counts as attending and as mattering; defaults are deliberately modest, change them per analysis."""

    attention_margin: float = 0.1  # mean alpha(target) - alpha(foil)
    effect: float = 0.1  # fraction of the clean-corrupt gap moved by patching the head's output
    alpha: float = 0.05  # on BH-adjusted p-values over the heads tested together
    min_prompts: int = 10  # below this, bootstrap intervals are not trustworthy


@dataclass
class ClaimResult:
    """The verdict on one claim, the numbers behind it, and (for ``head=None``) the verdict on every head."""

    claim: Claim
    verdict: str
    sentence: str
    evidence: dict[str, Estimate]
    per_prompt: dict[str, Float[np.ndarray, " prompt"]]
    thresholds: Thresholds
    heads: list[ClaimResult] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per head (or the one head): verdict and every estimate with its interval."""
        rows = []
        for result in self.heads or [self]:
            row = {"layer": result.claim.head[0], "head": result.claim.head[1], "verdict": result.verdict}
            for name, est in result.evidence.items():
                row |= {name: est.value, f"{name}_ci_low": est.ci_low, f"{name}_ci_high": est.ci_high}
                if est.p_value is not None:
                    row[f"{name}_p_value"] = est.p_value
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class HeadEvidence:
    """Per-prompt evidence for a set of heads: arrays ``[prompt, layer, head]`` (NaN for heads not measured)."""

    attention_target: np.ndarray
    attention_foil: np.ndarray
    norm_target: np.ndarray
    norm_foil: np.ndarray
    effect_z: np.ndarray  # fraction of the mean gap
    effect_pattern: np.ndarray
    effect_z_logits: np.ndarray
    gap: Estimate  # mean clean - corrupt logit difference

    @property
    def attention(self) -> np.ndarray:
        return self.attention_target - self.attention_foil

    @property
    def norm_attention(self) -> np.ndarray:
        return self.norm_target - self.norm_foil


def _uniform_attention(prompts: PromptSet, src: str, shape: tuple[int, ...]) -> np.ndarray:
    """Attention a head would pay each visible position if it looked everywhere equally: 1 / (src + 1)."""
    per_prompt = 1.0 / (prompts.role(src).double().numpy() + 1.0)
    return np.broadcast_to(per_prompt[:, None, None], shape).copy()


def gather_evidence(
    model: HookedTransformer,
    prompts: PromptSet,
    src: str,
    dst: str,
    foil: str | None,
    heads: list[Head] | None,
    direction: Direction = "denoising",
) -> HeadEvidence:
    """Attention and patching evidence for ``heads`` (all heads if ``None``), per prompt."""
    attention_target = role_attention(model, prompts, src, dst).numpy()
    norm_target = norm_weighted_attention(model, prompts, src, dst).numpy()
    if foil is None:
        attention_foil = _uniform_attention(prompts, src, attention_target.shape)
        norm_foil = np.zeros_like(norm_target)  # no foil: report the norm-weighted attention to the target itself
    else:
        attention_foil = role_attention(model, prompts, src, foil).numpy()
        norm_foil = norm_weighted_attention(model, prompts, src, foil).numpy()
    z = patch_activations(model, prompts, "z", direction, cells=heads, progress=heads is None)
    pattern = patch_activations(model, prompts, "pattern", direction, cells=heads, progress=heads is None)
    gap_values = (z.clean - z.corrupt).double().numpy()
    gap = estimate_mean(gap_values)
    scale = gap.value if gap.value != 0 else np.nan
    return HeadEvidence(
        attention_target=attention_target,
        attention_foil=attention_foil,
        norm_target=norm_target,
        norm_foil=norm_foil,
        effect_z=z.effect.double().numpy() / scale,
        effect_pattern=pattern.effect.double().numpy() / scale,
        effect_z_logits=z.effect.double().numpy(),
        gap=gap,
    )


def _verdict(n: int, gap: Estimate, attention: Estimate, effect: Estimate, t: Thresholds) -> str:
    if n < t.min_prompts or not gap.ci_low > 0:
        return "inconclusive"
    attends = attention.ci_low > t.attention_margin and attention.p_value < t.alpha
    not_attends = attention.ci_high < t.attention_margin
    matters = effect.excludes(-t.effect, t.effect) and effect.p_value < t.alpha
    does_not_matter = effect.within(-t.effect, t.effect)
    if attends and matters:
        return "supported"
    if attends and does_not_matter:
        return "attention_only"
    if not_attends and matters:
        return "effect_only"
    if not_attends and does_not_matter:
        return "refuted"
    return "inconclusive"


def _sentence(
    claim: Claim, verdict: str, ev: dict[str, Estimate], gap: Estimate, n: int, t: Thresholds, direction: Direction
) -> str:
    foil = "uniform attention" if claim.foil is None else f"the {claim.foil}"
    attends, effect, logits = ev["attends_fraction"], ev["effect_z"], ev["effect_z_logits"]
    patching = "patching in its clean output" if direction == "denoising" else "patching in its corrupt output"
    text = (
        f"{claim} more than to {foil} in {attends.value:.0%} of {n} prompts "
        f"[{attends.ci_low:.0%}, {attends.ci_high:.0%}], and {patching} moves the answer by "
        f"{effect.value:+.0%} of the clean-corrupt gap [{effect.ci_low:+.0%}, {effect.ci_high:+.0%}] "
        f"({logits.value:+.2f} logits): {verdict}"
    )
    if n < t.min_prompts:
        text += f" (only {n} prompts; at least {t.min_prompts} are needed)"
    elif not gap.ci_low > 0:
        text += f" (the model does not do the task: clean-corrupt gap {gap.value:+.2f} [{gap.ci_low:.2f}, {gap.ci_high:.2f}])"
    return text


def _head_estimates(ev: HeadEvidence, heads: list[Head], seed: int) -> tuple[dict[Head, dict[str, Estimate]], dict]:
    """Estimates for each head; p-values adjusted over all the heads tested together."""
    layers, cols = zip(*heads)

    def pick(values: np.ndarray) -> np.ndarray:  # [prompt, layer, head] -> [prompt, tested head]
        return values[:, list(layers), list(cols)]

    per_prompt = {
        "attention": pick(ev.attention),
        "attention_target": pick(ev.attention_target),
        "attends_fraction": (pick(ev.attention) > 0).astype(float),
        "norm_attention": pick(ev.norm_attention),
        "effect_z": pick(ev.effect_z),
        "effect_z_logits": pick(ev.effect_z_logits),
        "effect_pattern": pick(ev.effect_pattern),
    }
    p_values = {
        "attention": adjust_p(signed_rank_p(per_prompt["attention"], alternative="greater")),
        "effect_z": adjust_p(signed_rank_p(per_prompt["effect_z"])),
        "effect_pattern": adjust_p(signed_rank_p(per_prompt["effect_pattern"])),
    }
    out = {}
    bounds = {name: bootstrap_mean(values, seed=seed) for name, values in per_prompt.items()}
    for j, head in enumerate(heads):
        est = {
            name: Estimate(float(mean[j]), float(low[j]), float(high[j]), n=values.shape[0],
                           p_value=float(p_values[name][j]) if name in p_values else None)
            for (name, (mean, low, high)), values in zip(bounds.items(), per_prompt.values())
        }
        est["attention_effect_correlation"] = bootstrap_spearman(
            per_prompt["attention_target"][:, j], per_prompt["effect_z"][:, j], seed=seed
        )
        out[head] = est
    return out, per_prompt


def _probe_selectivity(probe_table: pd.DataFrame | None, head: Head) -> Estimate | None:
    if probe_table is None:
        return None
    rows = probe_table[(probe_table["layer"] == head[0]) & (probe_table["head"] == head[1])]
    if rows.empty:
        return None
    best = rows.sort_values("selectivity", ascending=False).iloc[0]
    return Estimate(float(best["selectivity"]), float(best["selectivity_ci_low"]), float(best["selectivity_ci_high"]),
                    n=int(best["n"]) if "n" in best else None)


def evaluate(
    model: HookedTransformer,
    prompts: PromptSet,
    claim: Claim,
    thresholds: Thresholds = Thresholds(),
    *,
    probe_table: pd.DataFrame | None = None,
    direction: Direction = "denoising",
    seed: int = 0,
) -> ClaimResult:
    """Settle ``claim`` on ``prompts``; with ``claim.head=None`` every head is tested (multiple-comparison
    adjusted) and the result's verdict is that of the best-supported head, with all heads in ``.heads``.

    ``direction="noising"`` patches corrupt activations into the clean run instead: it asks whether the head is
    *necessary* (e.g. a previous-token head in induction, which cannot restore the answer on its own).
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if claim.head is not None and not (0 <= claim.head[0] < n_layers and 0 <= claim.head[1] < n_heads):
        raise ProbesError(f"{claim.head_name} does not exist: the model has {n_layers} layers x {n_heads} heads")
    for role in (claim.src, claim.dst, claim.foil):
        if role is not None and role != PREVIOUS:
            prompts.role(role)
    heads = [claim.head] if claim.head is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    evidence = gather_evidence(
        model, prompts, claim.src, claim.dst, claim.foil, [claim.head] if claim.head else None, direction
    )
    estimates, per_prompt = _head_estimates(evidence, heads, seed)
    n = len(prompts)
    results = []
    for j, head in enumerate(heads):
        est = estimates[head]
        selectivity = _probe_selectivity(probe_table, head)
        if selectivity is not None:
            est["probe_selectivity"] = selectivity
        est["gap_logits"] = evidence.gap
        head_claim = Claim(head, claim.src, claim.dst, claim.foil)
        verdict = _verdict(n, evidence.gap, est["attention"], est["effect_z"], thresholds)
        results.append(
            ClaimResult(
                claim=head_claim,
                verdict=verdict,
                sentence=_sentence(head_claim, verdict, est, evidence.gap, n, thresholds, direction),
                evidence=est,
                per_prompt={name: values[:, j] for name, values in per_prompt.items()},
                thresholds=thresholds,
            )
        )
    if claim.head is not None:
        return results[0]
    order = {v: i for i, v in enumerate(VERDICTS)}
    best = min(results, key=lambda r: (order[r.verdict], -r.evidence["effect_z"].value))
    return ClaimResult(claim, best.verdict, best.sentence, best.evidence, best.per_prompt, thresholds, heads=results)
