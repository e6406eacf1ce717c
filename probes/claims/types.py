"""What a claim is, what counts as evidence for it, and what settling it produces: plain data, no model code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float

from probes.claims.essay import KINDS, EssayClaim, parse_essay
from probes.core.errors import ProbesError
from probes.core.notebook import grid_html, result_html
from probes.core.stats import Estimate
from probes.models.heads import Head
from probes.prompts.roles import PREVIOUS

# Every outcome a claim can have: a head claim's five (probes.claims.verdicts.VERDICTS), and those circuit claims
# (the heads carry too little of the task: insufficient; removing them leaves much of it: incomplete) and essay
# claims (a measure that does not vary, or a model without the architecture the sentence is about) add.
Verdict = Literal[
    "supported", "attention_only", "effect_only", "refuted", "inconclusive", "insufficient", "incomplete",
    "not applicable",
]


@dataclass(frozen=True)
class Claim:
    """"Head ``head`` attends from ``src`` to ``dst`` (rather than to ``foil``)"; roles are PromptSet role names.

    ``head=None`` means "some head": every head is tested. ``dst="previous"`` means the token before ``src``;
    ``foil=None`` compares with uniform attention.
    """

    head: Head | None
    src: str
    dst: str
    foil: str | None = None

    @property
    def head_name(self) -> str:
        return "some head" if self.head is None else f"head {self.head[0]}.{self.head[1]}"

    def __str__(self) -> str:
        dst = "the previous token" if self.dst == PREVIOUS else f"the {self.dst}"
        return f"{self.head_name} attends from the {self.src} to {dst}"

    def describe(self) -> dict:
        """The columns that name this claim in a table."""
        return {"layer": self.head[0], "head": self.head[1]}

    @classmethod
    def parse(cls, text: str) -> Claim | EssayClaim:
        """A claim as people write it: ``"7.0: pronoun -> antecedent vs distractor"`` (``vs FOIL`` optional;
        ``*`` for the head tests every head; ``previous`` as the target is the token before the source), or one of
        the essay's claim kinds in its written form (:mod:`probes.claims.essay`: ``"self-update 5"``,
        ``"depth: pronoun -> antecedent from 6"``, ...)."""
        essay = parse_essay(text) if isinstance(text, str) else None
        if essay is not None:
            return essay
        match = CLAIM_PATTERN.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            forms = "; ".join(kind.FORM for kind in KINDS)
            raise ProbesError(
                f"claim {text!r} is not 'LAYER.HEAD: SOURCE -> TARGET [vs FOIL]', "
                "e.g. '7.0: pronoun -> antecedent vs distractor' (roles are prompt role names; '*' for every head), "
                f"nor an essay claim ({forms})"
            )
        layer, head, src, dst, foil = match.groups()
        return cls(None if layer is None else (int(layer), int(head)), src, dst, foil)


CLAIM_PATTERN = re.compile(r"(?:(\d+)\.(\d+)|\*)\s*:\s*(\w+)\s*->\s*(\w+)(?:\s+vs\.?\s+(\w+))?")


@dataclass(frozen=True)
class Composition:
    """"Head ``sender``'s output is read by head ``receiver`` through its ``via`` input (``q``, ``k`` or ``v``)":
    a claim about one path, settled by path patching (:func:`probes.evidence.patching.patch_paths`)."""

    sender: Head
    receiver: Head
    via: str

    @property
    def head_name(self) -> str:
        return f"head {self.sender[0]}.{self.sender[1]} -> head {self.receiver[0]}.{self.receiver[1]} via {self.via}"

    def __str__(self) -> str:
        return (
            f"head {self.receiver[0]}.{self.receiver[1]} reads head {self.sender[0]}.{self.sender[1]}'s output "
            f"through its {VIA_WORDS.get(self.via, self.via)}"
        )

    def describe(self) -> dict:
        """The columns that name this claim in a table."""
        return {"sender": f"{self.sender[0]}.{self.sender[1]}", "receiver": f"{self.receiver[0]}.{self.receiver[1]}",
                "via": self.via}


VIA_WORDS = {"q": "queries", "k": "keys", "v": "values"}


@dataclass(frozen=True)
class Thresholds:
    """What counts as attending and as mattering; defaults are deliberately modest, change them per analysis."""

    attention_margin: float = 0.1  # mean alpha(target) - alpha(foil)
    effect: float = 0.1  # fraction of the clean-corrupt gap moved by patching the head's output
    alpha: float = 0.05  # family-wise: Bonferroni-adjusted p-values and simultaneous intervals over the family
    min_prompts: int = 10  # independent units (groups of prompts); below this, bootstrap intervals are not trustworthy
    min_accuracy: float = 0.75  # the task gate: the answer must beat the foil in this share of groups of clean prompts
    min_gap: float = 1.0  # the task gate: the mean clean - corrupt logit difference every effect is a fraction of
    confirm_fraction: float = 0.5  # share of groups held out to confirm a head chosen from data
    correlation: float = 0.2  # essay claims: a partial rank correlation must lie beyond this (SelfUpdate)
    selectivity: float = 0.2  # essay claims: a probe's selectivity below this reads "at chance" (ResolutionDepth)


def tested_on(selected: bool, discovery: list[int] | None, confirmation: list[int] | None, family: int) -> str:
    """Where a verdict's numbers come from, in words: "selected on N discovery prompts, tested on M held-out prompts"."""
    if not selected:
        return f"tested on all prompts; one of {family} claims tested together"
    return (f"selected on {len(discovery or [])} discovery prompts, tested on {len(confirmation or [])} held-out "
            f"prompts; one of {family} claims tested together")


