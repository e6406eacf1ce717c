"""What a sweep can patch: each component's hook and axes, the two directions, and the per-prompt result type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.notebook import grid_html, result_html
from probes.core.stats import Estimate, estimate_mean, n_units, ratio_estimate
from probes.models.hooks import get_act_name

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Site:
    """Where a component's patch goes: TransformerLens's hook of that name in each block, and which axes of its
    activation matter."""

    component: str  # a TransformerLens activation name: ``get_act_name(component, layer)`` is the hook
    variant_axis: int  # the axis one patch selects along: head, key/value head or position
    pos_axis: int  # the (query) position axis, cut to the positions a patched run computes
    per_position: bool  # variants are positions (residual-stream components) rather than heads

    def hook_name(self, layer: int) -> str:
        return get_act_name(self.component, layer)


SITES: dict[str, Site] = {
    site.component: site
    for site in (
        Site("z", variant_axis=2, pos_axis=1, per_position=False),
        Site("pattern", variant_axis=1, pos_axis=2, per_position=False),
        Site("q", variant_axis=2, pos_axis=1, per_position=False),
        Site("k", variant_axis=2, pos_axis=1, per_position=False),
        Site("v", variant_axis=2, pos_axis=1, per_position=False),
        Site("resid_pre", variant_axis=1, pos_axis=1, per_position=True),
        Site("attn_out", variant_axis=1, pos_axis=1, per_position=True),
        Site("mlp_out", variant_axis=1, pos_axis=1, per_position=True),
    )
}
HEAD_COMPONENTS = tuple(name for name, site in SITES.items() if not site.per_position)
RESID_COMPONENTS = tuple(name for name, site in SITES.items() if site.per_position)


INTERVENTIONS = ("knockout", "pattern_row", "z_at")


@dataclass(frozen=True)
class Edge:
    """An intervention on one attention edge per prompt, from query position ``src`` to key position ``dst``.

    ``knockout``: in the clean run, the head's weight from ``src`` to ``dst`` is set to 0 and the rest of the row
    renormalised (can the head still do its job without reading ``dst`` from ``src``?); ``pattern_row``: the
    head's attention row at ``src`` only comes from the other run; ``z_at``: the head's output at ``src`` only
    comes from the other run.
    """

    intervention: str
    src: Int[Tensor, " prompt"]
    dst: Int[Tensor, " prompt"]

    @property
    def knockout(self) -> bool:
        return self.intervention == "knockout"

    @property
    def site(self) -> Site:
        return SITES["z"] if self.intervention == "z_at" else SITES["pattern"]


@dataclass(frozen=True)
class PatchedMetric:
    """Per-prompt metric of patched runs, with the two unpatched runs it is read against, and each prompt's group
    (the prompt set's ``group_index``: the unit the displayed intervals resample; None: each prompt its own)."""

    patched: Float[Tensor, "prompt *variant"]  # NaN where no run was made
    clean: Float[Tensor, " prompt"]
    corrupt: Float[Tensor, " prompt"]
    direction: Direction
    groups: Int[np.ndarray, " prompt"] | None = None

    def _per_prompt(self, values: Float[Tensor, " prompt"]) -> Tensor:
        return values.reshape(-1, *[1] * (self.patched.ndim - 1))

    @property
    def baseline(self) -> Float[Tensor, " prompt"]:
        """The metric of the run patched into: corrupt when denoising, clean when noising."""
        return self.corrupt if self.direction == "denoising" else self.clean

    @property
    def effect(self) -> Float[Tensor, "prompt *variant"]:
        """How far the patch moved the metric: patched minus the unpatched run it went into."""
        return self.patched - self._per_prompt(self.baseline)

    @property
    def normalised(self) -> Float[Tensor, "prompt *variant"]:
        """Per prompt, 0 = the corrupt metric, 1 = the clean metric (inf/NaN where the two coincide)."""
        return (self.patched - self._per_prompt(self.corrupt)) / self._per_prompt(self.clean - self.corrupt)

    def _frame(self, columns: list[str]) -> pd.DataFrame:
        """One row per (prompt, *variant) that was run: patched metric, effect and normalised effect."""
        grid = torch.cartesian_prod(*[torch.arange(size) for size in self.patched.shape]).reshape(-1, len(columns))
        frame = pd.DataFrame(grid.numpy(), columns=columns)
        frame["patched"] = self.patched.reshape(-1).numpy()
        frame["effect"] = self.effect.reshape(-1).numpy()
        frame["normalised"] = self.normalised.reshape(-1).numpy()
        frame["direction"] = self.direction
        return frame.dropna(subset=["patched"]).reset_index(drop=True)

    def _axes(self) -> tuple[str, ...]:
        """The names of the variant axes, after the prompt axis: each result names its own."""
        raise NotImplementedError

    def _cell_name(self, index: tuple[int, ...]) -> str:
        return ".".join(map(str, index))

    def _mean_effect(self) -> np.ndarray:
        """Each variant's mean effect as a fraction of the mean clean - corrupt gap (NaN where not run)."""
        gaps = (self.clean - self.corrupt).double().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.effect.double().numpy().mean(axis=0) / (gaps.mean() or np.nan)

    def headline(self) -> dict[str, Estimate]:
        """The numbers the display leads with: the clean-corrupt gap and the variant that moves the answer most (its
        mean effect as a fraction of the mean gap, a ratio whose interval redraws effect and gap together).
        Intervals resample the prompts' groups. The largest effect is picked on these same prompts, so its interval
        is not that of a held-out estimate: the label says so."""
        gaps = (self.clean - self.corrupt).double().numpy()
        numbers = {"clean - corrupt gap (logits)": estimate_mean(gaps, groups=self.groups)}
        mean = self._mean_effect()
        if np.isfinite(mean).any():
            best = np.unravel_index(np.nanargmax(np.abs(mean)), mean.shape)
            name = self._cell_name(tuple(int(i) for i in best))
            numbers[f"largest effect: {name} (picked on these prompts, not held out)"] = ratio_estimate(
                self.effect.double().numpy()[(slice(None), *best)], gaps, self.groups
            )
        return numbers

    def _repr_html_(self) -> str:
        """In a notebook: :meth:`headline` and, for a grid of variants, a heatmap of every mean effect."""
        numbers, mean = self.headline(), self._mean_effect()
        axes = self._axes()
        extra = grid_html(mean, "mean effect, fraction of the gap", *axes) if mean.ndim == 2 else ""
        into = "clean into corrupt" if self.direction == "denoising" else "corrupt into clean"
        title = f"{type(self).__name__}: {self.direction} ({into}), {self.patched.shape[0]} prompts"
        sentence = f"{int(np.isfinite(mean).sum())} patched variants ({' x '.join(axes)}); effects are patched minus " \
                   "the run patched into, their mean divided by the mean clean - corrupt gap; intervals over " \
                   f"{n_units(self.groups, self.patched.shape[0])} groups of prompts"
        return result_html(title, sentence, numbers, extra)


@dataclass(frozen=True)
class PatchingResult(PatchedMetric):
    """A sweep: ``patched[i, layer, j]`` is the metric of prompt ``i`` with variant ``j`` of ``layer`` patched
    (``j`` is a head, a key/value head or a position, see ``index``); NaN where the sweep did not run it."""

    component: str = "z"  # or an edge intervention (knockout, pattern_row, z_at)
    index: Literal["head", "kv_head", "pos"] = "head"
    kv_groups: Int[Tensor, "kv_head group"] | None = None  # query heads sharing each key/value head (k, v)

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, layer, index) that was run: patched metric, effect and normalised effect."""
        return self._frame(["prompt", "layer", self.index]).assign(component=self.component)

    def _axes(self) -> tuple[str, ...]:
        return ("layer", self.index)


@dataclass(frozen=True)
class RunsResult(PatchedMetric):
    """Runs that each patch several sites at once: ``patched[i, r]`` is the metric of prompt ``i`` under run ``r``,
    whose patches are ``runs[r]`` (a list of ``(component, layer, index)``)."""

    runs: list[list[tuple[str, int, int]]] | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, run): patched metric, effect and normalised effect."""
        return self._frame(["prompt", "run"])

    def _axes(self) -> tuple[str, ...]:
        return ("run",)
