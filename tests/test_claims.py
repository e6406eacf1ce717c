"""Verdicts on the planted toy model, where which head does what is known by construction."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from probes import tasks
from probes.claims.evaluation import evaluate
from probes.claims.types import Claim, Composition, Thresholds
from probes.core.errors import ProbesError

# the tested measures and the alternative each is tested against (attention: does the head attend *more*;
# effects: does patching move the answer either way)
ALTERNATIVES = {"attention": "greater", "edge_knockout": "two-sided", "effect_z": "two-sided", "effect_pattern": "two-sided"}


@pytest.fixture(scope="module")
def pronoun_prompts(toy_model):
    return tasks.pronoun_prompts(toy_model, 24, seed=1)


def _claim(head):
    return Claim(head, src="pronoun", dst="antecedent", foil="distractor")


def test_planted_antecedent_head_is_supported(toy_model, pronoun_prompts):
    layer, head = toy_model.heads.antecedent
    result = evaluate(toy_model.model, pronoun_prompts, _claim((layer, head)))
    assert result.verdict == "supported"
    assert result.evidence["attention"].ci_low > 0.9
    assert result.evidence["effect_z"].ci_low > 0.9
    assert result.evidence["effect_pattern"].value > 0.9  # its pattern alone carries the answer
    assert f"head {layer}.{head} attends from the pronoun to the antecedent" in result.sentence
    assert result.sentence.endswith("supported")


def test_decoy_attends_but_changes_nothing(toy_model, pronoun_prompts):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.decoy))
    assert result.verdict == "attention_only"
    assert result.evidence["attention"].ci_low > 0.9
    assert abs(result.evidence["effect_z_logits"].value) < 1e-6
    assert result.evidence["norm_attention"].value == 0.0  # zero OV: norm-weighted attention sees it


@pytest.mark.parametrize("index", [0, 3])
def test_untouched_head_is_refuted(toy_model, pronoun_prompts, index):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.untouched[index]))
    assert result.verdict == "refuted"


def test_three_prompts_are_inconclusive_not_confident(toy_model):
    few = tasks.pronoun_prompts(toy_model, 3)
    for head in (toy_model.heads.antecedent, toy_model.heads.decoy, toy_model.heads.untouched[0]):
        result = evaluate(toy_model.model, few, _claim(head))
        assert result.verdict == "inconclusive"
        assert "only 3 independent groups of prompts" in result.sentence


def test_same_seed_same_result_and_another_seed_other_intervals(toy_model, pronoun_prompts):
    claim = _claim(toy_model.heads.untouched[1])
    a = evaluate(toy_model.model, pronoun_prompts, claim, seed=3)
    b = evaluate(toy_model.model, pronoun_prompts, claim, seed=3)
    c = evaluate(toy_model.model, pronoun_prompts, claim, seed=4)
    assert a.verdict == b.verdict and a.sentence == b.sentence and a.evidence == b.evidence
    # the seed drives the bootstrap only: the point estimates do not move, the intervals do -- each measure's
    # whose prompts take more than two values (a 0/1 measure such as attends_fraction has so few possible
    # resample means that its percentile interval can land on the same two under any seed)
    assert {k: e.value for k, e in a.evidence.items()} == {k: e.value for k, e in c.evidence.items()}
    resampled = [k for k, values in a.per_prompt.items() if len(np.unique(values)) > 2]
    assert {"attention", "effect_z", "effect_pattern", "norm_attention"} <= set(resampled)
    for name in [*resampled, "attention_effect_correlation"]:
        before, after = a.evidence[name], c.evidence[name]
        assert (before.ci_low, before.ci_high) != (after.ci_low, after.ci_high), name


def test_gap_interval_follows_the_seed(toy_model, pronoun_prompts):
    claim = _claim(toy_model.heads.antecedent)
    a = evaluate(toy_model.model, pronoun_prompts, claim, seed=3).evidence["gap_logits"]
    c = evaluate(toy_model.model, pronoun_prompts, claim, seed=4).evidence["gap_logits"]
    assert a.value == c.value and (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_find_the_heads_tests_every_head(toy_model, pronoun_prompts):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(None))
    verdicts = {r.claim.head: r.verdict for r in result.heads}
    assert len(verdicts) == 8
    assert verdicts[toy_model.heads.antecedent] == "supported"
    assert verdicts[toy_model.heads.decoy] == "attention_only"
    assert result.verdict == "supported" and result.claim.head is None
    table = result.to_frame()
    assert len(table) == 8
    assert set(table.columns) >= {"layer", "head", "verdict", "attention", "attention_p_value", "effect_z_ci_low"}


def test_p_values_are_bonferroni_over_all_heads_screened_together(toy_model, pronoun_prompts):
    """Recompute every head's p-value from its per-prompt values with scipy alone, then adjust over all heads."""
    result = evaluate(toy_model.model, pronoun_prompts, _claim(None))
    tested = {name for r in result.heads for name, est in r.evidence.items()
              if est.p_value is not None and name in r.per_prompt}
    assert tested == set(ALTERNATIVES)
    adjusted_anything = False
    for name, alternative in ALTERNATIVES.items():
        raw = np.array([
            # a head whose values are all exactly zero has nothing to rank: p = 1
            stats.wilcoxon(v, alternative=alternative, zero_method="zsplit").pvalue if np.any(v != 0) else 1.0
            for v in (np.asarray(r.per_prompt[name], dtype=float) for r in result.heads)
        ])
        expected = np.minimum(raw * len(result.heads), 1.0)
        reported = np.array([r.evidence[name].p_value for r in result.heads])
        np.testing.assert_allclose(reported, expected, rtol=1e-12, err_msg=name)
        adjusted_anything |= not np.allclose(expected, raw)
    assert adjusted_anything  # the comparison can tell adjusted from raw p-values


