"""probes.core.stats against scipy.stats where scipy has the same estimator, and by hand where it has none.

scipy's estimators are the reference: each wrapper must give scipy's numbers with the same seed and settings, so
the wrapper only fixes conventions (axis, confidence, resamples, degenerate cases). The cluster bootstrap has no
scipy counterpart, so it is checked on cases small enough to work out by hand, and against scipy on one row per
cluster (where it is the ordinary bootstrap of the mean).
"""

import math

import numpy as np
import pytest
from scipy import stats

from probes.core.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    Estimate,
    bootstrap_mean,
    bootstrap_spearman,
    cluster_bootstrap_means,
    estimate_mean,
    family_p,
    group_means,
    level_text,
    percentile_interval,
    ratio_estimate,
    resamples_for,
    signed_rank_p,
    simultaneous_confidence,
)


def _scipy_percentile_ci(x: np.ndarray, seed: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    res = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES, method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


# ---------------------------------------------------------------------------------------------------------------
# bootstrap_mean, estimate_mean


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("confidence", [0.9, CONFIDENCE])
def test_bootstrap_mean_is_scipys_percentile_bootstrap(seed: int, confidence: float) -> None:
    x = np.random.default_rng(123).normal(1.0, 2.0, size=25)
    mean, low, high = bootstrap_mean(x, confidence, seed)
    assert mean == pytest.approx(x.mean(), abs=1e-12)
    assert (low, high) == pytest.approx(_scipy_percentile_ci(x, seed, confidence), abs=1e-12)
    assert low < mean < high


def test_bootstrap_mean_is_per_column() -> None:
    """Vectorised over the trailing axes: each column gets scipy's interval of that column, same resamples."""
    x = np.random.default_rng(5).normal(size=(20, 3, 2))
    mean, low, high = bootstrap_mean(x, seed=3)
    assert mean.shape == low.shape == high.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert (low[i, j], high[i, j]) == pytest.approx(_scipy_percentile_ci(x[:, i, j], seed=3), abs=1e-12)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-12)


def test_bootstrap_mean_degenerate_cases() -> None:
    """No spread, or a single prompt: the interval collapses onto the mean (scipy alone would say NaN)."""
    mean, low, high = bootstrap_mean(np.column_stack([np.full(10, 2.5), np.arange(10.0)]))
    assert (mean[0], low[0], high[0]) == (2.5, 2.5, 2.5)
    assert low[1] < mean[1] < high[1]
    assert bootstrap_mean(np.array([4.0])) == (4.0, 4.0, 4.0)


def test_estimate_mean_wraps_bootstrap_mean() -> None:
    x = np.random.default_rng(1).normal(size=12)
    est = estimate_mean(x, p_value=0.03, seed=2)
    mean, low, high = bootstrap_mean(x, seed=2)
    assert (est.value, est.ci_low, est.ci_high, est.n, est.p_value) == (mean, low, high, 12, 0.03)


