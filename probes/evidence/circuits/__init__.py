"""Circuits: the graph of edges between heads, MLPs, the input and the logits that a circuit is a subgraph of."""

from probes.evidence.circuits.graph import CircuitGraph, circuit_graph

__all__ = ["CircuitGraph", "circuit_graph"]
