"""Activation patching: the exact per-prompt effect on the metric of swapping one activation between minimal pairs.

Denoising runs the corrupt prompt with one activation taken from the clean run (does this piece *restore* the
answer?); noising runs the clean prompt with one activation from the corrupt run (is this piece *necessary*?).
The numbers equal TransformerLens's ``transformer_lens.patching`` functions (checked by the tests), at a fraction
of the cost: :mod:`.engine` says how. The metric is a parameter (default: answer-minus-foil logit difference from
the final residual stream, :func:`probes.evidence.metric.logit_diff_from_resid`).

A sweep can be checkpointed (:mod:`.checkpoint`): each finished layer is written atomically under
``checkpoint_dir``, keyed by a fingerprint of the model, the prompts and the sweep; a rerun skips it.

This package's modules: :mod:`.activations` (one site at a time: heads, positions, attention edges), :mod:`.runs`
(several sites at once), :mod:`.paths` (path patching), :mod:`.options` (how a sweep runs), :mod:`.prepare`
(inputs, memory, the unpatched runs), :mod:`.engine`, :mod:`.schedule`, :mod:`.reference`, :mod:`.checkpoint`,
:mod:`.sites`, :mod:`.hooked`.
"""

from __future__ import annotations

from probes.evidence.patching.activations import (
    edge_effects,
    patch_activations,
    patch_heads,
    patch_resid,
)
from probes.evidence.patching.options import SweepOptions
from probes.evidence.patching.paths import LOGITS, PathsResult, patch_paths
from probes.evidence.patching.prepare import reference_bytes
from probes.evidence.patching.reference import shared_runs
from probes.evidence.patching.runs import patch_runs
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

__all__ = [
    "DIRECTIONS",
    "HEAD_COMPONENTS",
    "INTERVENTIONS",
    "LOGITS",
    "RESID_COMPONENTS",
    "SITES",
    "Direction",
    "Edge",
    "PatchingResult",
    "PathsResult",
    "RunsResult",
    "Site",
    "SweepOptions",
    "edge_effects",
    "patch_activations",
    "patch_heads",
    "patch_paths",
    "patch_resid",
    "patch_runs",
    "reference_bytes",
    "shared_runs",
]  # fmt: skip
