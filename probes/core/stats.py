"""Statistics shared by every stage: estimates with bootstrap intervals, paired tests, multiple-comparison control.

Everything resamples *prompts* (the unit the evidence is measured on) and is seeded, so a verdict is a
deterministic function of the prompts and the seed. scipy does the work where it has the estimator; this module
fixes the conventions, and adds the one resampler scipy lacks: a bootstrap over groups of rows
(:func:`cluster_bootstrap_means`), for measures taken on several rows per prompt.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000


def nan_if_none(x) -> float:
    """JSON ``null`` (how NaN is stored) back to NaN."""
    return math.nan if x is None else float(x)


@dataclass
class Estimate:
    """A number with its bootstrap interval; ``n`` prompts behind it and a (corrected) p-value where tested."""

    value: float
    ci_low: float
    ci_high: float
    n: int | None = None
    p_value: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        p = d.get("p_value")
        return cls(nan_if_none(d["value"]), nan_if_none(d["ci_low"]), nan_if_none(d["ci_high"]), d.get("n"), None if p is None else float(p))

    def excludes(self, low: float, high: float) -> bool:
        """The whole interval lies outside ``[low, high]`` (on one side)."""
        return self.ci_low > high or self.ci_high < low

    def within(self, low: float, high: float) -> bool:
        """The whole interval lies inside ``(low, high)``."""
        return low < self.ci_low and self.ci_high < high


def bootstrap_mean(
    values: Float[np.ndarray, "prompt *rest"], confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[Float[np.ndarray, "*rest"], Float[np.ndarray, "*rest"], Float[np.ndarray, "*rest"]]:
    """Mean over prompts (axis 0) with a percentile-bootstrap interval, vectorised over the other axes."""
    x = np.asarray(values, dtype=float)
    mean = x.mean(axis=0)
    if x.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # constant columns: handled below
        res = stats.bootstrap(
        (x,), np.mean, axis=0, vectorized=True, confidence_level=confidence, n_resamples=N_RESAMPLES,
        method="percentile", random_state=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    # zero spread: every resample equals the mean, scipy reports NaN
    low = np.where(np.isnan(low), mean, low)
    high = np.where(np.isnan(high), mean, high)
    return mean, low, high


def estimate_mean(values: Float[np.ndarray, " prompt"], p_value: float | None = None, seed: int = 0) -> Estimate:
    mean, low, high = bootstrap_mean(np.asarray(values, dtype=float), seed=seed)
    return Estimate(float(mean), float(low), float(high), n=len(values), p_value=p_value)


def signed_rank_p(values: Float[np.ndarray, "prompt *rest"], alternative: str = "two-sided") -> Float[np.ndarray, "*rest"]:
    """Wilcoxon signed-rank p-value of "the median paired difference is 0", per column (1 where all are 0)."""
    x = np.asarray(values, dtype=float)
    flat = x.reshape(x.shape[0], -1)
    out = np.ones(flat.shape[1])
    for j in range(flat.shape[1]):
        col = flat[:, j]
        if np.any(col != 0) and len(col) > 1:
            out[j] = stats.wilcoxon(col, alternative=alternative, zero_method="zsplit").pvalue
    return out.reshape(x.shape[1:])


def adjust_p(p_values: Float[np.ndarray, "..."]) -> Float[np.ndarray, "..."]:
    """Benjamini-Hochberg adjustment over all entries (the heads tested together); NaN (untested) stays NaN and
    does not count as a test."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = stats.false_discovery_control(p[tested], method="bh")
    return out


def bootstrap_spearman(x: Float[np.ndarray, " prompt"], y: Float[np.ndarray, " prompt"], seed: int = 0) -> Estimate:
    """Spearman rank correlation of two per-prompt measures, with a paired percentile-bootstrap interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Estimate(math.nan, math.nan, math.nan, n=len(x))
    rho = stats.spearmanr(x, y)
    with warnings.catch_warnings():
        # a resample can draw one prompt n times: its correlation is undefined (NaN), and left out below
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
            confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES // 4, method="percentile",
            random_state=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    return Estimate(float(rho.statistic), float(low), float(high), n=len(x), p_value=float(rho.pvalue))


def cluster_bootstrap_means(
    values: Float[np.ndarray, "row k"],
    clusters: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Float[np.ndarray, "resample k"]:
    """Row-weighted means of each column on resamples of whole clusters (all rows of a drawn cluster move as one).

    scipy's bootstrap resamples rows; when rows come in groups (several positions of one prompt) the group is the
    independent unit, so groups are drawn with replacement and each resample's mean is taken over their rows.
    """
    x = np.asarray(values, dtype=float)
    _, cluster_of_row = np.unique(clusters, return_inverse=True)
    rows = np.bincount(cluster_of_row)
    sums = np.stack([np.bincount(cluster_of_row, weights=x[:, j]) for j in range(x.shape[1])], axis=1)
    n = len(rows)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)  # [resample, cluster]
    return (draws @ sums) / (draws @ rows)[:, None]
