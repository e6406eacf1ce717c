"""Edge attribution: a first-order estimate of every edge's exact ablation effect, from one backward pass.

The quantity estimated is :func:`probes.evidence.circuits.exact.edge_ablation`'s: per prompt, the logit difference
(answer - foil at the read-off position) with one edge's upstream value replaced by its corrupt-run value in that
one downstream input, everything else clean, minus the clean logit difference. Negative where the edge carries
the answer; a score has the same sign and unit (logits).

* **EAP** (Nanda 2023; Syed et al. 2023): ``score(u -> v) = sum over positions of (value_u(corrupt) -
  value_u(clean)) . d metric / d input_v``, the gradient taken on the CLEAN run (the run the exact effect starts
  from). Costs the two runs' values and one forward + backward pass on the clean prompts for every edge at once.
* **EAP-IG** (Hanna et al. 2024): the same product with the gradient averaged over ``steps`` runs whose input
  (the residual stream before the first block) lies on the straight line from the corrupt run's to the clean
  run's, at ``alpha = (k + 1/2) / steps`` (the midpoint rule; Hanna et al. take ``k / steps``, which includes the
  corrupt end: both tend to the same integral). Where saturation makes the clean-run gradient blind (a softmax
  already at 1), the path sees the gradient on the way. Completeness of integrated gradients holds for the input
  node: its scores summed over every input it feeds tend to ``m(corrupt) - m(clean)`` as ``steps`` grows.

Post-norm models (Gemma-3: ``ln1_post``/``ln2_post``): exact.py lets an input read ``post(sum + delta) - post(sum)``
for an ablated head or MLP, the post-norm of the mixed sum. Its linearisation is ``J_post(sum) delta`` at the run's
own pre-norm sum of that sublayer (per step, for EAP-IG), so the score is ``(J_post(sum) delta) . d metric / d
input_v``: one Jacobian-vector product per node and pass, shared by every input that reads the node. Grouped
keys/values: a key/value head's k and v input is one downstream input (the graph's ``a13.kv0.k``), its gradient
the sum over the query heads it serves.

How: the gradient reaches each downstream input (each query head's q input, key/value head's k and v input, MLP
input, the final residual stream) through a hook on that input's own copy of the residual stream
(:func:`probes.models.inputs.split_inputs`); each hook scores its rows against every upstream difference with one
batched product as the backward pass reaches it, so no input's gradient outlives its layer. EAP costs about the
time of two forward passes (each run's node values) and one forward + backward pass; EAP-IG ``steps`` of the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.memory import batches
from probes.core.notebook import result_html
from probes.evidence.circuits.exact import GraphIndex, run_values
from probes.evidence.circuits.graph import circuit_graph
from probes.evidence.metric import logit_diff_from_resid, resid_at
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.inputs import input_hook, split_inputs
from probes.models.protocol import HookedModel
from probes.models.writes import attention_sum, post_norms
from probes.prompts.promptset import PromptSet

Method = Literal["eap", "eap-ig"]
METHODS: tuple[str, ...] = ("eap", "eap-ig")


@dataclass(frozen=True)
class EdgeScores:
    """Every edge's estimated ablation effect per prompt (see the module docstring for the direction and sign).

    ``edges``: (upstream, downstream) node ids in the order of ``scores``' last axis (the graph's edge order);
    ``scores[prompt, edge]`` in logits; ``method`` ``eap`` or ``eap-ig``; ``steps`` the points of the path
    integral (1 for EAP); ``groups`` each prompt's group.
    """

    edges: tuple[tuple[str, str], ...]
    scores: Float[np.ndarray, "prompt edge"]
    method: str
    steps: int
    groups: list

    @property
    def mean(self) -> Float[np.ndarray, " edge"]:
        """Each edge's score averaged over prompts."""
        return self.scores.mean(0)

    def to_frame(self) -> pd.DataFrame:
        """One row per edge, in graph order: upstream, downstream, score (mean over prompts), rank (1 = the
        largest |mean score|; ties keep graph order)."""
        mean = self.mean
        rank = np.empty(len(mean), dtype=np.int64)
        rank[np.argsort(-np.abs(mean), kind="stable")] = np.arange(1, len(mean) + 1)
        return pd.DataFrame({
            "upstream": [up for up, _ in self.edges], "downstream": [down for _, down in self.edges],
            "score": mean, "rank": rank,
        })  # fmt: skip

    def per_prompt_frame(self) -> pd.DataFrame:
        """One row per prompt and edge (long form): prompt, group, upstream, downstream, score."""
        n, k = self.scores.shape
        return pd.DataFrame({
            "prompt": np.repeat(np.arange(n), k), "group": np.repeat(np.asarray(self.groups, dtype=object), k),
            "upstream": [up for up, _ in self.edges] * n, "downstream": [down for _, down in self.edges] * n,
            "score": self.scores.reshape(-1),
        })  # fmt: skip

    def top(self, k: int) -> pd.DataFrame:
        """The ``k`` edges with the largest |mean score|, largest first (rows of :meth:`to_frame`)."""
        if k < 1:
            raise ProbesError(f"top(k) needs k >= 1, got {k}")
        return self.to_frame().sort_values("rank").head(k).reset_index(drop=True)

    def _repr_html_(self) -> str:
        top = self.top(5)
        numbers = {f"{up} -> {down}": f"{score:+.4g}" for up, down, score in top[["upstream", "downstream", "score"]].itertuples(index=False)}
        how = "EAP (gradient on the clean run)" if self.method == "eap" else f"EAP-IG ({self.steps} steps from corrupt to clean)"
        sentence = (f"{len(self.edges)} edges scored by {how} on {self.scores.shape[0]} prompts: estimated effect on the "
                    "logit difference of giving one input the corrupt run's value of one node; the largest |mean|:")  # fmt: skip
        return result_html("EdgeScores", sentence, numbers)


