"""Find the smallest circuit that does the task on some groups of prompts, and judge it on the others.

:func:`find_circuit`, step by step (docs/circuit-discovery.md says why each step is there):

1. **Split** the prompts' groups (or their templates: ``hold_out="templates"``, since a group is one template
   filled once and templates are shared) into a discovery and a held-out confirmation side
   (:func:`probes.core.stats.split_groups`, the split the claims' chosen heads are confirmed on).
2. **Rank** every edge of :func:`~probes.evidence.circuits.graph.circuit_graph` on the discovery side by the
   absolute mean of its per-prompt score: ``"exact"``, the exact effect of ablating that edge alone
   (:func:`~probes.evidence.circuits.exact.edge_ablation`: one pass per edge batch, affordable on toys and small
   models); ``"eap"`` / ``"eap-ig"``, edge attribution patching (``probes.evidence.circuits.attribution``).
3. **Curve**: exact faithfulness (:func:`~probes.evidence.circuits.exact.run_circuit`) of the top ``k`` edges on a
   log-spaced grid of ``k`` ending at every edge (faithfulness 1 by definition), reported whole: it need not rise
   monotonically.
4. **Choose** the smallest grid size whose faithfulness ``F`` has ``|1 - F| <= 1 - target`` (a circuit that leaves
   out a head working against the answer overshoots, ``F > 1``, and has not reached the target), then bisect
   between it and the grid size below; **prune** the edges with no path from the input or to the logits through
   the chosen edges (they change nothing under corrupt ablation: a node whose inputs are all ablated computes its
   ablated value).
5. **Judge** on the held-out side: faithfulness [CI]; completeness, the share of the full model's gap lost when
   the circuit's edges are ablated from it [CI]; per node (head or MLP) of the circuit, the faithfulness lost when
   its output edges are removed (minimality) and ``F(model without it) - F(circuit without it)`` (Wang et al.'s
   completeness for the set ``{node}``: positive when something outside the circuit does its work). Baselines: the
   share of all heads in the circuit, and how often each node is in the circuit found from bootstrap resamples of
   the discovery groups (membership stability).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from probes.core.errors import ProbesError
from probes.core.notebook import number, result_html
from probes.core.stats import Estimate, ratio_estimate, split_groups
from probes.evidence.circuits.exact import ABLATIONS, Ablation, edge_ablation, run_circuits
from probes.evidence.circuits.graph import INPUT, LOGITS, CircuitGraph, circuit_graph
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

Method = Literal["exact", "eap", "eap-ig"]
METHODS: tuple[str, ...] = ("exact", "eap", "eap-ig")
HOLD_OUTS: tuple[str, ...] = ("groups", "templates")
MIN_GROUPS = 3  # groups (or templates) on each side of the split: fewer give no interval worth the name
GRID_POINTS = 16  # log-spaced circuit sizes on the curve before refinement
STABILITY_RESAMPLES = 20  # bootstrap resamples of the discovery groups for membership stability

Edge = tuple[str, str]


@dataclass(frozen=True)
class CircuitResult:
    """A circuit found on the discovery prompts and judged on the held-out ones.

    ``edges``: the circuit (pruned), in ranking order; ``nodes``: its heads and MLPs. ``curve``: one row per size
    evaluated on discovery (size, faithfulness, ci_low, ci_high, reached, grid: False for a bisection point).
    ``size``: the chosen size before pruning. ``faithfulness`` and ``completeness``: held-out estimates.
    ``nodes_table``: one row per node (see :meth:`nodes_frame`). ``head_share``: the circuit's heads over all heads.
    ``stability``: the mean Jaccard overlap of the circuits found from bootstrap resamples of the discovery groups
    with this one. ``ranking``: every edge's mean discovery score, in rank order.
    """

    edges: tuple[Edge, ...]
    nodes: tuple[str, ...]
    method: str
    ablation: str
    target: float
    hold_out: str
    curve: pd.DataFrame
    size: int
    discovery: list[int]
    confirmation: list[int]
    faithfulness: Estimate
    completeness: Estimate
    nodes_table: pd.DataFrame
    head_share: float
    stability: float
    ranking: pd.DataFrame
    n_layers: int
    n_heads: int

    def to_frame(self) -> pd.DataFrame:
        """One row per circuit edge: upstream, downstream, rank (0 = highest score on discovery), score (the mean
        discovery score the ranking used: exact effect or attribution, on the logit difference)."""
        ranked = self.ranking.set_index(["upstream", "downstream"])
        rows = [(up, down, int(ranked.loc[(up, down), "rank"]), float(ranked.loc[(up, down), "score"]))
                for up, down in self.edges]  # fmt: skip
        return pd.DataFrame(rows, columns=["upstream", "downstream", "rank", "score"])

    def nodes_frame(self) -> pd.DataFrame:
        """One row per head or MLP of the circuit: node, kind, layer, head, shares_kv (other query heads whose key
        and value inputs are the same node: an edge into them belongs to all), out_edges, faithfulness_without
        (held-out faithfulness with its output edges removed), minimality (faithfulness lost), incompleteness
        (F(model without it) - F(circuit without it)), each with ``_low``/``_high`` bounds, and stability (share
        of resampled discovery circuits that hold it)."""
        return self.nodes_table

    def _repr_html_(self) -> str:
        numbers: dict[str, Estimate | str] = {
            "held-out faithfulness": self.faithfulness,
            "held-out completeness (share of the gap lost without it)": self.completeness,
            "edges, nodes": f"{len(self.edges)}, {len(self.nodes)} (chosen size {self.size} before pruning)",
            "share of all heads in it": number(self.head_share),
            "membership stability (mean Jaccard over resampled discovery groups)": number(self.stability),
        }
        sentence = (
            f"the smallest circuit ranked by {self.method!r} with |1 - faithfulness| <= {number(1 - self.target)} "
            f"on {len(self.discovery)} discovery prompts, judged on {len(self.confirmation)} held-out prompts "
            f"(split by {self.hold_out}), every other edge under {self.ablation!r} ablation"
        )
        return result_html("CircuitResult", sentence, numbers, extra=drawing(self.edges, self.n_layers, self.n_heads))


def _node_xy(node: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Where an upstream node sits: x = layer (input left, logits right), y = head (MLPs in the last row)."""
    if node == INPUT:
        return 0, n_heads / 2
    if node == LOGITS:
        return n_layers + 1, n_heads / 2
    layer = int(node[1:].split(".")[0])
    return layer + 1, float(node.split(".")[1]) if node.startswith("a") else float(n_heads)


