"""The mechanism behind a rotary head's position preference: which rotary frequency bands make ``dst`` win.

With rotary embeddings a head's query-key logit is a sum over rotary pairs ``f`` (plus any unrotated dims):
``q.k = sum_f |q_f||k_f| cos(theta_f * delta + phi_f)``, where ``delta`` is the query-key distance. Fast pairs
(``theta_f`` near 1 radian a token) can single out a distance such as "the previous token"; slow pairs are nearly
constant over a prompt and carry content. Grouping pairs into bands, fastest first, this module reports

- each band's share of the ``src -> dst`` logit and of the margin over a foil (which bands make ``dst`` win: the
  margin's interval, simultaneous over every (head, band) tested together, lies above 0), and
- the causal test: the band ablated in the head's rotated query and key, and the head's ``src -> dst`` attention
  after it. Each band term is a product ``q_d k_d``, so zeroing the band in the query, in the key, or in both
  removes the same terms from that head's scores, and only those (under grouped-query attention a key head serves
  several query heads; only this head's scores are read). Only this head's scores at this layer change, so the
  ablated pattern is computed in closed form from the recorded scores (the tests check it against hooked reruns
  that zero the band in q, in k and in both).

Frequencies come from each layer's own rotary tables (``rotary_sin``/``rotary_cos``, built by TransformerLens from
``rotary_base``, or ``rotary_base_local`` in Gemma-3's sliding-window layers, and any scaling), so local and
global layers are banded by the frequencies they really use.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.notebook import result_html
from probes.evidence.position import check_heads
from probes.models.heads import Head
from probes.core.stats import (
    CONFIDENCE, Estimate, bootstrap_mean, cluster_bootstrap_means, percentile_interval, resamples_for,
    simultaneous_confidence,
)
from probes.models.architecture import kv_head_of
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import Role, src_dst_positions

N_BANDS = 4
UNROTATED = "unrotated"  # the band name of dims past rotary_dim (no position at all)


@dataclass(frozen=True)
class RotaryBandsResult:
    """Per prompt, per head, per band (fastest first; an ``unrotated`` band last where ``rotary_dim < d_head``):
    the ``src -> dst`` and ``src -> foil`` logit terms, and the ``src -> dst`` attention with the band ablated.
    ``table`` has one row per (head, band); ``wavelengths[layer]`` gives each band's period range in tokens."""

    table: pd.DataFrame
    attention: Float[Tensor, "prompt layer head"]
    dst_logit: Float[Tensor, "prompt layer head band"]
    foil_logit: Float[Tensor, "prompt layer head band"]
    ablated: Float[Tensor, "prompt layer head band"]
    bands: list[str]
    wavelengths: dict[int, list[tuple[float, float]]]

    def to_frame(self) -> pd.DataFrame:
        """``table``: one row per (head, band) (columns: :func:`rotary_bands`)."""
        return self.table.copy()

    def _repr_html_(self) -> str:
        """In a notebook: the bands that win (margin above 0 simultaneously over every head and band), and each
        band's margin for the heads tested."""
        table = self.table
        wins = table[table["wins"]]
        sentence = (f"{len(table)} (head, band) pairs of the src -> dst logit over {len(self.bands)} bands "
                    f"(fastest first); {len(wins)} win (margin above 0, simultaneously over all of them)")
        numbers: dict[str, Estimate | str] = {
            f"head {int(r['layer'])}.{int(r['head'])} {r['band']} margin": Estimate(
                float(r["margin"]), float(r["margin_ci_low"]), float(r["margin_ci_high"]))
            for _, r in table.nlargest(5, "margin").iterrows()
        }
        return result_html("rotary bands", sentence, numbers)


RotaryBands = RotaryBandsResult  # its name before the result contract (every result's name ends in Result)


def pair_angles(model: HookedModel, layer: int) -> Float[Tensor, " pair"]:
    """Radians per token of each rotary pair of ``layer``, read from the layer's own rotary table."""
    attn = model.blocks[layer].attn
    sin, cos = attn.rotary_sin[1].double(), attn.rotary_cos[1].double()
    dims = pair_dims(model)
    return torch.atan2(sin[dims[:, 0]], cos[dims[:, 0]])


def rotary_dim(model: HookedModel) -> int:
    """The head dims a rotary model rotates (TransformerLens sets ``rotary_dim`` for every rotary model)."""
    assert model.cfg.rotary_dim is not None, "a rotary model has a rotary_dim"
    return model.cfg.rotary_dim


