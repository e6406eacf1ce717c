"""The statistics of a verdict: a claim's measures estimated on a set of prompts, with intervals that resample whole
groups (simultaneous over the claims tested together), and the discovery/confirmation split of the groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from probes.claims.gathering import Gathered
from probes.claims.measures import MEASURES
from probes.models.heads import Head
from probes.core.stats import (
    CONFIDENCE,
    Estimate,
    bootstrap_spearman,
    cluster_bootstrap_means,
    estimate_mean,
    family_p,
    n_units,
    percentile_interval,
    ratio_draws,
    resamples_for,
    share_of_groups_above_zero,
    signed_rank_p,
    simultaneous_confidence,
)

Rows = Int[np.ndarray, " row"]


def _measure_draws(g: Gathered, name: str, rows: Rows, cols: list[int], n_resamples: int, seed: int) -> tuple:
    """A measure's point estimate per column and its bootstrap draws over groups (ratios drawn with the gap)."""
    x = g.values[name][np.ix_(rows, cols)]
    if not MEASURES[name].of_gap:
        return x.mean(axis=0), cluster_bootstrap_means(x, g.groups[rows], n_resamples, seed)
    return ratio_draws(x, g.gap[rows], g.groups[rows], n_resamples, seed)


def estimates(
    g: Gathered, heads: list[Head], rows: Rows, family: int, alpha: float, seed: int
) -> list[dict[str, Estimate]]:
    """Each head's measures on ``rows``: means (effects as fractions of the gap, a ratio of means) with intervals
    over groups, simultaneous over ``family`` claims, and signed-rank p-values over groups, adjusted for it."""
    cols = [g.column(h) for h in heads]
    groups = g.groups[rows]
    confidence = simultaneous_confidence(alpha, family)
    n_resamples = resamples_for(confidence)
    units = n_units(groups, len(rows))
    out: list[dict[str, Estimate]] = [{} for _ in heads]
    for name, m in MEASURES.items():
        if name not in g.values:
            continue
        value, draws = _measure_draws(g, name, rows, cols, n_resamples, seed)
        low, high = percentile_interval(draws, confidence)
        p = None
        if m.test is not None:
            p = family_p(signed_rank_p(g.values[name][np.ix_(rows, cols)], alternative=m.test, groups=groups), family)
        for j, est in enumerate(out):
            est[name] = Estimate(float(value[j]), float(low[j]), float(high[j]), n=units,
                                 p_value=None if p is None else float(p[j]))
    context = task_estimates(g.gap[rows], g.clean[rows], groups, seed)
    correlations = bootstrap_spearman(g.values["attention_target"][np.ix_(rows, cols)],
                                      g.values["effect_z"][np.ix_(rows, cols)], seed=seed, groups=groups,
                                      confidence=confidence)
    attends = share_of_groups_above_zero(g.values["attention"][np.ix_(rows, cols)], groups, confidence, seed)
    for est, correlation, share in zip(out, correlations, attends):
        est |= context | {"attention_effect_correlation": correlation, "attends_fraction": share}
    return out


def task_estimates(
    gap: Float[np.ndarray, " prompt"], clean: Float[np.ndarray, " prompt"], groups: Int[np.ndarray, " prompt"],
    seed: int,
) -> dict[str, Estimate]:
    """What the task gate reads, with 95% intervals over groups: the clean-corrupt gap, and the share of groups
    where the answer beats the foil (a group counts when its mean clean logit difference is above 0: the gate
    asks whether the model does the task in most groups, "answer beats foil in 75% of groups")."""
    (accuracy,) = share_of_groups_above_zero(clean[:, None], groups, CONFIDENCE, seed)
    return {"gap_logits": estimate_mean(gap, seed=seed, groups=groups), "clean_accuracy": accuracy}


def per_prompt(g: Gathered, head: Head, rows: Rows) -> dict[str, Float[np.ndarray, " prompt"]]:
    """The values behind each estimate, one per prompt of ``rows``, as gathered (effects in logits), and each
    prompt's clean-corrupt gap (``gap_logits``): an effect's share of the gap is the ratio of their means."""
    j = g.column(head)
    return {name: values[rows, j] for name, values in g.values.items()} | {"gap_logits": g.gap[rows]}


def probe_selectivity(probe_table: pd.DataFrame | None, head: Head) -> Estimate | None:
    """The best selectivity any valid probe target reached at this head's output (a target the probed token's
    type determines, or with too few types, is never evidence for a head: ``attachable`` is False)."""
    if probe_table is None:
        return None
    attachable = probe_table.get("attachable", True)
    rows = probe_table[(probe_table["layer"] == head[0]) & (probe_table["head"] == head[1]) & attachable]
    if rows.empty:
        return None
    best = rows.sort_values("selectivity", ascending=False).iloc[0]
    return Estimate(float(best["selectivity"]), float(best["selectivity_ci_low"]), float(best["selectivity_ci_high"]),
                    n=int(best["n"]) if "n" in best else None)

