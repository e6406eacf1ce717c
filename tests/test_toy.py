"""The toy model's planted heads do what the module says, checked with raw TransformerLens hooks.

These are the ground truth the rest of the kit is tested against, so they are checked here independently of the
kit's own evidence code.
"""

from collections import Counter

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from probes.core.errors import ProbesError
from probes.prompts.promptset import PromptSet
from probes.models.toy import (
    BOS,
    FEMALE_NAMES,
    FILLERS,
    HE,
    MALE_NAMES,
    SHE,
    VOCAB,
    ToyModel,
    build,
)
from probes.prompts.tasks import pronoun_prompts, repeated_prompts

N = 16


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    return build()


@pytest.fixture(scope="module")
def pronouns(toy: ToyModel) -> PromptSet:
    return pronoun_prompts(toy, N, seed=1)


@pytest.fixture(scope="module")
def repeats(toy: ToyModel) -> PromptSet:
    return repeated_prompts(toy, N, seed=2)


def _at_end(logits: Float[Tensor, "prompt pos vocab"], prompts: PromptSet) -> Float[Tensor, "prompt vocab"]:
    return logits[torch.arange(len(prompts)), prompts.end]


def _logit_diff(logits: Float[Tensor, "prompt pos vocab"], prompts: PromptSet) -> Float[Tensor, " prompt"]:
    end = _at_end(logits, prompts)
    idx = torch.arange(len(prompts))
    return end[idx, prompts.answer] - end[idx, prompts.foil]


def _ablate(head: int):
    """A hook zeroing one layer-1 head's z, i.e. its whole output (b_O is zero)."""

    def hook(z: Float[Tensor, "prompt pos head d_head"], hook) -> Float[Tensor, "prompt pos head d_head"]:
        z[:, :, head] = 0.0
        return z

    return hook


def test_vocab_and_heads(toy: ToyModel) -> None:
    cfg = toy.model.cfg
    assert len(VOCAB) == cfg.d_vocab == cfg.d_vocab_out and toy.vocab == VOCAB
    assert VOCAB[BOS] == "<bos>" and VOCAB[SHE] == " she" and VOCAB[HE] == " he"
    assert len(FEMALE_NAMES) == len(MALE_NAMES) == 6 and set(FEMALE_NAMES).isdisjoint(MALE_NAMES)
    assert max(MALE_NAMES) < min(FILLERS)
    h = toy.heads
    planted = [h.previous_token, h.antecedent, h.induction, h.decoy]
    everything = sorted(planted + list(h.untouched))
    assert everything == [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    assert all(head != 0 for _, head in planted)
    assert not toy.model.training


def test_build_is_seeded(toy: ToyModel) -> None:
    same, other = build(0).model.state_dict(), build(1).model.state_dict()
    mine = toy.model.state_dict()
    assert all(torch.equal(mine[k], same[k]) for k in mine)
    layer, head = toy.heads.untouched[0]
    assert not torch.equal(mine[f"blocks.{layer}.attn.W_Q"][head], other[f"blocks.{layer}.attn.W_Q"][head])
    layer, head = toy.heads.antecedent
    assert torch.equal(mine[f"blocks.{layer}.attn.W_Q"][head], other[f"blocks.{layer}.attn.W_Q"][head])


def test_pronoun_prompts_are_balanced_minimal_pairs(toy: ToyModel, pronouns: PromptSet) -> None:
    again = pronoun_prompts(toy, N, seed=1)
    assert torch.equal(again.clean, pronouns.clean) and again.labels == pronouns.labels
    assert not torch.equal(pronoun_prompts(toy, N, seed=3).clean, pronouns.clean)
    assert pronouns.task == "pronoun_resolution"
    cells = Counter(zip(pronouns.labels["antecedent_gender"], pronouns.labels["template"]))
    assert set(cells.values()) == {N // 4} and len(cells) == 4
    idx = torch.arange(N)
    pronoun = pronouns.clean[idx, pronouns.role("pronoun")]
    assert torch.equal(pronouns.role("pronoun"), pronouns.end)
    assert torch.equal(pronouns.corrupt[idx, pronouns.end], torch.where(pronoun == SHE, HE, SHE))
    differs = (pronouns.clean != pronouns.corrupt).nonzero()[:, 1]
    assert torch.equal(differs, pronouns.end)
    assert torch.equal(pronouns.clean[idx, pronouns.role("antecedent")], pronouns.answer)
    assert torch.equal(pronouns.clean[idx, pronouns.role("distractor")], pronouns.foil)
    female_answer = torch.isin(pronouns.answer, torch.tensor(list(FEMALE_NAMES)))
    assert torch.equal(female_answer, pronoun == SHE)
    assert torch.equal(torch.isin(pronouns.foil, torch.tensor(list(MALE_NAMES))), pronoun == SHE)
    for i in range(N):
        female = pronouns.labels["antecedent_gender"][i] == "female"
        assert female == bool(female_answer[i])
        assert pronouns.labels["antecedent"][i] == VOCAB[int(pronouns.answer[i])]


def test_answer_is_the_antecedent(toy: ToyModel, pronouns: PromptSet) -> None:
    with torch.no_grad():
        clean = toy.model(pronouns.clean)
        corrupt = toy.model(pronouns.corrupt)
    assert (_logit_diff(clean, pronouns) > 4).all()
    assert (_logit_diff(corrupt, pronouns) < -4).all()
    assert torch.equal(_at_end(clean, pronouns).argmax(-1), pronouns.answer)


def test_antecedent_and_decoy_attend_to_the_antecedent(toy: ToyModel, pronouns: PromptSet) -> None:
    with torch.no_grad():
        _, cache = toy.model.run_with_cache(pronouns.clean)
    idx = torch.arange(N)
    for layer, head in (toy.heads.antecedent, toy.heads.decoy):
        pattern = cache["pattern", layer][:, head]
        on_antecedent = pattern[idx, pronouns.end, pronouns.role("antecedent")]
        assert (on_antecedent > 0.9).all()
    layer, head = toy.heads.induction
    assert (cache["pattern", layer][idx, head, pronouns.end, 0] > 0.9).all()  # no match: the <bos> sink


@pytest.mark.parametrize("which", ["pronouns", "repeats"])
def test_previous_token_head(toy: ToyModel, which: str, request: pytest.FixtureRequest) -> None:
    prompts: PromptSet = request.getfixturevalue(which)
    with torch.no_grad():
        _, cache = toy.model.run_with_cache(prompts.clean)
    layer, head = toy.heads.previous_token
    pattern = cache["pattern", layer][:, head]
    diagonal = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)
    assert (diagonal > 0.9).all()
    # planted, not incidental: no other head of the model looks at the previous token that sharply on average
    for other_layer in range(toy.model.cfg.n_layers):
        others = cache["pattern", other_layer].diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))
        others[head if other_layer == layer else []] = 0
        assert (others < 0.5).all()


