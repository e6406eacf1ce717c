"""The run options every patching entry point shares (:func:`~probes.evidence.patching.patch_activations`,
:func:`~probes.evidence.patching.edge_effects`, :func:`~probes.evidence.patching.patch_runs`): how a sweep runs,
never what it measures, so two runs that differ only here give the same numbers (the metric aside)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probes.evidence.metric import Metric, logit_diff_from_resid


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep of patched runs.

    ``checkpoint_dir``: each finished layer is written there and a rerun resumes where it stopped (:mod:`.checkpoint`).
    ``memory_mb``: bounds the activations of the batches of patched runs in flight (each worker's batches get an
    equal share; default :data:`~probes.evidence.patching.prepare.BATCH_MB`, lowered to the kit's memory budget,
    :func:`~probes.evidence.patching.prepare.batch_budget`). ``progress``: a progress bar per sweep.
    ``onednn`` overrides the float32 linear kernel measured fastest here (:func:`probes.models.kernels.use_onednn`):
    ``True`` oneDNN's, ``False`` torch's default. ``workers`` threads share the batches, each with an equal share of
    torch's threads (default on CPU: one per torch thread, at most 4; :func:`.schedule.n_workers`).
    ``metric(model, final_resid, answer, foil)`` is what each run reports (default: logit difference).
    """

    checkpoint_dir: str | Path | None = None
    memory_mb: float | None = None
    progress: bool = True
    onednn: bool | None = None
    workers: int | None = None
    metric: Metric = logit_diff_from_resid