# ---------------------------------------------------------------------------------------------------------------
# signed_rank_p, adjust_p


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_signed_rank_p_is_scipys_wilcoxon_per_column(alternative: str) -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(0.5, 1, 15), rng.normal(0, 1, 15), np.round(rng.normal(0, 1, 15))])
    x[:3, 1] = 0.0  # zeros and ties: zsplit keeps zero differences in the ranking, split between the signs
    got = signed_rank_p(x, alternative)
    expected = [stats.wilcoxon(x[:, j], alternative=alternative, zero_method="zsplit").pvalue for j in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_signed_rank_p_shapes_and_degenerate_columns() -> None:
    x = np.random.default_rng(2).normal(size=(10, 2, 3))
    x[:, 1, 2] = 0.0  # no difference at all: nothing to test, p = 1
    p = signed_rank_p(x)
    assert p.shape == (2, 3) and p[1, 2] == 1.0
    assert p[0, 0] == pytest.approx(stats.wilcoxon(x[:, 0, 0], zero_method="zsplit").pvalue, rel=1e-12)
    assert signed_rank_p(np.array([[3.0]])) == np.ones(1)  # one prompt: nothing to test


def test_family_adjustment_is_bonferroni_and_needs_only_the_family_size() -> None:
    p = np.array([0.01, 0.04, 0.3, np.nan])
    # by hand: times 4, capped at 1, NaN (untested) left NaN
    np.testing.assert_allclose(family_p(p, 4), [0.04, 0.16, 1.0, np.nan])
    # a head's adjusted p depends on how many claims were tested together, never on the others' p-values
    assert family_p(np.array([0.01]), 4)[0] == family_p(p, 4)[0]
    assert simultaneous_confidence(0.05, 1) == pytest.approx(0.95)
    assert simultaneous_confidence(0.05, 10) == pytest.approx(0.995)
    # the tails of a simultaneous interval hold draws: 4 / tail resamples, within [N_RESAMPLES, 20000]
    assert resamples_for(0.95) == N_RESAMPLES and resamples_for(0.995) == 2000 and resamples_for(0.9995) == 16000
    assert resamples_for(1 - 0.05 / 270) == 20_000


def test_high_confidence_intervals_draw_enough_resamples() -> None:
    """A simultaneous interval at 99.95% draws ``resamples_for`` groups-resamples (16,000), not the 2,000 of a 95%
    interval: recomputed by hand from the same seeded draws."""
    rng = np.random.default_rng(4)
    x, gap = rng.normal(size=30), rng.normal(2.0, 0.5, size=30)
    groups = np.repeat(np.arange(15), 2)
    confidence = 0.9995
    assert resamples_for(confidence) == 16_000
    draws = cluster_bootstrap_means(np.column_stack([x, gap]), groups, resamples_for(confidence), seed=2)
    low, high = percentile_interval(draws[:, :1], confidence)
    est = estimate_mean(x, seed=2, groups=groups, confidence=confidence)
    assert (est.ci_low, est.ci_high) == pytest.approx((low[0], high[0]), abs=1e-12)
    low, high = percentile_interval((draws[:, 0] / draws[:, 1])[:, None], confidence)
    ratio = ratio_estimate(x, gap, groups, seed=2, confidence=confidence)
    assert (ratio.ci_low, ratio.ci_high) == pytest.approx((low[0], high[0]), abs=1e-12)


def test_level_text_never_rounds_a_simultaneous_level_to_100() -> None:
    """By hand: 1 - 0.05/family, its shortfall from 100% kept to two significant digits."""
    assert level_text(0.95) == "95%"
    assert level_text(simultaneous_confidence(0.05, 2)) == "97.5%"
    assert level_text(simultaneous_confidence(0.05, 6)) == "99.17%"
    assert level_text(simultaneous_confidence(0.05, 150)) == "99.967%"
    assert level_text(simultaneous_confidence(0.05, 270)) == "99.981%"


def test_grouped_tests_use_group_means() -> None:
    rng = np.random.default_rng(3)
    means = rng.normal(0.4, 1, 12)
    rows = np.repeat(means, 3) + np.tile([-0.1, 0.0, 0.1], 12)  # three rows per group, centred on its mean
    groups = np.repeat(np.arange(12), 3)
    expected = stats.wilcoxon(means, zero_method="zsplit").pvalue
    assert signed_rank_p(rows, groups=groups) == pytest.approx(expected, rel=1e-9)


def test_duplicated_rows_in_their_own_group_keep_the_interval() -> None:
    x = np.random.default_rng(5).normal(size=(30, 2))
    base = estimate_mean(x[:, 0], seed=0)
    dup = estimate_mean(np.repeat(x[:, 0], 3), seed=0, groups=np.repeat(np.arange(30), 3))
    naive = estimate_mean(np.repeat(x[:, 0], 3), seed=0)
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    assert dup.n == 30 and naive.n == 90
    assert abs(width(dup) / width(base) - 1) < 0.15
    assert width(naive) < 0.7 * width(base)  # what ignoring the groups would claim


def test_ratio_interval_redraws_numerator_and_denominator_together() -> None:
    rng = np.random.default_rng(9)
    gap = rng.normal(2.0, 1.0, 40)
    effect = 0.5 * gap + rng.normal(0, 0.05, 40)  # the effect tracks the gap: the ratio is tight
    est = ratio_estimate(effect, gap, seed=0)
    assert est.value == pytest.approx(effect.mean() / gap.mean())
    # independent computation: the delta method's 95% interval for a ratio of means, whose variance comes from the
    # residual effect - ratio * gap (the co-variation the paired bootstrap keeps)
    residual = effect - est.value * gap
    half = stats.norm.ppf(0.975) * residual.std(ddof=1) / np.sqrt(len(gap)) / gap.mean()
    assert est.ci_high - est.ci_low == pytest.approx(2 * half, rel=0.2)
    assert (est.ci_low + est.ci_high) / 2 == pytest.approx(est.value, abs=0.2 * half)
    # dividing by a fixed mean gap instead ignores that co-variation and is much wider
    fixed = estimate_mean(effect / gap.mean(), seed=0)
    assert fixed.ci_high - fixed.ci_low > 4 * (est.ci_high - est.ci_low)
    # by hand, one resample: both columns are means over the SAME drawn groups (counts from one multinomial draw)
    draws = cluster_bootstrap_means(np.column_stack([effect, gap]), np.arange(40), n_resamples=1, seed=0)
    counts = np.random.default_rng(0).multinomial(40, np.full(40, 1 / 40))
    assert draws[0] == pytest.approx([counts @ effect / 40, counts @ gap / 40], abs=1e-12)
    # drawing the gap's groups independently of the effect's would give another resampled ratio
    other = np.random.default_rng(1).multinomial(40, np.full(40, 1 / 40))
    assert abs(draws[0, 0] / draws[0, 1] - (counts @ effect) / (other @ gap)) > 1e-3


def test_ratio_interval_covers_the_true_ratio_at_its_level() -> None:
    """Coverage, from construction: 300 data sets whose true ratio of means is 0.5 (the effect is half the gap plus
    zero-mean noise); the 95% interval must hold 0.5 in about 95% of them (a binomial 95% band over 300 draws, a
    little wider below for the percentile bootstrap's known under-coverage at 40 units)."""
    rng = np.random.default_rng(11)
    covered = 0
    for i in range(300):
        gap = rng.normal(2.0, 1.0, 40)
        effect = 0.5 * gap + rng.normal(0, 0.3, 40)
        est = ratio_estimate(effect, gap, seed=i)
        covered += est.ci_low <= 0.5 <= est.ci_high
    assert 0.90 <= covered / 300 <= 0.985


# ---------------------------------------------------------------------------------------------------------------
# bootstrap_spearman


def test_bootstrap_spearman_point_value_is_scipys() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=1.0, size=30)
    est = bootstrap_spearman(x, y, seed=1)
    ref = stats.spearmanr(x, y)
    assert est.value == pytest.approx(ref.statistic, abs=1e-12)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert est.n == 30 and est.ci_low < est.value < est.ci_high
    assert bootstrap_spearman(x, y, seed=1) == est  # seeded


