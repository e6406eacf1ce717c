"""The local/global claim: "local layers see the neighbourhood; long-range links run through the global layers".

Settled from :func:`probes.evidence.localglobal.local_global` on the prompts whose ``dst`` lies beyond the window:
``supported`` when cutting the global layers' edges across ``dst`` removes at least ``share`` of the answer's
logit difference, ``refuted`` when it removes less (the answer reaches ``src`` by relay through local layers: the
local cut's share is quoted beside it). A gate first: such prompts must exist and the model must do the task on
them. A model without local layers never gets here (one line: not applicable).
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.claims.legs import Verdict, above
from probes.core.notebook import estimate_text
from probes.evidence.localglobal import LocalGlobalResult


@dataclass(frozen=True)
class LocalGlobal:
    """"The link from ``src`` back to ``dst`` runs through the global layers (local ones see only their window)"."""

    src: str = "pronoun"
    dst: str = "antecedent"

    @property
    def head_name(self) -> str:
        return "local vs global layers"

    def __str__(self) -> str:
        return f"the link from the {self.src} back to the {self.dst} runs through the global layers"

    def describe(self) -> dict:
        """The columns that name this claim in a table."""
        return {"src": self.src, "dst": self.dst}


@dataclass(frozen=True)
class LocalGlobalThresholds:
    share: float = 0.5  # share of the clean logit difference the global cut must remove
    min_accuracy: float = 0.75  # the task gate on the beyond-window prompts (share of groups, lower bound > 50%)


def decide_local_global(result: LocalGlobalResult, t: LocalGlobalThresholds = LocalGlobalThresholds()) -> Verdict:
    """The gate, then the global cut's share on the beyond-window prompts."""
    accuracy = result.estimate("beyond", "clean_accuracy")
    cut, relay = result.estimate("beyond", "global_cut_share"), result.estimate("beyond", "local_cut_share")
    if accuracy is None or cut is None or relay is None:
        return Verdict("inconclusive", f"no prompt puts the {result.dst} {result.window} or more tokens before the "
                       f"{result.src} (the window): add longer fillers")
    if not (accuracy.value >= t.min_accuracy and accuracy.ci_low > 0.5):
        return Verdict("inconclusive", f"beyond the window the model does not do the task: the answer beats the foil "
                       f"in {estimate_text(accuracy)} of the groups (the gate needs {t.min_accuracy:.0%})")
    shares = (f"cutting the global layers' edges across the {result.dst} removes {estimate_text(cut)} of the answer, "
              f"the local layers' {estimate_text(relay)} (window {result.window}, threshold {t.share})")
    state = above(cut, t.share)
    if state is None:
        return Verdict("inconclusive", f"{shares}: undecided")
    if state:
        return Verdict("supported", f"the long link runs through the global layers: {shares}")
    return Verdict("refuted", f"the answer survives without the global layers' long links (relayed by local "
                   f"layers): {shares}")
