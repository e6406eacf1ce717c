"""Store HookedTransformer weights in the memory layout its forward pass consumes.

TransformerLens 3.9 keeps weights in its canonical ``[head, d_model, d_head]`` / ``[d_model, d_mlp]`` shapes and
re-lays them out on every call (``einops.rearrange`` + ``.contiguous()``, ``W.T.contiguous()``): on a CPU that
copy dominates a forward pass (Gemma's unembedding alone is 262k x 640 floats). Here each such parameter becomes
a permuted *view* of a tensor already in the consumed order, so those calls are free views. Shapes, values and
every hook are unchanged; only strides differ.
"""

from __future__ import annotations

from torch import Tensor

from probes.models import tl

# permutation each forward call applies before its .contiguous()/reshape: see simple_attn_linear and
# AbstractAttention.forward (W_O), GatedMLP.forward and Unembed.forward in transformer_lens 3.9
QKV_ORDER = (0, 2, 1)  # [head, d_model, d_head] -> [head, d_head, d_model]
OUT_ORDER = (2, 0, 1)  # [head, d_head, d_model] -> [d_model, head, d_head]
TRANSPOSE = (1, 0)


def _store_permuted(param: Tensor, order: tuple[int, ...]) -> None:
    """Make ``param.permute(order)`` contiguous while ``param`` keeps its shape and values."""
    base = param.data.permute(order).contiguous()
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    param.data = base.permute(inverse)


def relayout_for_speed(model: tl.HookedTransformer) -> tl.HookedTransformer:
    """Re-lay out attention, gated-MLP and unembedding weights in place; returns the model for chaining."""
    for block in model.blocks:
        attn = block.attn
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
            param = attn._parameters.get(name)
            if param is not None:
                _store_permuted(param, QKV_ORDER)
        _store_permuted(attn.W_O, OUT_ORDER)
        if isinstance(getattr(block, "mlp", None), tl.GatedMLP):
            for name in ("W_in", "W_gate", "W_out"):
                _store_permuted(getattr(block.mlp, name), TRANSPOSE)
    _store_permuted(model.unembed.W_U, TRANSPOSE)
    return model
