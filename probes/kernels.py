"""Faster matrix products for float32 inference on CPU, without changing what is computed.

Every projection of a TransformerLens block (Q, K, V, O, MLP in/gate/out, unembedding) is one ``F.linear`` call.
On x86 the torch wheel runs it through MKL's sgemm, which on some CPUs (AMD's, measured on this project's
machine) takes a path at about half the speed of oneDNN's float32 kernel, shipped in the same wheel: ~85 vs
~185 GFLOP/s per core for a block's shapes (``bench/patching.py`` prints both rates). :func:`onednn_linear`
routes those calls to oneDNN for the code inside it: the same float32 products, summed in another order
(differences at float32 rounding, ~1e-6 relative).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's float32 linear and it agrees with ``F.linear`` (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x, w, b = torch.randn(3, 5, 8), torch.randn(6, 8), torch.randn(6)
    try:
        ours = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return ours.shape == (3, 5, 6) and torch.allclose(ours, F.linear(x, w, b), atol=1e-5)


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (
                x.dtype == weight.dtype == torch.float32
                and x.device.type == weight.device.type == "cpu"
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            ):
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linear(enabled: bool = True) -> Iterator[None]:
    """Inside this block, float32 CPU ``F.linear`` calls without gradients run on oneDNN (a no-op where it is
    unavailable, disabled, or for anything else: other dtypes, devices, or calls that need a gradient)."""
    if not (enabled and onednn_available()):
        yield
        return
    with _OneDNNLinear():
        yield