def test_bootstrap_spearman_p_value_is_over_groups() -> None:
    """Every row repeated three times in its own group: the same groups, so the same p-value (over prompts it
    would shrink); it is scipy's Spearman test on the group means."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=12)
    y = 0.3 * x + rng.normal(size=12)
    once = bootstrap_spearman(x, y, seed=0, groups=np.arange(12))
    tripled = bootstrap_spearman(np.repeat(x, 3), np.repeat(y, 3), seed=0, groups=np.repeat(np.arange(12), 3))
    assert once.p_value == pytest.approx(stats.spearmanr(x, y).pvalue, rel=1e-12)
    assert tripled.p_value == pytest.approx(once.p_value, rel=1e-12)
    assert stats.spearmanr(np.repeat(x, 3), np.repeat(y, 3)).pvalue < 0.75 * once.p_value  # what prompts would say
    groups = np.repeat(np.arange(12), 3)
    xs, ys = np.repeat(x, 3) + rng.normal(size=36), np.repeat(y, 3) + rng.normal(size=36)
    grouped = bootstrap_spearman(xs, ys, seed=0, groups=groups)
    expected = stats.spearmanr(group_means(xs, groups), group_means(ys, groups)).pvalue
    assert grouped.p_value == pytest.approx(expected, rel=1e-12) and grouped.n == 12


def test_bootstrap_spearman_undefined_cases_are_nan() -> None:
    for x, y in [([1.0, 2.0], [2.0, 1.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])]:
        est = bootstrap_spearman(np.array(x), np.array(y))
        assert math.isnan(est.value) and math.isnan(est.ci_low) and math.isnan(est.ci_high) and est.n == len(x)


# ---------------------------------------------------------------------------------------------------------------
# Estimate


def test_estimate_excludes_and_within() -> None:
    est = Estimate(0.5, 0.2, 0.8)
    assert est.excludes(-1.0, 0.1) and est.excludes(0.9, 2.0)  # the interval lies wholly above / below
    assert not est.excludes(-1.0, 0.2) and not est.excludes(0.8, 2.0)  # touching the range is not excluding it
    assert not est.excludes(0.3, 0.4)  # range inside the interval
    assert est.within(0.1, 0.9) and not est.within(0.2, 0.9) and not est.within(0.1, 0.8)  # open range
    assert not est.within(0.3, 2.0)
    nan = Estimate(math.nan, math.nan, math.nan)
    assert not nan.excludes(0.0, 0.0) and not nan.within(-1.0, 1.0)  # no interval: neither


def test_estimate_from_dict_reads_json_nulls() -> None:
    est = Estimate.from_dict({"value": 1.0, "ci_low": None, "ci_high": 2.0, "n": 3, "p_value": None})
    assert est.value == 1.0 and math.isnan(est.ci_low) and est.ci_high == 2.0 and est.n == 3 and est.p_value is None


# ---------------------------------------------------------------------------------------------------------------
# cluster_bootstrap_means: no scipy counterpart


def test_cluster_bootstrap_on_two_clusters_by_hand() -> None:
    """Cluster a has rows 0, 0 and cluster b the row 1. Drawing two clusters gives (a, a) -> 0, (a, b) -> 1/3
    (three rows, one of them 1) or (b, b) -> 1, with probabilities 1/4, 1/2, 1/4."""
    values = np.array([[0.0], [0.0], [1.0]])
    boot = cluster_bootstrap_means(values, np.array(["a", "a", "b"]), n_resamples=4000, seed=0)
    assert boot.shape == (4000, 1)
    outcomes = [0.0, 1 / 3, 1.0]
    nearest = np.abs(boot[:, :1] - np.array(outcomes)).argmin(1)
    np.testing.assert_allclose(boot[:, 0], np.array(outcomes)[nearest], atol=1e-12)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / 4000, [0.25, 0.5, 0.25], atol=0.03)


def test_cluster_bootstrap_equals_the_same_draws_made_by_hand() -> None:
    """Three clusters of different sizes (cluster labels not sorted, not contiguous): each resample is the plain
    mean of the rows of the drawn clusters, each cluster repeated as often as it was drawn."""
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0], [16.0, 160.0], [32.0, 320.0]])
    clusters = np.array([7, 3, 7, 5, 3, 7])
    n_resamples, seed = 50, 11
    boot = cluster_bootstrap_means(values, clusters, n_resamples=n_resamples, seed=seed)

    labels = np.unique(clusters)  # the counts are drawn per cluster, in sorted label order
    counts = np.random.default_rng(seed).multinomial(len(labels), np.full(len(labels), 1 / len(labels)), n_resamples)
    for resample, drawn in zip(boot, counts):
        rows = np.concatenate([values[clusters == label] for label, k in zip(labels, drawn) for _ in range(k)])
        np.testing.assert_allclose(resample, rows.mean(0), rtol=1e-12)
    assert len({tuple(c) for c in counts}) > 1  # the draws do vary


def test_rows_duplicated_within_their_cluster_do_not_narrow_the_interval() -> None:
    """Every row of every cluster repeated five times: the same clusters, the same resamples, the same interval.
    A row-level bootstrap of the same data would wrongly get ~sqrt(5) times narrower."""
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(20), rng.integers(1, 4, 20))
    values = rng.normal(size=(len(clusters), 2))
    once = cluster_bootstrap_means(values, clusters, seed=0)
    five = cluster_bootstrap_means(np.repeat(values, 5, axis=0), np.repeat(clusters, 5), seed=0)
    np.testing.assert_allclose(five, once, rtol=1e-12, atol=1e-12)

    def width(x: np.ndarray) -> float:
        low, high = np.percentile(x, [2.5, 97.5])
        return high - low

    rows_once = _scipy_percentile_ci(values[:, 0], seed=0)
    rows_five = _scipy_percentile_ci(np.repeat(values[:, 0], 5), seed=0)
    assert rows_five[1] - rows_five[0] < 0.6 * (rows_once[1] - rows_once[0])  # what the clusters guard against
    assert width(five[:, 0]) == pytest.approx(width(once[:, 0]), rel=1e-12)


def test_one_row_per_cluster_is_the_ordinary_bootstrap() -> None:
    x = np.random.default_rng(8).normal(size=40)
    boot = cluster_bootstrap_means(x[:, None], np.arange(40), n_resamples=4000, seed=0)
    low, high = np.percentile(boot[:, 0], [2.5, 97.5])
    ref_low, ref_high = _scipy_percentile_ci(x, seed=1)  # other draws: agreement up to resampling noise
    spread = ref_high - ref_low
    assert abs(low - ref_low) < 0.1 * spread and abs(high - ref_high) < 0.1 * spread


def test_bootstrap_resamples_prompts_not_rows() -> None:
    # ten rows per prompt, all right or all wrong: the interval is that of 30 prompts, not of 300 rows
    rng = np.random.default_rng(0)
    per_prompt = rng.random(30) < 0.6
    prompts = np.repeat(np.arange(30), 10)
    boot = cluster_bootstrap_means(np.column_stack([per_prompt[prompts], np.zeros(300)]), prompts, 4000, seed=0)
    low, high = np.percentile(boot[:, 0], [2.5, 97.5])
    reference = stats.bootstrap(
        (per_prompt.astype(float),), np.mean, n_resamples=4000, method="percentile", random_state=1
    )
    assert abs(low - reference.confidence_interval.low) < 0.04 and abs(high - reference.confidence_interval.high) < 0.04
    assert high - low > 0.25
    assert (boot[:, 1] == 0).all()
