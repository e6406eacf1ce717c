"""What every patching entry point does before its patched runs: check the inputs, fit the memory budget, and run
the two unpatched sides (the references the patched runs start from and patch in)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.memory import budget_bytes, require_fits
from probes.evidence.metric import Metric
from probes.evidence.patching.engine import Bucket, bucket_keys, prepare_bucket
from probes.evidence.patching.reference import group_of, side_run
from probes.evidence.patching.sites import DIRECTIONS, SITES, Direction, Site
from probes.models.hooks import get_act_name
from probes.models.kernels import onednn_linear
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

BATCH_MB = 1024.0  # default cap on the patched runs in flight: larger batches are no faster on a CPU (engine.py)
FIX = "shorten the prompts, use fewer of them, or raise PROBES_MEMORY_FRACTION"


def reference_bytes(model: HookedModel, n_prompts: int, n_pos: int, components: Sequence[str]) -> int:
    """Rough float32 bytes the two unpatched runs keep for a sweep of ``components`` over every layer: the
    target's residual stream, both sides' keys and values, and the source's activation at each component's hook
    (what :func:`reference_runs` holds while the patched batches run)."""
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


def require_reference_fits(model: HookedModel, prompts: PromptSet, components: Sequence[str]) -> None:
    need = reference_bytes(model, len(prompts), int(prompts.end.max()) + 1, components)
    require_fits(need, f"patching {len(prompts)} prompts (the clean and corrupt runs it keeps)", FIX)


def require_row_fits(buckets: list[Bucket]) -> None:
    """One patched run must fit the kit's memory budget: a batch is never smaller than one run (a ``memory_mb``
    below one run only means one run per batch)."""
    require_fits(max(bucket.row_bytes for bucket in buckets), "one patched run", FIX)


def check_inputs(model: HookedModel, prompts: PromptSet, component: str, direction: str, memory_mb: float) -> Site:
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


def reference_runs(
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
            runs = [side_run(model, target, group, end, resid_names), side_run(model, source, group, end, site_names)]
            rows = torch.searchsorted(group, members)
            buckets.append(prepare_bucket(model, prompts, members, end, split, *runs, rows, sites, layers, metric))
    target_metric, source_metric = torch.empty(len(prompts)), torch.empty(len(prompts))
    for bucket in buckets:
        target_metric[bucket.members], source_metric[bucket.members] = bucket.target_metric, bucket.source_metric
    if direction == "denoising":
        return buckets, source_metric, target_metric
    return buckets, target_metric, source_metric

