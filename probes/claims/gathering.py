"""Gather a claim's evidence: every registered measure (:mod:`probes.claims.measures`) per prompt and head, each
underlying measurement run once through one :class:`EvidenceContext`."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from jaxtyping import Float, Int

from probes.claims.measures import MEASURES
from probes.models.heads import Head
from probes.core.errors import ProbesError
from probes.evidence.attention import norm_weighted_attention, role_attention
from probes.evidence.patching import (
    Direction,
    PatchingResult,
    edge_effects,
    patch_activations,
)
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet


@dataclass
class EvidenceContext:
    """What the measures' gather functions read: each underlying measurement runs once, on first use.

    Arrays are ``[prompt, layer, head]`` (NaN for heads not patched when ``heads`` restricts the sweep).
    """

    model: HookedModel
    prompts: PromptSet
    src: str
    dst: str
    foil: str | None
    heads: list[Head] | None  # None: every head
    direction: Direction = "denoising"

    @cached_property
    def attention_target(self) -> Float[np.ndarray, "prompt layer head"]:
        return role_attention(self.model, self.prompts, self.src, self.dst).numpy()

    @cached_property
    def attention_sink(self) -> Float[np.ndarray, "prompt layer head"]:
        """Attention from src to the first token, where heads park attention they do not use."""
        first = torch.zeros(len(self.prompts), dtype=torch.long)
        return role_attention(self.model, self.prompts, self.src, first).numpy()

    @cached_property
    def attention_foil(self) -> Float[np.ndarray, "prompt layer head"]:
        if self.foil is None:
            # uniform: the non-sink attention spread evenly over the src positions after the first token
            src = self.prompts.role(self.src).double().numpy()[:, None, None]
            return np.where(src > 0, (1.0 - self.attention_sink) / np.maximum(src, 1.0), 1.0)
        return role_attention(self.model, self.prompts, self.src, self.foil).numpy()

    @cached_property
    def norm_target(self) -> Float[np.ndarray, "prompt layer head"]:
        return norm_weighted_attention(self.model, self.prompts, self.src, self.dst).numpy()

    @cached_property
    def norm_foil(self) -> Float[np.ndarray, "prompt layer head"]:
        if self.foil is None:  # no foil: the norm-weighted attention to the target itself
            return np.zeros_like(self.norm_target)
        return norm_weighted_attention(self.model, self.prompts, self.src, self.foil).numpy()

    def patching(self, component: str) -> PatchingResult:
        """The sweep patching ``component`` of the heads (each sweep runs once)."""
        return self._once(component, lambda: patch_activations(
            self.model, self.prompts, component, self.direction, cells=self.heads, progress=self.heads is None
        ))

    def effect(self, component: str) -> Float[np.ndarray, "prompt layer head"]:
        """Patched minus the run patched into, in logits."""
        return self.patching(component).effect.double().numpy()

    def edge_effect(self, intervention: str) -> Float[np.ndarray, "prompt layer head"]:
        """An intervention on the claimed edge src -> dst (:func:`probes.evidence.patching.edge_effects`), in logits."""
        result = self._once(f"edge:{intervention}", lambda: edge_effects(
            self.model, self.prompts, self.src, self.dst, heads=self.heads, intervention=intervention,
            direction=self.direction, progress=self.heads is None,
        ))
        return result.effect.double().numpy()

    def _once(self, key: str, measure: Callable[[], PatchingResult]) -> PatchingResult:
        if key not in self._results:
            self._results[key] = measure()
        return self._results[key]

    def __post_init__(self) -> None:
        self._results: dict[str, PatchingResult] = {}


@dataclass
class Gathered:
    """Every registered measure per prompt for some heads, with what every estimate needs beside it: the
    clean-corrupt gap and the clean metric per prompt, and each prompt's group."""

    heads: list[Head]
    values: dict[str, Float[np.ndarray, "prompt head"]]
    gap: Float[np.ndarray, " prompt"]
    clean: Float[np.ndarray, " prompt"]
    groups: Int[np.ndarray, " prompt"]

    def column(self, head: Head) -> int:
        return self.heads.index(head)


def gather(ctx: EvidenceContext, heads: list[Head], skip: Collection[str] = ()) -> Gathered:
    """Run every measurement the registry needs (each once) and keep the columns of ``heads``.

    ``skip`` names measures not to gather: those the verdict does not read (e.g. ``effect_pattern``, a sweep as
    costly as the output sweep) may be left out of a run that must be quick.
    """
    optional = [name for name, m in MEASURES.items() if m.optional]
    if set(skip) - set(optional):
        raise ProbesError(f"cannot skip {', '.join(sorted(set(skip) - set(optional)))}: only measures no verdict "
                          f"reads may be skipped ({', '.join(optional)})")
    layers, cols = (list(x) for x in zip(*heads))
    values = {
        name: m.gather(ctx)[:, layers, cols] for name, m in MEASURES.items() if m.gather is not None and name not in skip
    }
    z = ctx.patching("z")
    return Gathered(heads, values, (z.clean - z.corrupt).double().numpy(), z.clean.double().numpy(),
                    ctx.prompts.group_index)

