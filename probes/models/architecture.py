"""What the evidence stages need to know about a model's architecture, in one place.

- Grouped-query attention: TransformerLens keeps ``n_key_value_heads`` key/value heads and repeats each for
  consecutive query heads (``repeat_interleave``), so query head ``h`` reads key/value head ``h // group``.
- Which configurations compute keys and values straight from ``ln1(resid)`` (what lets the patching engine run
  the last block at the read-off position only).
- Shortformer positions (TransformerLens's attention-only toy models): the positional embedding is not in the
  residual stream but added to each layer's query and key inputs, so code that runs blocks from a cached residual
  stream must hand each block the positions it computes (:func:`shortformer_positions`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from probes.models.protocol import HookedModel

# Configurations whose attention normalises queries/keys inside forward rather than in ``calculate_qkv_matrices``
# (see AbstractAttention.forward and TransformerBlock.forward in transformer_lens 3.9).
_QK_NORM_IN_FORWARD = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


# An attention layer holds about this many [batch, head, query, key] float32 tensors at once (scores, masked scores,
# pattern): quadratic in the prompt length, 14 GB for a batch of 16 prompts of 5,000 tokens in SmolLM2.
ATTENTION_COPIES = 3


def attention_bytes(model: HookedModel, batch: int, n_pos: int) -> int:
    """Peak bytes of one attention layer's score and pattern tensors for ``batch`` prompts of ``n_pos`` tokens."""
    return ATTENTION_COPIES * batch * model.cfg.n_heads * n_pos * n_pos * 4


def kept_attention_bytes(model: HookedModel, batch: int, n_pos: int) -> int:
    """Bytes of every layer's attention pattern and values for ``batch`` prompts, float32: what a shared clean run
    keeps for a run's attention measures (:mod:`probes.evidence.attention`)."""
    cfg = model.cfg
    per_layer = cfg.n_heads * n_pos * n_pos + n_pos * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    return 4 * batch * cfg.n_layers * per_layer


def n_kv_heads(model: HookedModel) -> int:
    """Key/value heads as the hooks see them: one per query head without grouped-query attention, and in
    TransformerLens's ungrouped mode (``cfg.ungroup_grouped_query_attention``), which expands them (a field
    TransformerLens 4's bridge config does not have)."""
    if getattr(model.cfg, "ungroup_grouped_query_attention", False):
        return model.cfg.n_heads
    return model.cfg.n_key_value_heads or model.cfg.n_heads


def kv_groups(model: HookedModel) -> Int[Tensor, "kv_head group"]:
    """Row ``g`` lists the query heads that read key/value head ``g``."""
    return torch.arange(model.cfg.n_heads).reshape(n_kv_heads(model), model.cfg.n_heads // n_kv_heads(model))


def kv_head_of(model: HookedModel, n_value_heads: int | None = None) -> Int[Tensor, " head"]:
    """The key/value head each query head reads, among ``n_value_heads`` (default: the model's key/value heads;
    pass the head count of the activation at hand: with ``cfg.ungroup_grouped_query_attention`` TransformerLens
    expands keys and values to one per query head, and the map is the identity)."""
    return torch.arange(model.cfg.n_heads) // (model.cfg.n_heads // (n_value_heads or n_kv_heads(model)))


def keys_values_separate(model: HookedModel) -> bool:
    """Whether a block's keys and values come from ``ln1(resid)`` through ``calculate_qkv_matrices`` straight
    into the key/value cache, so they can be computed without running the rest of the block."""
    cfg = model.cfg
    return not (
        cfg.use_attn_in
        or cfg.use_split_qkv_input
        or cfg.clip_qkv is not None
        or cfg.original_architecture in POST_NORM_ARCHITECTURES
        or cfg.original_architecture in _QK_NORM_IN_FORWARD
    )


def shortformer_positions(model: HookedModel, start: int, n: int) -> Float[Tensor, "1 pos d_model"] | None:
    """The positional embedding of positions ``start..start + n - 1`` that a shortformer block adds to its query and
    key inputs (``shortformer_pos_embed``, broadcast over the batch); None for every other positional scheme."""
    if model.cfg.positional_embedding_type != "shortformer":
        return None
    positions = torch.zeros(1, n, dtype=torch.long, device=model.cfg.device)  # PosEmbed reads only the shape
    return model.get_submodule("pos_embed")(positions, past_kv_pos_offset=start)