def _reads(down: str) -> str:
    """The head, MLP or logits a downstream input feeds, for drawing (a key/value group: its first query head)."""
    if down == LOGITS:
        return LOGITS
    parts = down.split(".")
    if parts[-1] == "in":
        return parts[0]
    return f"{parts[0]}.{parts[1].removeprefix('kv')}"


def drawing(edges: Sequence[Edge], n_layers: int, n_heads: int) -> str:
    """An inline SVG of the circuit: columns are layers (input left, logits right), rows heads (MLPs last), edges
    coloured by the input they enter (q blue, k green, v orange, MLP input and logits grey)."""
    dx, dy, pad = 48, 14, 10
    width, height = (n_layers + 1) * dx + 2 * pad, n_heads * dy + 2 * pad
    colour = {"q": "#2166ac", "k": "#1b7837", "v": "#e08214"}

    def at(node: str) -> tuple[float, float]:
        x, y = _node_xy(node, n_layers, n_heads)
        return pad + x * dx, pad + y * dy

    grid = "".join(f"<circle cx='{pad + (layer + 1) * dx}' cy='{pad + head * dy}' r='2' fill='#d0d7de'/>"
                   for layer in range(n_layers) for head in range(n_heads + 1))  # fmt: skip
    lines, used = [], {INPUT, LOGITS}
    for up, down in edges:
        target = _reads(down)
        used |= {up, target}
        (x1, y1), (x2, y2) = at(up), at(target)
        stroke = colour.get(down.rsplit(".", 1)[-1], "#59636e")
        lines.append(f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{stroke}' stroke-width='1.5'>"
                     f"<title>{escape(up)} -> {escape(down)}</title></line>")  # fmt: skip
    dots = "".join(f"<circle cx='{at(n)[0]}' cy='{at(n)[1]}' r='4' fill='#24292f'><title>{escape(n)}</title></circle>"
                   for n in sorted(used))  # fmt: skip
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"style='margin-top:6px'>{grid}{''.join(lines)}{dots}</svg>")  # fmt: skip