def test_previous_token_head_is_necessary_for_induction_through_the_edge_induction_reads(toy_model):
    """Noising: the planted previous-token head attends to the previous token everywhere, and induction breaks
    without it; but the edge induction reads is the one at the token after the first occurrence of the end token
    (where it writes "my previous token was r[-1]" for the induction head's key), not the one at the end."""
    prompts = tasks.repeated_prompts(toy_model, 16)
    head = toy_model.heads.previous_token
    at_end = evaluate(toy_model.model, prompts, Claim(head, src="end", dst="previous"), direction="noising")
    assert at_end.verdict == "attention_only"
    assert at_end.evidence["effect_z"].ci_high < -0.5  # the head matters ...
    assert abs(at_end.evidence["edge_knockout"].value) < 1e-3  # ... but not through this edge
    assert "runs through other positions" in at_end.sentence
    where_read = evaluate(toy_model.model, prompts, Claim(head, src="induction_target", dst="previous"),
                          direction="noising")
    assert where_read.verdict == "supported"
    assert where_read.evidence["edge_knockout"].ci_high < -0.5
    untouched = evaluate(toy_model.model, prompts, Claim(toy_model.heads.untouched[0], "end", "previous"),
                         direction="noising")
    assert untouched.verdict == "refuted"


def test_an_edge_that_attends_but_does_no_work_is_attention_only(toy_model):
    """The pronoun said twice: the antecedent head attends to the antecedent from both pronouns, but in a two-layer
    model only its output at the second (the read-off) reaches the answer."""
    prompts = tasks.pronoun_prompts(toy_model, 24, seed=1, echo=True)
    head = toy_model.heads.antecedent
    first = evaluate(toy_model.model, prompts, Claim(head, "pronoun", "antecedent", "distractor"))
    assert first.verdict == "attention_only"
    assert first.evidence["effect_z"].ci_low > 0.4  # large effect of the head as a whole
    assert "runs through other positions" in first.sentence
    last = evaluate(toy_model.model, prompts, Claim(head, "end", "antecedent", "distractor"))
    assert last.verdict == "supported"


def test_the_decoy_attends_and_its_edge_does_nothing(toy_model, pronoun_prompts):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.decoy))
    assert result.verdict == "attention_only"
    assert abs(result.evidence["edge_knockout"].value) < 1e-6 and abs(result.evidence["effect_z"].value) < 1e-6
    assert "runs through other positions" not in result.sentence


def test_thresholds_are_parameters(toy_model, pronoun_prompts):
    strict = Thresholds(effect=2.0)  # no head can move the answer by twice the gap
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.antecedent), strict)
    assert result.verdict == "attention_only"