def test_ablating_decoy_changes_nothing_and_antecedent_kills_the_answer(toy: ToyModel, pronouns: PromptSet) -> None:
    with torch.no_grad():
        base = toy.model(pronouns.clean)
        layer, decoy = toy.heads.decoy
        no_decoy = toy.model.run_with_hooks(pronouns.clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", _ablate(decoy))])
        layer, ante = toy.heads.antecedent
        no_ante = toy.model.run_with_hooks(pronouns.clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", _ablate(ante))])
    assert (no_decoy - base).abs().max() < 1e-6
    assert (_logit_diff(no_ante, pronouns).abs() < 0.5).all()


def test_repeated_prompts(toy: ToyModel, repeats: PromptSet) -> None:
    assert repeats.task == "induction"
    assert torch.equal(repeated_prompts(toy, N, seed=2).clean, repeats.clean)
    length = 6
    body = repeats.clean[:, 1:]
    assert (repeats.clean[:, 0] == BOS).all() and torch.equal(body[:, :length], body[:, length:])
    assert not torch.isin(body, torch.tensor([BOS, SHE, HE])).any()
    assert torch.equal(repeats.corrupt[:, length + 1 :], repeats.clean[:, length + 1 :])
    idx = torch.arange(N)
    for i in range(N):
        first, second = set(repeats.clean[i, 1 : length + 1].tolist()), set(repeats.corrupt[i, 1 : length + 1].tolist())
        assert len(first) == length and first.isdisjoint(second)
        assert int(repeats.foil[i]) not in first | second
    last = repeats.clean[idx, repeats.end]
    first_occurrence = (repeats.clean == last[:, None]).int().argmax(-1)
    assert torch.equal(repeats.role("induction_target"), first_occurrence + 1)
    assert torch.equal(repeats.clean[idx, repeats.role("induction_target")], repeats.answer)
    with pytest.raises(ProbesError):
        repeated_prompts(toy, 2, length=8)
    with pytest.raises(ProbesError):
        pronoun_prompts(toy, 0)


def test_induction_head_predicts_the_repeat(toy: ToyModel, repeats: PromptSet) -> None:
    with torch.no_grad():
        clean, cache = toy.model.run_with_cache(repeats.clean)
        corrupt = toy.model(repeats.corrupt)
        layer, head = toy.heads.induction
        ablated = toy.model.run_with_hooks(repeats.clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", _ablate(head))])
    idx = torch.arange(N)
    assert torch.equal(_at_end(clean, repeats).argmax(-1), repeats.answer)
    assert (cache["pattern", layer][idx, head, repeats.end, repeats.role("induction_target")] > 0.9).all()
    assert (_logit_diff(clean, repeats) > 4).all()
    assert (_logit_diff(corrupt, repeats).abs() < 0.5).all()
    assert (_logit_diff(ablated, repeats).abs() < 0.5).all()
