"""Does a verdict survive other seeds, templates and models? Per claim, the verdicts and effects across a sweep's cells.

A claim is a head (or a composition) with its roles, in one model on one task. Its distribution runs over every
complete cell with that model, task and roles; a cell whose data did not select the head counts as
``not selected``. The claim is ``stable`` when one verdict holds in >= 90% of those cells and the pooled verdict
agrees: the verdict rule's legs (:func:`probes.claims.verdicts.decide_legs`) judged on every cell's per-prompt
values pooled, with intervals that resample prompt groups (a template shared by cells is one unit) and signed-rank
p-values Benjamini-Hochberg adjusted over the sweep's claims. Otherwise ``unstable``, with the split shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from probes.claims.measures import MEASURES
from probes.claims.types import Claim, ClaimResult, Thresholds
from probes.claims.verdicts import ATTENDS, EDGE, HEAD, PATH, VERDICTS, decide_legs, gate_passes
from probes.core.stats import CONFIDENCE, Estimate, adjust_p, cluster_bootstrap_means, signed_rank_p
from probes.run.rundir import RunResults
from probes.sweep.spec import Cell

NOT_SELECTED = "not selected"
STABLE_SHARE = 0.9
LEG_MEASURES = (ATTENDS.measure, EDGE.measure, HEAD.measure)


@dataclass
class CellClaim:
    """The claim in one cell: its verdict (or ``not selected``) and the effect the verdict reads, with its interval."""

    cell: str
    verdict: str
    effect: Estimate | None = None


@dataclass
class ClaimStability:
    model: str
    task: str
    claim: ClaimResult  # the claim as one cell stated it (names the head and roles)
    roles: dict
    effect_measure: str
    cells: list[CellClaim]
    pooled: dict[str, Estimate] = field(default_factory=dict)
    pooled_verdict: str | None = None
    pooled_note: str = ""

    @property
    def counts(self) -> Counter:
        return Counter(c.verdict for c in self.cells)

    @property
    def verdict(self) -> str:
        """The most common verdict (ties: the earlier in VERDICTS); ``not selected`` is not a verdict."""
        counts = self.counts
        return max((v for v in VERDICTS if counts[v]), key=lambda v: counts[v], default=NOT_SELECTED)

    @property
    def share(self) -> float:
        return self.counts[self.verdict] / len(self.cells)

    @property
    def label(self) -> str:
        agrees = self.pooled_verdict is None or self.pooled_verdict == self.verdict
        return "stable" if self.share >= STABLE_SHARE and agrees else "unstable"

    @property
    def split(self) -> str:
        n = len(self.cells)
        return ", ".join(f"{v} {k}/{n}" for v, k in self.counts.most_common())

    @property
    def name(self) -> str:
        return f"{self.claim.claim} ({self.model}, {self.task})"

    def row(self) -> dict:
        effects = np.array([c.effect.value for c in self.cells if c.effect is not None], dtype=float)
        row = {"model": self.model, "task": self.task, "claim": str(self.claim.claim), **self.claim.claim.describe(),
               **self.roles, "cells": len(self.cells), "verdict": self.verdict, "share": self.share,
               "label": self.label, "split": self.split, "pooled_verdict": self.pooled_verdict,
               "pooled_note": self.pooled_note, "effect_measure": self.effect_measure,
               "effect_min": effects.min() if len(effects) else np.nan,
               "effect_max": effects.max() if len(effects) else np.nan}
        row |= {f"n_{v.replace(' ', '_')}": self.counts[v] for v in (*VERDICTS, NOT_SELECTED)}
        for measure, est in self.pooled.items():
            row |= {f"pooled_{measure}": est.value, f"pooled_{measure}_ci_low": est.ci_low,
                    f"pooled_{measure}_ci_high": est.ci_high, f"pooled_{measure}_p_value": est.p_value}
        return row


def _group(record: dict) -> str:
    """A prompt's resampling unit across cells: its group (template) where the run recorded one, else its text."""
    return str(record.get("group", record.get("clean")))