def test_composition_claims_follow_the_planted_path(toy_model):
    """The induction head reads the previous-token head through its keys (supported), not through its values."""
    prompts = tasks.repeated_prompts(toy_model, 16, seed=3)
    sender, receiver = toy_model.heads.previous_token, toy_model.heads.induction
    via_k = evaluate(toy_model.model, prompts, Composition(sender, receiver, "k"), direction="noising")
    assert via_k.verdict == "supported" and via_k.evidence["path_effect"].ci_high < -0.5
    via_v = evaluate(toy_model.model, prompts, Composition(sender, receiver, "v"), direction="noising")
    assert via_v.verdict == "refuted"
    assert "keys" in via_k.sentence and via_k.to_frame().loc[0, "via"] == "k"
    with pytest.raises(ProbesError, match="via must be"):
        evaluate(toy_model.model, prompts, Composition(sender, receiver, "o"))


# ---------------------------------------------------------------------------------------------------------------
# Graded planted heads: built so that a wrong rule gives a different verdict than the stated one


def _graded_toy(query_scale: float = 1.0, share: float = 1.0, sign: float = 1.0):
    """The planted model with its antecedent head changed: ``query_scale`` weakens its gender match (partial
    attention), ``share`` keeps that fraction of its copy and gives the rest to the decoy (same attention), so
    patching it moves ~``share`` of the gap; ``sign=-1`` makes it match the other gender (attends to the foil)."""
    from probes.models import toy

    built = toy.build()
    model, (la, ha), (ld, hd) = built.model, built.heads.antecedent, built.heads.decoy
    with torch.no_grad():
        model.blocks[la].attn.W_Q[ha, toy.RESID_PRONOUN_GENDER, 0] *= query_scale * sign
        full = model.blocks[la].attn.W_O[ha].clone()
        model.blocks[la].attn.W_O[ha] = share * full
        model.blocks[ld].attn.W_O[hd] = (1 - share) * full
        model.blocks[ld].attn.W_V[hd] = model.blocks[la].attn.W_V[ha]
    return built


def _margin(model, prompts, head) -> float:
    """The attention margin computed by TransformerLens directly: an independent check of the construction."""
    _, cache = model.run_with_cache(prompts.clean)
    pattern = cache["pattern", head[0]][:, head[1]]
    i = torch.arange(len(prompts))
    src = prompts.role("pronoun")
    return float((pattern[i, src, prompts.role("antecedent")] - pattern[i, src, prompts.role("distractor")]).mean())


@pytest.mark.parametrize(("share", "verdict"), [(0.12, "attention_only"), (0.32, "supported")])
def test_effect_just_below_or_above_the_threshold(share, verdict):
    """Knocking out the edge removes the head's share of the clean answer, half the clean-corrupt gap (clean +5,
    corrupt -5): -6% or -16% of it. Both intervals exclude 0, so a rule that only asks "is there an effect?" calls
    both supported; the rule asks for an effect beyond the 10% threshold."""
    toy_model = _graded_toy(share=share)
    prompts = tasks.pronoun_prompts(toy_model, 24, seed=1)
    result = evaluate(toy_model.model, prompts, _claim(toy_model.heads.antecedent))
    edge = result.evidence["edge_knockout"]
    assert edge.ci_high < 0 and abs(edge.value + share / 2) < 0.02  # the construction took
    assert result.verdict == verdict


def test_partial_attention_is_judged_by_the_margin_not_by_how_often():
    """The head attends a little more to the antecedent than to the distractor in every prompt, but by a margin
    below the threshold: "attends in 100% of prompts" must not make it attend."""
    toy_model = _graded_toy(query_scale=0.37)
    prompts = tasks.pronoun_prompts(toy_model, 24, seed=1)
    head = toy_model.heads.antecedent
    assert 0.03 < _margin(toy_model.model, prompts, head) < 0.09
    result = evaluate(toy_model.model, prompts, _claim(head), Thresholds(min_gap=0.1))
    assert result.evidence["attends_fraction"].value == 1.0
    assert result.evidence["attention"].ci_high < 0.1
    assert result.verdict == "effect_only"  # it still carries the whole (small) gap
    strong = _graded_toy(query_scale=0.45)
    assert _margin(strong.model, prompts, head) > 0.2
    assert evaluate(strong.model, prompts, _claim(head), Thresholds(min_gap=0.1)).verdict == "supported"


