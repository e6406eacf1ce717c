"""Patched runs that each patch several sites at once (a set of heads together, a circuit's heads), on the same
engine as the one-site sweeps (:mod:`.activations`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probes.core.errors import ProbesError
from probes.evidence.metric import Metric, logit_diff_from_resid
from probes.evidence.patching.engine import (
    cells_by_layer,
    n_variants_of,
    run_rows,
    runs_rows,
)
from probes.evidence.patching.options import SweepOptions
from probes.evidence.patching.prepare import (
    batch_budget,
    check_inputs,
    reference_runs,
    require_reference_fits,
    require_row_fits,
)
from probes.evidence.patching.sites import HEAD_COMPONENTS, Direction, RunsResult
from probes.models.frozen import frozen_model
from probes.models.kernels import onednn_linear, use_onednn
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet


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
    options = SweepOptions(memory_mb=memory_mb, onednn=onednn, metric=metric)
    require_reference_fits(model, prompts, components)
    onednn = use_onednn(model, options.onednn)
    buckets, clean, corrupt = reference_runs(
        model, prompts, direction, list(sites.values()), layers, options.metric, onednn
    )
    patched = torch.full((len(prompts), len(runs)), float("nan"))
    groups: dict[tuple[str, ...], list[int]] = {}  # runs patching the same components in the same order batch
    for r, run in enumerate(runs):
        groups.setdefault(tuple(component for component, _, _ in run), []).append(r)
    require_row_fits(buckets)
    budget = batch_budget(options.memory_mb)
    with onednn_linear(onednn):
        for signature, members in groups.items():
            cells = torch.tensor([[(layer, head) for _, layer, head in runs[r]] for r in members])
            for bucket in buckets:
                rows = runs_rows(bucket, [sites[c] for c in signature], cells)
                values = run_rows(model, bucket, rows, budget)
                patched[bucket.members[rows.member], torch.as_tensor(members)[rows.column]] = values
    return RunsResult(patched, clean, corrupt, direction, prompts.group_index, runs=[list(run) for run in runs])

