"""Exact edge ablation and exact circuit runs: every downstream input rebuilt from per-node values.

Definitions (the quantities edge attribution approximates and circuit discovery keeps or drops):

* An upstream node's **value** is what it writes into the residual stream: ``input`` = the residual stream before
  the first block (the embedding, plus the positional embedding where the model adds one there); head ``aL.H`` =
  ``z_H @ W_O[H]`` (its share of the attention output); MLP ``mL`` = its output (before any post-norm).
* A downstream input (a head's q, a key/value head's k or v, an MLP's input, the logits) reads the residual stream as
  the sum of the upstream values computed before it (the graph's order), then its own norm (``ln1``, ``ln2``,
  ``ln_final``).
* Post-norm models (Gemma-3: ``use_normalization_before_and_after``) add ``ln1_post(sum of heads + b_O)`` and
  ``ln2_post(mlp)`` to the residual stream: an input whose edges from one layer's heads are a mix of kept and
  ablated values reads ``ln1_post(sum over heads of the value it gets from each + b_O)``, recomputed per input
  (:func:`probes.models.writes.residual_change`; the norm does not distribute over the heads).

How: one batched forward pass in which each downstream input gets its own residual stream, this run's residual
stream plus, for each sublayer feeding it, ``residual_change(this run's sum, sum over the input's ablated edges
from that sublayer of (ablated value - this run's value))``. Values are recorded as the run computes them, so a
kept edge carries THIS run's value and a circuit's own nodes change as their inputs change. Variants (different
sets of ablated edges) are batched along a leading dimension.

* :func:`edge_ablation`: per prompt and edge, the metric with that one edge's upstream value replaced by its
  corrupt-run value in that one downstream input, everything else clean, minus the clean metric (the quantity
  EAP approximates to first order: negative where the edge carries the answer). Edges into layer ``L`` start from
  the clean run's residual stream at ``L``; every later input reads the residual stream as it is.
* :func:`run_circuit`: the metric with every edge outside the set ablated and every edge in it kept, beside the
  full model (nothing ablated) and the empty circuit (everything ablated), and faithfulness
  ``(m(circuit) - m(empty)) / (m(full) - m(empty))``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.memory import budget_bytes
from probes.core.notebook import estimate_text, result_html
from probes.core.stats import Estimate, estimate_mean, ratio_estimate
from probes.evidence.circuits.graph import CircuitGraph, circuit_graph
from probes.evidence.metric import logit_diff_from_resid
from probes.models.hooks import get_act_name
from probes.models.inputs import input_hook, split_inputs
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.models.writes import Sublayer, attention_sum, post_norms, residual_change
from probes.prompts.promptset import PromptSet

Ablation = Literal["corrupt", "mean", "resample"]
ABLATIONS: tuple[str, ...] = ("corrupt", "mean", "resample")


@dataclass(frozen=True)
class Segment:
    """Upstream nodes added to the residual stream together: the input, one layer's heads, or one MLP."""

    nodes: slice  # positions in the upstream order
    layer: int
    sublayer: Sublayer | None  # None: the input (no post-norm)


