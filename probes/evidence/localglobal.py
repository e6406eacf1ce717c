"""Local and global attention layers: "tokens attend to their neighbourhood; a few long-range links connect them".

Gemma-3 interleaves sliding-window layers (a query sees the last ``window`` keys, itself included) with global ones
(every sixth layer): the architecture that sentence describes. :func:`layer_types` reads each layer's type and the
window from the model's config; a model with no local layer gets a one-line refusal (the claim does not apply).

On prompts whose ``dst`` lies at various distances before ``src`` (some beyond the window):

* attention: ``alpha[src, dst]`` per head, split by layer type. Beyond the window a local layer cannot attend at
  all: the mask guarantees it, so ``local_beyond_max`` (the largest such weight) is a check the kit must pass
  (exactly 0), not a finding;
* knockouts: cut every attention edge that crosses ``dst`` (a query after ``dst`` reading a key at or before it,
  the first-token sink excepted, so heads can still rest) in the global layers only, and separately in the local
  layers only. Each is read as the share of the clean logit difference (answer minus foil) it removes: 1 when
  the model no longer prefers the answer, 0 when untouched (a ratio of means over groups, both drawn together). Cutting the global layers' edges leaves the answer only what local layers relay hop by hop (several
  local layers reach a window each further back); cutting the local layers' edges leaves only the global layers'
  long links. The finding is which cut removes the answer when ``dst`` is beyond the window.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.memory import batches
from probes.core.notebook import grid_html, number, result_html
from probes.core.stats import (
    CONFIDENCE,
    Estimate,
    estimate_mean,
    ratio_estimate,
    share_of_groups_above_zero,
)
from probes.evidence.attention import role_attention
from probes.evidence.metric import logit_diff_from_resid, resid_at
from probes.models.architecture import attention_bytes
from probes.models.bridge import final_resid
from probes.models.frozen import frozen_model
from probes.models.hooks import HookPoint, get_act_name
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

LOCAL_GLOBAL_BATCH = 4  # prompts a pass batches: these prompts are long (lowered to fit the memory budget)
CUTS = ("global", "local")  # which layers' crossing edges a knockout removes
SUBSETS = ("beyond", "within")  # prompts whose dst lies beyond / within the window


@dataclass(frozen=True)
class LayerTypes:
    """Each layer's attention type (``"local"``: sliding window, ``"global"``) and the window (keys a local query
    sees, itself included)."""

    types: tuple[str, ...]
    window: int | None

    def layers(self, kind: str) -> list[int]:
        return [layer for layer, t in enumerate(self.types) if t == kind]

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``type`` (local or global), ``window`` (None for a global layer)."""
        return pd.DataFrame({"layer": range(len(self.types)), "type": list(self.types),
                             "window": [self.window if t == "local" else None for t in self.types]})

    def _repr_html_(self) -> str:
        return result_html("attention per layer", f"window {self.window}; global layers {self.layers('global')}",
                           {"layers": str(len(self.types))})


def layer_types(model: HookedModel) -> LayerTypes:
    """Read from the config (TransformerLens: ``use_local_attn``, ``attn_types``, ``window_size``); all global when
    the model has no local attention."""
    cfg = model.cfg
    n_layers = cfg.n_layers
    if not getattr(cfg, "use_local_attn", False):
        return LayerTypes(("global",) * n_layers, None)
    return LayerTypes(tuple(cfg.attn_types), int(cfg.window_size))


def require_local_layers(model: HookedModel) -> LayerTypes:
    """The layer types, or one line saying the claim does not apply (no local layer, so nothing to contrast)."""
    types = layer_types(model)
    if not types.layers("local"):
        raise ProbesError(
            f"model '{model.cfg.model_name}' has no sliding-window (local) attention layers, every layer is global: "
            "the local/global claim is not applicable; use a model with local layers (e.g. gemma-3-270m)"
        )
    return types


def _cut_hook(cut: Int[Tensor, " batch"]):
    """Remove every edge from a query after ``cut`` to a key in ``1..cut`` (scores to -inf before the softmax)."""

    def hook(scores: Float[Tensor, "batch head query key"], hook: HookPoint) -> Tensor:
        q = torch.arange(scores.shape[2], device=scores.device)
        k = torch.arange(scores.shape[3], device=scores.device)
        c = cut.to(scores.device)[:, None, None]
        crossing = (q[None, :, None] > c) & (k[None, None, :] >= 1) & (k[None, None, :] <= c)
        return scores.masked_fill(crossing[:, None], float("-inf"))

    return hook


@torch.no_grad()
def _logit_diffs(
    model: HookedModel, prompts: PromptSet, tokens: Int[Tensor, "prompt pos"], layers: list[int],
    cut: Int[Tensor, " prompt"], batch_size: int,
) -> Float[Tensor, " prompt"]:  # fmt: skip
    """The answer-minus-foil logit difference at ``end`` with the crossing edges of ``layers`` removed."""
    lengths = (prompts.end + 1).tolist()
    out = []
    for idx in batches(lengths, batch_size, functools.partial(attention_bytes, model), "local/global runs",
                       "shorten the prompts"):  # fmt: skip
        hook = _cut_hook(cut[idx])
        hooks = [(get_act_name("attn_scores", layer), hook) for layer in layers]
        resid, _ = final_resid(model, tokens[idx, : max(lengths[idx])].to(model.cfg.device), hooks)
        out.append(logit_diff_from_resid(model, resid_at(resid, prompts.end[idx]), prompts.answer[idx],
                                         prompts.foil[idx]).float().cpu())  # fmt: skip
    return torch.cat(out)