def test_a_head_looking_at_the_foil_is_said_to_do_so():
    toy_model = _graded_toy(sign=-1.0)
    prompts = tasks.pronoun_prompts(toy_model, 24, seed=1)
    layer, head = toy_model.heads.antecedent
    result = evaluate(toy_model.model, prompts, _claim((layer, head)))
    assert result.evidence["attention"].ci_high < 0
    assert f"head {layer}.{head} attends to the distractor more than to the antecedent" in result.sentence


@pytest.mark.parametrize(("share", "sign", "reason"), [
    (1.0, -1.0, "does not do the task"),  # the antecedent head copies the wrong name: the model answers the foil
    (0.1, 1.0, "the gate needs at least 1.0"),  # a real but tiny gap: every effect would be a fraction of noise
])
def test_the_task_gate(share, sign, reason):
    toy_model = _graded_toy(share=share, sign=sign)
    prompts = tasks.pronoun_prompts(toy_model, 24, seed=1)
    if share < 1:  # the decoy gets the rest of the copy: zero it so the gap really is small
        ld, hd = toy_model.heads.decoy
        with torch.no_grad():
            toy_model.model.blocks[ld].attn.W_O[hd] = 0.0
    result = evaluate(toy_model.model, prompts, _claim(toy_model.heads.antecedent))
    assert result.verdict == "inconclusive" and reason in result.sentence


