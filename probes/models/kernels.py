"""Faster matrix products for float32 inference on CPU, without changing what is computed.

Every projection of a TransformerLens block (Q, K, V, O, MLP in/gate/out, unembedding) is one ``F.linear`` call.
On x86 the torch wheel runs it through MKL's sgemm, which on some CPUs (an AMD EPYC, this project's machine) takes
a path at about half the speed of oneDNN's float32 kernel, shipped in the same wheel: for a block's shapes ~85
vs ~185 GFLOP/s on one core, ~170 vs ~400 on two (``bench/patching.py`` prints both rates).
:func:`onednn_linear` routes those calls to oneDNN for the code inside it: the same float32 products, summed in
another order (differences at float32 rounding, ~1e-6 relative).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


@cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's float32 linear and it agrees with ``F.linear`` (checked once, on fixed
    inputs, so that the global random state is left alone)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x = torch.linspace(-1, 1, 40).reshape(5, 8)
    w, b = torch.linspace(-2, 2, 48).reshape(6, 8), torch.linspace(0, 1, 6)
    try:
        ours = onednn_product(x, w, b)
    except (AttributeError, RuntimeError):
        return False
    return ours.shape == (5, 6) and torch.allclose(ours, F.linear(x, w, b), atol=1e-5)


def onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _routable(x: object, weight: object, bias: object) -> bool:
    """Float32 strided CPU tensors in the shapes oneDNN's kernel takes, none of which needs a gradient; the
    rest (other dtypes, devices or layouts, odd biases, anything autograd must see) stays with ``F.linear``."""
    tensors = [x, weight] if bias is None else [x, weight, bias]
    if not all(
        isinstance(t, Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided
        for t in tensors
    ):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    shapes_fit = x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1]
    return shapes_fit and (bias is None or tuple(bias.shape) == (weight.shape[0],))


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, weight, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
            if _routable(x, weight, bias):
                return onednn_product(x, weight, None if bias is None else bias.contiguous())
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linear(enabled: bool = True) -> Iterator[None]:
    """Inside this block, float32 CPU ``F.linear`` calls without gradients run on oneDNN (a no-op where it is
    unavailable, disabled here or by ``torch.backends.mkldnn.enabled``, and for any call it does not fit). Torch
    function modes belong to a thread: worker threads must enter it themselves."""
    if not (enabled and torch.backends.mkldnn.enabled and onednn_available()):
        yield
        return
    with _OneDNNLinear():
        yield
