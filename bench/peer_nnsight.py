"""All-heads z patching with nnsight 0.8 on the plain Hugging Face model: what a user would run instead of
TransformerLens, written as nnsight's documentation shows it. The clean run saves each layer's ``o_proj`` input
(the heads' outputs side by side, ``[batch, pos, n_heads * d_head]``); then one trace per head runs the corrupt
prompts with that head's slice of ``o_proj.input`` overwritten by the clean one, and reads the logit difference
(answer - foil) at each prompt's read-off position from the full logits.

nnsight is an optional bench dependency (``pip install -e '.[bench]'``, which ``make bench`` runs); nothing in
the kit imports it. The module's name is not ``nnsight``, which would shadow the package on the bench's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from probes.evidence.patching import PatchingResult
from probes.prompts.promptset import PromptSet


def load(checkpoint_dir) -> "nnsight.TransformersModel":  # noqa: F821  (nnsight is optional)
    from nnsight import TransformersModel

    return TransformersModel(str(checkpoint_dir), task="text-generation", dispatch=True, dtype=torch.float32)


def _logit_diff(at_end: Float[Tensor, "prompt vocab"], prompts: PromptSet) -> Float[Tensor, " prompt"]:
    rows = torch.arange(len(prompts))
    return at_end[rows, prompts.answer] - at_end[rows, prompts.foil]


@torch.no_grad()
def patch_heads_nnsight(lm, prompts: PromptSet, heads: Sequence[tuple[int, int]] | None = None) -> PatchingResult:
    """Denoising z patching of each head (default: all), one nnsight trace per head, as a :class:`PatchingResult`
    (NaN where a head was not patched), so its effect and normalised effect are computed as the kit's are."""
    import nnsight

    config = lm.config
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)] if heads is None else heads
    rows = torch.arange(len(prompts))
    layers = lm.model.layers

    def inputs(tokens):  # right padding: a causal model's positions up to each read-off position ignore it
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}

    with lm.trace(inputs(prompts.clean)):
        clean_z = nnsight.save([])
        for layer in range(n_layers):
            clean_z.append(layers[layer].self_attn.o_proj.input)
        clean_end = lm.lm_head.output[rows, prompts.end].save()
    with lm.trace(inputs(prompts.corrupt)):
        corrupt_end = lm.lm_head.output[rows, prompts.end].save()
    patched = torch.full((len(prompts), n_layers, n_heads), float("nan"))
    for layer, head in heads:
        cols = slice(head * d_head, (head + 1) * d_head)
        with lm.trace(inputs(prompts.corrupt)):
            layers[layer].self_attn.o_proj.input[:, :, cols] = clean_z[layer][:, :, cols]
            at_end = lm.lm_head.output[rows, prompts.end].save()
        patched[:, layer, head] = _logit_diff(at_end, prompts)
    return PatchingResult(patched, _logit_diff(clean_end, prompts), _logit_diff(corrupt_end, prompts), "denoising",
                          groups=prompts.group_index)