@dataclass(frozen=True)
class GraphIndex:
    """The graph as tensor positions: upstream nodes in computation order, each layer's downstream inputs as rows
    (``n_layers``: the logits), and which (row, upstream) pairs are edges."""

    graph: CircuitGraph
    upstream: list[str]
    segments: list[Segment]
    rows: dict[int, list[str]]  # layer -> downstream node ids
    kinds: dict[int, list[str]]  # layer -> each row's kind

    @classmethod
    def of(cls, graph: CircuitGraph) -> GraphIndex:
        nodes = graph.nodes
        upstream_frame = nodes[nodes["side"] == "upstream"]
        upstream = list(upstream_frame["node"])
        segments, start = [], 0
        for (layer, kind), frame in upstream_frame.groupby(["layer", "kind"], sort=False):  # pyright: ignore[reportGeneralTypeIssues]  # pandas types a key as Hashable (here a tuple)
            sublayer = {"input": None, "head": "attn", "mlp": "mlp"}[kind]
            segments.append(Segment(slice(start, start + len(frame)), int(layer), sublayer))
            start += len(frame)
        downstream = nodes[nodes["side"] == "downstream"]
        rows = {int(layer): list(frame["node"]) for layer, frame in downstream.groupby("layer", sort=True)}  # pyright: ignore[reportArgumentType]  # as above (an int)
        kinds = {int(layer): list(frame["kind"]) for layer, frame in downstream.groupby("layer", sort=True)}  # pyright: ignore[reportArgumentType]
        return cls(graph, upstream, segments, rows, kinds)

    @cached_property
    def position(self) -> dict[str, tuple[int, int]]:
        """Downstream node id -> (layer, row); upstream node id -> (-2, column)."""
        out = {node: (layer, row) for layer, nodes in self.rows.items() for row, node in enumerate(nodes)}
        return out | {node: (-2, column) for column, node in enumerate(self.upstream)}

    def edge_masks(self, edges: Iterable[tuple[str, str]]) -> dict[int, Bool[Tensor, "row upstream"]]:
        """Per layer, which (downstream row, upstream node) pairs are among ``edges``."""
        masks = {layer: torch.zeros(len(rows), len(self.upstream), dtype=torch.bool) for layer, rows in self.rows.items()}
        for up, down in edges:
            layer, row = self.position[down]
            masks[layer][row, self.position[up][1]] = True
        return masks

    @cached_property
    def all_edges(self) -> dict[int, Bool[Tensor, "row upstream"]]:
        return self.edge_masks(self.graph.edge_ids)


@dataclass
class RunValues:
    """What one run computed: every upstream node's value, each sublayer's pre-norm sum, the residual stream
    before each layer, and the metric. Leading dimension: variant."""

    values: Float[Tensor, "variant batch pos upstream d_model"]
    sums: dict[int, Float[Tensor, "variant batch pos d_model"]]  # segment index -> sum (heads + b_O, or MLP)
    resid_pre: dict[int, Float[Tensor, "variant batch pos d_model"]]  # recorded where asked; n_layers: the final one
    metric: Float[Tensor, "variant batch"]


def _change(
    model: HookedModel, index: GraphIndex, mask: Bool[Tensor, "variant row upstream"],
    diff: Float[Tensor, "variant batch pos upstream d_model"], sums: dict[int, Tensor],
) -> Float[Tensor, "variant row batch pos d_model"]:  # fmt: skip
    """What each row's input differs by from this run's residual stream when its masked edges carry
    ``ablated = this run + diff``: per sublayer, the post-norm of the mixed sum minus this run's."""
    weights = mask.to(diff.dtype)
    total = torch.zeros(mask.shape[0], mask.shape[1], *diff.shape[1:3], diff.shape[-1], dtype=diff.dtype, device=diff.device)
    for s, segment in enumerate(index.segments):
        if segment.nodes.start >= diff.shape[3] or not mask[:, :, segment.nodes].any():
            continue
        delta = einops.einsum(weights[:, :, segment.nodes], diff[:, :, :, segment.nodes],
                              "v r n, v b p n d -> v r b p d")  # fmt: skip
        if segment.sublayer is not None and post_norms(model, segment.layer, segment.sublayer):
            v, r, b, p, d = delta.shape
            base = sums[s][:, :, :p].reshape(v * b, p, d)
            moved = residual_change(model, segment.layer, segment.sublayer, base, delta.transpose(0, 1).reshape(r, v * b, p, d))
            delta = moved.reshape(r, v, b, p, d).transpose(0, 1)
        total += delta
    return total


