"""Before the heavy work: each stage's peak memory and the run's time, from prompt count and length and model size.

A run that cannot fit is refused here, in one line, before minutes of computation; one that fits says what it
will take (``probes run`` prints :meth:`RunEstimate.lines`). Each stage's number comes from the function that
stage itself batches or refuses by (:mod:`probes.core.memory`'s budget), so the estimate and the run agree.
:func:`estimate_run` is the one place they are gathered; a notebook or a sweep may call it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probes.core.memory import FRACTION_ENV, budget_bytes, fitted_batch, format_bytes, require_fits
from probes.evidence.activations import HARVEST_BATCH, harvest_bytes, hook_shape
from probes.evidence.attention import ATTENTION_BATCH, shared_attention_bytes
from probes.evidence.patching.prepare import FIX, batch_budget, reference_bytes
from probes.evidence.metric import FORWARD_BATCH
from probes.evidence.patching.engine import WINDOW_LAYERS, row_bytes
from probes.evidence.patching.paths import PATHS_BATCH, paths_bytes
from probes.evidence.probing import probe_bytes
from probes.models.architecture import attention_bytes, kept_attention_bytes
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

SWEPT = ("z", "pattern")  # the components a run's every-head evidence patches by default (beside the edge knockout)
# Seconds per unit of work (patched position x forward FLOP per token x head x sweep), measured on this 2-core CPU
# with the two `make demo` runs, three sweeps each (z, pattern, edge knockout; Gemma-3-270m; seconds after the model
# load): 32 coreference pairs, 160 patched positions, 37.8 s (0.54e-11); 24 induction sequences, ~960 patched
# positions, 163 s (0.38e-11). Their geometric mean; a rough figure: the machine's speed drifts, and the stages
# that are not sweeps scale otherwise.
SECONDS_PER_UNIT = 0.45e-11


@dataclass
class Stage:
    name: str
    bytes: int  # estimated peak, beyond the model's weights
    batch: int | None = None  # prompts per batch, where the stage batches


@dataclass
class RunEstimate:
    stages: list[Stage]
    budget: int  # bytes a stage may take (PROBES_MEMORY_FRACTION of the memory free now)
    seconds: float
    n_prompts: int
    n_pos: int

    def lines(self) -> list[str]:
        """Two lines for the user: memory per stage against the budget, and the time estimate."""
        stages = ", ".join(
            f"{s.name} ~{format_bytes(s.bytes)}" + (f" (batch {s.batch})" if s.batch else "") for s in self.stages
        )
        minutes = self.seconds / 60
        took = "under a second" if self.seconds < 1 else f"~{self.seconds:.0f} s" if minutes < 2 else f"~{minutes:.0f} min"
        return [
            f"memory: {stages}, of a {format_bytes(self.budget)} budget ({FRACTION_ENV} of the free memory)",
            f"time: {took} for {self.n_prompts:,} prompts of up to {self.n_pos} tokens (a rough estimate from the "
            "per-prompt cost measured on a 2-core CPU; it can be 2x off either way)",
        ]

    def require(self) -> None:
        """Refuse, in one line, the first stage whose peak exceeds the budget."""
        for stage in self.stages:
            require_fits(stage.bytes, f"the {stage.name} stage", FIX)


def forward_flops(model: HookedModel, n_pos: int) -> float:
    """Multiply-adds x 2 of one token through every block (projections, MLP, attention over ``n_pos`` keys)."""
    cfg = model.cfg
    kv = cfg.n_key_value_heads or cfg.n_heads
    per_layer = 2 * cfg.d_model * cfg.d_head * (cfg.n_heads + kv) + 3 * cfg.d_model * (cfg.d_mlp or 0)
    per_layer += 2 * cfg.n_heads * cfg.d_head * n_pos
    return 2.0 * cfg.n_layers * per_layer


def patched_positions(prompts: PromptSet) -> int:
    """Positions the patched runs compute, summed over prompts: from the first token where clean and corrupt
    differ to the read-off (earlier ones are shared, :mod:`probes.evidence.patching.engine`)."""
    positions = torch.arange(prompts.clean.shape[1])
    differs = (prompts.clean != prompts.corrupt) & (positions <= prompts.end[:, None])
    first = torch.where(differs.any(1), differs.int().argmax(1), prompts.end)
    return int((prompts.end + 1 - first).sum())


def estimate_run(
    model: HookedModel, prompts: PromptSet, probe_kinds: tuple[str, ...] = (), probe_every_position: bool = False,
    swept: tuple[str, ...] = SWEPT, compositions: int = 0,
) -> RunEstimate:  # fmt: skip
    """What a ``probes run`` of ``prompts`` on ``model`` will take: per stage, the batch its memory budget allows
    and the peak that batch needs (attention, patching and the forward passes always; activations and probing
    when ``probe_kinds`` are harvested; path patching for ``compositions``; ``swept``: the components patched head by
    head), and the time."""
    cfg, n = model.cfg, len(prompts)
    n_pos = int(prompts.end.max()) + 1
    budget = budget_bytes()
    stages = []
    batch = fitted_batch(min(FORWARD_BATCH, n), lambda b: attention_bytes(model, b, n_pos), budget)
    stages.append(Stage("forward passes", attention_bytes(model, batch, n_pos), batch))
    batch = fitted_batch(min(ATTENTION_BATCH, n), lambda b: shared_attention_bytes(model, b, n_pos), budget)
    kept = kept_attention_bytes(model, n, n_pos)  # a run's shared clean pass keeps every prompt's patterns
    stages.append(Stage("attention", attention_bytes(model, batch, n_pos) + kept, batch))
    in_flight = n * cfg.n_heads * min(WINDOW_LAYERS, cfg.n_layers) * row_bytes(model, 0, n_pos)  # a window's runs
    stages.append(Stage("patching", reference_bytes(model, n, n_pos, swept) + int(min(batch_budget(None), in_flight))))
    if compositions:  # each composition's path is patched from one sender
        need = lambda b: paths_bytes(model, b, n_pos, 1)  # noqa: E731
        batch = fitted_batch(min(PATHS_BATCH, n), need, budget)
        stages.append(Stage("path patching", need(batch), batch))
    if probe_kinds:
        need = lambda b: harvest_bytes(model, b, n_pos, probe_kinds, cfg.n_layers, probe_every_position)  # noqa: E731
        batch = fitted_batch(min(HARVEST_BATCH, n), need, budget)
        stages.append(Stage("activations", need(batch), batch))
        rows = n * (n_pos if probe_every_position else 1)
        stages.append(Stage("probing", max(probe_bytes(rows, hook_shape(model, kind)) for kind in probe_kinds)))
    sweeps = len(swept) + 1  # and the edge knockout
    units = patched_positions(prompts) * forward_flops(model, n_pos) * cfg.n_layers * cfg.n_heads * sweeps
    return RunEstimate(stages, budget, SECONDS_PER_UNIT * units, n, n_pos)
