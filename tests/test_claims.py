"""Verdicts on the planted toy model, where which head does what is known by construction."""

import pytest

from probes import toy
from probes.claims import Claim, Thresholds, evaluate


@pytest.fixture(scope="module")
def pronoun_prompts(toy_model):
    return toy.pronoun_prompts(toy_model, 24, seed=1)


def _claim(head):
    return Claim(head, src="pronoun", dst="antecedent", foil="distractor")


def test_planted_antecedent_head_is_supported(toy_model, pronoun_prompts):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.antecedent))
    assert result.verdict == "supported"
    assert result.evidence["attention"].ci_low > 0.9
    assert result.evidence["effect_z"].ci_low > 0.9
    assert result.evidence["effect_pattern"].value > 0.9  # its pattern alone carries the answer
    assert "head 1.1 attends from the pronoun to the antecedent" in result.sentence and result.sentence.endswith("supported")


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
    few = toy.pronoun_prompts(toy_model, 3)
    for head in (toy_model.heads.antecedent, toy_model.heads.decoy, toy_model.heads.untouched[0]):
        result = evaluate(toy_model.model, few, _claim(head))
        assert result.verdict == "inconclusive"
        assert "only 3 prompts" in result.sentence


def test_deterministic_given_seed(toy_model, pronoun_prompts):
    a = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.untouched[1]), seed=3)
    b = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.untouched[1]), seed=3)
    assert a.verdict == b.verdict and a.evidence == b.evidence


def test_find_the_heads_tests_every_head_with_correction(toy_model, pronoun_prompts):
    result = evaluate(toy_model.model, pronoun_prompts, _claim(None))
    verdicts = {r.claim.head: r.verdict for r in result.heads}
    assert len(verdicts) == 8
    assert verdicts[toy_model.heads.antecedent] == "supported"
    assert verdicts[toy_model.heads.decoy] == "attention_only"
    assert result.verdict == "supported" and result.claim.head is None
    table = result.to_frame()
    assert set(table.columns) >= {"layer", "head", "verdict", "attention", "attention_p_value", "effect_z_ci_low"}


def test_previous_token_head_is_necessary_for_induction(toy_model):
    """Noising: the planted previous-token head attends to the previous token and induction breaks without it."""
    prompts = toy.repeated_prompts(toy_model, 16)
    claim = Claim(toy_model.heads.previous_token, src="end", dst="previous")
    result = evaluate(toy_model.model, prompts, claim, direction="noising")
    assert result.verdict == "supported"
    assert result.evidence["effect_z"].ci_high < -0.5
    untouched = evaluate(toy_model.model, prompts, Claim(toy_model.heads.untouched[0], "end", "previous"),
                         direction="noising")
    assert untouched.verdict == "refuted"


def test_thresholds_are_parameters(toy_model, pronoun_prompts):
    strict = Thresholds(effect=2.0)  # no head can move the answer by twice the gap
    result = evaluate(toy_model.model, pronoun_prompts, _claim(toy_model.heads.antecedent), strict)
    assert result.verdict == "attention_only"