def _forward(
    model: HookedModel, index: GraphIndex, start: int, first: Tensor, values: Tensor, sums: dict[int, Tensor],
    ablated: Float[Tensor, "batch pos upstream d_model"], masks: dict[int, Bool[Tensor, "variant row upstream"]],
    prompts: PromptSet, record: bool = False,
) -> RunValues:  # fmt: skip
    """Run from layer ``start`` (``first``: token ids repeated per variant at 0, else the residual stream there),
    filling ``values``/``sums`` for every node from ``start`` on, each layer's inputs rebuilt under ``masks``."""
    n_variants, batch, n_pos = values.shape[:3]
    n_layers = model.cfg.n_layers
    segment_of = {(seg.layer, seg.sublayer): s for s, seg in enumerate(index.segments)}
    resid_pre: dict[int, Tensor] = {}

    def split(act: Tensor) -> Tensor:
        return act.reshape(n_variants, batch, *act.shape[1:])

    def inputs(layer: int, kind: str):
        rows = [r for r, k in enumerate(index.kinds[layer]) if k == kind]
        mask = masks[layer][:, rows]
        upto = index.segments[segment_of[(layer, "attn")]].nodes.stop if kind == "mlp_in" else (
            index.segments[segment_of[(layer, "attn")]].nodes.start)  # fmt: skip

        def hook(act: Tensor, hook) -> Tensor:
            if not mask.any():
                return act
            diff = ablated[None, :, :, :upto] - values[:, :, :, :upto]
            change = _change(model, index, mask[:, :, :upto], diff, sums)  # variant row batch pos d
            if kind == "mlp_in":
                return act + change[:, 0].reshape(act.shape)
            return act + einops.rearrange(change, "v r b p d -> (v b) p r d")

        return input_hook(kind, layer), hook

    def record_heads(layer: int):
        segment = segment_of[(layer, "attn")]

        def hook(z: Tensor, hook) -> None:
            w_o = model.blocks[layer].attn.W_O
            values[:, :, :, index.segments[segment].nodes] = split(
                einops.einsum(z, w_o, "vb p h e, h e d -> vb p h d"))  # fmt: skip
            sums[segment] = split(attention_sum(model, layer, z))

        return get_act_name("z", layer), hook

    def record_resid(layer: int):
        def hook(act: Tensor, hook) -> None:
            if layer == 0:
                values[:, :, :, 0] = split(act)
            if record:
                resid_pre[layer] = split(act)

        return get_act_name("resid_pre", layer), hook

    fwd_hooks = []
    for layer in range(start, n_layers):
        fwd_hooks.append(record_resid(layer))
        if layer in masks:
            kinds = dict.fromkeys(index.kinds[layer])
            fwd_hooks += [inputs(layer, kind) for kind in kinds if kind != "mlp_in"]
        fwd_hooks.append(record_heads(layer))
        if (layer, "mlp") in segment_of and layer in masks:
            fwd_hooks.append(inputs(layer, "mlp_in"))
    handles = []
    for layer in range(start, n_layers):
        if (layer, "mlp") not in segment_of:
            continue
        segment = segment_of[(layer, "mlp")]

        def record_mlp(module, args, output, segment=segment) -> None:
            values[:, :, :, index.segments[segment].nodes] = split(output)[:, :, :, None]
            sums[segment] = split(output)

        handles.append(model.get_submodule(f"blocks.{layer}.mlp").register_forward_hook(record_mlp))
    try:
        final = first if start == n_layers else model.run_with_hooks(
            first, fwd_hooks=fwd_hooks, start_at_layer=start if first.is_floating_point() else None, stop_at_layer=n_layers)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    if record:
        resid_pre[n_layers] = split(final)
    rows = torch.arange(batch)
    end = prompts.end
    x = split(final)[:, rows, end]  # variant batch d
    mask = masks.get(n_layers)
    if mask is not None and mask.any():
        diff = ablated[rows, end][None, :, None] - values[:, rows, end][:, :, None]
        at_end = {s: t[:, rows, end][:, :, None] for s, t in sums.items()}
        x = x + _change(model, index, mask, diff, at_end)[:, 0, :, 0]
    metric = logit_diff_from_resid(model, x.reshape(n_variants * batch, -1), prompts.answer.repeat(n_variants),
                                   prompts.foil.repeat(n_variants)).reshape(n_variants, batch)  # fmt: skip
    return RunValues(values, sums, resid_pre, metric)


