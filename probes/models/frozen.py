"""Measure a model as it runs at inference, whatever state the user holds it in, and hand it back unchanged.

``HookedTransformer(cfg)`` and ``from_pretrained`` give models whose parameters require grad; a user may also hold
one in train mode between training steps. A measurement needs neither: with grad on, every product with a weight
records an autograd graph (memory, time, and tensors ``.numpy()`` refuses), and TransformerLens computes some
attention differently in train mode (Qwen's log-n scaling and dynamic NTK rotary apply in eval mode only).

:func:`frozen_model` wraps each public entry point that takes a model: the call runs under ``torch.no_grad()``
and with every module in eval mode, and each module's ``training`` flag is restored afterwards (``requires_grad``
flags are never touched). ``no_grad`` rather than ``inference_mode``: attribution takes a backward pass inside
(``torch.enable_grad()``), and tensors made under inference mode cannot enter a graph. Grad mode is per thread:
code that runs a model on worker threads enters ``no_grad`` there too (the patching engine's batches do).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def frozen_model(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(model, ...)`` with no autograd graph and the model in eval mode; its modes restored after."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        model = kwargs["model"] if "model" in kwargs else args[0]
        modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
        training = [module.training for module in modules]
        try:
            for module in modules:
                module.training = False
            with torch.no_grad():
                return fn(*args, **kwargs)
        finally:
            for module, mode in zip(modules, training):
                module.training = mode

    return wrapper