@frozen_model
def edge_attribution(model: HookedModel, prompts: PromptSet, method: Method = "eap", steps: int = 5) -> EdgeScores:
    """Score every edge of :func:`probes.circuit_graph` per prompt: EAP (gradient on the clean run) or EAP-IG
    (gradient averaged over ``steps`` inputs on the line from the corrupt run's to the clean run's). A score
    approximates :func:`probes.edge_ablation`'s exact effect (ablated - clean), same sign; rank edges by |score|."""
    if method not in METHODS:
        raise ProbesError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if method == "eap-ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ProbesError(f"EAP-IG needs steps >= 1 (points on the path from corrupt to clean), got {steps!r}")
    prompts.check_pairs()
    prompts.check_model(model)
    graph = circuit_graph(model)
    index = GraphIndex.of(graph)
    alphas = [None] if method == "eap" else [(k + 0.5) / steps for k in range(steps)]
    layers = sorted(index.rows)
    offsets = np.cumsum([0] + [len(index.rows[layer]) for layer in layers])
    first_row = dict(zip(layers, offsets[:-1].tolist()))
    down_row = [first_row[index.position[down][0]] + index.position[down][1] for down in graph.edges["downstream"]]
    up_column = [index.position[up][1] for up in graph.edges["upstream"]]
    flat = torch.tensor(down_row) * len(index.upstream) + torch.tensor(up_column)
    d_model = model.cfg.d_model

    def need(batch: int, length: int) -> int:  # two runs' values, the recorded residual streams, backward activations
        return 4 * batch * length * d_model * (3 * len(index.upstream) + 40 * model.cfg.n_layers)

    out = []
    for part in batches([prompts.n_pos] * len(prompts), 32, need, "edge attribution",
                        "give fewer or shorter prompts, or raise PROBES_MEMORY_FRACTION"):  # fmt: skip
        chunk = prompts.subset(part)
        # node values need no split inputs (the split copies cost a forward pass up to twice as much)
        clean = run_values(model, index, chunk, chunk.clean)
        corrupt = run_values(model, index, chunk, chunk.corrupt)
        diff = (corrupt.values[0] - clean.values[0]).transpose(1, 2).contiguous()  # batch upstream pos d_model
        ends = (clean.resid_pre[0][0], corrupt.resid_pre[0][0])
        dense = torch.zeros(len(chunk), int(offsets[-1]), len(index.upstream), dtype=diff.dtype)
        with split_inputs(model):
            for alpha in alphas:
                dense += _scores(model, index, chunk, diff, first_row, ends, alpha) / len(alphas)
        out.append(dense.reshape(len(chunk), -1)[:, flat].double().cpu())
    edges = tuple(zip(graph.edges["upstream"], graph.edges["downstream"], strict=True))
    return EdgeScores(edges, torch.cat(out).numpy(), method, len(alphas), list(prompts.groups))


