"""Statistics shared by every stage: estimates with bootstrap intervals, paired tests, multiple-comparison control.

Everything resamples *groups*: prompts that share a group (a template filled with the same names, a duplicated
line) are one independent unit, so duplicating prompts adds no precision. Without groups each prompt is its own
unit. Everything is seeded, so a verdict is a deterministic function of the prompts and the seed. scipy does the
work where it has the estimator (the percentile bootstrap of independent rows, Wilcoxon, Spearman); the family of
claims tested together is controlled by Bonferroni (:func:`family_p`, :func:`simultaneous_confidence`); this
module fixes the conventions and adds the one resampler scipy lacks: a bootstrap over groups of rows
(:func:`cluster_bootstrap_means`), which also carries ratios (numerator and denominator drawn together).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from scipy import stats

from probes.core.errors import ProbesError

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


def independent(groups, n: int) -> bool:
    """True when every row is its own unit (no groups given, or all distinct)."""
    return groups is None or len(np.unique(np.asarray(groups))) == n


def bootstrap_mean(
    values: Float[np.ndarray, "prompt *rest"], confidence: float = CONFIDENCE, seed: int = 0, groups=None,
) -> tuple[Float[np.ndarray, "*rest"], Float[np.ndarray, "*rest"], Float[np.ndarray, "*rest"]]:
    """Mean over prompts (axis 0) with a percentile-bootstrap interval, vectorised over the other axes.

    ``groups`` (one id per prompt): whole groups are resampled (:func:`cluster_bootstrap_means`).
    """
    x = np.asarray(values, dtype=float)
    mean = x.mean(axis=0)
    if x.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    if groups is not None and not independent(groups, x.shape[0]):
        flat = x.reshape(x.shape[0], -1)
        draws = cluster_bootstrap_means(flat, groups, resamples_for(confidence), seed)
        low, high = percentile_interval(draws, confidence)
        return mean, low.reshape(mean.shape), high.reshape(mean.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # constant columns: handled below
        res = stats.bootstrap(
        (x,), np.mean, axis=0, vectorized=True, confidence_level=confidence,
        n_resamples=resamples_for(confidence), method="percentile", rng=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    # zero spread: every resample equals the mean, scipy reports NaN
    low = np.where(np.isnan(low), mean, low)
    high = np.where(np.isnan(high), mean, high)
    return mean, low, high


def percentile_interval(
    draws: Float[np.ndarray, "resample k"], confidence: float = CONFIDENCE
) -> tuple[Float[np.ndarray, " k"], Float[np.ndarray, " k"]]:
    """The central ``confidence`` interval of bootstrap draws, per column (NaN draws left out)."""
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: NaN bounds
        return np.nanpercentile(draws, tail, axis=0), np.nanpercentile(draws, 100 - tail, axis=0)


def n_units(groups, n: int) -> int:
    """How many independent units ``n`` rows are: their distinct groups (each row one, without groups)."""
    return n if groups is None else len(np.unique(np.asarray(groups)))


def estimate_mean(
    values: Float[np.ndarray, " prompt"], p_value: float | None = None, seed: int = 0, groups=None,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """The mean with its (group-)bootstrap interval; ``n`` counts the independent units behind it."""
    mean, low, high = bootstrap_mean(np.asarray(values, dtype=float), confidence, seed=seed, groups=groups)
    return Estimate(float(mean), float(low), float(high), n=n_units(groups, len(values)), p_value=p_value)


def ratio_draws(
    numerator: Float[np.ndarray, "prompt *k"], denominator: Float[np.ndarray, "prompt *k"], groups=None,
    n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> tuple[Float[np.ndarray, " k"], Float[np.ndarray, "resample k"]]:
    """mean(numerator) / mean(denominator) per column, and the same ratio on resamples of whole groups, numerator
    and denominator drawn together (one denominator column may serve every numerator column). A zero mean
    denominator gives NaN."""
    num = np.asarray(numerator, dtype=float).reshape(len(numerator), -1)
    den = np.asarray(denominator, dtype=float).reshape(len(denominator), -1)
    ids = np.arange(len(num)) if groups is None else groups
    draws = cluster_bootstrap_means(np.concatenate([num, den], axis=1), ids, n_resamples, seed)
    k = num.shape[1]

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), np.nan)

    return ratio(num.mean(axis=0), den.mean(axis=0)), ratio(draws[:, :k], draws[:, k:])


def ratio_estimate(
    numerator: Float[np.ndarray, " prompt"], denominator: Float[np.ndarray, " prompt"], groups=None, seed: int = 0,
    p_value: float | None = None, confidence: float = CONFIDENCE,
) -> Estimate:
    """mean(numerator) / mean(denominator) with a bootstrap interval that redraws both from the same units.

    An effect as a fraction of the clean-corrupt gap is such a ratio: dividing per-prompt effects by a fixed mean
    gap would ignore the gap's own uncertainty.
    """
    value, draws = ratio_draws(numerator, denominator, groups, resamples_for(confidence), seed)
    low, high = percentile_interval(draws, confidence)
    return Estimate(float(value[0]), float(low[0]), float(high[0]), n=n_units(groups, len(numerator)), p_value=p_value)


def group_means(values: Float[np.ndarray, "prompt *rest"], groups=None) -> Float[np.ndarray, "group *rest"]:
    """The mean of each group's rows (rows unchanged without groups): what tests treat as one observation."""
    x = np.asarray(values, dtype=float)
    if groups is None:
        return x
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    flat = x.reshape(x.shape[0], -1)
    sums = np.stack([np.bincount(index, weights=flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return (sums / np.bincount(index)[:, None]).reshape((-1, *x.shape[1:]))


def share_of_groups_above_zero(
    values: Float[np.ndarray, "prompt k"], groups: Int[np.ndarray, " prompt"], confidence: float, seed: int
) -> list[Estimate]:
    """Per column, the share of groups whose mean value is above 0, each group one unit: a share of prompts would
    let a large group outvote the rest, and could contradict the sign of the mean over groups' margins."""
    above = (group_means(values, groups) > 0).astype(float)
    value, low, high = bootstrap_mean(above, confidence, seed)
    return [Estimate(float(v), float(lo), float(hi), n=len(above)) for v, lo, hi in zip(value, low, high)]


def signed_rank_p(
    values: Float[np.ndarray, "prompt *rest"], alternative: str = "two-sided", groups=None
) -> Float[np.ndarray, "*rest"]:
    """Wilcoxon signed-rank p-value of "the median paired difference is 0", per column (1 where all are 0);
    with ``groups``, over the group means (each group one observation)."""
    x = group_means(values, groups)
    flat = x.reshape(x.shape[0], -1)
    out = np.ones(flat.shape[1])
    for j in range(flat.shape[1]):
        col = flat[:, j]
        if np.any(col != 0) and len(col) > 1:
            out[j] = stats.wilcoxon(col, alternative=alternative, zero_method="zsplit").pvalue  # pyright: ignore[reportAttributeAccessIssue]  # scipy result bunches are untyped
    return out.reshape(x.shape[1:])


def simultaneous_confidence(alpha: float, family: int) -> float:
    """Confidence of each of ``family`` intervals so that all hold together with probability >= 1 - alpha
    (Bonferroni): a claim's verdict then depends on how many claims were tested together, never on which."""
    return 1.0 - alpha / max(int(family), 1)


def family_p(p_values: Float[np.ndarray, "..."], family: int) -> Float[np.ndarray, "..."]:
    """Bonferroni: each p-value times the number of claims tested together (capped at 1; NaN stays NaN).

    Chosen over Benjamini-Hochberg because a head's adjusted p must not depend on the other heads' p-values:
    the same head tested alone (in a family of the same size) or among others gets the same verdict.
    """
    return np.minimum(np.asarray(p_values, dtype=float) * max(int(family), 1), 1.0)


def level_text(confidence: float) -> str:
    """A confidence level as a percentage whose shortfall from 100% keeps two significant digits, so that a
    simultaneous level never reads 100%: 95%, 97.5% (2 claims), 99.17% (6 claims), 99.967% (150 claims)."""
    tail = 100 * (1.0 - confidence)
    digits = max(0, 1 - math.floor(math.log10(tail))) if tail > 0 else 0
    text = f"{100 * confidence:.{digits}f}"
    return f"{text.rstrip('0').rstrip('.') if '.' in text else text}%"


def resamples_for(confidence: float) -> int:
    """Enough bootstrap resamples that each tail of a ``confidence`` interval holds a few draws (at most 20,000)."""
    tail = (1.0 - confidence) / 2
    return int(min(20_000, max(N_RESAMPLES, math.ceil(round(4 / tail, 6)))))


def bootstrap_spearman(
    x: Float[np.ndarray, "prompt *k"], y: Float[np.ndarray, "prompt *k"], seed: int = 0, groups=None,
    confidence: float = CONFIDENCE,
) -> Estimate | list[Estimate]:
    """Spearman rank correlation of two per-prompt measures (per column), with an interval over resampled groups.

    Each resample draws whole groups and takes the weighted Pearson correlation of the full sample's ranks (a
    drawn row counts as often as its group was drawn): vectorised over resamples and columns, which a loop of
    ``spearmanr`` calls is not. The p-value is Spearman's test on the group means, each group one observation:
    over prompts, rows duplicated in their group would shrink it. A 1-d input gives one :class:`Estimate`, a 2-d
    input one per column.
    """
    x2, y2 = (np.asarray(v, dtype=float).reshape(len(v), -1) for v in (x, y))
    n = n_units(groups, len(x2))
    rx, ry = stats.rankdata(x2, axis=0), stats.rankdata(y2, axis=0)
    _, index = np.unique(np.arange(len(x2)) if groups is None else np.asarray(groups), return_inverse=True)
    n_groups = index.max() + 1
    draws = np.random.default_rng(seed).multinomial(
        n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples_for(confidence)
    )
    w = draws[:, index].astype(float)  # [resample, row]
    w /= w.sum(axis=1, keepdims=True)
    gx, gy = group_means(x2, groups), group_means(y2, groups)  # what the p-value is computed on
    out = []
    for j in range(x2.shape[1]):
        a, b = rx[:, j], ry[:, j]
        if len(a) < 3 or np.ptp(x2[:, j]) == 0 or np.ptp(y2[:, j]) == 0:
            out.append(Estimate(math.nan, math.nan, math.nan, n=n))
            continue
        rho = stats.spearmanr(x2[:, j], y2[:, j]).statistic  # pyright: ignore[reportAttributeAccessIssue]  # as above
        defined = len(gx) >= 3 and np.ptp(gx[:, j]) > 0 and np.ptp(gy[:, j]) > 0
        p = stats.spearmanr(gx[:, j], gy[:, j]).pvalue if defined else math.nan  # pyright: ignore[reportAttributeAccessIssue]
        ma, mb = w @ a, w @ b
        cov = w @ (a * b) - ma * mb
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt((w @ (a * a) - ma**2) * (w @ (b * b) - mb**2))
        low, high = percentile_interval(r[:, None], confidence)
        out.append(Estimate(float(rho), float(low[0]), float(high[0]), n=n, p_value=float(p)))
    return out[0] if np.ndim(x) == 1 else out


def cluster_bootstrap_means(
    values: Float[np.ndarray, "row k"],
    clusters: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Float[np.ndarray, "resample k"]:
    """Row-weighted means of each column on resamples of whole clusters (all rows of a drawn cluster move as one).

    One set of draws serves every column, so columns resampled together (a ratio's numerator and denominator)
    stay paired.

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


def split_groups(
    groups: Int[np.ndarray, " prompt"], confirm_fraction: float, seed: int, min_units: int, what: str = "heads"
) -> tuple[Int[np.ndarray, " row"], Int[np.ndarray, " row"]]:
    """Prompt indices of a discovery and a confirmation split that share no group (seeded).

    Refuses a split that leaves either side fewer than ``min_units`` groups: ``what`` (heads, a circuit's edges)
    chosen on too little, or confirmed on too little, says nothing.
    """
    if not 0 < confirm_fraction < 1:
        raise ProbesError(f"confirm_fraction must lie strictly between 0 and 1, got {confirm_fraction!r}")
    units = np.unique(groups)
    held_out = np.random.default_rng(seed).permutation(units)[: int(round(len(units) * confirm_fraction))]
    confirmation = np.isin(groups, held_out)
    n_confirm, n_discover = len(held_out), len(units) - len(held_out)
    if min(n_confirm, n_discover) < min_units:
        raise ProbesError(
            f"choosing {what} from data needs at least {min_units} groups of prompts on each side of the "
            f"discovery/confirmation split; {len(units)} groups at confirm_fraction={confirm_fraction} give "
            f"{n_discover} and {n_confirm}: raise n (or name the {what} instead of selecting them)"
        )
    return np.flatnonzero(~confirmation), np.flatnonzero(confirmation)


def bootstrap_partial_spearman(
    x: Float[np.ndarray, "row k"], y: Float[np.ndarray, "row k"], given: Float[np.ndarray, " row"], groups,
    seed: int = 0, confidence: float = CONFIDENCE,
) -> list[Estimate]:
    """Per column, the partial rank correlation of ``x`` and ``y`` given ``given`` (Spearman's rho of the two
    after the rank of ``given`` is regressed out of both), with a percentile interval over resampled groups.

    A confounder that moves both (a token's position: later tokens attend less to themselves and are updated
    less) makes a plain correlation say nothing about the two; the partial one asks whether they move together at
    equal position. Each resample draws whole groups and recomputes the three weighted rank correlations of the
    full sample's ranks (as :func:`bootstrap_spearman` does), vectorised over resamples. NaN for a column where
    either variable is constant.
    """
    x2, y2 = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rz = stats.rankdata(np.asarray(given, dtype=float))
    rx, ry = stats.rankdata(x2, axis=0), stats.rankdata(y2, axis=0)
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(index.max()) + 1
    draws = np.random.default_rng(seed).multinomial(
        n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples_for(confidence)
    )
    w = np.vstack([np.full(len(rz), 1.0), draws[:, index].astype(float)])  # row 0: the full sample
    w /= w.sum(axis=1, keepdims=True)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ma, mb = w @ a, w @ b
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ (a * b) - ma * mb) / np.sqrt((w @ (a * a) - ma**2) * (w @ (b * b) - mb**2))

    out = []
    for j in range(x2.shape[1]):
        if len(rz) < 4 or np.ptp(x2[:, j]) == 0 or np.ptp(y2[:, j]) == 0:
            out.append(Estimate(math.nan, math.nan, math.nan, n=n_groups))
            continue
        rxy, rxz, ryz = corr(rx[:, j], ry[:, j]), corr(rx[:, j], rz), corr(ry[:, j], rz)
        with np.errstate(divide="ignore", invalid="ignore"):
            partial = (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
        low, high = percentile_interval(partial[1:, None], confidence)
        out.append(Estimate(float(partial[0]), float(low[0]), float(high[0]), n=n_groups))
    return out