def test_a_probe_table_given_to_evaluate_never_joins_the_head_it_confirms(toy_model, pronoun_prompts):
    """A table fitted on every prompt may inform the screening of all heads, but the head chosen from data is
    judged on its confirmation prompts alone: that table was not, so it is left off."""
    n_layers, n_heads = toy_model.model.cfg.n_layers, toy_model.model.cfg.n_heads
    table = pd.DataFrame([{"layer": layer, "head": head, "attachable": True, "n": len(pronoun_prompts),
                           "selectivity": 0.5, "selectivity_ci_low": 0.4, "selectivity_ci_high": 0.6}
                          for layer in range(n_layers) for head in range(n_heads)])
    grouped = pronoun_prompts.subset(list(range(24)))
    grouped.groups = [i // 2 for i in range(24)]
    result = evaluate(toy_model.model, grouped, _claim(None), Thresholds(min_prompts=5), probe_table=table)
    assert all("probe_selectivity" in r.evidence for r in result.heads)
    assert result.selected and "probe_selectivity" not in result.evidence


def test_a_selected_head_is_confirmed_on_held_out_groups(toy_model, pronoun_prompts):
    grouped = pronoun_prompts.subset(list(range(24)))
    grouped.groups = [i // 2 for i in range(24)]  # 12 groups of two prompts
    result = evaluate(toy_model.model, grouped, _claim(None), Thresholds(min_prompts=5))
    assert result.selected and result.claim.head is None
    disc, conf = np.array(result.discovery), np.array(result.confirmation)
    assert len(disc) + len(conf) == 24 and not set(grouped.group_index[disc]) & set(grouped.group_index[conf])
    best = result.evidence
    assert best["gap_logits"].n == 6  # the confirmation side's groups, not its prompts, and not all prompts
    assert all(len(v) == len(conf) for v in result.per_prompt.values())
    assert "selected on 12 discovery prompts, tested on 12 held-out prompts" in result.sentence
    assert len(result.heads) == 8 and all(r.family == 8 for r in result.heads)


def test_a_verdict_depends_on_the_family_size_not_on_the_company(toy_model, pronoun_prompts):
    """The same head alone (in a family of 3) and judged beside two others gets identical numbers."""
    from probes.claims.evaluation import judge
    from probes.claims.gathering import EvidenceContext, gather

    heads = [toy_model.heads.antecedent, toy_model.heads.decoy, toy_model.heads.untouched[0]]
    ctx = EvidenceContext(toy_model.model, pronoun_prompts, "pronoun", "antecedent", "distractor", None)
    together = judge(_claim(None), gather(ctx, heads), heads, family=3)
    for head, among in zip(heads, together):
        alone = evaluate(toy_model.model, pronoun_prompts, _claim(head), family=3)
        assert alone.verdict == among.verdict
        for name in ("attention", "edge_knockout", "effect_z"):  # equal up to float32 batching of the sweeps
            a, b = alone.evidence[name], among.evidence[name]
            assert (a.value, a.ci_low, a.ci_high, a.p_value) == pytest.approx((b.value, b.ci_low, b.ci_high, b.p_value), abs=1e-5)


def test_duplicating_prompts_in_their_group_adds_no_precision(toy_model, pronoun_prompts):
    head = toy_model.heads.antecedent
    base = evaluate(toy_model.model, pronoun_prompts, _claim(head))
    tripled = pronoun_prompts.subset([i for i in range(24) for _ in range(3)])
    dup = evaluate(toy_model.model, tripled, _claim(head))
    naive = tripled.subset(list(range(72)))
    naive.groups = list(range(72))
    ignored = evaluate(toy_model.model, naive, _claim(head))
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    for name in ("attention", "edge_knockout", "effect_z"):
        assert width(dup.evidence[name]) == pytest.approx(width(base.evidence[name]), rel=0.15, abs=1e-9)
    assert width(ignored.evidence["attention"]) < 0.75 * width(base.evidence["attention"])


def test_uniform_foil_leaves_the_sink_out(toy_model, pronoun_prompts):
    """Without a foil, attention is compared with the non-sink attention spread evenly over the src positions
    after the first token, computed here from TransformerLens's own cache."""
    from probes.claims.gathering import EvidenceContext

    ctx = EvidenceContext(toy_model.model, pronoun_prompts, "pronoun", "antecedent", None, None)
    _, cache = toy_model.model.run_with_cache(pronoun_prompts.clean)
    src = pronoun_prompts.role("pronoun")
    i = torch.arange(len(pronoun_prompts))
    for layer in range(toy_model.model.cfg.n_layers):
        sink = cache["pattern", layer][i, :, src, 0].numpy()  # [prompt, head]
        expected = (1 - sink) / src.numpy()[:, None]
        np.testing.assert_allclose(ctx.attention_foil[:, layer], expected, atol=1e-6)
        np.testing.assert_allclose(ctx.attention_sink[:, layer], sink, atol=1e-6)


@pytest.mark.real
def test_duplication_invariance_on_a_real_model(gemma):
    """Acceptance of the statistics issue, on Gemma-3-270m's coreference head 7.0: every prompt three times in its
    own group leaves each interval's width within 15%; three times as many distinct groups narrows them (by
    1/sqrt(3) in expectation; the mean over the legs, since one interval's width at 12 groups is too noisy to
    judge alone: 12 -> 36 groups measured 0.89, 0.63, 1.03 and 0.51 of the width)."""
    claim = _claim((7, 0))
    prompts = tasks.pronoun_resolution(gemma, 12, seed=0)
    base = evaluate(gemma, prompts, claim)
    tripled = evaluate(gemma, prompts.subset([i for i in range(12) for _ in range(3)]), claim)
    more = evaluate(gemma, tasks.pronoun_resolution(gemma, 36, seed=0), claim)
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    legs = ("attention", "edge_knockout", "effect_z", "gap_logits")
    for name in legs:
        assert abs(width(tripled.evidence[name]) / width(base.evidence[name]) - 1) < 0.15, name
    assert tripled.evidence["attention"].n == base.evidence["attention"].n == 12
    assert np.mean([width(more.evidence[name]) / width(base.evidence[name]) for name in legs]) < 0.85


# ---------------------------------------------------------------------------------------------------------------
# Synthetic per-prompt values: every input of the rule is set by hand, so the right verdict is known by
# construction (a mean of values that all lie in a range lies in that range, whatever the resample)

CLAIMED = Claim((0, 0), src="pronoun", dst="antecedent", foil="distractor")


def _synthetic(effect, attention, groups=None, clean=None, gap=2.0):
    """A :class:`Gathered` for one head: ``effect`` as fractions of the gap (the edge knockout moves the same),
    ``attention`` the margin per prompt, a clean-corrupt gap of ``gap`` logits and a clean logit difference of
    ``clean`` (default: the gap) on every prompt."""
    from probes.claims.gathering import Gathered

    effect, attention = np.asarray(effect, dtype=float), np.asarray(attention, dtype=float)
    n = len(effect)
    logits = (gap * effect)[:, None]
    values = {"attention": attention[:, None], "attention_target": 0.5 + attention[:, None],
              "edge_knockout": logits, "effect_z": logits, "effect_z_logits": logits}
    return Gathered([(0, 0)], values, np.full(n, gap), np.full(n, gap) if clean is None else np.asarray(clean, float),
                    np.arange(n) if groups is None else np.asarray(groups))


def _judge_synthetic(g, family=1):
    from probes.claims.evaluation import judge

    return judge(CLAIMED, g, [(0, 0)], family=family)[0]


def _spread(centre: float, n: int = 12, half_width: float = 0.005) -> np.ndarray:
    """``n`` distinct values evenly spread over centre ± half_width."""
    return centre + np.linspace(-half_width, half_width, n)


@pytest.mark.parametrize(("effect", "verdict"), [
    (_spread(0.10, half_width=0.01), "inconclusive"),  # the effect interval straddles the 0.1 threshold
    (_spread(0.09), "refuted"),  # every value inside (-0.1, 0.1): so is the interval
    (_spread(-0.09), "refuted"),
    (_spread(0.11), "effect_only"),  # every value beyond 0.1 (and p = 2/4096 over 12 groups)
    (_spread(-0.11), "effect_only"),
])
def test_refuted_needs_both_legs_to_fail(effect, verdict):
    """The attention leg clearly fails (margin -0.3 on every prompt); the head leg then decides: refuted only
    when the effect interval lies inside the threshold, effect_only beyond it, inconclusive when it straddles. A
    rule that refutes on the attention leg alone would call the straddling head refuted."""
    result = _judge_synthetic(_synthetic(effect, _spread(-0.3)))
    est = result.evidence["effect_z"]
    assert est.value == pytest.approx(effect.mean(), abs=1e-12)
    if verdict == "inconclusive":
        assert est.ci_low < 0.1 < est.ci_high  # the construction took
    assert result.evidence["attention"].ci_high < 0
    assert result.verdict == verdict
    assert "attends to the distractor more than to the antecedent" in result.sentence


def test_the_sentence_quotes_the_p_value_that_decided():
    """12 groups all moving the answer by ~49%: raw signed-rank p = 2/4096; in a family of 150 the adjusted p is
    0.073, so the head leg is undecided although its interval lies far beyond the threshold. The sentence must say
    so; at a family of 50 (p = 0.024) the leg holds and the sentence has no p."""
    effect = _spread(0.49, half_width=0.02)
    adjusted = min(1.0, stats.wilcoxon(effect, zero_method="zsplit").pvalue * 150)
    assert 0.05 < adjusted < 0.1
    held = _judge_synthetic(_synthetic(effect, _spread(-0.3)), family=150)
    assert held.evidence["effect_z"].ci_low > 0.4 and held.verdict == "inconclusive"
    assert f"effect_z's interval clears its threshold but its adjusted p = {adjusted:.2g} is not below 0.05" in held.sentence
    assert "“the head matters” is undecided" in held.sentence
    assert "intervals 99.967% each" in held.sentence  # 1 - 0.05/150, not "100.0%"
    decided = _judge_synthetic(_synthetic(effect, _spread(-0.3)), family=50)
    assert decided.verdict == "effect_only" and "adjusted p" not in decided.sentence


def test_attends_fraction_is_a_share_of_groups_and_never_contradicts_the_margin():
    """Group 0 holds ten prompts with a small positive margin, nine one-prompt groups a large negative one: ten of
    19 prompts, but one of 10 groups, put more on the antecedent."""
    groups = np.array([0] * 10 + list(range(1, 10)))
    attention = np.where(groups == 0, 0.05, -0.3)
    result = _judge_synthetic(_synthetic(_spread(0.5, n=19), attention, groups=groups))
    assert result.evidence["attends_fraction"].value == pytest.approx(1 / 10)
    assert result.evidence["attends_fraction"].n == 10
    assert result.evidence["attention"].ci_high < 0
    assert "(more on the antecedent in 10% of groups)" in result.sentence
    # seven groups a hair above 0, three far below: the mean is negative but 70% of groups are above it; quoting
    # "more on the antecedent in 70% of groups" beside "attends to the distractor" would contradict it
    attention = np.array([0.01] * 7 + [-0.5] * 3)
    result = _judge_synthetic(_synthetic(_spread(0.5, n=10), attention))
    assert result.evidence["attends_fraction"].value == pytest.approx(0.7)
    assert result.evidence["attention"].value < 0
    assert "more on the antecedent in" not in result.sentence


def test_the_task_gate_counts_groups_not_prompts():
    """A group counts as doing the task when its mean clean logit difference is above 0. Three groups of ten
    correct prompts and nine one-prompt groups answering the foil: 77% of prompts, 25% of groups -- the model
    does not do the task in most groups. The reverse (twelve correct one-prompt groups, one group of thirty
    wrong prompts): 29% of prompts, 92% of groups -- it does."""
    effect, attention = _spread(0.5, n=39), _spread(0.5, n=39)
    groups = np.array([i // 10 for i in range(30)] + list(range(3, 12)))
    clean = np.where(np.arange(39) < 30, 2.0, -2.0)
    assert (clean > 0).mean() > 0.75  # the prompt share would pass
    failed = _judge_synthetic(_synthetic(effect, attention, groups=groups, clean=clean))
    assert failed.evidence["clean_accuracy"].value == pytest.approx(3 / 12) and failed.evidence["clean_accuracy"].n == 12
    assert failed.verdict == "inconclusive" and "the answer beats the foil in 25% of the groups" in failed.sentence
    effect, attention = _spread(0.5, n=42), _spread(0.5, n=42)
    groups = np.array(list(range(12)) + [12] * 30)
    clean = np.where(np.arange(42) < 12, 2.0, -2.0)
    assert (clean > 0).mean() < 0.5  # the prompt share would fail
    passed = _judge_synthetic(_synthetic(effect, attention, groups=groups, clean=clean))
    assert passed.evidence["clean_accuracy"].value == pytest.approx(12 / 13)
    assert passed.verdict == "supported"
    # a group's mean decides, not its majority: +5, -1, -1 is a group whose answer beats the foil on average
    groups = np.repeat(np.arange(12), 3)
    clean = np.tile([5.0, -1.0, -1.0], 12)
    mixed = _judge_synthetic(_synthetic(_spread(0.5, n=36), _spread(0.5, n=36), groups=groups, clean=clean))
    assert mixed.evidence["clean_accuracy"].value == 1.0 and mixed.verdict == "supported"


def test_sink_aware_attention_is_attention_over_the_non_sink_mass(toy_model, pronoun_prompts):
    """attention_sink_aware, recomputed by hand from TransformerLens's cache: alpha(src -> dst) divided by the
    attention not on the first token; the claim reports its mean over prompts."""
    from probes.claims.gathering import EvidenceContext
    from probes.claims.measures import MEASURES

    ctx = EvidenceContext(toy_model.model, pronoun_prompts, "pronoun", "antecedent", "distractor", None)
    got = MEASURES["attention_sink_aware"].gather(ctx)
    _, cache = toy_model.model.run_with_cache(pronoun_prompts.clean)
    i, src, dst = torch.arange(len(pronoun_prompts)), pronoun_prompts.role("pronoun"), pronoun_prompts.role("antecedent")
    for layer in range(toy_model.model.cfg.n_layers):
        row = cache["pattern", layer][i, :, src].double().numpy()  # [prompt, head, key]
        expected = row[i, :, dst.numpy()] / (1 - row[:, :, 0])
        assert (row[:, :, 0] > 0.05).any()  # there is a sink to leave out: the division changes something
        np.testing.assert_allclose(got[:, layer], expected, rtol=1e-5)
    layer, head = toy_model.heads.antecedent
    result = evaluate(toy_model.model, pronoun_prompts, _claim((layer, head)))
    row = cache["pattern", layer][i, head, src].double().numpy()
    assert result.evidence["attention_sink_aware"].value == pytest.approx((row[i, dst] / (1 - row[:, 0])).mean(), rel=1e-5)


@pytest.mark.real
def test_the_gate_stops_claims_on_a_model_that_does_not_do_the_task(smollm2):
    """Acceptance of the task gate: SmolLM2 does not resolve the pronoun (about chance), so a claim about its
    coreference heads is inconclusive, with the reason, whatever the head's own numbers."""
    prompts = tasks.pronoun_resolution(smollm2, 48)
    result = evaluate(smollm2, prompts, Claim.parse("9.4: pronoun -> antecedent vs distractor"))
    accuracy = result.evidence["clean_accuracy"]
    assert accuracy.n == prompts.n_groups and not (accuracy.value >= 0.75 and accuracy.ci_low > 0.5)
    assert result.verdict == "inconclusive"
    assert "the model does not do the task: the answer beats the foil in" in result.sentence
