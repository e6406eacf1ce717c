"""A sweep spec: a base analysis and a grid over its fields; every point of the grid is one cell, one ordinary run.

::

    title = "Coreference in Gemma-3-270m: seeds x held-out template families"
    base = "coreference_gemma.toml"    # an analysis spec, relative to this file
    workers = 2                        # optional: how many Ray workers (default: as many as fit in memory)
    [set]                              # optional: fields fixed for every cell
    n = 16
    [grid]                             # every combination of these values is one cell
    seed = [0, 1]
    templates = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]

Grid and ``set`` keys are :class:`probes.run.spec.AnalysisSpec` fields (model, seed, n, templates, direction,
thresholds, ...). Every cell's spec is checked before anything runs or is written (its model and roles too, see
:meth:`AnalysisSpec.check_sources`), so a typo fails at once, not in cell 17.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from probes.core.errors import ProbesError
from probes.run.spec import AnalysisSpec, read_toml

KEYS = ("title", "base", "workers", "set", "grid")


@dataclass
class Cell:
    """One point of the grid: its values, the analysis it runs, and the run directory name derived from them."""

    name: str
    values: dict
    spec: AnalysisSpec

    def record(self) -> dict:
        """What identifies the cell on disk: a complete run directory with another record is not this cell's."""
        return {"name": self.name, "values": self.values, "spec": dataclasses.asdict(self.spec)}


@dataclass
class SweepSpec:
    path: Path
    base: Path
    grid: dict[str, list]
    fixed: dict = field(default_factory=dict)
    title: str = ""
    workers: int | None = None
    cells: list[Cell] = field(default_factory=list)

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        data = read_toml(path, "sweep", "analyses/*_sweep.toml")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ProbesError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep has {', '.join(KEYS)}")
        if "base" not in data:
            raise ProbesError(f"{path}: missing `base = \"ANALYSIS.toml\"` (the analysis every cell runs)")
        workers = data.get("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ProbesError(f"{path}: workers must be a positive whole number, got {workers!r}")
        base = path.parent / data["base"]
        sweep = cls(path, base, data.get("grid", {}), data.get("set", {}), data.get("title", ""), workers)
        sweep.cells = sweep._expand()
        return sweep

    def _expand(self) -> list[Cell]:
        where = str(self.path)
        fields = {f.name for f in dataclasses.fields(AnalysisSpec)}
        for table, keys in (("grid", self.grid), ("set", self.fixed)):
            unknown = sorted(set(keys) - fields)
            if unknown:
                raise ProbesError(
                    f"{where}: unknown field(s) {', '.join(unknown)} in [{table}]; analysis fields: {', '.join(sorted(fields))}"
                )
        both = sorted(set(self.grid) & set(self.fixed))
        if both:
            raise ProbesError(f"{where}: {', '.join(both)} both in [grid] and [set]; keep each field in one of them")
        empty = [k for k, v in self.grid.items() if not isinstance(v, list) or not v]
        if not self.grid or empty:
            what = f"[grid] {', '.join(empty)} must be a non-empty list of values" if empty else "[grid] is empty"
            raise ProbesError(f"{where}: {what}; give each swept field a list, e.g. seed = [0, 1, 2]")
        base = AnalysisSpec.from_toml(self.base)
        cells = []
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(self.grid, combo))
            name = cell_name(values)
            spec = dataclasses.replace(base, **self.fixed, **values)
            spec.check(f"{where}: cell {name}")
            spec.check_sources(f"{where}: cell {name}")
            cells.append(Cell(name, values, spec))
        names = [c.name for c in cells]
        if len(set(names)) < len(names):
            raise ProbesError(f"{where}: the grid repeats a value; cells must differ (names: {', '.join(names)})")
        return cells


def _slug(value) -> str:
    if isinstance(value, list):
        return ".".join(_slug(v) for v in value)
    if isinstance(value, dict):
        return ".".join(f"{k}{_slug(v)}" for k, v in value.items())
    text = Path(value).name if isinstance(value, str) and "/" in value else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def cell_name(values: dict) -> str:
    """A readable directory name from the cell's values (``seed1-templates0.1.2``); long ones end in a hash."""
    name = "-".join(f"{k}{_slug(v)}" for k, v in values.items())
    if len(name) > 80:
        digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[:70]}-{digest}"
    return name
