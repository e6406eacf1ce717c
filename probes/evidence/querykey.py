"""What a head's query asks for and its keys offer: "the pronoun asks for a female name, the name's key offers one".

Attention from ``src`` (the pronoun) to ``dst`` (the antecedent) could follow the names' gender, their identity or
their position. A counterfactual that keeps a referent tells them apart (:mod:`probes.prompts.tasks.counterfactual`):
swap BOTH names' genders (the pronoun now refers to the other person) and, as control, swap both names within their
gender. Each measure is the head's attention margin at ``src``, ``m = alpha[src, dst] - alpha[src, other]``:

(i) attention follows the feature: ``shift = m(clean) - m(swapped)`` (positive: attention moved to the name that
    now matches), beside ``control_shift = m(clean) - m(same_gender)``; the leg reads ``feature_shift = shift -
    control_shift``, prompt by prompt, so a head that tracks name identity (it moves under both swaps) is not
    mistaken for one that tracks gender;
(ii) the key offers it: a linear probe for the name's gender on the head's key at ``dst``, read before the rotary
    step and any query/key norm (``harvest`` kind ``k``), against a Hewitt & Liang control task, with folds that
    never share a name: reported, not judged (a name fixes its gender, so it cannot be evidence for a head);
(iii) causally, key side: the head's keys at both names patched from the swapped prompt into the clean run, as a
    share of the full swap's shift;
(iv) query side: the head's query at ``src`` patched from the pronoun-flipped (corrupt) prompt, as the same share.

Patches are exact and per query head. Only head ``head``'s attention row at ``src`` in layer ``layer`` is read,
and each run stops after that layer, so patching ``hook_k`` of the key head it reads is this head's own key: in a
grouped-query model the same key head serves other query heads (Gemma-3-270m: one key head, four query heads),
whose changed rows nothing downstream sees. A key patched before Gemma's key norm and the rotary step is the same
patch after them: both act per position, and the positions are unchanged.
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
from probes.core.notebook import number, result_html
from probes.core.stats import CONFIDENCE, Estimate, estimate_mean, ratio_estimate
from probes.evidence.probing import antecedent_gender, probe
from probes.models.architecture import attention_bytes, kv_head_of
from probes.models.frozen import frozen_model
from probes.models.hooks import HookPoint, get_act_name
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.counterfactual import (
    NamePools,
    check_feature,
    gender_swaps,
    name_pools,
)

QUERY_KEY_BATCH = 16  # prompts a pass batches (lowered to fit the memory budget)
RUNS = ("clean", "swapped", "same_gender", "flipped", "key_patched", "query_patched")
ESTIMATES = ("shift", "control_shift", "feature_shift", "key_share", "query_share")
PROBE_FIELDS = ("accuracy", "control_accuracy", "selectivity", "selectivity_ci_low", "selectivity_ci_high", "chance",
                "attachable", "reason")  # fmt: skip


def check_head(model: HookedModel, head: tuple[int, int]) -> None:
    """One line naming the model's ranges when ``head`` is not one of its heads."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layer, h = head
    if not (0 <= layer < n_layers and 0 <= h < n_heads):
        raise ProbesError(
            f"head {layer}.{h} is not in this model: layers 0..{n_layers - 1}, heads 0..{n_heads - 1}; pick another"
        )


