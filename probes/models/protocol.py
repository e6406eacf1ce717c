"""The model protocol: what the kit's stages use from a model, so any object that offers it will do.

No stage names a model class. Each takes a :class:`HookedModel`: an object with TransformerLens's interface as far
as the kit reads it (its config, its hooks by TransformerLens name, ``run_with_hooks``/``run_with_cache``, the
weights read directly). TransformerLens 3.x's ``HookedTransformer`` offers it as it is; an adapter for another
model class needs only these members. The TransformerLens-specific internals the kit relies on beyond them (the
key/value cache the patching engine runs blocks from) live in :mod:`probes.models.kv_cache`, and every import of
TransformerLens stays inside :mod:`probes.models` (an import-linter contract in ``pyproject.toml``).

Types only: nothing here runs, and ``isinstance(model, HookedModel)`` checks only that the top-level members exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# (activation, hook point) -> the activation to use instead, or None to leave it: TransformerLens's hook functions
HookFn = Callable[[Tensor, nn.Module], Tensor | None]


class ModelConfig(Protocol):
    """The configuration fields the kit reads, with TransformerLens's names and meanings (``HookedTransformerConfig``)."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    n_key_value_heads: int | None  # None without grouped-query attention
    ungroup_grouped_query_attention: bool  # hooks then show one key/value head per query head
    device: torch.device | str | None
    dtype: torch.dtype  # of the key/value cache (probes.models.kv_cache)
    model_name: str
    default_prepend_bos: bool
    attn_only: bool
    use_normalization_before_and_after: bool  # Gemma 2/3: blocks also have ln1_post/ln2_post (probes.models.writes)
    parallel_attn_mlp: bool  # the MLP reads the block's input, not what its attention wrote (probes.evidence.circuits)
    attention_dir: str  # "causal" for every model the kit patches
    positional_embedding_type: str  # "standard", "rotary", "shortformer", ...
    rotary_dim: int | None
    rotary_adjacent_pairs: bool
    use_dynamic_ntk_rope: bool
    attn_scores_soft_cap: float  # <= 0: none
    output_logits_soft_cap: float  # <= 0: none
    original_architecture: str | None
    # what decides whether a block's keys and values can be computed alone (probes.models.architecture)
    use_attn_in: bool
    use_split_qkv_input: bool
    use_hook_mlp_in: bool  # with use_split_qkv_input, set for a run by probes.models.inputs.split_inputs
    clip_qkv: float | None


class Attention(Protocol):
    """A block's attention, as the kit reads it: its output weights, score scale and (rotary models) rotary tables,
    its hook points, and its query/key/value projection (which the engine calls to get keys and values alone)."""

    W_O: Float[Tensor, "head d_head d_model"]
    b_O: Float[Tensor, " d_model"]
    attn_scale: float
    rotary_sin: Float[Tensor, "pos rotary_half"]  # rotary models only
    rotary_cos: Float[Tensor, "pos rotary_half"]  # rotary models only

    def calculate_qkv_matrices(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def get_submodule(self, target: str) -> nn.Module: ...


class Block(Protocol):
    """One transformer block: callable on the residual stream, given (for the patching engine) the keys and values
    of earlier positions as a TransformerLens key/value cache entry (:mod:`probes.models.kv_cache` builds it).
    Post-norm models' blocks also have the norms :func:`probes.models.writes.post_norms` names (``ln1_post``,
    ``ln2_post``, ``ln2``)."""

    attn: Attention
    ln1: Callable[[Tensor], Tensor]

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], past_kv_cache_entry: Any = None) -> Tensor: ...


class Unembed(Protocol):
    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"]

    def __call__(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]: ...


class ActivationCache(Protocol):
    """What ``run_with_cache`` returns beside the output: activations by hook name."""

    cache_dict: dict[str, Tensor]

    def __getitem__(self, name: str) -> Tensor: ...


@runtime_checkable
class HookedModel(Protocol):
    """A causal language model with TransformerLens's hooks, as the kit's functions use it.

    Hooks are named as TransformerLens names them (:func:`probes.models.hooks.get_act_name`: ``blocks.L.attn.hook_z``,
    ...) and are modules (``get_submodule(name)``) a forward hook can be registered on. Runs take token ids
    ``[batch, pos]``, or with ``start_at_layer`` the residual stream there; with ``stop_at_layer`` they return the
    residual stream before that layer instead of logits. Also read where present: ``ln_final`` (the final
    normalisation; absent means none) and ``provenance`` (where the weights came from, for run records).
    """

    cfg: ModelConfig
    tokenizer: PreTrainedTokenizerBase | None  # None for models built from token ids (the toy models)
    blocks: Sequence[Block]
    unembed: Unembed

    def __call__(self, input: Tensor, *, stop_at_layer: int | None = None) -> Tensor: ...

    def run_with_hooks(
        self,
        input: Tensor,
        *,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Tensor: ...

    def run_with_cache(
        self,
        input: Tensor,
        *,
        names_filter: Callable[[str], bool] | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: Any = None,  # what probes.models.kv_cache passes to keep keys and values
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, ActivationCache]: ...

    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> AbstractContextManager[Any]:
        """Hooks added for the ``with`` block only (what ``run_with_cache`` cannot take itself)."""
        ...

    def get_submodule(self, target: str) -> nn.Module: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

