"""probe kit: settle claims about attention heads with attention, causal and representational evidence.

Names are imported lazily (PEP 562): ``probes report`` and ``probes models`` start without loading torch and
TransformerLens, while ``probes.load_model`` etc. work as ordinary attributes.
"""

from __future__ import annotations

import importlib

from probes.errors import ProbesError

# public name -> module that defines it
_EXPORTS = {
    "load_model": "probes.models",
    "PromptSet": "probes.prompts",
    "role_attention": "probes.attention",
    "norm_weighted_attention": "probes.attention",
    "head_scores": "probes.attention",
    "head_score_samples": "probes.attention",
    "patch_heads": "probes.patching",
    "patch_resid": "probes.patching",
    "patch_activations": "probes.patching",
    "PatchingResult": "probes.patching",
    "kv_groups": "probes.patching",
    "attribute_heads": "probes.attribution",
    "screen_then_verify": "probes.attribution",
    "Screening": "probes.attribution",
    "Activations": "probes.activations",
    "harvest": "probes.activations",
    "probe": "probes.probing",
    "probe_activations": "probes.probing",
    "antecedent_gender": "probes.probing",
    "antecedent_identity": "probes.probing",
    "previous_token_identity": "probes.probing",
    "control_labels": "probes.probing",
    "save_table": "probes.probing",
    "Claim": "probes.claims",
    "Thresholds": "probes.claims",
    "evaluate": "probes.claims",
}
_SUBMODULES = ("tasks", "toy", "models", "prompts", "attention", "patching", "attribution", "activations",
               "probing", "claims", "stats", "analysis", "results", "report")

__all__ = ["ProbesError", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"probes.{name}")
    raise AttributeError(f"module 'probes' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
