"""Patching sweeps: every head (or position) of every layer, or every head's attention edge, patched one at a time,
each prompt's metric recorded (the engine, :mod:`.engine`, runs them; :mod:`.schedule` spreads them over threads)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.evidence.metric import Metric, logit_diff_from_resid
from probes.evidence.patching.checkpoint import Checkpoint
from probes.evidence.patching.engine import (
    cells_by_layer,
    n_variants_of,
    patch_window,
    plan_windows,
)
from probes.evidence.patching.options import SweepOptions
from probes.evidence.patching.prepare import (
    batch_budget,
    check_inputs,
    reference_runs,
    require_reference_fits,
    require_row_fits,
)
from probes.evidence.patching.schedule import n_workers, run_windows
from probes.evidence.patching.sites import (
    HEAD_COMPONENTS,
    INTERVENTIONS,
    RESID_COMPONENTS,
    Direction,
    Edge,
    PatchingResult,
    Site,
)
from probes.models.architecture import kv_groups
from probes.models.frozen import frozen_model
from probes.models.kernels import use_onednn
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import Role, src_dst_positions


@frozen_model
def patch_activations(
    model: HookedModel,
    prompts: PromptSet,
    component: str = "z",
    direction: Direction = "denoising",
    *,
    layers: Sequence[int] | None = None,
    cells: Sequence[tuple[int, int]] | None = None,
    checkpoint_dir: str | Path | None = None,
    memory_mb: float | None = None,
    progress: bool = True,
    onednn: bool | None = None,
    workers: int | None = None,
    metric: Metric = logit_diff_from_resid,
) -> PatchingResult:
    """Patch every head (``z``, ``pattern``, ``q``, ``k``, ``v``) or every position (``resid_pre``, ``attn_out``,
    ``mlp_out``) of every layer, one at a time, and record each prompt's metric.

    ``layers`` restricts the sweep to some layers, ``cells`` to explicit ``(layer, head-or-position)`` pairs
    (what a screen-then-verify pass re-checks); the rest of ``patched`` is NaN. Grouped-query models patch a
    key/value head for ``k``/``v``: the index axis then has ``n_key_value_heads`` entries and
    ``result.kv_groups`` says which query heads share each. ``checkpoint_dir``, ``memory_mb``, ``progress``,
    ``onednn``, ``workers`` and ``metric`` say how the sweep runs (:class:`.options.SweepOptions`).
    """
    site = check_inputs(model, prompts, component, direction, memory_mb)
    n_index = int(prompts.end.max()) + 1 if site.per_position else n_variants_of(model, component)
    todo = cells_by_layer(model, component, n_index, layers, cells)
    options = SweepOptions(checkpoint_dir, memory_mb, progress, onednn, workers, metric)
    return _sweep(model, prompts, SweepPlan(site, n_index, todo, direction), options)


@frozen_model
def edge_effects(
    model: HookedModel,
    prompts: PromptSet,
    src: Role,
    dst: Role,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    intervention: str = "knockout",
    direction: Direction = "denoising",
    checkpoint_dir: str | Path | None = None,
    memory_mb: float | None = None,
    progress: bool = True,
    onednn: bool | None = None,
    workers: int | None = None,
    metric: Metric = logit_diff_from_resid,
) -> PatchingResult:
    """Intervene on each head's attention edge ``src -> dst`` (roles or per-prompt positions; ``dst="previous"``
    is ``src - 1``), one head at a time, and record each prompt's metric: the causal test of "head L.H attends
    from src to dst, and that is how it does its job".

    - ``knockout`` (default): in the clean run, the head's weight from ``src`` to ``dst`` is set to 0 and the
      rest of its row renormalised. It asks whether the edge is *necessary*; the run patched into is the clean
      one (``direction`` is recorded as ``"noising"``), so ``effect`` is the change from the clean metric.
    - ``pattern_row``: the head's attention row at ``src`` only, from the other run (``direction`` as in
      :func:`patch_activations`): where the head looks at ``src``, nothing else.
    - ``z_at``: the head's output at ``src`` only, from the other run.

    Exact for grouped-query models too: the query head's own row is edited. Same engine, batching, workers and
    checkpoints as :func:`patch_activations`; the result has the same type and shape ``[prompt, layer, head]``.
    """
    if intervention not in INTERVENTIONS:
        raise ProbesError(f"unknown intervention '{intervention}'; choose one of: {', '.join(INTERVENTIONS)}")
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)
    if (src_pos > prompts.end).any():
        i = int((src_pos > prompts.end).nonzero()[0])
        raise ProbesError(f"prompt {i}: source {src!r} (position {int(src_pos[i])}) is after the read-off position")
    edge = Edge(intervention, src_pos, dst_pos)
    direction = "noising" if edge.knockout else direction
    site = check_inputs(model, prompts, edge.site.component, direction, memory_mb)
    n_index = model.cfg.n_heads  # an edge is a query head's own
    todo = cells_by_layer(model, intervention, n_index, None, heads)
    options = SweepOptions(checkpoint_dir, memory_mb, progress, onednn, workers, metric)
    return _sweep(model, prompts, SweepPlan(site, n_index, todo, direction, edge), options)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep patches: ``site`` in each cell of ``todo`` (layer -> the variants patched there, of ``n_index``
    a layer), from the other run in ``direction``; with an ``edge``, that intervention on each head's edge instead."""

    site: Site
    n_index: int
    todo: dict[int, list[int]]
    direction: Direction
    edge: Edge | None = None