def _empty_values(model: HookedModel, index: GraphIndex, n_variants: int, prompts: PromptSet) -> Tensor:
    device = model.unembed.W_U.device
    shape = (n_variants, len(prompts), prompts.n_pos, len(index.upstream), model.cfg.d_model)
    return torch.zeros(shape, dtype=model.unembed.W_U.dtype, device=device)


def run_values(model: HookedModel, index: GraphIndex, prompts: PromptSet, tokens: Int[Tensor, "batch pos"]) -> RunValues:
    """An unchanged run on ``tokens``: every node's value, the sums, the residual stream before each layer."""
    values = _empty_values(model, index, 1, prompts)
    return _forward(model, index, 0, tokens, values, {}, values[0], {}, prompts, record=True)


def _check(model: HookedModel, prompts: PromptSet, *edge_sets) -> tuple[GraphIndex, list[list[tuple[str, str]]]]:
    prompts.check_pairs()
    prompts.check_model(model)
    for edges in edge_sets:
        if isinstance(edges, str) or not isinstance(edges, Iterable):
            raise ProbesError(f"edges must be a list of (upstream, downstream) node id pairs, got {edges!r}")
    graph = circuit_graph(model)
    return GraphIndex.of(graph), [graph.check_edges(edges) for edges in edge_sets]