def connected(graph: CircuitGraph, edges: Sequence[Edge]) -> list[Edge]:
    """The edges that lie on a path from the input to the logits through ``edges`` (order kept)."""
    feeds = {row.node: [f"a{row.layer}.{h}" for h in row.query_heads] if row.kind in ("q", "k", "v")
             else [f"m{row.layer}"] if row.kind == "mlp_in" else [] for row in graph.nodes.itertuples()}  # fmt: skip
    reached, live = {INPUT}, {LOGITS}
    for _ in range(len(edges) + 1):  # fixed point: each pass extends the paths by at least one edge or stops
        grown = reached | {node for up, down in edges if up in reached for node in feeds[down]}
        lives = live | {up for up, down in edges if down in live or any(n in live for n in feeds[down])}
        if grown == reached and lives == live:
            break
        reached, live = grown, lives
    return [(up, down) for up, down in edges if up in reached and (down in live or any(n in live for n in feeds[down]))]


def default_sizes(n_edges: int) -> list[int]:
    """``GRID_POINTS`` log-spaced sizes from 1 to every edge."""
    grid = np.unique(np.round(np.geomspace(1, n_edges, num=min(n_edges, GRID_POINTS))).astype(int))
    return [int(k) for k in grid]


def _scores(model: HookedModel, prompts: PromptSet, edges: list[Edge], method: str, steps: int) -> Float[np.ndarray, "prompt edge"]:
    """Per prompt and edge, the score ranked on: the exact single-edge effect or its attribution estimate."""
    if method == "exact":
        return edge_ablation(model, prompts, edges).effect.double().numpy()
    # the attribution engine, loaded only when asked for
    from probes.evidence.circuits.attribution import edge_attribution

    scores = edge_attribution(model, prompts, method=method, steps=steps)
    column = {tuple(edge): e for e, edge in enumerate(scores.edges)}
    return np.asarray(scores.scores, dtype=float)[:, [column[edge] for edge in edges]]


def _order(scores: Float[np.ndarray, "prompt edge"], weights: Float[np.ndarray, " prompt"] | None = None) -> Int[np.ndarray, " edge"]:
    """Edges by decreasing |weighted mean score| (ties keep the graph's order)."""
    mean = np.average(scores, axis=0, weights=weights)
    return np.argsort(-np.abs(mean), kind="stable")


