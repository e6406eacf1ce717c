"""Circuits: the graph of edges between heads, MLPs, the input and the logits that a circuit is a subgraph of, exact
runs of its edges (each edge ablated alone; a circuit run alone), and discovery of the smallest faithful circuit."""

from probes.evidence.circuits.discovery import CircuitResult, find_circuit
from probes.evidence.circuits.exact import CircuitRunResult, EdgeAblationResult, edge_ablation, run_circuit
from probes.evidence.circuits.graph import CircuitGraph, circuit_graph

__all__ = [
    "CircuitGraph", "CircuitResult", "CircuitRunResult", "EdgeAblationResult", "circuit_graph", "edge_ablation",
    "find_circuit", "run_circuit",
]
