"""Claims about heads and their verdicts: "head L.H attends from the pronoun to its antecedent", tested.

:mod:`.types` (Claim, Thresholds, ClaimResult, Verdict), :mod:`.measures` (the registry of evidence quantities),
:mod:`.verdicts` (the rule and its words), :mod:`.gathering` (every measure per prompt and head),
:mod:`.estimation` (estimates over groups, the discovery/confirmation split), :mod:`.evaluation` (judge,
select_and_confirm, evaluate); the essay's claim kinds in :mod:`.essay` (SelfUpdate, ResolutionDepth), settled by
:mod:`.essay_evaluation`. Names are imported lazily so the report can read the registry and the rule without loading
a model stack.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Claim": "probes.claims.types",
    "Thresholds": "probes.claims.types",
    "ClaimResult": "probes.claims.types",
    "Composition": "probes.claims.types",
    "SelfUpdate": "probes.claims.essay",
    "ResolutionDepth": "probes.claims.essay",
    "Measure": "probes.claims.measures",
    "MEASURES": "probes.claims.measures",
    "VERDICTS": "probes.claims.verdicts",
    "evaluate": "probes.claims.evaluation",
    "EvidenceContext": "probes.claims.gathering",
    "Verdict": "probes.claims.types",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probes.claims' has no attribute '{name}'")