def pair_dims(model: HookedModel) -> Int[Tensor, "pair 2"]:
    """The two head dims each rotary pair rotates: ``(2j, 2j+1)`` (GPT-J) or ``(j, j + rotary_dim/2)`` (NeoX)."""
    r = rotary_dim(model)
    j = torch.arange(r // 2)
    return torch.stack([2 * j, 2 * j + 1], 1) if model.cfg.rotary_adjacent_pairs else torch.stack([j, j + r // 2], 1)


def band_masks(model: HookedModel, layer: int, n_bands: int) -> tuple[Float[Tensor, "band d_head"], list[tuple[float, float]]]:
    """0/1 masks over head dims, one per band (pairs sorted fastest first, split into ``n_bands`` near-equal
    groups) plus one for unrotated dims if any, and each band's (shortest, longest) wavelength in tokens."""
    angles = pair_angles(model, layer)
    dims = pair_dims(model)
    order = torch.argsort(angles, descending=True)
    masks, wavelengths = [], []
    for group in np.array_split(order.numpy(), n_bands):
        mask = torch.zeros(model.cfg.d_head)
        mask[dims[group].reshape(-1)] = 1.0
        masks.append(mask)
        period = (2 * np.pi / angles[group]).numpy()
        wavelengths.append((float(period.min()), float(period.max())))
    if rotary_dim(model) < model.cfg.d_head:
        mask = torch.zeros(model.cfg.d_head)
        mask[rotary_dim(model) :] = 1.0
        masks.append(mask)
        wavelengths.append((float("inf"), float("inf")))
    return torch.stack(masks), wavelengths


@frozen_model
def rotary_bands(
    model: HookedModel,
    prompts: PromptSet,
    src: Role,
    dst: Role,
    foil: Role | None = None,
    heads: Sequence[Head] | None = None,
    n_bands: int = N_BANDS,
    seed: int = 0,
    batch_size: int = 32,
    alpha: float = 1 - CONFIDENCE,
) -> RotaryBandsResult:
    """Band decomposition of each head's ``src -> dst`` logit (and margin over ``foil``; without a foil, over the
    mean of the other keys after position 0, the sink), and the attention change when a band is ablated.

    ``table`` columns: layer, head, band, wavelength_min/max (tokens), dst_logit, foil_logit, margin and
    attention_change (each with a 95% interval, ``_ci_low``/``_ci_high``), margin_family_ci_low and wins: the
    lower bound of the margin's interval simultaneous over the family of every (head, band) in the table (each at
    confidence ``1 - alpha / family``, :func:`probes.core.stats.simultaneous_confidence`), and whether it lies
    above 0, so a band wins whatever else was tested beside it only if the data say so for all of them together.
    """
    prompts.check_model(model)
    if model.cfg.positional_embedding_type != "rotary":
        raise ProbesError(
            f"rotary_bands needs a rotary model; this one has '{model.cfg.positional_embedding_type}' positions "
            "(position_content works for any scheme)"
        )
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or not 1 <= n_bands <= rotary_dim(model) // 2:
        raise ProbesError(f"n_bands must be a whole number from 1 to {rotary_dim(model) // 2}, got {n_bands!r}")
    heads = check_heads(model, heads)
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)
    foil_pos = None if foil is None else src_dst_positions(prompts, src, foil)[1]
    layers = sorted({layer for layer, _ in heads})
    masks = {layer: band_masks(model, layer, n_bands) for layer in layers}
    n_band = len(next(iter(masks.values()))[0])
    shape = (len(prompts), model.cfg.n_layers, model.cfg.n_heads)
    attention = torch.full(shape, torch.nan)
    dst_logit, foil_logit, ablated = (torch.full((*shape, n_band), torch.nan) for _ in range(3))
    for start in range(0, len(prompts), batch_size):
        idx = slice(start, start + batch_size)
        width = int(prompts.end[idx].max()) + 1
        cache: dict[str, Tensor] = {}
        wanted = {get_act_name(kind, layer) for layer in layers for kind in ("rot_q", "rot_k", "attn_scores", "pattern")}

        def keep(activation: Tensor, hook) -> None:
            cache[hook.name] = activation.double().cpu()

        model.run_with_hooks(
            prompts.clean[idx, :width].to(model.cfg.device),
            fwd_hooks=[(lambda name: name in wanted, keep)],
            stop_at_layer=max(layers) + 1,
        )
        for layer in layers:
            out = _layer_bands(model, layer, cache, masks[layer][0], src_pos[idx], dst_pos[idx],
                               None if foil_pos is None else foil_pos[idx])
            attention[idx, layer], dst_logit[idx, layer], foil_logit[idx, layer], ablated[idx, layer] = out
    bands = [f"band {b}" for b in range(n_bands)] + ([UNROTATED] if n_band > n_bands else [])
    wavelengths = {layer: masks[layer][1] for layer in layers}
    table = _table(heads, bands, wavelengths, attention, dst_logit, foil_logit, ablated, prompts.group_index, seed,
                   alpha)
    return RotaryBandsResult(table, attention, dst_logit, foil_logit, ablated, bands, wavelengths)


def _layer_bands(
    model: HookedModel,
    layer: int,
    cache: dict[str, Tensor],
    masks: Float[Tensor, "band d_head"],
    src: Int[Tensor, " batch"],
    dst: Int[Tensor, " batch"],
    foil: Int[Tensor, " batch"] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer's [batch, head(, band)] attention, dst and foil logit terms, and band-ablated attention."""
    attn = model.blocks[layer].attn
    rows = torch.arange(len(src))
    q = cache[get_act_name("rot_q", layer)][rows, src]  # [batch, head, d_head]
    k = cache[get_act_name("rot_k", layer)]  # [batch, key, kv_head, d_head]
    k = k[:, :, kv_head_of(model, k.shape[2])]  # each query head's key head
    scores = cache[get_act_name("attn_scores", layer)][rows, :, src]  # [batch, head, key], -inf where masked
    pattern = cache[get_act_name("pattern", layer)][rows, :, src]
    # per band: sum over its dims of q_d k_d / attn_scale  -> [batch, head, band, key]
    terms = torch.einsum("bhd,bkhd,nd->bhnk", q, k, masks.double()) / attn.attn_scale
    raw = terms.sum(2)
    cap = model.cfg.attn_scores_soft_cap
    soft = (lambda x: cap * torch.tanh(x / cap)) if cap and cap > 0 else (lambda x: x)
    allowed = torch.isfinite(scores)
    if not torch.allclose(soft(raw)[allowed], scores[allowed], rtol=1e-3, atol=1e-3 * float(scores[allowed].abs().max())):
        raise ProbesError(
            f"layer {layer}: the attention scores are not the rotated q.k / scale this decomposition assumes "
            f"(architecture {model.cfg.original_architecture}); rotary_bands cannot split them"
        )
    ablated_scores = soft(raw[:, :, None] - terms).masked_fill(~allowed[:, :, None], -torch.inf)
    ablated = torch.softmax(ablated_scores, -1)[rows, :, :, dst]
    dst_terms = terms[rows, :, :, dst]
    if foil is not None:
        foil_terms = terms[rows, :, :, foil]
    else:  # the mean over the other keys the query may see, the sink (position 0) left out
        others = allowed.clone()
        others[:, :, 0] = False
        others[rows, :, dst] = False
        weight = others[:, :, None].double()
        foil_terms = (terms * weight).sum(-1) / weight.sum(-1).clamp(min=1)
    return pattern[rows, :, dst], dst_terms, foil_terms, ablated


def _table(heads, bands, wavelengths, attention, dst_logit, foil_logit, ablated, groups, seed, alpha) -> pd.DataFrame:
    records = []
    for layer, head in heads:
        for b, band in enumerate(bands):
            row = {"layer": layer, "head": head, "band": band,
                   "wavelength_min": wavelengths[layer][b][0], "wavelength_max": wavelengths[layer][b][1]}
            for name, values in (
                ("dst_logit", dst_logit[:, layer, head, b]),
                ("foil_logit", foil_logit[:, layer, head, b]),
                ("margin", dst_logit[:, layer, head, b] - foil_logit[:, layer, head, b]),
                ("attention_change", ablated[:, layer, head, b] - attention[:, layer, head]),
            ):
                value, low, high = bootstrap_mean(values.numpy(), seed=seed, groups=groups)
                row |= {name: float(value), f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}
            records.append(row)
    table = pd.DataFrame.from_records(records)
    layer_idx, head_idx = torch.tensor([h[0] for h in heads]), torch.tensor([h[1] for h in heads])
    margins = (dst_logit - foil_logit)[:, layer_idx, head_idx].reshape(len(dst_logit), -1)  # [prompt, head * band]
    table["margin_family_ci_low"] = family_lower_bound(margins.numpy(), groups, alpha, seed)
    table["wins"] = table["margin_family_ci_low"] > 0
    return table


def family_lower_bound(
    values: Float[np.ndarray, "prompt k"], groups: Int[np.ndarray, " prompt"], alpha: float, seed: int = 0
) -> Float[np.ndarray, " k"]:
    """Each column's mean's lower bound, the intervals simultaneous over the ``k`` columns (Bonferroni), from one
    set of resampled groups."""
    confidence = simultaneous_confidence(alpha, values.shape[1])
    draws = cluster_bootstrap_means(values, groups, resamples_for(confidence), seed)
    return percentile_interval(draws, confidence)[0]
