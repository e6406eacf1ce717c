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

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# (hook name, or a test on names; hook function): the function takes (activation, hook point) and returns the
# activation to use instead, or None to leave it. Typed as loosely as TransformerLens types it, as a protocol
# member's list parameter must be (a list is invariant).
Hooks = list[tuple[str | Callable[..., Any], Callable[..., Any]]]


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

    @property
    def device(self) -> torch.device | str | None: ...  # read-only here: TransformerLens's is a str
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

    # members a class holds are read-only properties here and below: a class may hold a subtype (a Parameter)
    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]: ...
    @property
    def b_O(self) -> Float[Tensor, " d_model"]: ...
    @property
    def attn_scale(self) -> float: ...
    @property
    def rotary_sin(self) -> Float[Tensor, "pos rotary_half"]: ...  # rotary models only
    @property
    def rotary_cos(self) -> Float[Tensor, "pos rotary_half"]: ...  # rotary models only

    def calculate_qkv_matrices(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def get_submodule(self, target: str) -> nn.Module: ...


class Block(Protocol):
    """One transformer block: callable on the residual stream, given (for the patching engine) the keys and values
    of earlier positions as a TransformerLens key/value cache entry (:mod:`probes.models.kv_cache` builds it).
    Post-norm models' blocks also have the norms :func:`probes.models.writes.post_norms` names (``ln1_post``,
    ``ln2_post``, ``ln2``)."""

    @property
    def attn(self) -> Attention: ...
    @property
    def ln1(self) -> Callable[[Tensor], Tensor]: ...

    def get_submodule(self, target: str) -> nn.Module: ...

    def __call__(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        shortformer_pos_embed: Tensor | None = None,
        past_kv_cache_entry: Any = None,
    ) -> Tensor: ...


class Unembed(Protocol):
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]: ...
    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]: ...

    def __call__(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]: ...


class Blocks(Protocol):
    """The blocks in order (TransformerLens's ``nn.ModuleList``)."""

    def __getitem__(self, index: int, /) -> Block: ...

    def __iter__(self) -> Iterator[Block]: ...

    def __len__(self) -> int: ...


class ActivationCache(Protocol):
    """What ``run_with_cache`` returns beside the output: activations by hook name."""

    cache_dict: dict[str, Tensor]

    def __getitem__(self, name: str, /) -> Tensor: ...


@runtime_checkable
class HookedModel(Protocol):
    """A causal language model with TransformerLens's hooks, as the kit's functions use it.

    Hooks are named as TransformerLens names them (:func:`probes.models.hooks.get_act_name`: ``blocks.L.attn.hook_z``,
    ...) and are modules (``get_submodule(name)``) a forward hook can be registered on. Runs take token ids
    ``[batch, pos]``, or with ``start_at_layer`` the residual stream there; with ``stop_at_layer`` they return the
    residual stream before that layer instead of logits. Also read where present: ``ln_final`` (the final
    normalisation; absent means none) and ``provenance`` (where the weights came from, for run records).
    """

    @property
    def cfg(self) -> ModelConfig: ...
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...  # None for models built from token ids (toy models)
    @property
    def blocks(self) -> Blocks: ...
    @property
    def unembed(self) -> Unembed: ...

    def __call__(self, input: Tensor, *, stop_at_layer: int | None = None) -> Tensor: ...

    def run_with_hooks(
        self,
        input: Tensor,
        *,
        fwd_hooks: Hooks = ...,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        shortformer_pos_embed: Tensor | None = None,  # a shortformer's positions, with start_at_layer
    ) -> Tensor: ...

    def run_with_cache(
        self,
        input: Tensor,
        *,
        names_filter: Callable[[str], bool] | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: Any = None,  # what probes.models.kv_cache passes to keep keys and values
        attention_mask: Tensor | None = None,
    ) -> tuple[Any, ActivationCache]: ...  # TransformerLens types the output as a union (None, losses): a Tensor here

    def hooks(self, fwd_hooks: Hooks = ...) -> AbstractContextManager[Any]:
        """Hooks added for the ``with`` block only (what ``run_with_cache`` cannot take itself)."""
        ...

    def get_submodule(self, target: str) -> nn.Module: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

