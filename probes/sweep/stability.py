"""Does a verdict survive other seeds, templates and models? Per claim, the verdicts and effects across a sweep's cells.

A claim is a head (or a composition) with its roles, in one model on one task. Its distribution runs over every
complete cell with that model, task and roles; a cell whose data did not select the head counts as
``not selected``. The claim is ``stable`` when one verdict holds in >= 90% of those cells and the pooled verdict
agrees: the verdict rule's legs (:func:`probes.claims.verdicts.decide_legs`; a composition's path leg,
:func:`~probes.claims.verdicts.decide_path`) judged on every cell's per-prompt values pooled (for a head chosen from data, its confirmation prompts), with intervals that resample prompt groups
(a template shared by cells is one unit), simultaneous over the sweep's pooled claims like a run's family
(Bonferroni), and family-adjusted signed-rank p-values. Otherwise ``unstable``, with the split shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from probes.claims.measures import MEASURES
from probes.claims.types import Claim, ClaimResult, Composition, Thresholds
from probes.claims.verdicts import ATTENDS, EDGE, HEAD, PATH, VERDICTS, decide_legs, decide_path, gate_failure
from probes.core.stats import (
    Estimate, estimate_mean, family_p, ratio_estimate, signed_rank_p, simultaneous_confidence,
)
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


def _groups(run: RunResults) -> list[str]:
    """Each prompt's resampling unit across cells: its named group (a template, shared by cells that draw from it),
    or its text where the run's groups are the default one per prompt (0..n-1 would pair unrelated prompts)."""
    named = [r.get("group") for r in run.prompts]
    if named == list(range(len(named))):
        return [str(r.get("clean")) for r in run.prompts]
    return [str(g) for g in named]


def _rows(pp: pd.DataFrame, claim: Claim | Composition) -> pd.DataFrame:
    """The claim's rows of a per-prompt table: a head's by layer and head, a composition's by its ``path``."""
    if isinstance(claim, Composition):
        return pp.loc[pp["path"] == claim.head_name]
    assert claim.head is not None, "a sweep tracks the heads each run judged"
    return pp.loc[(pp["layer"] == claim.head[0]) & (pp["head"] == claim.head[1]) & (pp["path"].fillna("") == "")]


def _pooled(claim: Claim | Composition, results: list[tuple[RunResults, ClaimResult]], family: int,
            seed: int) -> dict[str, Estimate]:
    """Each leg's measure over every prompt each cell judged the claim on, pooled across the cells; an effect as a
    fraction of the gap is the ratio of the pooled means of the effect and of each prompt's gap, both in logits,
    redrawn together over groups (so the gap's own uncertainty is in the interval)."""
    out = {}
    alpha = results[0][1].thresholds.alpha
    for measure in LEG_MEASURES if isinstance(claim, Claim) else (PATH.measure,):
        values, gaps, groups = [], [], []
        for run, result in results:
            if run.per_prompt is None:
                return {}
            rows = _rows(run.per_prompt, claim)
            rows = rows[rows["measure"] == measure]
            judged = result.confirmation or range(run.n_prompts)  # a selected head's rows are its confirmation prompts
            values += rows["value"].tolist()
            gaps += rows["gap"].tolist()
            units = _groups(run)
            groups += [units[judged[i]] for i in rows["prompt"]]
        if not values:
            return {}
        x, ids = np.array(values, dtype=float), np.array(groups)
        test = MEASURES[measure].test
        assert test is not None, "a leg's measure and the path effect are tested"
        p = float(family_p(signed_rank_p(x, alternative=test, groups=ids), family))
        confidence = simultaneous_confidence(alpha, family)
        if MEASURES[measure].of_gap:
            out[measure] = ratio_estimate(x, np.array(gaps, dtype=float), ids, seed=seed, p_value=p,
                                          confidence=confidence)
        else:
            out[measure] = estimate_mean(x, p_value=p, seed=seed, groups=ids, confidence=confidence)
    return out


def _judge_pooled(entry: ClaimStability, results: list[tuple[RunResults, ClaimResult]]) -> None:
    thresholds: set[Thresholds] = {r.thresholds for _, r in results}
    if not entry.pooled:
        entry.pooled_note = "no per-prompt values to pool (cells written before compositions stored theirs)"
    elif len(thresholds) > 1:
        entry.pooled_note = "the cells' thresholds differ: no single rule to judge the pooled values by"
    else:
        (t,) = thresholds
        gated = 2 * sum(gate_failure(r.evidence, t) is None for _, r in results) <= len(results)
        decide = decide_legs if isinstance(entry.claim.claim, Claim) else decide_path
        entry.pooled_verdict = "inconclusive" if gated else decide(entry.pooled, t)
        entry.pooled_note = "the task gate failed in most cells" if gated else ""


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
        out.append((ClaimStability(model, task, first, {"src": src, "dst": dst, "foil": foil}, effect_measure, cells),
                    list(by_cell.values())))
    family = len(out)  # the claims pooled together, heads and compositions, like a run's family
    for entry, results in out:
        entry.pooled = _pooled(entry.claim.claim, results, family, seed)
        _judge_pooled(entry, results)
    return [entry for entry, _ in out]


def stability_table(entries: list[ClaimStability]) -> pd.DataFrame:
    """One row per claim: the split of verdicts, the label, the effect's range across cells and pooled estimates."""
    return pd.DataFrame([e.row() for e in entries])
