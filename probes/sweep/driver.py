"""``probes sweep``: run a sweep's missing cells on Ray, then aggregate every complete cell into OUT.

``OUT/cells/NAME/`` holds one run directory per cell; ``OUT/sweep.json`` records every cell (values, status, the
one-line error of a failed one, seconds, the worker's peak memory) and every claim's stability;
``OUT/stability.parquet`` / ``.csv`` are the claims table, ``OUT/index.html`` the page. A rerun skips complete
cells, so a killed sweep finishes only what is missing; failed cells are tried again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from probes.core.io import write_table, write_text
from probes.core.provenance import kit_version, utc_now
from probes.run.rundir import jsonable, read_run
from probes.sweep import execute
from probes.sweep.execute import CellOutcome, completed
from probes.sweep.render import render_sweep_html
from probes.sweep.spec import SweepSpec
from probes.sweep.stability import ClaimStability, stability, stability_table

CELLS = "cells"
SUMMARY = "sweep.json"
STABILITY = "stability.parquet"
STABILITY_CSV = "stability.csv"
INDEX = "index.html"


@dataclasses.dataclass
class SweepResult:
    out: Path
    outcomes: list[CellOutcome]
    claims: list[ClaimStability]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_sweep(sweep: SweepSpec, out: str | Path, address: str | None = None, command: str = "probes sweep") -> SweepResult:
    """Run what is missing (Ray starts only if something is), then write the aggregate; returns what happened."""
    out = Path(out)
    cells_dir = out / CELLS
    found = {c.name: completed(c, cells_dir / c.name) for c in sweep.cells}
    outcomes = {name: outcome for name, outcome in found.items() if outcome is not None}
    todo = [c for c in sweep.cells if c.name not in outcomes]
    ray_name, workers, elapsed = "not started: every cell was complete", 0, None
    if todo:
        ray_name = execute.connect(address)
        try:
            workers, threads = execute.plan_workers(todo, sweep.workers, embedded=address is None)
            start = time.perf_counter()
            with tqdm(total=len(sweep.cells), initial=len(outcomes), unit="cell", desc="sweep") as bar:
                def done(outcome: CellOutcome) -> None:
                    outcomes[outcome.name] = outcome
                    if outcome.error:
                        bar.write(f"cell {outcome.name} failed: {outcome.error}")
                    bar.update()

                execute.run_cells(todo, cells_dir, workers, threads, command, done)
            elapsed = time.perf_counter() - start
        finally:
            execute.ray.shutdown()
    ordered = [outcomes[c.name] for c in sweep.cells]
    runs = [(c, read_run(cells_dir / c.name)) for c, o in zip(sweep.cells, ordered) if o.status != "failed"]
    claims = stability(runs)
    summary = {
        "format": 1, "kit_version": kit_version(), "created_utc": utc_now(), "command": command,
        "title": sweep.title or sweep.path.stem, "sweep": str(sweep.path), "base": str(sweep.base),
        "grid": sweep.grid, "set": sweep.fixed, "ray": ray_name, "workers": workers,
        "seconds": elapsed, "cells_per_minute": 60 * len(todo) / elapsed if elapsed else None,
        "status_counts": dict(Counter(o.status for o in ordered)),
        "cells": [dataclasses.asdict(o) | {"values": c.values, "dir": f"{CELLS}/{c.name}"}
                  for c, o in zip(sweep.cells, ordered)],
        "claims": [e.row() | {"cell_verdicts": [dataclasses.asdict(c) for c in e.cells]} for e in claims],
    }
    table = stability_table(claims)
    write_table(table, out / STABILITY)
    write_table(table, out / STABILITY_CSV)
    write_text(out / SUMMARY, json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n")
    write_text(out / INDEX, render_sweep_html(summary, claims))
    return SweepResult(out, ordered, claims)