def _scores(
    model: HookedModel, index: GraphIndex, prompts: PromptSet, diff: Float[Tensor, "batch upstream pos d_model"],
    first_row: dict[int, int], ends: tuple[Tensor, Tensor], alpha: float | None,
) -> Float[Tensor, "batch row upstream"]:  # fmt: skip
    """One clean-token pass (its input moved to ``corrupt + alpha (clean - corrupt)`` unless ``alpha`` is None)
    and its backward pass: every (downstream row, upstream node) pair's score, rows numbered across layers."""
    n_layers = model.cfg.n_layers
    dense = torch.zeros(len(prompts), sum(len(r) for r in index.rows.values()), len(index.upstream), dtype=diff.dtype)
    sums: dict[int, Tensor] = {}  # segment -> this run's pre-norm sum (post-norm segments only)
    segment_of = {(seg.layer, seg.sublayer): s for s, seg in enumerate(index.segments)}
    normed = [s for s, seg in enumerate(index.segments) if seg.sublayer and post_norms(model, seg.layer, seg.sublayer)]
    start: list[Tensor] = []
    moved: list[Tensor] = []  # the upstream differences as each input receives them, set between the two passes

    def score(grad: Tensor, layer: int, kind: str) -> None:
        """Score this input kind's rows of ``layer`` from the gradient at their residual-stream copies."""
        rows = [r for r, k in enumerate(index.kinds[layer]) if k == kind]
        grad = grad.reshape(*grad.shape[:2], len(rows), -1).transpose(1, 2)  # batch row pos d_model
        upto = len(index.upstream) if layer == n_layers else index.segments[segment_of[(layer, "attn")]].nodes.stop
        if kind in ("q", "k", "v"):
            upto = index.segments[segment_of[(layer, "attn")]].nodes.start
        dense[:, [first_row[layer] + r for r in rows], :upto] = torch.einsum("brpd,bupd->bru", grad, moved[0][:, :upto])

    def on_input(layer: int, kind: str):
        def hook(act: Tensor, hook) -> Tensor:
            act.register_hook(lambda grad: score(grad, layer, kind))
            return act

        return input_hook(kind, layer), hook

    def set_input(act: Tensor, hook) -> Tensor:
        clean, corrupt = ends
        value = act if alpha is None else corrupt + alpha * (clean - corrupt)
        start.append(value.detach().clone().requires_grad_(True))
        return start[-1]

    def record_heads(z: Tensor, hook) -> None:
        sums[segment_of[(hook.layer(), "attn")]] = attention_sum(model, hook.layer(), z.detach())

    fwd_hooks = [(get_act_name("resid_pre", 0), set_input)]
    for layer in range(n_layers):
        fwd_hooks += [on_input(layer, kind) for kind in dict.fromkeys(index.kinds[layer])]
        if segment_of[(layer, "attn")] in normed:
            fwd_hooks.append((get_act_name("z", layer), record_heads))
    handles = []
    for s in normed:
        segment = index.segments[s]
        if segment.sublayer == "mlp":
            def record_mlp(module, args, output, s=s) -> None:
                sums[s] = output.detach()

            handles.append(model.get_submodule(f"blocks.{segment.layer}.mlp").register_forward_hook(record_mlp))
    try:
        with torch.enable_grad():
            final = model.run_with_hooks(prompts.clean, fwd_hooks=fwd_hooks, stop_at_layer=n_layers)
            final.register_hook(lambda grad: score(grad[:, :, None], n_layers, "logits"))
            metric = logit_diff_from_resid(model, resid_at(final, prompts.end), prompts.answer, prompts.foil)
            moved.append(_through_post_norms(model, index, normed, sums, diff).detach())  # no graph through it
            # prompts are independent rows: the gradient of the sum is each prompt's own; ``inputs`` keeps any
            # parameter that requires grad free of a .grad
            torch.autograd.backward(metric.sum(), inputs=start)
    finally:
        for handle in handles:
            handle.remove()
    return dense


def _through_post_norms(
    model: HookedModel, index: GraphIndex, normed: list[int], sums: dict[int, Tensor],
    diff: Float[Tensor, "batch upstream pos d_model"],
) -> Float[Tensor, "batch upstream pos d_model"]:  # fmt: skip
    """Each upstream difference as an input receives it, to first order: ``J_post(sum) delta`` for a node of a
    post-normed sublayer (the linearisation of exact.py's ``post(sum + delta) - post(sum)``, at this run's pre-norm
    sum), ``delta`` elsewhere. One Jacobian-vector product per sublayer, shared by every input that reads it."""
    if not normed:
        return diff
    out = diff.clone()
    for s in normed:
        segment = index.segments[s]
        norms = post_norms(model, segment.layer, segment.sublayer)

        def post(x: Tensor, norms=norms) -> Tensor:
            for norm in norms:
                x = norm(x)
            return x

        delta = diff[:, segment.nodes]
        batch, n, pos, d = delta.shape
        base = sums[s][:, None].expand(batch, n, pos, d).reshape(batch * n, pos, d)
        _, tangent = torch.func.jvp(post, (base,), (delta.reshape(batch * n, pos, d),))
        out[:, segment.nodes] = tangent.reshape(batch, n, pos, d)
    return out