@dataclass(frozen=True)
class ClaimResult:
    """The verdict on one claim, the numbers behind it, and (for ``head=None``) the verdict on every head.

    ``per_prompt`` holds the per-prompt values behind each estimate (empty when read back from a run directory):
    a measure ``of_gap`` in logits, beside each prompt's gap (``gap_logits``) it is a ratio of means with.
    A head chosen from data (``selected``) was ranked on the ``discovery`` prompts and every number of its verdict
    comes from the disjoint ``confirmation`` prompts. ``family``: how many claims were tested together; every
    interval is simultaneous over them (confidence ``1 - alpha / family`` each) and p-values are adjusted for them.

    ``profile`` (essay claims, :mod:`probes.claims.essay`): the evidence that is not one number per claim, tidy:
    one row per ``measure`` and ``layer`` (and ``head``, -1 for a layer-level row) with ``value``, ``ci_low``,
    ``ci_high`` (``verdict`` where a row is judged on its own): a curve over layers, a correlation per head.
    """

    claim: Claim | Composition | EssayClaim
    verdict: Verdict
    sentence: str
    evidence: dict[str, Estimate]
    thresholds: Thresholds
    per_prompt: dict[str, Float[np.ndarray, " prompt"]] = field(default_factory=dict)
    heads: list[ClaimResult] = field(default_factory=list)
    selected: bool = False
    discovery: list[int] | None = None
    confirmation: list[int] | None = None
    family: int = 1
    profile: pd.DataFrame | None = None

    @property
    def provenance_note(self) -> str:
        """Where the numbers come from, in words (:func:`tested_on`)."""
        return tested_on(self.selected, self.discovery, self.confirmation, self.family)

    def to_frame(self) -> pd.DataFrame:
        """One row per head (or the one head, or the one path): :func:`claims_frame` of ``heads`` or of this one."""
        return claims_frame(self.heads or [self])

    def _repr_html_(self) -> str:
        """In a notebook: the verdict sentence, the legs' numbers with intervals, and (for every head) a heatmap
        of the head-level effect."""
        from probes.claims.verdicts import LEGS, PATH  # the rule reads this module's types

        legs = [leg.measure for leg in (*LEGS, PATH)] + ["gap_logits"]
        numbers = {name: self.evidence[name] for name in legs if name in self.evidence}
        extra = ""
        if not isinstance(self.claim, (Claim, Composition)):  # an essay claim: its numbers and its profile
            numbers = dict(self.evidence)
            if self.profile is not None:
                extra = self.profile.to_html(index=False, float_format="{:.3g}".format)
        elif self.heads:
            frame = self.to_frame()
            grid = np.full((frame["layer"].max() + 1, frame["head"].max() + 1), np.nan)
            grid[frame["layer"], frame["head"]] = frame["effect_z"]
            counts = frame["verdict"].value_counts()
            numbers = {"heads tested": str(len(frame)), **{f"heads {v}": str(c) for v, c in counts.items()}, **numbers}
            extra = grid_html(grid, "effect_z: patching each head's output, fraction of the clean-corrupt gap")
        return result_html(f"{self.claim.head_name}: {self.verdict}", self.sentence, numbers, extra)


def claims_frame(results: list[ClaimResult]) -> pd.DataFrame:
    """One row per claim: the columns naming it (``layer``, ``head``; a composition's ``sender``, ``receiver``,
    ``via``), ``verdict``, ``selected``, then per estimate its value, ``_ci_low``, ``_ci_high`` (and ``_p_value``
    where it has one)."""
    rows = []
    for result in results:
        row = result.claim.describe() | {"verdict": result.verdict, "selected": result.selected}
        for name, est in result.evidence.items():
            row |= {name: est.value, f"{name}_ci_low": est.ci_low, f"{name}_ci_high": est.ci_high}
            if est.p_value is not None:
                row[f"{name}_p_value"] = est.p_value
        rows.append(row)
    return pd.DataFrame(rows)
