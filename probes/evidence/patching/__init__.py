"""Activation patching: the exact per-prompt effect on the metric of swapping one activation between minimal pairs.

Denoising runs the corrupt prompt with one activation taken from the clean run (does this piece *restore* the
answer?); noising runs the clean prompt with one activation from the corrupt run (is this piece *necessary*?).
The numbers equal TransformerLens's ``transformer_lens.patching`` functions (checked by the tests), at a fraction
of the cost: :mod:`.engine` says how. The metric is a parameter (default: answer-minus-foil logit difference from
the final residual stream, :func:`probes.evidence.metric.logit_diff_from_resid`).

A sweep can be checkpointed (:mod:`.checkpoint`): each finished layer is written atomically under
``checkpoint_dir``, keyed by a fingerprint of the model, the prompts and the sweep; a rerun skips it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.memory import budget_bytes, require_fits
from probes.evidence.metric import Metric, logit_diff_from_resid
from probes.evidence.patching.checkpoint import Checkpoint
from probes.evidence.patching.engine import (
    Bucket,
    bucket_keys,
    cells_by_layer,
    n_variants_of,
    patch_window,
    plan_windows,
    prepare_bucket,
    run_rows,
    runs_rows,
)
from probes.evidence.patching.paths import LOGITS, PathsResult, patch_paths
from probes.evidence.patching.reference import group_of, shared_runs, side_run
from probes.evidence.patching.schedule import n_workers, sweep
from probes.evidence.patching.sites import (
    DIRECTIONS,
    HEAD_COMPONENTS,
    INTERVENTIONS,
    RESID_COMPONENTS,
    SITES,
    Direction,
    Edge,
    PatchingResult,
    RunsResult,
    Site,
)
from probes.models.architecture import kv_groups
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.kernels import onednn_linear, use_onednn
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import Role, src_dst_positions

__all__ = [
    "DIRECTIONS", "HEAD_COMPONENTS", "INTERVENTIONS", "LOGITS", "RESID_COMPONENTS", "SITES", "Direction", "Edge",
    "PathsResult", "PatchingResult", "RunsResult", "Site", "edge_effects", "patch_activations", "patch_heads",
    "patch_paths", "patch_resid", "patch_runs", "reference_bytes", "shared_runs",
]  # fmt: skip

BATCH_MB = 1024.0  # default cap on the patched runs in flight: larger batches are no faster on a CPU (engine.py)
FIX = "shorten the prompts, use fewer of them, or raise PROBES_MEMORY_FRACTION"


def reference_bytes(model: HookedModel, n_prompts: int, n_pos: int, components: Sequence[str]) -> int:
    """Rough float32 bytes the two unpatched runs keep for a sweep of ``components`` over every layer: the
    target's residual stream, both sides' keys and values, and the source's activation at each component's hook
    (what :func:`_reference_runs` holds while the patched batches run)."""
    cfg = model.cfg
    kv, heads = cfg.n_key_value_heads or cfg.n_heads, cfg.n_heads
    width = {"z": heads * cfg.d_head, "q": heads * cfg.d_head, "k": kv * cfg.d_head, "v": kv * cfg.d_head,
             "pattern": heads * n_pos, "resid_pre": cfg.d_model, "attn_out": cfg.d_model, "mlp_out": cfg.d_model}
    per_position = cfg.d_model + 2 * 2 * kv * cfg.d_head + sum(width[c] for c in components if c in width)
    return 4 * n_prompts * n_pos * cfg.n_layers * per_position


def batch_budget(memory_mb: float | None) -> float:
    """Bytes the batches of patched runs in flight may take: ``memory_mb`` (default :data:`BATCH_MB`), lowered
    to the kit's memory budget (:func:`probes.core.memory.budget_bytes`, a share of the memory free now, after
    the reference runs are held) when that is smaller. One mechanism for every stage: this only caps it."""
    return min((BATCH_MB if memory_mb is None else memory_mb) * 2**20, budget_bytes())


def _require_reference_fits(model: HookedModel, prompts: PromptSet, components: Sequence[str]) -> None:
    need = reference_bytes(model, len(prompts), int(prompts.end.max()) + 1, components)
    require_fits(need, f"patching {len(prompts)} prompts (the clean and corrupt runs it keeps)", FIX)


def _require_row_fits(buckets: list[Bucket]) -> None:
    """One patched run must fit the kit's memory budget: a batch is never smaller than one run (a ``memory_mb``
    below one run only means one run per batch)."""
    require_fits(max(bucket.row_bytes for bucket in buckets), "one patched run", FIX)


def check_inputs(model: HookedModel, prompts: PromptSet, component: str, direction: str, memory_mb: float | None) -> Site:
    if component not in SITES:
        raise ProbesError(f"unknown component '{component}'; choose one of: {', '.join(SITES)}")
    if direction not in DIRECTIONS:
        raise ProbesError(f"unknown direction '{direction}'; choose 'denoising' (clean into corrupt) or 'noising'")
    if memory_mb is not None and memory_mb <= 0:
        raise ProbesError(f"memory_mb must be positive, got {memory_mb}")
    if len(prompts) == 0:
        raise ProbesError("the prompt set is empty: there is nothing to patch")
    prompts.check_model(model)  # first: a model the kit cannot measure is refused with what it lacks
    if component == "mlp_out" and model.cfg.attn_only:
        raise ProbesError("component 'mlp_out' needs MLP layers, but this model is attention-only; use 'attn_out'")
    if getattr(model.cfg, "ungroup_grouped_query_attention", False):  # (not a field in TransformerLens 4)
        raise ProbesError(
            "patching runs on grouped keys and values (its key/value cache is TransformerLens's, sized by "
            "n_key_value_heads): set model.cfg.ungroup_grouped_query_attention = False"
        )
    prompts.check_pairs()
    return SITES[component]


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
    ``result.kv_groups`` says which query heads share each. ``memory_mb`` bounds the activations of the batches
    of patched runs in flight (each worker's batches get an equal share; default :data:`BATCH_MB`, lowered to the
    kit's memory budget, :func:`batch_budget`); ``checkpoint_dir`` makes an interrupted
    sweep resume where it stopped. ``onednn`` overrides the float32 linear kernel measured fastest here
    (:func:`probes.models.kernels.use_onednn`): ``True`` oneDNN's, ``False`` torch's default. ``workers``
    threads share the batches, each with an equal share of torch's threads (default on CPU: one per torch
    thread, at most 4; see :func:`.schedule.n_workers`).
    ``metric(model, final_resid, answer, foil)`` is what each run reports (default: logit difference).
    """
    site = check_inputs(model, prompts, component, direction, memory_mb)
    n_index = int(prompts.end.max()) + 1 if site.per_position else n_variants_of(model, component)
    todo = cells_by_layer(model, component, n_index, layers, cells)
    return _sweep(
        model, prompts, site, n_index, todo, direction, checkpoint_dir, memory_mb, progress, onednn, workers, metric
    )


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
    return _sweep(
        model, prompts, site, n_index, todo, direction, checkpoint_dir, memory_mb, progress, onednn, workers, metric,
        edge,
    )


