"""What a block adds to the residual stream when some of its nodes (heads, the MLP) change.

Most models add the attention layer's sum ``sum_h z_h @ W_O[h] + b_O`` and the MLP's output to the residual stream
as they are, so a node's change reaches the residual unchanged. Models with norms before AND after each sublayer
(Gemma 2 and 3: ``cfg.use_normalization_before_and_after``) add ``ln1_post(attention sum)`` and ``ln2_post(mlp)``
(OLMo 2/3 normalise after only, with ``ln1``/``ln2``): there a head's contribution depends on every other head of its
layer, and ``Δz @ W_O`` is not what reaches the residual. A path or edge on such a model is therefore defined by
recomputing the post-norm of the mixed sum: the block's output with the changed nodes' deltas added to the base
run's pre-norm sum, minus the base run's output. Nodes of one block changed together must be summed BEFORE
:func:`residual_change` (the norm does not distribute over a sum).
"""

from __future__ import annotations

from typing import Literal

import einops
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from probes.models.protocol import HookedModel

Sublayer = Literal["attn", "mlp"]


def post_norms(model: HookedModel, layer: int, sublayer: Sublayer) -> list[nn.Module]:
    """The norms a block applies to the sublayer's output before adding it to the residual stream, in order (as
    ``TransformerBlock.forward`` in transformer_lens 3.9 does); empty for pre-norm-only models."""
    block, cfg = model.blocks[layer], model.cfg
    norms = []
    if cfg.use_normalization_before_and_after:
        norms.append(block.get_submodule("ln1_post" if sublayer == "attn" else "ln2_post"))
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        norms.append(block.get_submodule("ln1" if sublayer == "attn" else "ln2"))
    return norms


def attention_sum(
    model: HookedModel, layer: int, z: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch pos d_model"]:
    """The attention layer's output before any post-norm, from every head's ``z``: ``sum_h z_h @ W_O[h] + b_O``."""
    attn = model.blocks[layer].attn
    return einops.einsum(z, attn.W_O, "batch pos head d_head, head d_head d_model -> batch pos d_model") + attn.b_O


def residual_change(
    model: HookedModel,
    layer: int,
    sublayer: Sublayer,
    base: Float[Tensor, "batch pos d_model"],
    deltas: Float[Tensor, "*variant batch pos d_model"],
) -> Float[Tensor, "*variant batch pos d_model"]:
    """What reaches the residual stream when the sublayer's pre-norm output ``base`` (the base run's, e.g.
    :func:`attention_sum`) changes by each of ``deltas`` (e.g. ``Δz @ W_O[h]`` of one head, or the summed deltas of
    several nodes of this sublayer): ``post(base + delta) - post(base)``, or ``delta`` where there is no post-norm."""
    norms = post_norms(model, layer, sublayer)
    if not norms:
        return deltas

    def post(x: Tensor) -> Tensor:
        for norm in norms:
            x = norm(x)
        return x

    mixed = post((base + deltas).reshape(-1, *base.shape[1:])).reshape(deltas.shape)
    return mixed - post(base)
