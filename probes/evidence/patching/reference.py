"""The two unpatched runs a sweep reads, shared by every sweep of one analysis inside a :func:`shared_runs` scope
(attention measures too: :mod:`probes.evidence.attention` reads its patterns and values from a kept clean run).

Each sweep needs, per group of prompts read off at the same position, the run patched into (its residual stream at
the patched layers, its keys and values, its metric) and the other run (the activations patched in, its metric).
Inside ``with shared_runs():`` (``probes run`` opens one around all its evidence) each side of each such group
runs once, keeping its keys and values and every hook asked for so far; a later sweep that needs activations not
yet kept runs that side again only up to the last layer it reads. Outside a scope every call runs afresh, so a
model whose weights change between calls is never read stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.models.bridge import final_resid, is_bridge
from probes.models.kv_cache import KeysValues, run_keeping_keys_values
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

_SCOPE: ContextVar[dict | None] = ContextVar("probes_shared_runs", default=None)


@contextmanager
def shared_runs() -> Iterator[None]:
    """Within this block, sweeps on the same model and prompts share their clean and corrupt runs (an enclosing
    scope, if any, is the one shared)."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


@dataclass
class SideRun:
    """One side (clean or corrupt) of a group of prompts, run over positions ``0..end``."""

    tokens: Tensor  # the token tensor run (held so that the scope's key, its id, stays this tensor's)
    final: Float[Tensor, "member d_model"]  # final residual stream at the read-off position
    acts: dict[str, Tensor]  # hook name -> activation
    kv: list[KeysValues]  # per layer, keys and values


def sharing() -> bool:
    """Whether a :func:`shared_runs` scope is open."""
    return _SCOPE.get() is not None


def group_of(prompts: PromptSet, members: Int[Tensor, " member"], end: int) -> Int[Tensor, " member"]:
    """The prompts a run for ``members`` covers: in a scope, every prompt read off at ``end`` (so that sweeps
    grouping prompts differently share it); outside, just ``members``."""
    return torch.nonzero(prompts.end == end)[:, 0] if sharing() else members


@torch.no_grad()
def side_run(
    model: HookedModel, tokens: Int[Tensor, "prompt pos"], group: Int[Tensor, " member"], end: int,
    names: set[str],
) -> SideRun:  # fmt: skip
    """``tokens[group, :end + 1]`` run with the hooks ``names`` kept (and every layer's keys and values)."""
    scope = _SCOPE.get()
    key = (id(model), id(tokens), end, tuple(group.tolist()))
    run = scope.get(key) if scope is not None else None
    batch = tokens[group, : end + 1]
    if run is None and is_bridge(model):  # no TransformerLens key/value cache: its patched runs start at 0
        final, acts = final_resid(model, batch, names=names)
        run = SideRun(tokens, final[:, end], acts, [])
    elif run is None:
        final, acts, kv = run_keeping_keys_values(model, batch, names)
        run = SideRun(tokens, final[:, end], acts, kv)
    elif missing := names - run.acts.keys():
        stop = max(int(name.split(".")[1]) for name in missing) + 1  # "blocks.L.…": stop after the last layer read
        _, acts = model.run_with_cache(batch, stop_at_layer=stop, names_filter=lambda name: name in missing)
        run.acts.update(acts.cache_dict)
    if scope is not None:
        scope[key] = run
    return run