def _sweep(
    model: HookedModel,
    prompts: PromptSet,
    site: Site,
    n_index: int,
    todo: dict[int, list[int]],
    direction: Direction,
    checkpoint_dir: str | Path | None,
    memory_mb: float | None,
    progress: bool,
    onednn: bool | None,
    workers: int | None,
    metric: Metric,
    edge: Edge | None = None,
) -> PatchingResult:
    """One patch per run, each cell of ``todo`` (``n_index`` variants a layer) in turn, windows of layers spread
    over worker threads."""
    onednn = use_onednn(model, onednn)
    workers = n_workers(model, workers)
    component = site.component if edge is None else edge.intervention
    checkpoint = None
    if checkpoint_dir is not None:
        where = () if edge is None else (edge.src, edge.dst)
        checkpoint = Checkpoint(Path(checkpoint_dir), model, prompts, component, direction, todo, where)
    done = {layer: checkpoint.load(layer, (len(prompts), len(todo[layer]))) for layer in todo} if checkpoint else {}
    done = {layer: values for layer, values in done.items() if values is not None}
    remaining = [layer for layer in todo if layer not in done]

    sources = [] if edge is not None and edge.knockout else [site]  # a knockout edits the run's own pattern
    start = None if edge is None else edge.src  # an edge changes the run from its query position on
    _require_reference_fits(model, prompts, [s.component for s in sources])
    buckets, clean, corrupt = _reference_runs(model, prompts, direction, sources, remaining, metric, onednn, start)

    patched = torch.full((len(prompts), model.cfg.n_layers, n_index), float("nan"))
    for layer, values in done.items():
        patched[:, layer, todo[layer]] = values
    _require_row_fits(buckets)
    budget = batch_budget(memory_mb) / workers  # each worker's batches
    windows = plan_windows(remaining, todo, buckets, budget)
    values = {layer: torch.empty(len(prompts), len(todo[layer])) for layer in remaining}

    def run(window: list[int], bucket, stop: threading.Event) -> None:
        patch_window(model, bucket, site, window, todo, values, budget, stop, edge)

    bar = tqdm(
        total=len(todo),
        initial=len(done),
        desc=f"patching {component}",
        unit="layer",
        disable=None if progress else True,
    )
    finished = sweep(windows, buckets, run, workers, onednn)
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