@dataclass(frozen=True)
class QueryKeyResult:
    """The four legs of a query/key claim for one head, each an estimate over groups of prompts (see the module
    docstring); ``margins`` holds every run's per-prompt margin, ``key_probe`` the key probe's row (or None)."""

    layer: int
    head: int
    src: str
    dst: str
    other: str
    feature: str
    kv_head: int  # the key head this query head reads
    heads_per_key: int  # query heads that share it
    shift: Estimate
    control_shift: Estimate
    feature_shift: Estimate
    key_share: Estimate
    query_share: Estimate
    margins: pd.DataFrame  # prompt, group, and one column per run in RUNS: alpha[src, dst] - alpha[src, other]
    key_probe: dict[str, float | bool | str] | None

    def estimates(self) -> dict[str, Estimate]:
        return {name: getattr(self, name) for name in ESTIMATES}

    def to_frame(self) -> pd.DataFrame:
        """One row per measure: ``measure`` (shift, control_shift, feature_shift, key_share, query_share, and the
        key probe's accuracy, control_accuracy and selectivity when run), ``value``, ``ci_low``, ``ci_high``
        (NaN where the probe gives none), ``n`` (independent groups), with the head as ``layer``, ``head``."""
        rows = [{"measure": k, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}
                for k, e in self.estimates().items()]
        if self.key_probe is not None:
            probe_row = self.key_probe
            rows += [{"measure": f"key_probe_{k}", "value": float(probe_row[k]),
                      "ci_low": float(probe_row["selectivity_ci_low"]) if k == "selectivity" else np.nan,
                      "ci_high": float(probe_row["selectivity_ci_high"]) if k == "selectivity" else np.nan,
                      "n": np.nan} for k in ("accuracy", "control_accuracy", "selectivity")]  # fmt: skip
        return pd.DataFrame(rows).assign(layer=self.layer, head=self.head)

    def _repr_html_(self) -> str:
        sentence = (
            f"head {self.layer}.{self.head}: swapping both names' {self.feature} moves its attention from the "
            f"{self.src} by {number(self.shift.value)} (a same-{self.feature} swap: {number(self.control_shift.value)}); "
            f"the key alone carries {number(self.key_share.value)} of that, the query {number(self.query_share.value)}"
            f" (key head {self.kv_head}, shared by {self.heads_per_key} query head(s), patched as this head's own)"
        )
        numbers: dict[str, Estimate | str] = {k.replace("_", " "): e for k, e in self.estimates().items()}
        if self.key_probe is not None:
            numbers["key probe selectivity"] = Estimate(
                float(self.key_probe["selectivity"]), float(self.key_probe["selectivity_ci_low"]),
                float(self.key_probe["selectivity_ci_high"]),
            )
        return result_html(f"query/key: {self.src} -> {self.dst} on {self.feature}", sentence, numbers)


def _check_flip(prompts: PromptSet, src: Int[Tensor, " prompt"]) -> None:
    """The query-side patch needs corrupt prompts that differ from the clean ones at ``src`` only."""
    differ = prompts.clean != prompts.corrupt
    at_src = torch.zeros_like(differ)
    at_src[torch.arange(len(prompts)), src] = True
    bad = (differ & ~at_src).any(dim=1) | ~differ[torch.arange(len(prompts)), src]
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ProbesError(
            f"prompt {i}: the corrupt prompt must flip the source token only (the pronoun), to patch the query; "
            "use pronoun_resolution prompts"
        )


@torch.no_grad()
def _margins(
    model: HookedModel,
    tokens: dict[str, Int[Tensor, "batch pos"]],
    layer: int,
    head: int,
    src: Int[Tensor, " batch"],
    dst: Int[Tensor, " batch"],
    other: Int[Tensor, " batch"],
) -> dict[str, Float[Tensor, " batch"]]:
    """The head's margin at ``src`` in each run of :data:`RUNS` for one batch (each run stops after ``layer``)."""
    rows = torch.arange(len(src))
    pattern_name, q_name, k_name = (get_act_name(kind, layer) for kind in ("pattern", "q", "k"))
    kept: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}

    def read(run: str) -> tuple[str, object]:
        def hook(pattern: Float[Tensor, "batch head query key"], hook: HookPoint) -> None:
            row = pattern[rows, head, src]
            out[run] = (row[rows, dst] - row[rows, other]).float().cpu()

        return pattern_name, hook

    def keep(name: str) -> tuple[str, object]:
        def hook(act: Tensor, hook: HookPoint) -> None:
            kept[name] = act.clone()

        return name, hook

    def patch_keys(k: Float[Tensor, "batch pos kv_head d_head"], hook: HookPoint) -> Tensor:
        kv = int(kv_head_of(model, k.shape[2])[head])
        for pos in (dst, other):
            k[rows, pos, kv] = kept[k_name][rows, pos, kv]
        return k

    def patch_query(q: Float[Tensor, "batch pos head d_head"], hook: HookPoint) -> Tensor:
        q[rows, src, head] = kept[q_name][rows, src, head]
        return q

    def run(name: str, source: str, extra: list) -> None:
        model.run_with_hooks(tokens[source], fwd_hooks=[read(name), *extra], stop_at_layer=layer + 1)

    run("clean", "clean", [])
    run("swapped", "swapped", [keep(k_name)])
    run("same_gender", "same_gender", [])
    run("flipped", "flipped", [keep(q_name)])
    run("key_patched", "clean", [(k_name, patch_keys)])
    run("query_patched", "clean", [(q_name, patch_query)])
    return out


