"""Attribution patching: a first-order estimate of every head's patching effect from one backward pass.

Patching head ``h`` replaces its output ``z_h`` on the corrupt run with the clean one. To first order the metric
moves by ``grad_z_h(metric) . (z_h_clean - z_h_corrupt)``, the gradient taken on the corrupt run (Nanda 2023,
"Attribution patching"). That costs one forward+backward pass on the corrupt prompts and one forward pass on the
clean ones for all heads together, against one patched run per head for exact patching; where the metric is
not close to linear in a head's output the estimate can be off, so :func:`screen_then_verify` uses it only to
choose which heads to patch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.notebook import grid_html, result_html
from probes.evidence.metric import logit_diff_from_resid, resid_at
from probes.evidence.patching import PatchingResult, patch_activations
from probes.models.hooks import get_act_name
from probes.models.protocol import HookedModel
from probes.models.frozen import frozen_model
from probes.prompts.promptset import PromptSet

@frozen_model
def attribute_heads(model: HookedModel, prompts: PromptSet, batch_size: int = 16) -> Float[Tensor, "prompt layer head"]:
    """Estimated denoising effect of patching each head's output (all positions) on each prompt's logit
    difference: the quantity :func:`probes.patch_heads` computes exactly, to first order."""
    prompts.check_model(model)
    if batch_size < 1:
        raise ProbesError(f"batch_size must be at least 1, got {batch_size}")
    out = [
        _attribute_batch(model, prompts.subset(slice(start, start + batch_size)))
        for start in range(0, len(prompts), batch_size)
    ]
    return torch.cat(out)


def _attribute_batch(model: HookedModel, prompts: PromptSet) -> Float[Tensor, "prompt layer head"]:
    n_layers = model.cfg.n_layers
    n_pos = int(prompts.end.max()) + 1  # later positions cannot reach any read-off position
    z_hooks = {get_act_name("z", layer) for layer in range(n_layers)}
    is_z = z_hooks.__contains__
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(prompts.clean[:, :n_pos], stop_at_layer=n_layers, names_filter=is_z)

    corrupt_z: dict[int, Tensor] = {}
    leaves: dict[int, Tensor] = {}

    def add_leaf(z: Float[Tensor, "prompt pos head d_head"], hook) -> Tensor:
        # Adding a zero leaf leaves the run unchanged and makes d metric / d probe = d metric / d z, through
        # every downstream path (detaching z itself would cut the paths through later heads).
        corrupt_z[hook.layer()] = z.detach()
        leaves[hook.layer()] = torch.zeros_like(z, requires_grad=True)
        return z + leaves[hook.layer()]

    with torch.enable_grad():
        final = model.run_with_hooks(prompts.corrupt[:, :n_pos], stop_at_layer=n_layers, fwd_hooks=[(is_z, add_leaf)])
        metric = logit_diff_from_resid(model, resid_at(final, prompts.end), prompts.answer, prompts.foil)
        # prompts are independent rows, so the gradient of the sum is each prompt's own gradient
        grads = torch.autograd.grad(metric.sum(), [leaves[layer] for layer in range(n_layers)])
    return torch.stack(
        [
            (grad * (clean_cache[get_act_name("z", layer)] - corrupt_z[layer])).sum(dim=(1, 3))
            for layer, grad in enumerate(grads)
        ],
        dim=1,
    ).float()


@dataclass(frozen=True)
class ScreeningResult:
    """Attribution over all heads, and exact patching of the ``heads`` it ranks highest."""

    attribution: Float[Tensor, "prompt layer head"]
    heads: list[tuple[int, int]]  # by decreasing |mean attribution|
    patching: PatchingResult  # exact denoising sweep of ``heads`` only (NaN elsewhere)

    @property
    def exact(self) -> Float[Tensor, "prompt k"]:
        """Exact effect of patching each of ``heads``, per prompt, in ``heads`` order."""
        effect = self.patching.effect
        return torch.stack([effect[:, layer, head] for layer, head in self.heads], dim=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per (rank, prompt): the head, its attribution estimate and its exact effect."""
        rows = []
        for rank, (layer, head) in enumerate(self.heads):
            for prompt in range(self.attribution.shape[0]):
                rows.append(
                    {
                        "rank": rank,
                        "layer": layer,
                        "head": head,
                        "prompt": prompt,
                        "attribution": float(self.attribution[prompt, layer, head]),
                        "exact": float(self.patching.effect[prompt, layer, head]),
                        "normalised": float(self.patching.normalised[prompt, layer, head]),
                    }
                )
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        mean = self.attribution.mean(0).double().numpy()
        exact = self.exact.mean(0)
        sentence = f"attribution ranked every head; the top {len(self.heads)} were patched exactly"
        numbers = {f"head {layer}.{head}": f"attribution {mean[layer, head]:+.3f}, exact {float(e):+.3f} (mean, logits)"
                   for (layer, head), e in zip(self.heads, exact)}
        return result_html("Screening", sentence, numbers, grid_html(mean, "mean attribution (logits)"))


Screening = ScreeningResult  # its name before the result contract (every result's name ends in Result)


@frozen_model
def screen_then_verify(
    model: HookedModel, prompts: PromptSet, top_k: int = 10, batch_size: int = 16, **patching_kwargs
) -> ScreeningResult:
    """Rank all heads by attribution patching, then patch the ``top_k`` exactly (denoising, head outputs).

    The exact effects are measured on the prompts that ranked the heads: they check the linear approximation, not
    a head's role (a head picked as the largest of many is flattered on the data that picked it). To judge a
    chosen head, use ``evaluate(model, prompts, Claim(None, ...))``, which ranks on a discovery split and judges
    on held-out groups.

    Costs about three passes plus ``top_k`` patched runs per prompt, instead of one per head; keyword arguments
    go to :func:`probes.patching.patch_activations` (``memory_mb``, ``progress``...).
    """
    prompts.check_model(model)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if not 1 <= top_k <= n_heads:
        raise ProbesError(f"top_k must be between 1 and the model's {n_heads} heads, got {top_k}")
    attribution = attribute_heads(model, prompts, batch_size)
    order = attribution.mean(0).abs().flatten().argsort(descending=True)[:top_k]
    heads = [divmod(int(i), model.cfg.n_heads) for i in order]
    patching = patch_activations(model, prompts, "z", "denoising", cells=heads, **patching_kwargs)
    return ScreeningResult(attribution, heads, patching)
