r"""probe kit: settle claims about attention heads with attention, causal and representational evidence.

Every function that takes a model takes any object offering the kit's model protocol, :class:`probes.HookedModel`
(:mod:`probes.models.protocol`: the config, hooks by TransformerLens name, ``run_with_hooks``/``run_with_cache``,
the weights read); ``load_model`` and ``probes.toy`` give TransformerLens ``HookedTransformer``\ s, which offer it.

Names are imported lazily (PEP 562): ``probes report`` and ``probes models`` start without loading torch and
TransformerLens, while ``probes.load_model`` etc. work as ordinary attributes. The ``TYPE_CHECKING`` block below
imports the same names for type checkers and IDEs only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from probes.core.errors import ProbesError

# public name -> module that defines it
_EXPORTS = {
    "load_model": "probes.models.loading",
    "HookedModel": "probes.models.protocol",
    "load_bridge": "probes.models.bridge",
    "PromptSet": "probes.prompts.promptset",
    "role_attention": "probes.evidence.attention",
    "norm_weighted_attention": "probes.evidence.attention",
    "head_scores": "probes.evidence.attention",
    "head_score_samples": "probes.evidence.attention",
    "behaviour": "probes.evidence.behaviour",
    "BehaviourResult": "probes.evidence.behaviour",
    "patch_heads": "probes.evidence.patching",
    "patch_resid": "probes.evidence.patching",
    "patch_activations": "probes.evidence.patching",
    "PatchingResult": "probes.evidence.patching",
    "edge_effects": "probes.evidence.patching",
    "patch_paths": "probes.evidence.patching",
    "PathsResult": "probes.evidence.patching",
    "SweepOptions": "probes.evidence.patching",
    "kv_groups": "probes.models.architecture",
    "position_content": "probes.evidence.position",
    "PositionContent": "probes.evidence.position",
    "PositionContentResult": "probes.evidence.position",
    "rotary_bands": "probes.evidence.rotary",
    "RotaryBands": "probes.evidence.rotary",
    "RotaryBandsResult": "probes.evidence.rotary",
    "attribute_heads": "probes.evidence.attribution",
    "screen_then_verify": "probes.evidence.attribution",
    "Screening": "probes.evidence.attribution",
    "ScreeningResult": "probes.evidence.attribution",
    "Activations": "probes.evidence.activations",
    "harvest": "probes.evidence.activations",
    "probe": "probes.evidence.probing",
    "probe_activations": "probes.evidence.probing",
    "ProbeResult": "probes.evidence.probing",
    "antecedent_gender": "probes.evidence.probing",
    "antecedent_identity": "probes.evidence.probing",
    "previous_token_identity": "probes.evidence.probing",
    "control_labels": "probes.evidence.probing",
    "save_table": "probes.evidence.probing",
    "circuit_graph": "probes.evidence.circuits",
    "CircuitGraph": "probes.evidence.circuits",
    "edge_ablation": "probes.evidence.circuits",
    "EdgeAblationResult": "probes.evidence.circuits",
    "run_circuit": "probes.evidence.circuits",
    "CircuitRunResult": "probes.evidence.circuits",
    "edge_attribution": "probes.evidence.circuits",
    "EdgeScores": "probes.evidence.circuits",
    "find_circuit": "probes.evidence.circuits",
    "CircuitResult": "probes.evidence.circuits",
    "Claim": "probes.claims.types",
    "Thresholds": "probes.claims.types",
    "ClaimResult": "probes.claims.types",
    "Verdict": "probes.claims.types",
    "Composition": "probes.claims.types",
    "SelfUpdate": "probes.claims.essay",
    "ResolutionDepth": "probes.claims.essay",
    "evaluate": "probes.claims.evaluation",
    "query_key": "probes.evidence.querykey",
    "QueryKeyResult": "probes.evidence.querykey",
    "local_global": "probes.evidence.localglobal",
    "LocalGlobalResult": "probes.evidence.localglobal",
    "layer_types": "probes.evidence.localglobal",
    "QueryKey": "probes.claims.querykey",
    "LocalGlobal": "probes.claims.localglobal",
}
# short names for the stages' most used modules: ``probes.tasks``, ``probes.toy`` (the contract's names) ...
_SUBMODULES = {
    "tasks": "probes.prompts.tasks",
    "toy": "probes.models.toy",
    "models": "probes.models",
    "prompts": "probes.prompts",
    "evidence": "probes.evidence",
    "patching": "probes.evidence.patching",
    "probing": "probes.evidence.probing",
    "claims": "probes.claims",
    "stats": "probes.core.stats",
    "run": "probes.run",
    "report": "probes.report",
}

__all__ = ["ProbesError", *_EXPORTS, *_SUBMODULES]

if TYPE_CHECKING:  # the same names as _EXPORTS and _SUBMODULES, eagerly, for type checkers and IDEs
    from probes import claims, evidence, models, prompts, report, run
    from probes.claims.essay import ResolutionDepth, SelfUpdate
    from probes.claims.evaluation import evaluate
    from probes.claims.localglobal import LocalGlobal
    from probes.claims.querykey import QueryKey
    from probes.claims.types import Claim, ClaimResult, Composition, Thresholds, Verdict
    from probes.core import stats
    from probes.evidence import patching, probing
    from probes.evidence.activations import Activations, harvest
    from probes.evidence.attention import head_score_samples, head_scores, norm_weighted_attention, role_attention
    from probes.evidence.attribution import Screening, ScreeningResult, attribute_heads, screen_then_verify
    from probes.evidence.behaviour import BehaviourResult, behaviour
    from probes.evidence.localglobal import LocalGlobalResult, layer_types, local_global
    from probes.evidence.querykey import QueryKeyResult, query_key
    from probes.evidence.circuits import (
        CircuitGraph, CircuitResult, CircuitRunResult, EdgeAblationResult, EdgeScores, circuit_graph, edge_ablation,
        edge_attribution, find_circuit, run_circuit,
    )
    from probes.evidence.patching import (
        PatchingResult, PathsResult, SweepOptions, edge_effects, patch_activations, patch_heads, patch_paths,
        patch_resid,
    )
    from probes.evidence.position import PositionContent, PositionContentResult, position_content
    from probes.evidence.probing import (
        ProbeResult, antecedent_gender, antecedent_identity, control_labels, previous_token_identity, probe,
        probe_activations, save_table,
    )
    from probes.evidence.rotary import RotaryBands, RotaryBandsResult, rotary_bands
    from probes.models import toy
    from probes.models.architecture import kv_groups
    from probes.models.bridge import load_bridge
    from probes.models.loading import load_model
    from probes.models.protocol import HookedModel
    from probes.prompts import tasks
    from probes.prompts.promptset import PromptSet


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'probes' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
