"""Scripted runs: an analysis spec (:mod:`.spec`) run end to end (:mod:`.pipeline`) into a run directory
(:mod:`.rundir`, the one schema that ``probes report`` reads)."""
