"""Circuits: the graph of edges between heads, MLPs, the input and the logits that a circuit is a subgraph of,
exact runs of its edges (each edge ablated alone; a circuit run alone), edge attribution (EAP, EAP-IG) and
discovery of the smallest faithful circuit."""

from probes.evidence.circuits.attribution import EdgeScores, edge_attribution
from probes.evidence.circuits.discovery import CircuitResult, find_circuit
from probes.evidence.circuits.exact import CircuitRunResult, EdgeAblationResult, edge_ablation, run_circuit
from probes.evidence.circuits.graph import CircuitGraph, circuit_graph

__all__ = [
    "CircuitGraph", "CircuitResult", "CircuitRunResult", "EdgeAblationResult", "EdgeScores", "circuit_graph",
    "edge_ablation", "edge_attribution", "find_circuit", "run_circuit",
]
