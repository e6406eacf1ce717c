"""probe kit: settle claims about attention heads with attention, causal and representational evidence.

Names are imported lazily (PEP 562): ``probes report`` and ``probes models`` start without loading torch and
TransformerLens, while ``probes.load_model`` etc. work as ordinary attributes.
"""

from __future__ import annotations

import importlib

from probes.core.errors import ProbesError

# public name -> module that defines it
_EXPORTS = {
    "load_model": "probes.models.loading",
    "load_bridge": "probes.models.bridge",
    "PromptSet": "probes.prompts.promptset",
    "role_attention": "probes.evidence.attention",
    "norm_weighted_attention": "probes.evidence.attention",
    "head_scores": "probes.evidence.attention",
    "head_score_samples": "probes.evidence.attention",
    "behaviour": "probes.evidence.behaviour",
    "patch_heads": "probes.evidence.patching",
    "patch_resid": "probes.evidence.patching",
    "patch_activations": "probes.evidence.patching",
    "PatchingResult": "probes.evidence.patching",
    "edge_effects": "probes.evidence.patching",
    "patch_paths": "probes.evidence.patching",
    "kv_groups": "probes.models.architecture",
    "position_content": "probes.evidence.position",
    "PositionContent": "probes.evidence.position",
    "rotary_bands": "probes.evidence.rotary",
    "RotaryBands": "probes.evidence.rotary",
    "attribute_heads": "probes.evidence.attribution",
    "screen_then_verify": "probes.evidence.attribution",
    "Screening": "probes.evidence.attribution",
    "Activations": "probes.evidence.activations",
    "harvest": "probes.evidence.activations",
    "probe": "probes.evidence.probing",
    "probe_activations": "probes.evidence.probing",
    "antecedent_gender": "probes.evidence.probing",
    "antecedent_identity": "probes.evidence.probing",
    "previous_token_identity": "probes.evidence.probing",
    "control_labels": "probes.evidence.probing",
    "save_table": "probes.evidence.probing",
    "Claim": "probes.claims.types",
    "Thresholds": "probes.claims.types",
    "ClaimResult": "probes.claims.types",
    "Composition": "probes.claims.types",
    "evaluate": "probes.claims.evaluation",
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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'probes' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