@dataclass(frozen=True)
class LocalGlobalResult:
    """Attention and knockouts split by layer type and by where ``dst`` lies (see the module docstring).

    ``estimates`` has one row per (``subset``, ``measure``): measures ``clean_accuracy`` (share of groups where
    the answer beats the foil), ``global_cut_share`` / ``local_cut_share`` (the share of the clean logit difference
    the cut removes), ``attention_global`` / ``attention_local`` (per prompt, the largest ``alpha[src, dst]`` over the
    heads of that layer type); ``attention`` is ``[prompt, layer, head]``.
    """

    src: str
    dst: str
    window: int
    types: tuple[str, ...]
    distances: Int[np.ndarray, " prompt"]
    attention: Float[Tensor, "prompt layer head"]
    local_beyond_max: float  # largest local-layer weight on a dst beyond the window: 0 by the mask
    estimates: pd.DataFrame

    def estimate(self, subset: str, measure: str) -> Estimate | None:
        rows = self.estimates[(self.estimates["subset"] == subset) & (self.estimates["measure"] == measure)]
        if rows.empty:
            return None
        r = rows.iloc[0]
        return Estimate(float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), n=int(r["n"]))

    def to_frame(self) -> pd.DataFrame:
        """The estimates table (columns ``subset``, ``measure``, ``value``, ``ci_low``, ``ci_high``, ``n``) with
        the window beside each row."""
        return self.estimates.assign(window=self.window)

    def _repr_html_(self) -> str:
        cut = self.estimate("beyond", "global_cut_share")
        relay = self.estimate("beyond", "local_cut_share")
        sentence = (
            f"window {self.window} tokens; {self.types.count('global')} global layers of {len(self.types)}. "
            f"With the {self.dst} beyond the window, cutting the global layers' edges across it removes "
            f"{'n/a' if cut is None else number(cut.value)} of the answer, cutting the local layers' "
            f"{'n/a' if relay is None else number(relay.value)}"
        )
        numbers: dict[str, Estimate | str] = {
            f"{r.subset}: {r.measure.replace('_', ' ')}": Estimate(r.value, r.ci_low, r.ci_high, n=r.n)
            for r in self.estimates.itertuples()
        }
        numbers["largest local weight beyond the window"] = number(self.local_beyond_max)
        grid = grid_html(self.attention.mean(0).numpy(), f"alpha[{self.src}, {self.dst}], mean over prompts")
        return result_html(f"local/global: {self.src} -> {self.dst}", sentence, numbers, grid)


@frozen_model
def local_global(
    model: HookedModel,
    prompts: PromptSet,
    src: str = "pronoun",
    dst: str = "antecedent",
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    batch_size: int = LOCAL_GLOBAL_BATCH,
) -> LocalGlobalResult:
    """Settle the evidence for "local layers see the neighbourhood; long links from ``src`` to ``dst`` run through
    the global layers" (module docstring); refused in one line for a model without local layers."""
    types = require_local_layers(model)
    window = int(types.window or 0)
    prompts.check_model(model)
    src_pos, dst_pos = prompts.role(src), prompts.role(dst)
    if (dst_pos >= src_pos).any():
        i = int((dst_pos >= src_pos).nonzero()[0])
        raise ProbesError(f"prompt {i}: '{dst}' (position {int(dst_pos[i])}) is not before '{src}' "
                          f"(position {int(src_pos[i])}); the claim is about a link back to an earlier token")
    distances = (src_pos - dst_pos).numpy()
    beyond = distances >= window
    attention = role_attention(model, prompts, src, dst)
    local, global_ = types.layers("local"), types.layers("global")
    local_beyond = attention[torch.as_tensor(beyond)][:, local]
    clean = _logit_diffs(model, prompts, prompts.clean, [], dst_pos, batch_size).double().numpy()
    cuts = {kind: _logit_diffs(model, prompts, prompts.clean, types.layers(kind), dst_pos, batch_size).double().numpy()
            for kind in CUTS}  # fmt: skip
    rows = []
    for subset, keep in (("beyond", beyond), ("within", ~beyond)):
        if not keep.any():
            continue
        groups = prompts.group_index[keep]
        values: dict[str, Estimate] = {
            "clean_accuracy": share_of_groups_above_zero(clean[keep][:, None], groups, confidence, seed)[0],
            **{f"{kind}_cut_share": ratio_estimate(clean[keep] - cuts[kind][keep], clean[keep],
                                                   groups=groups, seed=seed, confidence=confidence)
               for kind in CUTS},
            **{f"attention_{name}": estimate_mean(attention[torch.as_tensor(keep)][:, layers].amax(dim=(1, 2)).double()
                                                  .numpy(), seed=seed, groups=groups, confidence=confidence)
               for name, layers in (("global", global_), ("local", local)) if layers},
        }  # fmt: skip
        rows += [{"subset": subset, "measure": k, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                  "n": e.n} for k, e in values.items()]  # fmt: skip
    return LocalGlobalResult(
        src=src, dst=dst, window=window, types=types.types, distances=distances, attention=attention,
        local_beyond_max=float(local_beyond.max()) if local_beyond.numel() else 0.0,
        estimates=pd.DataFrame(rows, columns=["subset", "measure", "value", "ci_low", "ci_high", "n"]),
    )  # fmt: skip
