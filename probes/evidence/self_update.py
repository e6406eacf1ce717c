"""Does a token that attends to itself change little? Self-attention, the sink, and the size of each update.

The essay's sentence "if a token attends to itself, it doesn't change much from one layer to the next" mixes two
things a head can do with attention it does not need: look at the token itself, whose value it then writes back
(``W_OV x_i``, which need not be small), or park it on the first-token sink, whose value is often near zero. This
module measures, per clean prompt, position (past the first :data:`FIRST_POSITIONS`: position 0 always attends to
itself and carries massive activations) and layer:

- each head's attention on the token itself and on position 0 (the sink);
- the size of each head's write as it enters the residual stream: ``||z_h W_O[h]||``, or on models that
  re-normalise the attention sum before adding it (Gemma-2/3's ``ln1_post``) the change of that normalised sum
  the head makes (:func:`probes.models.writes.residual_change`, the kit's one definition of what a block writes);
- the block's relative update ``||resid_post - resid_pre|| / ||resid_pre||`` (on post-norm models this is already
  the normalised sums that enter the residual);
- the intervention the sentence implies: the head's write with its pattern row forced one-hot onto the token
  itself (then ``z_i = v_i``) or onto the sink (``z_i = v_0``), computed exactly from the values, which is what
  hooking the pattern gives for this layer's write (tests/test_essay_claims.py checks it against a pattern hook).

The bias ``b_O`` is shared by the heads, so it belongs to none and is left out of every head's write.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.memory import batches
from probes.core.notebook import result_html
from probes.models.architecture import attention_bytes, kv_head_of
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.protocol import HookedModel
from probes.models.writes import attention_sum, residual_change
from probes.prompts.promptset import PromptSet

FIRST_POSITIONS = 2  # positions left out: 0 (always attends to itself; the sink, with massive activations) and 1
BATCH = 16


@dataclass(frozen=True)
class SelfUpdateResult:
    """One row per (clean prompt, position past the first positions); arrays over layers (and heads).

    ``head_update``, ``forced_self`` and ``forced_sink`` are norms of what a head adds to the residual stream
    (as it enters it); ``block_update`` is the block's relative update."""

    prompt: Int[np.ndarray, " row"]
    position: Int[np.ndarray, " row"]
    group: Int[np.ndarray, " row"]  # the prompt's group: the unit intervals resample
    self_attention: Float[np.ndarray, "row layer head"]
    sink_attention: Float[np.ndarray, "row layer head"]
    head_update: Float[np.ndarray, "row layer head"]
    block_update: Float[np.ndarray, "row layer"]
    forced_self: Float[np.ndarray, "row layer head"]
    forced_sink: Float[np.ndarray, "row layer head"]

    def to_frame(self) -> pd.DataFrame:
        """Long and tidy: ``prompt``, ``position``, ``group``, ``layer``, ``head`` (-1: the layer's row, with the
        heads' mean self/sink attention and the block's relative update as ``update``), ``self_attention``,
        ``sink_attention``, ``update``, ``forced_self``, ``forced_sink`` (NaN on a layer's row)."""
        rows, layers, heads = self.self_attention.shape
        r, layer, head = (a.ravel() for a in np.meshgrid(np.arange(rows), np.arange(layers), np.arange(heads),
                                                        indexing="ij"))
        per_head = pd.DataFrame({
            "prompt": self.prompt[r], "position": self.position[r], "group": self.group[r], "layer": layer,
            "head": head, "self_attention": self.self_attention.ravel(), "sink_attention": self.sink_attention.ravel(),
            "update": self.head_update.ravel(), "forced_self": self.forced_self.ravel(),
            "forced_sink": self.forced_sink.ravel(),
        })
        r, layer = (a.ravel() for a in np.meshgrid(np.arange(rows), np.arange(layers), indexing="ij"))
        per_layer = pd.DataFrame({
            "prompt": self.prompt[r], "position": self.position[r], "group": self.group[r], "layer": layer,
            "head": -1, "self_attention": self.self_attention.mean(axis=2).ravel(),
            "sink_attention": self.sink_attention.mean(axis=2).ravel(), "update": self.block_update.ravel(),
            "forced_self": np.nan, "forced_sink": np.nan,
        })
        return pd.concat([per_head, per_layer], ignore_index=True)

    def _repr_html_(self) -> str:
        return result_html(
            "self-attention and update sizes", f"{len(self.prompt)} (prompt, position) rows, positions from "
            f"{FIRST_POSITIONS} on", {
                "mean self-attention": f"{self.self_attention.mean():.3f}",
                "mean sink attention": f"{self.sink_attention.mean():.3f}",
                "mean head write": f"{self.head_update.mean():.3g}",
                "mean forced-self write": f"{self.forced_self.mean():.3g}",
                "mean forced-sink write": f"{self.forced_sink.mean():.3g}",
            },
        )