def _split(prompts: PromptSet, hold_out: str, confirm_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if hold_out == "groups":
        units = prompts.group_index
    elif "template" in prompts.labels:
        first: dict = {}
        units = np.array([first.setdefault(t, len(first)) for t in prompts.labels["template"]], dtype=np.int64)
    else:
        raise ProbesError("hold_out='templates' needs a 'template' label on every prompt: add one, or hold out groups")
    return split_groups(units, confirm_fraction, seed, MIN_GROUPS, what="edges")


def _kv_partners(graph: CircuitGraph, layer: int, head: int) -> tuple[int, ...]:
    """The other query heads that read the same key and value inputs as ``head`` (grouped-query attention)."""
    frame = graph.nodes
    serves = frame.loc[(frame["kind"] == "k") & (frame["layer"] == layer), "query_heads"]
    return next(tuple(h for h in group if h != head) for group in serves if head in group)


@dataclass(frozen=True)
class Judgement:
    """A circuit judged on some prompts: faithfulness, completeness and the per-node table (less stability)."""

    faithfulness: Estimate
    completeness: Estimate
    nodes: pd.DataFrame


def judge_circuit(
    model: HookedModel, prompts: PromptSet, edges: Sequence[Edge], ablation: Ablation = "corrupt",
    graph: CircuitGraph | None = None,
) -> Judgement:  # fmt: skip
    """Faithfulness and completeness of ``edges`` on ``prompts`` and, per head or MLP in it, what removing its
    output edges costs the circuit and the model (see the module docstring, step 5)."""
    graph = graph or circuit_graph(model)
    edges = graph.check_edges(edges)
    if not connected(graph, edges):
        raise ProbesError(
            f"the circuit of {len(edges)} edges has no path from 'input' to 'logits': add the edges that connect "
            "its nodes to both (a head's q/k/v input from upstream, its output into 'logits' or a later input)"
        )
    every = sorted(graph.edge_ids)
    mine = set(edges)
    nodes = list(dict.fromkeys(up for up, _ in edges if up != INPUT))
    outs = [{e for e in edges if e[0] == node} for node in nodes]
    # one batched run: the circuit, the model without it, and per node the circuit and the model without its outputs
    runs = run_circuits(model, prompts, [edges, [e for e in every if e not in mine]]
                        + [c for out in outs for c in ([e for e in edges if e not in out], [e for e in every if e not in out])],
                        ablation)  # fmt: skip
    faithfulness = runs.result(0).faithfulness  # refused here when the gap's interval includes 0
    groups, metric = prompts.group_index, runs.circuits.double().numpy()
    full, empty = runs.full.double().numpy(), runs.empty.double().numpy()
    gap = full - empty
    completeness = ratio_estimate(full - metric[1], gap, groups=groups)
    rows = []
    frame = graph.nodes.set_index("node")
    for n, (node, out) in enumerate(zip(nodes, outs, strict=True)):
        in_circuit, in_model = metric[2 + 2 * n], metric[3 + 2 * n]
        layer, head, kind = int(frame.loc[node, "layer"]), int(frame.loc[node, "head"]), str(frame.loc[node, "kind"])
        row: dict[str, object] = {"node": node, "kind": kind, "layer": layer, "head": head, "out_edges": len(out),
                                  "shares_kv": _kv_partners(graph, layer, head) if kind == "head" else ()}  # fmt: skip
        for name, estimate in (
            ("faithfulness_without", ratio_estimate(in_circuit - empty, gap, groups=groups)),
            ("minimality", ratio_estimate(metric[0] - in_circuit, gap, groups=groups)),
            ("incompleteness", ratio_estimate(in_model - in_circuit, gap, groups=groups)),
        ):
            row |= {name: estimate.value, f"{name}_low": estimate.ci_low, f"{name}_high": estimate.ci_high}
        rows.append(row)
    return Judgement(faithfulness, completeness, pd.DataFrame(rows))


def _reaches(f: Estimate, target: float) -> bool:
    return abs(1 - f.value) <= 1 - target


@frozen_model
def find_circuit(
    model: HookedModel, prompts: PromptSet, target: float = 0.8, method: Method = "eap-ig",
    ablation: Ablation = "corrupt", sizes: Sequence[int] | None = None, hold_out: Literal["groups", "templates"] = "groups",
    seed: int = 0, confirm_fraction: float = 0.5, steps: int = 5,
) -> CircuitResult:  # fmt: skip
    """The smallest circuit with ``|1 - faithfulness| <= 1 - target`` on a discovery split of the groups, judged
    on the held-out ones (see the module docstring). ``sizes``: the circuit sizes (edge counts) of the curve
    (default: log-spaced); every edge is always added last. ``steps``: EAP-IG's integration points."""
    if isinstance(target, bool) or not (isinstance(target, int | float) and 0 < target <= 1):
        raise ProbesError(f"target must lie in (0, 1] (the faithfulness to reach, e.g. 0.8), got {target!r}")
    if method not in METHODS:
        raise ProbesError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if ablation not in ABLATIONS:
        raise ProbesError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    if hold_out not in HOLD_OUTS:
        raise ProbesError(f"unknown hold_out {hold_out!r}: use one of {', '.join(HOLD_OUTS)}")
    graph = circuit_graph(model)
    every = list(zip(graph.edges["upstream"], graph.edges["downstream"], strict=True))
    n_edges = len(every)
    grid = default_sizes(n_edges) if sizes is None else sorted({int(k) for k in sizes})
    bad = [k for k in grid if not 1 <= k <= n_edges]
    if bad:
        raise ProbesError(f"circuit size {bad[0]} is out of range: sizes count edges, from 1 to {n_edges} for this model")
    grid = sorted(set(grid) | {n_edges})
    discovery, confirmation = _split(prompts, hold_out, confirm_fraction, seed)
    found_on, held = prompts.subset(discovery.tolist()), prompts.subset(confirmation.tolist())

    scores = _scores(model, found_on, every, method, steps)
    order = _order(scores)
    ranked = [every[e] for e in order]
    curve: dict[int, tuple[Estimate, bool]] = {}

    def measure(ks: list[int], on_grid: bool) -> list[int]:
        """Faithfulness of the top ``k`` edges for each ``k`` (one batched run), into the curve; those reaching."""
        runs = run_circuits(model, found_on, [ranked[:k] for k in ks], ablation)
        curve.update({k: (runs.result(i).faithfulness, on_grid) for i, k in enumerate(ks)})
        return [k for k in ks if _reaches(curve[k][0], target)]

    size = measure(grid, True)[0]
    below = max((k for k in grid if k < size), default=0)
    while size - below > 1:  # bisect down to the grid point below (the curve need not be monotone there)
        middle = (size + below) // 2
        size, below = (middle, below) if measure([middle], False) else (size, middle)
    edges = connected(graph, ranked[:size])
    judged = judge_circuit(model, held, edges, ablation, graph)

    groups = found_on.group_index
    rng = np.random.default_rng(seed)
    nodes = [up for up in dict.fromkeys(up for up, _ in edges) if up != INPUT]
    counts, overlaps = dict.fromkeys(nodes, 0), []
    for _ in range(STABILITY_RESAMPLES):
        weights = np.bincount(rng.choice(groups.max() + 1, groups.max() + 1), minlength=groups.max() + 1)[groups]
        again = connected(graph, [every[e] for e in _order(scores, weights.astype(float))[:size]])
        overlaps.append(len(set(again) & set(edges)) / max(1, len(set(again) | set(edges))))
        for node in {up for up, _ in again} & set(counts):
            counts[node] += 1
    table = judged.nodes.assign(stability=[counts[n] / STABILITY_RESAMPLES for n in judged.nodes["node"]])
    mean = scores.mean(axis=0)
    return CircuitResult(
        edges=tuple(edges),
        nodes=tuple(nodes),
        method=method,
        ablation=ablation,
        target=float(target),
        hold_out=hold_out,
        curve=pd.DataFrame(
            [(k, f.value, f.ci_low, f.ci_high, _reaches(f, target), on_grid) for k, (f, on_grid) in sorted(curve.items())],
            columns=["size", "faithfulness", "ci_low", "ci_high", "reached", "grid"],
        ),
        size=size,
        discovery=discovery.tolist(),
        confirmation=confirmation.tolist(),
        faithfulness=judged.faithfulness,
        completeness=judged.completeness,
        nodes_table=table,
        head_share=sum(n.startswith("a") for n in nodes) / (graph.n_layers * graph.n_heads),
        stability=float(np.mean(overlaps)),
        ranking=pd.DataFrame({"upstream": [u for u, _ in ranked], "downstream": [d for _, d in ranked],
                              "rank": np.arange(n_edges), "score": mean[order]}),
        n_layers=graph.n_layers,
        n_heads=graph.n_heads,
    )