def _variant_chunk(model: HookedModel, index: GraphIndex, prompts: PromptSet) -> int:
    """Variants one pass batches: a few copies of every node's value per variant fit the memory budget."""
    per_variant = 4 * len(prompts) * prompts.n_pos * len(index.upstream) * model.cfg.d_model * 4
    return int(max(1, min(64, budget_bytes() // per_variant)))


@dataclass(frozen=True)
class EdgeAblationResult:
    """Exact per-prompt effect of ablating each edge alone (corrupt value in that one input, everything else clean):
    ``effect[prompt, edge] = m(edge ablated) - m(clean)``; ``clean`` is the clean metric."""

    edges: tuple[tuple[str, str], ...]
    effect: Float[Tensor, "prompt edge"]
    clean: Float[Tensor, " prompt"]
    groups: list

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt and edge: prompt, group, upstream, downstream, effect."""
        n, k = self.effect.shape
        return pd.DataFrame({
            "prompt": np.repeat(np.arange(n), k),
            "group": np.repeat(np.asarray(self.groups, dtype=object), k),
            "upstream": [up for up, _ in self.edges] * n,
            "downstream": [down for _, down in self.edges] * n,
            "effect": self.effect.double().numpy().reshape(-1),
        })  # fmt: skip

    def _repr_html_(self) -> str:
        mean = self.effect.double().mean(0)
        order = mean.abs().argsort(descending=True)[:5].tolist()
        numbers = {f"{self.edges[e][0]} -> {self.edges[e][1]}": f"{float(mean[e]):+.4g}" for e in order}
        sentence = (f"{len(self.edges)} edges, each ablated alone with its corrupt value on {self.effect.shape[0]} prompts; "
                    "the largest mean effects on the logit difference (ablated - clean):")  # fmt: skip
        return result_html("EdgeAblationResult", sentence, numbers)


@frozen_model
def edge_ablation(model: HookedModel, prompts: PromptSet, edges: Iterable[tuple[str, str]]) -> EdgeAblationResult:
    """Exact effect of each edge alone (see the module docstring): what EAP approximates, one pass per batch of
    edges into the same layer, starting at that layer from the clean run."""
    index, (edges,) = _check(model, prompts, edges)
    if not edges:
        raise ProbesError("edge_ablation needs at least one edge (circuit_graph(model).edges lists them)")
    effect = torch.empty(len(prompts), len(edges))
    with split_inputs(model):
        clean = run_values(model, index, prompts, prompts.clean)
        corrupt = run_values(model, index, prompts, prompts.corrupt)
        by_layer: dict[int, list[int]] = {}
        for e, (_, down) in enumerate(edges):
            by_layer.setdefault(index.position[down][0], []).append(e)
        chunk = _variant_chunk(model, index, prompts)
        for layer, members in sorted(by_layer.items()):
            for begin in range(0, len(members), chunk):
                part = members[begin : begin + chunk]
                mask = torch.zeros(len(part), len(index.rows[layer]), len(index.upstream), dtype=torch.bool)
                for v, e in enumerate(part):
                    up, down = edges[e]
                    mask[v, index.position[down][1], index.position[up][1]] = True
                values = clean.values.expand(len(part), *clean.values.shape[1:]).clone()
                sums = {s: t.expand(len(part), *t.shape[1:]).clone() for s, t in clean.sums.items()}
                first = clean.resid_pre[layer].expand(len(part), *clean.resid_pre[layer].shape[1:])
                first = first.reshape(-1, *first.shape[2:])
                run = _forward(model, index, layer, first, values, sums, corrupt.values[0], {layer: mask}, prompts)
                effect[:, part] = (run.metric - clean.metric).T.float().cpu()
    return EdgeAblationResult(tuple(edges), effect, clean.metric[0].float().cpu(), list(prompts.groups))


def _ablated_values(clean: RunValues, corrupt: RunValues | None, prompts: PromptSet, ablation: str) -> Tensor:
    """Each prompt's ablated value of every node: the corrupt run's; the mean of the clean runs over the prompts
    of the same length (a position means the same slot only within one length); or another prompt's clean run
    from the same group (the next one, cyclically)."""
    values = clean.values[0]
    if ablation == "corrupt":
        assert corrupt is not None, "the corrupt ablation runs the corrupt prompts"
        return corrupt.values[0]
    key = prompts.end.tolist() if ablation == "mean" else prompts.group_index.tolist()
    members: dict = {}
    for i, k in enumerate(key):
        members.setdefault(k, []).append(i)
    what = "prompts of length" if ablation == "mean" else "group"
    for k, rows in members.items():
        if len(rows) < 2:
            shown = k + 1 if ablation == "mean" else prompts.groups[rows[0]]
            raise ProbesError(
                f"{ablation!r} ablation needs at least 2 prompts per {what}, but {what} {shown} has 1: "
                "give more prompts or use ablation='corrupt'"
            )
        if ablation == "resample" and len({int(prompts.end[i]) for i in rows}) > 1:
            raise ProbesError(
                f"'resample' ablation swaps values between prompts of one group, but group {prompts.groups[rows[0]]} "
                "holds prompts of different lengths: group prompts by template"
            )
    out = torch.empty_like(values)
    for rows in members.values():
        idx = torch.tensor(rows)
        out[idx] = values[idx].mean(0, keepdim=True) if ablation == "mean" else values[idx.roll(-1)]
    return out


@dataclass(frozen=True)
class CircuitRunResult:
    """The metric per prompt with only the circuit's edges kept (``circuit``), with every edge kept (``full``, the
    model) and with none (``empty``), under one ablation; ``faithfulness`` compares them over groups."""

    edges: tuple[tuple[str, str], ...]
    ablation: str
    circuit: Float[Tensor, " prompt"]
    full: Float[Tensor, " prompt"]
    empty: Float[Tensor, " prompt"]
    groups: list

    def _group_index(self) -> np.ndarray:
        first: dict = {}
        return np.array([first.setdefault(g, len(first)) for g in self.groups])

    @cached_property
    def gap(self) -> Estimate:
        """m(full) - m(empty): the behaviour the ablation removes, mean over prompts with a group interval."""
        return estimate_mean((self.full - self.empty).double().numpy(), groups=self._group_index())

    @cached_property
    def faithfulness(self) -> Estimate:
        """(m(circuit) - m(empty)) / (m(full) - m(empty)), a ratio of means with numerator and denominator redrawn
        together over groups; refused when the gap's interval includes 0 (no behaviour to be faithful to)."""
        if not self.gap.excludes(0.0, 0.0):
            raise ProbesError(
                f"faithfulness is undefined here: the full model's gap over the empty circuit, "
                f"{estimate_text(self.gap)}, includes 0 under {self.ablation!r} ablation; use more prompts or another ablation"
            )
        top, bottom = (self.circuit - self.empty).double().numpy(), (self.full - self.empty).double().numpy()
        return ratio_estimate(top, bottom, groups=self._group_index())

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: prompt, group, circuit, full, empty."""
        return pd.DataFrame({
            "prompt": np.arange(len(self.circuit)), "group": self.groups,
            "circuit": self.circuit.double().numpy(), "full": self.full.double().numpy(), "empty": self.empty.double().numpy(),
        })  # fmt: skip

    def _repr_html_(self) -> str:
        try:
            faithfulness: Estimate | str = self.faithfulness
        except ProbesError as err:
            faithfulness = str(err)
        numbers = {"faithfulness": faithfulness, "full - empty": self.gap,
                   "mean m(circuit), m(full), m(empty)": ", ".join(f"{float(t.mean()):.4g}" for t in (self.circuit, self.full, self.empty))}  # fmt: skip
        sentence = f"a circuit of {len(self.edges)} edges run alone, every other edge under {self.ablation!r} ablation"
        return result_html("CircuitRunResult", sentence, numbers)


@dataclass(frozen=True)
class CircuitRuns:
    """Several circuits run on the same prompts: ``circuits[c, prompt]`` the metric with only circuit ``c``'s edges
    kept; ``full`` and ``empty`` as in :class:`CircuitRunResult`; ``edges`` each circuit's checked edges."""

    edges: list[list[tuple[str, str]]]
    ablation: str
    circuits: Float[Tensor, "circuit prompt"]
    full: Float[Tensor, " prompt"]
    empty: Float[Tensor, " prompt"]
    groups: list

    def result(self, c: int) -> CircuitRunResult:
        """Circuit ``c`` as :func:`run_circuit` gives it."""
        return CircuitRunResult(tuple(self.edges[c]), self.ablation, self.circuits[c], self.full, self.empty, self.groups)


@frozen_model
def run_circuits(
    model: HookedModel, prompts: PromptSet, circuits: Iterable[Iterable[tuple[str, str]]], ablation: Ablation = "corrupt"
) -> CircuitRuns:
    """Run each of ``circuits`` alone (see :func:`run_circuit`): the clean (and corrupt) runs once, the circuits
    batched as variants of one pass (with the full model and the empty circuit), as many as fit the memory budget."""
    if ablation not in ABLATIONS:
        raise ProbesError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    index, checked = _check(model, prompts, *circuits)
    # variants: full (nothing ablated), each circuit, empty (every edge ablated)
    nothing = {layer: torch.zeros_like(exists) for layer, exists in index.all_edges.items()}
    variants = [nothing] + [{layer: exists & ~kept[layer] for layer, exists in index.all_edges.items()}
                            for kept in map(index.edge_masks, checked)] + [index.all_edges]  # fmt: skip
    chunk, metrics = _variant_chunk(model, index, prompts), []
    with split_inputs(model):
        clean = run_values(model, index, prompts, prompts.clean)
        corrupt = run_values(model, index, prompts, prompts.corrupt) if ablation == "corrupt" else None
        ablated = _ablated_values(clean, corrupt, prompts, ablation)
        for begin in range(0, len(variants), chunk):
            part = variants[begin : begin + chunk]
            masks = {layer: torch.stack([v[layer] for v in part]) for layer in index.all_edges}
            values = _empty_values(model, index, len(part), prompts)
            run = _forward(model, index, 0, prompts.clean.repeat(len(part), 1), values, {}, ablated, masks, prompts)
            metrics.append(run.metric.float().cpu())
    metric = torch.cat(metrics)
    return CircuitRuns(checked, ablation, metric[1:-1], metric[0], metric[-1], list(prompts.groups))


@frozen_model
def run_circuit(
    model: HookedModel, prompts: PromptSet, edges: Iterable[tuple[str, str]], ablation: Ablation = "corrupt"
) -> CircuitRunResult:
    """Run only the circuit ``edges`` (see the module docstring): every other edge carries its ablated value
    (``corrupt``: the corrupt run's; ``mean``: the clean runs' mean over prompts of the same length, per position;
    ``resample``: another prompt's of the same group), beside the full model and the empty circuit, in one pass."""
    return run_circuits(model, prompts, [edges], ablation).result(0)