def _pooled_estimate(values: np.ndarray, groups: list[str], test: str, seed: int) -> Estimate:
    means = cluster_bootstrap_means(values[:, None], np.array(groups), seed=seed)[:, 0]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p = float(signed_rank_p(values, alternative=test))
    return Estimate(float(values.mean()), float(low), float(high), n=len(values), p_value=p)


def _pooled(claim: Claim, runs: list[RunResults], seed: int) -> dict[str, Estimate]:
    """Each leg's measure over every prompt of the cells that made the claim (unadjusted p-values)."""
    out = {}
    for measure in LEG_MEASURES:
        values, groups = [], []
        for run in runs:
            pp = run.per_prompt
            if pp is None:
                return {}
            rows = pp[(pp["layer"] == claim.head[0]) & (pp["head"] == claim.head[1]) & (pp["measure"] == measure)]
            values += rows["value"].tolist()
            groups += [_group(run.prompts[i]) for i in rows["prompt"]]
        if not values:
            return {}
        out[measure] = _pooled_estimate(np.array(values, dtype=float), groups, MEASURES[measure].test, seed)
    return out


def _judge_pooled(entry: ClaimStability, results: list[tuple[RunResults, ClaimResult]]) -> None:
    thresholds: set[Thresholds] = {r.thresholds for _, r in results}
    if not entry.pooled:
        entry.pooled_note = "no per-prompt values to pool (compositions store none)"
    elif len(thresholds) > 1:
        entry.pooled_note = "the cells' thresholds differ: no single rule to judge the pooled values by"
    else:
        (t,) = thresholds
        passed = sum(gate_passes(run.n_prompts, r.evidence["gap_logits"], t) for run, r in results)
        entry.pooled_verdict = decide_legs(entry.pooled, t) if 2 * passed > len(results) else "inconclusive"


def stability(runs: list[tuple[Cell, RunResults]], seed: int = 0) -> list[ClaimStability]:
    """Every claim made in any cell, with its verdict in every cell of its model, task and roles."""
    def context(cell: Cell, run: RunResults) -> tuple:
        return cell.spec.model, run.task, cell.spec.src, cell.spec.dst, cell.spec.foil

    made: dict[tuple, dict[str, tuple[RunResults, ClaimResult]]] = {}
    for cell, run in runs:
        for result in run.claims:
            key = (*context(cell, run), type(result.claim).__name__, tuple(result.claim.describe().items()))
            made.setdefault(key, {}).setdefault(cell.name, (run, result))
    out = []
    for key, by_cell in made.items():
        model, task, src, dst, foil = key[:5]
        first = next(iter(by_cell.values()))[1]
        effect_measure = EDGE.measure if isinstance(first.claim, Claim) else PATH.measure
        cells = []
        for cell, run in runs:
            if context(cell, run) == key[:5]:
                result = by_cell.get(cell.name, (None, None))[1]
                cells.append(CellClaim(cell.name, result.verdict, result.evidence.get(effect_measure))
                             if result else CellClaim(cell.name, NOT_SELECTED))
        entry = ClaimStability(model, task, first, {"src": src, "dst": dst, "foil": foil}, effect_measure, cells)
        if isinstance(first.claim, Claim):
            entry.pooled = _pooled(first.claim, [run for run, _ in by_cell.values()], seed)
        out.append((entry, list(by_cell.values())))
    _adjust([entry for entry, _ in out])
    for entry, results in out:
        _judge_pooled(entry, results)
    return [entry for entry, _ in out]


def _adjust(entries: list[ClaimStability]) -> None:
    """Benjamini-Hochberg over the sweep's claims, measure by measure: the pooled tests are tested together."""
    for measure in LEG_MEASURES:
        tested = [e for e in entries if measure in e.pooled]
        adjusted = adjust_p(np.array([e.pooled[measure].p_value for e in tested]))
        for entry, p in zip(tested, adjusted):
            entry.pooled[measure].p_value = float(p)


def stability_table(entries: list[ClaimStability]) -> pd.DataFrame:
    """One row per claim: the split of verdicts, the label, the effect's range across cells and pooled estimates."""
    return pd.DataFrame([e.row() for e in entries])
