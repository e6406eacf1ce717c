"""The computational graph a circuit is a subgraph of: which node outputs can reach which node inputs.

Upstream nodes write into the residual stream: the input embedding (``"input"``), every attention head's output
per query head (``"a10.3"``) and every MLP's output (``"m5"``). Downstream inputs read it: every query head's q
input (``"a10.3.q"``), every key/value head's k and v input, every MLP's input (``"m5.in"``) and the logits
(``"logits"``). An edge is (upstream node, downstream input) and exists when the upstream node is computed before
the input is read: an attention layer reads what earlier layers wrote; an MLP also reads its own layer's heads
(unless attention and MLP run in parallel, as in Pythia); the logits read everything.

Key/value heads: with grouped-query attention one key/value head serves several query heads (Gemma-3-270m: one
for all four), so its k and v inputs are one downstream node named for the group (``"a13.kv0.k"``) and an edge into
it belongs to every query head of the group. Without grouping each head has its own (``"a0.3.k"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from probes.core.errors import ProbesError
from probes.core.notebook import result_html
from probes.models.architecture import n_kv_heads
from probes.models.protocol import HookedModel

INPUT, LOGITS = "input", "logits"


@dataclass(frozen=True)
class CircuitGraph:
    """Nodes and edges of one model's graph (see the module docstring for the ids).

    ``nodes`` columns: node, side (``upstream`` writes the residual, ``downstream`` reads it), kind (``input``,
    ``head``, ``mlp``, ``q``, ``k``, ``v``, ``mlp_in``, ``logits``), layer (-1 for the input, n_layers for the
    logits), head (query head of a head or q node, key/value head of a k or v node, -1 otherwise), query_heads
    (the query heads a downstream node serves, as a tuple).
    ``edges`` columns: upstream, downstream, kind (the downstream node's kind), upstream_layer, downstream_layer.
    """

    nodes: pd.DataFrame
    edges: pd.DataFrame
    n_layers: int
    n_heads: int
    n_kv_heads: int

    def to_frame(self) -> pd.DataFrame:
        """One row per edge (the tidy table a circuit's edges are a subset of)."""
        return self.edges

    @cached_property
    def edge_ids(self) -> frozenset[tuple[str, str]]:
        return frozenset(zip(self.edges["upstream"], self.edges["downstream"], strict=True))

    def check_edges(self, edges: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The edges as a list, or one clear error naming the first that is not in this graph (an unknown node id,
        or an edge against the layer order)."""
        known = set(self.nodes["node"])
        checked = []
        for edge in edges:
            if not (isinstance(edge, tuple | list) and len(edge) == 2):
                raise ProbesError(f"an edge is a pair (upstream, downstream) of node ids, got {edge!r}")
            upstream, downstream = str(edge[0]), str(edge[1])
            for node in (upstream, downstream):
                if node not in known and (reason := self._out_of_range(node)):
                    raise ProbesError(f"{reason} in edge {upstream} -> {downstream}: circuit_graph(model).nodes lists the ids")
                if node not in known:
                    raise ProbesError(
                        f"unknown node id {node!r} in edge {upstream} -> {downstream}: ids look like 'input', "
                        f"'a{self.n_layers - 1}.0', 'm0', 'a1.0.q', 'logits' (circuit_graph(model).nodes lists them)"
                    )
            if (upstream, downstream) not in self.edge_ids:
                raise ProbesError(
                    f"no edge {upstream} -> {downstream} in this model: {upstream} must be an upstream node (input, "
                    f"head, MLP) computed before {downstream} reads the residual stream"
                )
            checked.append((upstream, downstream))
        return checked

    def _out_of_range(self, node: str) -> str | None:
        """Why a well-formed head, key/value or MLP id names nothing in this model, or None."""
        found = re.fullmatch(r"([am])(\d+)(?:\.(?:kv)?(\d+))?(?:\.(?:q|k|v|in))?", node)
        if not found:
            return None
        layer, head = int(found[2]), found[3]
        if layer >= self.n_layers:
            return f"{node!r}: layer {layer} is out of range (the model has {self.n_layers} layers, 0..{self.n_layers - 1})"
        count, what = (self.n_kv_heads, "key/value heads") if ".kv" in node else (self.n_heads, "heads")
        if head is not None and int(head) >= count:
            return f"{node!r}: head {head} is out of range (layer {layer} has {count} {what}, 0..{count - 1})"
        return None

    def _repr_html_(self) -> str:
        counts = self.edges["kind"].value_counts().to_dict()
        numbers = {f"edges into {kind} inputs": str(int(counts.get(kind, 0))) for kind in ("q", "k", "v", "mlp_in", "logits")}
        grouped = self.n_kv_heads < self.n_heads
        sentence = (
            f"{self.n_layers} layers x {self.n_heads} heads; {len(self.edges)} edges that respect the layer order"
            + (f"; each k/v input serves {self.n_heads // self.n_kv_heads} query heads" if grouped else "")
        )
        return result_html("CircuitGraph", sentence, numbers)


def head_id(layer: int, head: int) -> str:
    return f"a{layer}.{head}"


def kv_input_id(layer: int, kv_head: int, which: str, grouped: bool) -> str:
    """A key or value input's id: per key/value head (``a13.kv0.k``) under grouped-query attention, else per head."""
    return f"a{layer}.kv{kv_head}.{which}" if grouped else f"a{layer}.{kv_head}.{which}"


def build_graph(
    n_layers: int, n_heads: int, n_kv_heads: int, *, has_mlp: bool = True, parallel_attn_mlp: bool = False
) -> CircuitGraph:
    """The graph of a decoder-only transformer with these dimensions (see :func:`circuit_graph`)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ProbesError(f"{n_heads} query heads cannot share {n_kv_heads} key/value heads evenly")
    grouped, group = n_kv_heads < n_heads, n_heads // n_kv_heads
    nodes: list[tuple] = [(INPUT, "upstream", "input", -1, -1, ())]
    edges: list[tuple] = []
    written: list[tuple[str, int]] = [(INPUT, -1)]  # upstream nodes so far, with their layer

    def read(downstream: str, kind: str, layer: int, sources: Sequence[tuple[str, int]]) -> None:
        edges.extend((up, downstream, kind, up_layer, layer) for up, up_layer in sources)

    for layer in range(n_layers):
        before = list(written)
        for head in range(n_heads):
            node = f"{head_id(layer, head)}.q"
            nodes.append((node, "downstream", "q", layer, head, (head,)))
            read(node, "q", layer, before)
        for kv_head in range(n_kv_heads):
            serves = tuple(range(kv_head * group, (kv_head + 1) * group))
            for which in ("k", "v"):
                node = kv_input_id(layer, kv_head, which, grouped)
                nodes.append((node, "downstream", which, layer, kv_head, serves))
                read(node, which, layer, before)
        heads = [(head_id(layer, head), layer) for head in range(n_heads)]
        nodes.extend((node, "upstream", "head", layer, head, (head,)) for head, (node, _) in enumerate(heads))
        if has_mlp:
            node = f"m{layer}.in"
            nodes.append((node, "downstream", "mlp_in", layer, -1, ()))
            read(node, "mlp_in", layer, before if parallel_attn_mlp else before + heads)
            nodes.append((f"m{layer}", "upstream", "mlp", layer, -1, ()))
        written += heads + ([(f"m{layer}", layer)] if has_mlp else [])
    nodes.append((LOGITS, "downstream", "logits", n_layers, -1, ()))
    read(LOGITS, "logits", n_layers, written)
    return CircuitGraph(
        nodes=pd.DataFrame(nodes, columns=["node", "side", "kind", "layer", "head", "query_heads"]),
        edges=pd.DataFrame(edges, columns=["upstream", "downstream", "kind", "upstream_layer", "downstream_layer"]),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
    )


def circuit_graph(model: HookedModel) -> CircuitGraph:
    """Every node and every edge that respects the layer order, for ``model``'s configuration (the ids are stable:
    a circuit found on one run names the same edges in another)."""
    cfg = model.cfg
    return build_graph(
        cfg.n_layers, cfg.n_heads, n_kv_heads(model), has_mlp=not cfg.attn_only,
        parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
    )
