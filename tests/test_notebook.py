"""Results in a notebook: ``_repr_html_`` shows what a result says, ``to_frame`` gives the numbers, claims parse
from the sentence people write. Ground truth: the planted toy model (head roles known by construction)."""

from html import escape

import pytest

from probes import tasks
from probes.claims.evaluation import evaluate
from probes.claims.types import Claim
from probes.core.errors import ProbesError
from probes.core.notebook import estimate_text
from probes.evidence.patching import patch_activations, patch_paths
from probes.prompts.roles import PREVIOUS


@pytest.fixture(scope="module")
def prompts(toy_model):
    return tasks.pronoun_prompts(toy_model, 16, seed=2)


@pytest.mark.parametrize(
    "text, claim",
    [
        ("7.0: pronoun -> antecedent vs distractor", Claim((7, 0), "pronoun", "antecedent", "distractor")),
        (" 1.12 :pronoun->antecedent ", Claim((1, 12), "pronoun", "antecedent")),
        ("*: token -> previous", Claim(None, "token", PREVIOUS)),
    ],
)
def test_claim_parse_reads_the_sentence_form(text, claim):
    assert Claim.parse(text) == claim


@pytest.mark.parametrize("text", ["7: pronoun -> antecedent", "7.0 pronoun -> antecedent", "7.0: pronoun", 7])
def test_claim_parse_refuses_other_strings_with_the_form_to_use(text):
    with pytest.raises(ProbesError, match="LAYER.HEAD: SOURCE -> TARGET"):
        Claim.parse(text)


def test_claim_result_shows_its_verdict_and_numbers(toy_model, prompts):
    layer, head = toy_model.heads.antecedent
    result = evaluate(toy_model.model, prompts, Claim.parse(f"{layer}.{head}: pronoun -> antecedent vs distractor"))
    html = result._repr_html_()
    assert result.verdict == "supported"
    assert f"head {layer}.{head}: supported" in html
    est = result.evidence["effect_z"]
    assert f"<td style='font-variant-numeric:tabular-nums'>{escape(estimate_text(est))}</td>" in html
    frame = result.to_frame()
    assert frame.loc[0, "effect_z"] == est.value and frame.loc[0, "verdict"] == "supported"


def test_every_head_result_shows_a_heatmap_and_verdict_counts(toy_model):
    prompts = tasks.pronoun_prompts(toy_model, 40, seed=2)  # enough groups to choose heads on held-out ones
    result = evaluate(toy_model.model, prompts, Claim.parse("*: pronoun -> antecedent vs distractor"))
    html = result._repr_html_()
    n_layers, n_heads = toy_model.model.cfg.n_layers, toy_model.model.cfg.n_heads
    assert html.count("<td style='width:12px") == n_layers * n_heads
    frame = result.to_frame()
    assert len(frame) == n_layers * n_heads
    for verdict, count in frame["verdict"].value_counts().items():
        assert f"heads {verdict}</td><td style='font-variant-numeric:tabular-nums'>{count}<" in html


def test_patching_result_names_the_head_that_moves_the_answer(toy_model, prompts):
    result = patch_activations(toy_model.model, prompts, "z", progress=False)
    layer, head = toy_model.heads.antecedent
    html = result._repr_html_()
    assert f"largest effect: {layer}.{head}" in html
    assert "denoising (clean into corrupt)" in html
    frame = result.to_frame()
    assert set(frame.columns) >= {"prompt", "layer", "head", "effect", "normalised"}
    assert len(frame) == len(prompts) * toy_model.model.cfg.n_layers * toy_model.model.cfg.n_heads


def test_patching_display_resamples_groups_so_duplicated_prompts_add_nothing(toy_model):
    """The gap and the largest effect (a ratio of means over the prompts' groups) keep their intervals when every
    prompt is duplicated within its group; the same copies as groups of their own would narrow them. Induction
    prompts: their gaps and effects vary from prompt to prompt, so an interval has a width to lose."""
    prompts = tasks.induction(toy_model.model, 16, seed=2)
    prompts.groups = [i // 2 for i in range(len(prompts))]  # 8 groups of two

    def shown(prompt_set):
        result = patch_activations(toy_model.model, prompt_set, "z", progress=False)
        html = result._repr_html_().replace(f", {len(prompt_set)} prompts", "")  # the title counts rows
        return html, list(result.headline().values())

    twice = [i for i in range(len(prompts)) for _ in range(2)]
    doubled = prompts.subset(twice)
    assert doubled.n_groups == prompts.n_groups and len(doubled) == 2 * len(prompts)
    once, once_numbers = shown(prompts)
    assert "(picked on these prompts, not held out)" in once and f"over {prompts.n_groups} groups" in once
    assert shown(doubled)[0] == once  # the numbers must not move
    doubled.groups = list(range(len(doubled)))  # each copy its own unit: both intervals narrow (~1/sqrt(2))
    for alone, split in zip(once_numbers, shown(doubled)[1], strict=True):
        assert split.ci_high - split.ci_low < 0.85 * (alone.ci_high - alone.ci_low)


def test_paths_result_names_its_strongest_path(toy_model, prompts):
    layer, head = toy_model.heads.antecedent
    result = patch_paths(toy_model.model, prompts, [(layer, head)], ["logits"], progress=False)
    html = result._repr_html_()
    assert f"largest effect: {layer}.{head} -&gt; logits" in html
    assert list(result.to_frame()["receiver"].unique()) == ["logits"]


def test_behaviour_and_screening_show_themselves(toy_model, prompts):
    from probes.evidence.attribution import screen_then_verify
    from probes.evidence.behaviour import behaviour

    base = behaviour(toy_model.model, prompts)
    html = base._repr_html_()
    assert f"in {base.accuracy_vs_foil.value:.0%} of {base.accuracy_vs_foil.n} groups" in html
    assert escape(estimate_text(base.clean_logit_diff)) in html
    screening = screen_then_verify(toy_model.model, prompts, top_k=2, progress=False)
    html = screening._repr_html_()
    (layer, head), exact = screening.heads[0], float(screening.exact.mean(0)[0])
    assert f"head {layer}.{head}</td>" in html and f"exact {exact:+.3f}" in html
    assert len(screening.to_frame()) == 2 * len(prompts)