def _key_probe(
    model: HookedModel, prompts: PromptSet, layer: int, kv_head: int, dst: str, seed: int
) -> dict[str, float | bool | str] | None:
    """Leg (ii): gender of the name at ``dst`` from the head's key there, on names no training fold saw; None when
    the prompts carry no gender labels."""
    if not {"antecedent_gender", "antecedent"} <= set(prompts.labels):
        return None
    target = functools.partial(antecedent_gender, group_by="antecedent")
    table = probe(model, prompts, [target], kinds=("k",), layers=[layer], at=dst, seed=seed).table
    row = table[table["head"] == kv_head].iloc[0]
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in PROBE_FIELDS}


@frozen_model
def query_key(
    model: HookedModel,
    prompts: PromptSet,
    head: tuple[int, int],
    src: str = "pronoun",
    dst: str = "antecedent",
    feature: str = "gender",
    *,
    other: str = "distractor",
    pools: NamePools | None = None,
    key_probe: bool = True,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    batch_size: int = QUERY_KEY_BATCH,
) -> QueryKeyResult:
    """Settle the evidence for "head ``head``'s query at ``src`` asks for the ``feature`` its key at ``dst``
    offers" (module docstring). ``other`` is the role of the second name; ``pools`` the gendered single-token
    names swaps draw from (default: the task word lists for this tokenizer; toy models pass
    ``probes.prompts.tasks.toy.TOY_NAME_POOLS``). ``key_probe=False`` skips leg (ii)."""
    check_feature(feature)
    check_head(model, head)
    prompts.check_model(model)
    layer, h = head
    src_pos, dst_pos, other_pos = prompts.role(src), prompts.role(dst), prompts.role(other)
    _check_flip(prompts, src_pos)
    swaps = gender_swaps(prompts, name_pools(model) if pools is None else pools, dst, other, seed)
    sides = {"clean": prompts.clean, "swapped": swaps.swapped, "same_gender": swaps.same_gender,
             "flipped": prompts.corrupt}  # fmt: skip
    lengths = (prompts.end + 1).tolist()
    need = functools.partial(attention_bytes, model)
    margins: dict[str, list[Tensor]] = {run: [] for run in RUNS}
    for idx in batches(lengths, batch_size, need, "query/key runs", "shorten the prompts"):
        width = max(lengths[idx])
        tokens = {name: t[idx, :width].to(model.cfg.device) for name, t in sides.items()}
        got = _margins(model, tokens, layer, h, src_pos[idx], dst_pos[idx], other_pos[idx])
        for run in RUNS:
            margins[run].append(got[run])
    m = {run: torch.cat(values).double().numpy() for run, values in margins.items()}
    groups = prompts.group_index
    shift, control = m["clean"] - m["swapped"], m["clean"] - m["same_gender"]

    def mean(values: np.ndarray) -> Estimate:
        return estimate_mean(values, seed=seed, groups=groups, confidence=confidence)

    def share(run: str) -> Estimate:
        return ratio_estimate(m["clean"] - m[run], shift, groups=groups, seed=seed, confidence=confidence)

    kv_heads = kv_head_of(model)
    kv = int(kv_heads[h])
    return QueryKeyResult(
        layer=layer, head=h, src=src, dst=dst, other=other, feature=feature, kv_head=kv,
        heads_per_key=int((kv_heads == kv).sum()), shift=mean(shift), control_shift=mean(control),
        feature_shift=mean(shift - control), key_share=share("key_patched"), query_share=share("query_patched"),
        margins=pd.DataFrame({"prompt": np.arange(len(prompts)), "group": prompts.groups, **m}),
        key_probe=_key_probe(model, prompts, layer, kv, dst, seed) if key_probe else None,
    )  # fmt: skip
