"""Replication sweeps: one analysis over a grid of seeds, template subsets, models or thresholds, one ordinary run
directory per cell, run on Ray (embedded or a cluster), aggregated into per-claim stability.

The last pipeline stage beside the CLI: :mod:`.spec` (the sweep TOML and its cells), :mod:`.execute` (Ray workers,
resume), :mod:`.stability` (verdicts across cells), :mod:`.render` (the page), :mod:`.driver` (all of it, for
``probes sweep``). Ray is an optional extra (``pip install probes[sweep]``); nothing else in the kit imports it.
"""
