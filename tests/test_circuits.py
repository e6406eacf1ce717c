"""The circuit graph: every (upstream node, downstream input) pair computed in the right order, and nothing else.

Ground truth: an independent formulation of the order. Each node gets the time at which it is computed (upstream)
or read (downstream) in a forward pass; an edge exists exactly when the upstream node's time is before the
downstream node's. The graph builder never uses times, so a wrong rule in either shows up as a difference.
"""

import itertools

import pytest

from probes.core.errors import ProbesError
from probes.evidence.circuits import circuit_graph
from probes.evidence.circuits.graph import build_graph


def node_times(graph, parallel_attn_mlp: bool) -> dict[str, float]:
    """When each node is written (upstream) or read (downstream) within a forward pass."""
    times = {}
    for node, _side, kind, layer in graph.nodes[["node", "side", "kind", "layer"]].itertuples(index=False):
        base = 4 * layer
        times[node] = {
            "input": -1.0, "logits": float("inf"),
            "q": base, "k": base, "v": base,  # attention reads the residual as the layer starts
            "head": base + 1,  # and writes after it
            "mlp_in": base if parallel_attn_mlp else base + 2,  # the MLP reads after its layer's heads wrote
            "mlp": base + 3,
        }[kind]
    return times


@pytest.mark.parametrize(
    "n_layers, n_heads, n_kv, has_mlp, parallel",
    [(2, 4, 4, False, False), (3, 4, 1, True, False), (3, 6, 2, True, False), (2, 4, 4, True, True)],
)
def test_edges_are_exactly_the_pairs_computed_in_order(n_layers, n_heads, n_kv, has_mlp, parallel):
    graph = build_graph(n_layers, n_heads, n_kv, has_mlp=has_mlp, parallel_attn_mlp=parallel)
    times = node_times(graph, parallel)
    upstream = graph.nodes.loc[graph.nodes["side"] == "upstream", "node"]
    downstream = graph.nodes.loc[graph.nodes["side"] == "downstream", "node"]
    expected = {(u, d) for u, d in itertools.product(upstream, downstream) if times[u] < times[d]}
    assert graph.edge_ids == expected and len(graph.edges) == len(expected)
    assert graph.nodes["node"].is_unique
    # every query head reads its own q input; the k/v inputs serve whole groups of query heads
    kv_nodes = graph.nodes[graph.nodes["kind"].isin(["k", "v"])]
    assert len(kv_nodes) == 2 * n_layers * n_kv
    assert sorted(h for heads in kv_nodes.query_heads[kv_nodes.layer == 0] for h in heads) == sorted(
        2 * list(range(n_heads)))


def test_ids_name_key_value_heads_under_grouped_query_attention():
    gemma_like = build_graph(18, 4, 1)  # Gemma-3-270m: one key/value head serves all four query heads
    assert ("a10.3", "a13.kv0.k") in gemma_like.edge_ids and ("m5", "logits") in gemma_like.edge_ids
    assert gemma_like.nodes.set_index("node").loc["a13.kv0.v", "query_heads"] == (0, 1, 2, 3)
    ungrouped = build_graph(2, 4, 4)
    assert ("input", "a0.0.v") in ungrouped.edge_ids and "a0.kv0.v" not in set(ungrouped.nodes["node"])


def test_the_toy_models_graph_follows_its_config(toy_model):
    cfg = toy_model.model.cfg
    graph = circuit_graph(toy_model.model)
    assert (graph.n_layers, graph.n_heads) == (cfg.n_layers, cfg.n_heads)
    assert cfg.attn_only and not graph.nodes["kind"].isin(["mlp", "mlp_in"]).any()
    assert f"{len(graph.edges)} edges" in graph._repr_html_()


@pytest.mark.parametrize(
    "edge, message",
    [
        (("a9.0", "logits"), "'a9.0': layer 9 is out of range \\(the model has 2 layers, 0..1\\)"),
        (("input", "a1.4.q"), "'a1.4.q': head 4 is out of range \\(layer 1 has 4 heads, 0..3\\)"),
        (("m2", "logits"), "'m2': layer 2 is out of range"),
        (("a1.2.x", "logits"), "unknown node id 'a1.2.x'"),
        (("a1.0", "a0.0.q"), "no edge a1.0 -> a0.0.q"),
        (("a0.0.q", "logits"), "no edge a0.0.q -> logits"),
        (("input",), "a pair"),
    ],
)
def test_bad_edges_are_refused_in_one_line(edge, message):
    graph = build_graph(2, 4, 4)
    assert graph.check_edges([("a0.1", "a1.2.k")]) == [("a0.1", "a1.2.k")]
    with pytest.raises(ProbesError, match=message) as refused:
        graph.check_edges([("input", "logits"), edge])
    assert "\n" not in str(refused.value)


def test_uneven_key_value_groups_are_refused():
    with pytest.raises(ProbesError, match="cannot share 4 key/value heads evenly"):
        build_graph(2, 6, 4)