def _sweep(model: HookedModel, prompts: PromptSet, plan: SweepPlan, options: SweepOptions) -> PatchingResult:
    """One patch per run, each cell of ``plan.todo`` in turn, windows of layers spread over worker threads."""
    site, n_index, todo, direction, edge = plan.site, plan.n_index, plan.todo, plan.direction, plan.edge
    onednn = use_onednn(model, options.onednn)
    workers = n_workers(model, options.workers)
    component = site.component if edge is None else edge.intervention
    checkpoint = None
    if options.checkpoint_dir is not None:
        where = () if edge is None else (edge.src, edge.dst)
        checkpoint = Checkpoint(Path(options.checkpoint_dir), model, prompts, component, direction, todo, where)
    done = {layer: checkpoint.load(layer, (len(prompts), len(todo[layer]))) for layer in todo} if checkpoint else {}
    done = {layer: values for layer, values in done.items() if values is not None}
    remaining = [layer for layer in todo if layer not in done]

    sources = [] if edge is not None and edge.knockout else [site]  # a knockout edits the run's own pattern
    start = None if edge is None else edge.src  # an edge changes the run from its query position on
    require_reference_fits(model, prompts, [s.component for s in sources])
    buckets, clean, corrupt = reference_runs(
        model, prompts, direction, sources, remaining, options.metric, onednn, start
    )

    patched = torch.full((len(prompts), model.cfg.n_layers, n_index), float("nan"))
    for layer, values in done.items():
        patched[:, layer, todo[layer]] = values
    require_row_fits(buckets)
    budget = batch_budget(options.memory_mb) / workers  # each worker's batches
    windows = plan_windows(remaining, todo, buckets, budget)
    values = {layer: torch.empty(len(prompts), len(todo[layer])) for layer in remaining}

    def run(window: list[int], bucket, stop: threading.Event) -> None:
        patch_window(model, bucket, site, window, todo, values, budget, stop, edge)

    bar = tqdm(
        total=len(todo),
        initial=len(done),
        desc=f"patching {component}",
        unit="layer",
        disable=None if options.progress else True,
    )
    finished = run_windows(windows, buckets, run, workers, onednn)
    with bar, contextlib.closing(finished):
        for window in finished:
            for layer in window:
                if checkpoint:
                    checkpoint.save(layer, values[layer])
                patched[:, layer, todo[layer]] = values[layer]
            bar.update(len(window))
    return PatchingResult(
        patched,
        clean,
        corrupt,
        direction,
        groups=prompts.group_index,
        component=component,
        index="pos" if site.per_position else ("kv_head" if n_index != model.cfg.n_heads else "head"),
        kv_groups=kv_groups(model) if site.component in ("k", "v") else None,
    )


def patch_heads(
    model: HookedModel,
    prompts: PromptSet,
    component: str = "z",
    direction: Direction = "denoising",
    **kwargs,
) -> Float[Tensor, "prompt layer head"]:
    """Effect of patching each head on each prompt's logit difference: patched minus the run patched into.

    ``component`` is ``z`` (the head's output), ``pattern``, ``q``, ``k`` or ``v``; keyword arguments go to
    :func:`patch_activations`, whose :class:`PatchingResult` also gives the normalised effect and baselines.
    """
    if component not in HEAD_COMPONENTS:
        raise ProbesError(f"patch_heads patches {', '.join(HEAD_COMPONENTS)}, not '{component}'")
    return patch_activations(model, prompts, component, direction, **kwargs).effect


def patch_resid(
    model: HookedModel,
    prompts: PromptSet,
    component: str = "resid_pre",
    direction: Direction = "denoising",
    **kwargs,
) -> Float[Tensor, "prompt layer pos"]:
    """Effect of patching the residual stream (``resid_pre``), or a layer's ``attn_out`` or ``mlp_out``, at each
    position, on each prompt's logit difference (same conventions as :func:`patch_heads`)."""
    if component not in RESID_COMPONENTS:
        raise ProbesError(f"patch_resid patches {', '.join(RESID_COMPONENTS)}, not '{component}'")
    return patch_activations(model, prompts, component, direction, **kwargs).effect