@frozen_model
def patch_runs(
    model: HookedModel,
    prompts: PromptSet,
    runs: Sequence[Sequence[tuple[str, int, int]]],
    direction: Direction = "denoising",
    *,
    memory_mb: float | None = None,
    onednn: bool | None = None,
    metric: Metric = logit_diff_from_resid,
) -> RunsResult:
    """Patched runs that each patch several sites at once: run ``r`` patches every ``(component, layer, head)``
    of ``runs[r]`` (head components: ``z``, ``pattern``, ``q``, ``k``, ``v``) together, from the other run, and
    each prompt's metric is recorded. Same engine as the sweeps (start at the earliest patch, prefix reuse,
    batched runs, only the metric read), so ``patch_runs(model, prompts, [[("z", l, h)]])`` equals
    ``patch_activations(..., "z", cells=[(l, h)])``.
    """
    if not runs or any(not run for run in runs):
        raise ProbesError("patch_runs needs a non-empty list of runs, each a non-empty list of (component, layer, head)")
    components = sorted({component for run in runs for component, _, _ in run})
    sites = {component: check_inputs(model, prompts, component, direction, memory_mb) for component in components}
    for component, site in sites.items():
        if site.per_position:
            raise ProbesError(f"patch_runs patches heads ({', '.join(HEAD_COMPONENTS)}); for '{component}' use patch_resid")
    for run in runs:
        for component, layer, head in run:
            cells_by_layer(model, component, n_variants_of(model, component), None, [(layer, head)])  # checks both
    layers = sorted({layer for run in runs for _, layer, _ in run})
    _require_reference_fits(model, prompts, components)
    onednn = use_onednn(model, onednn)
    buckets, clean, corrupt = _reference_runs(model, prompts, direction, list(sites.values()), layers, metric, onednn)
    patched = torch.full((len(prompts), len(runs)), float("nan"))
    groups: dict[tuple[str, ...], list[int]] = {}  # runs patching the same components in the same order batch
    for r, run in enumerate(runs):
        groups.setdefault(tuple(component for component, _, _ in run), []).append(r)
    _require_row_fits(buckets)
    budget = batch_budget(memory_mb)
    with onednn_linear(onednn):
        for signature, members in groups.items():
            cells = torch.tensor([[(layer, head) for _, layer, head in runs[r]] for r in members])
            for bucket in buckets:
                rows = runs_rows(bucket, [sites[c] for c in signature], cells)
                values = run_rows(model, bucket, rows, budget)
                patched[bucket.members[rows.member], torch.as_tensor(members)[rows.column]] = values
    return RunsResult(patched, clean, corrupt, direction, prompts.group_index, runs=[list(run) for run in runs])


def _reference_runs(
    model: HookedModel,
    prompts: PromptSet,
    direction: Direction,
    sites: list[Site],
    layers: list[int],
    metric: Metric,
    onednn: bool,
    start: Tensor | None = None,
) -> tuple[list[Bucket], Float[Tensor, " prompt"], Float[Tensor, " prompt"]]:
    """Run both sides of every bucket once (caching what patched runs start from and patch in), and the
    clean and corrupt metric of every prompt. ``start``: where an edge intervention changes each prompt's run."""
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    resid_names = {get_act_name("resid_pre", layer) for layer in layers}
    site_names = {site.hook_name(layer) for site in sites for layer in layers}
    buckets = []
    with onednn_linear(onednn):
        for members, end, split in bucket_keys(prompts, start):
            group = group_of(prompts, members, end)
            runs = (side_run(model, target, group, end, resid_names), side_run(model, source, group, end, site_names))
            rows = torch.searchsorted(group, members)
            buckets.append(prepare_bucket(model, prompts, members, end, split, *runs, rows, sites, layers, metric))
    target_metric, source_metric = torch.empty(len(prompts)), torch.empty(len(prompts))
    for bucket in buckets:
        target_metric[bucket.members], source_metric[bucket.members] = bucket.target_metric, bucket.source_metric
    if direction == "denoising":
        return buckets, source_metric, target_metric
    return buckets, target_metric, source_metric


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