def _layer_updates(
    model: HookedModel, layer: int, z: Float[Tensor, "batch pos head d_head"], v: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "3 batch pos head"]:
    """Norms of what each head adds to the residual stream: as it ran, forced onto itself, forced onto the sink.

    Each head's contribution is measured against the layer's sum without it, ``post(base - w_h + x) -
    post(base - w_h)``, which is ``x`` itself on a model without a post-norm."""
    W_O = model.blocks[layer].attn.W_O
    base = attention_sum(model, layer, z)
    writes = torch.einsum("bphd,hdm->hbpm", z, W_O)
    self_writes = torch.einsum("bphd,hdm->hbpm", v, W_O)
    sink_writes = self_writes[:, :, :1].expand_as(self_writes)
    out = torch.empty(3, *z.shape[:3])
    for h in range(z.shape[2]):
        variants = torch.stack([writes[h], self_writes[h], sink_writes[h]])
        entered = residual_change(model, layer, "attn", base - writes[h], variants)
        out[:, :, :, h] = entered.norm(dim=-1).float().cpu()
    return out


@frozen_model
def self_updates(model: HookedModel, prompts: PromptSet) -> SelfUpdateResult:
    """Self-attention, sink attention and update sizes at every clean position past the first ones, every layer
    and head (see the module's docstring)."""
    prompts.check_model(model)
    layers = range(model.cfg.n_layers)
    lengths = (prompts.end + 1).tolist()
    if max(lengths) <= FIRST_POSITIONS:
        raise ProbesError(f"every prompt has at most {FIRST_POSITIONS} tokens: no position past the first ones to "
                          "measure a self-update at; use longer prompts")
    kinds = ("pattern", "v", "z", "resid_pre", "resid_post")
    names = {get_act_name(kind, layer) for kind in kinds for layer in layers}
    need = functools.partial(attention_bytes, model)
    parts: dict[str, list[Tensor]] = {}
    for idx in batches(lengths, BATCH, need, "self-update measures", "shorten the prompts"):
        n_pos = max(lengths[idx])
        _, cache = model.run_with_cache(prompts.clean[idx, :n_pos].to(model.cfg.device),
                                        names_filter=lambda name: name in names, stop_at_layer=len(layers))
        per_layer = {key: [] for key in ("self", "sink", "update", "forced_self", "forced_sink", "block")}
        for layer in layers:
            pattern = cache[get_act_name("pattern", layer)]  # [batch, head, query, key]
            v = cache[get_act_name("v", layer)]
            v = v[:, :, kv_head_of(model, v.shape[2]).to(v.device)]  # grouped-query: each query head's value head
            diagonal = torch.arange(n_pos, device=pattern.device)
            per_layer["self"].append(pattern[:, :, diagonal, diagonal].transpose(1, 2).float().cpu())
            per_layer["sink"].append(pattern[:, :, :, 0].transpose(1, 2).float().cpu())
            updates = _layer_updates(model, layer, cache[get_act_name("z", layer)], v)
            for key, values in zip(("update", "forced_self", "forced_sink"), updates):
                per_layer[key].append(values)
            pre, post = cache[get_act_name("resid_pre", layer)], cache[get_act_name("resid_post", layer)]
            per_layer["block"].append(((post - pre).norm(dim=-1) / pre.norm(dim=-1).clamp_min(1e-12)).float().cpu())
        keep = torch.zeros(len(lengths[idx]), n_pos, dtype=torch.bool)
        for row, length in enumerate(lengths[idx]):
            keep[row, FIRST_POSITIONS:length] = True
        for key, values in per_layer.items():
            parts.setdefault(key, []).append(torch.stack(values, dim=2)[keep])  # [row, layer, (head)]
        where = keep.nonzero()
        parts.setdefault("prompt", []).append(where[:, 0] + idx.start)
        parts.setdefault("position", []).append(where[:, 1])
    cat = {key: torch.cat(values).numpy() for key, values in parts.items()}
    return SelfUpdateResult(
        prompt=cat["prompt"], position=cat["position"], group=prompts.group_index[cat["prompt"]],
        self_attention=cat["self"], sink_attention=cat["sink"], head_update=cat["update"],
        block_update=cat["block"], forced_self=cat["forced_self"], forced_sink=cat["forced_sink"],
    )
