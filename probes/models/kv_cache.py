"""TransformerLens's key/value cache, as the patching engine uses it: runs that keep every layer's keys and values,
and blocks run on later positions only, attending to earlier ones through those keys and values.

The engine (:mod:`probes.evidence.patching`) holds keys and values as plain tensors; only this module knows how
TransformerLens takes and gives them (``TransformerLensKeyValueCache`` and its frozen entries, 3.x's names).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from probes.models.protocol import Block, HookedModel

# One layer's keys and values for each batch row: ([batch, pos, kv_head, d_head], [batch, pos, kv_head, d_head])
KeysValues = tuple[Tensor, Tensor]


def run_keeping_keys_values(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], names: set[str]
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor], list[KeysValues]]:
    """The residual stream after the last block, the activations of the hooks ``names``, and every layer's keys
    and values, from one run of ``tokens``."""
    # TransformerLens wants an attention mask with a key/value cache; all ones masks nothing.
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(tokens))  # pyright: ignore[reportArgumentType]  # TransformerLens's own config: the protocol names only what the kit reads
    final, acts = model.run_with_cache(
        tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), stop_at_layer=model.cfg.n_layers,
        names_filter=lambda name: name in names,
    )  # fmt: skip
    return final, dict(acts.cache_dict), [(e.past_keys, e.past_values) for e in cache.entries]


def run_block(
    block: Block,
    resid: Float[Tensor, "row pos d_model"],
    prefix: KeysValues | None,
    positions: Float[Tensor, "1 pos d_model"] | None = None,
) -> Float[Tensor, "row pos d_model"]:
    """``block`` on the positions of ``resid``, which follow the positions whose keys and values are ``prefix``
    (None: ``resid`` starts at position 0). ``positions``: a shortformer model's positional embedding of those
    positions, which the block adds to its query and key inputs
    (:func:`probes.models.architecture.shortformer_positions`)."""
    return block(resid, shortformer_pos_embed=positions, past_kv_cache_entry=_entry(prefix))


def run_block_at_last(
    block: Block,
    resid: Float[Tensor, "row pos d_model"],
    prefix: KeysValues | None,
    positions: Float[Tensor, "1 pos d_model"] | None = None,
) -> Float[Tensor, "row 1 d_model"]:
    """``block`` at the last position only. The other positions matter there only as keys and values, so they get
    ``ln1`` and the key/value projection, and no attention output or MLP: about one layer less per patched run.
    Valid where keys and values come from ``ln1(resid)`` alone (:func:`probes.models.architecture.keys_values_separate`).
    Shortformer ``positions`` join the keys (as the block adds them to its key input), not the values."""
    context = block.ln1(resid[:, :-1])
    key_input = context if positions is None else context + positions[:, :-1]
    _, keys, values = block.attn.calculate_qkv_matrices(context[:, :0], key_input, context)
    if prefix is not None:
        keys, values = torch.cat([prefix[0], keys], 1), torch.cat([prefix[1], values], 1)
    return run_block(block, resid[:, -1:], (keys, values), None if positions is None else positions[:, -1:])


def _entry(prefix: KeysValues | None) -> TransformerLensKeyValueCacheEntry | None:
    return None if prefix is None else TransformerLensKeyValueCacheEntry(prefix[0], prefix[1], frozen=True)
