"""Task generators build the minimal pairs they promise, balanced and reproducible; baselines match plain logits.

Structure is checked token by token against the tokenizer (decoding what sits at each role); behaviour is checked
on the toy model, whose right answers are known by construction.
"""

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer

from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.behaviour import behaviour
from probes.prompts.catalogue import TASK_ROLES, TASKS
from probes.prompts.roles import END
from probes.models.toy import BOS, NON_SPECIAL, ToyModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks import pronoun_prompts
from probes.prompts.tasks.ioi import IOI_TEMPLATES
from probes.prompts.tasks.pronoun import PRONOUN_TEMPLATES
from probes.prompts.tasks.words import FEMALE_NAMES as FEMALE_WORDS
from probes.prompts.tasks.words import MALE_NAMES as MALE_WORDS
from probes.prompts.tasks.words import Deck, template_cells

N = 16


def _token(model: HookedTransformer, token_id) -> str:
    return model.tokenizer.decode([int(token_id)])


def _differing_positions(prompts: PromptSet) -> list[list[int]]:
    return [(prompts.clean[i] != prompts.corrupt[i]).nonzero()[:, 0].tolist() for i in range(len(prompts))]


@pytest.mark.real
@pytest.mark.parametrize("task", ["ioi", "pronoun_resolution", "gender_tag", "previous_token", "induction"])
def test_generators_are_deterministic_in_seed(smollm2: HookedTransformer, task: str) -> None:
    make = tasks.GENERATORS[task]
    a, b, c = make(smollm2, N, seed=0), make(smollm2, N, seed=0), make(smollm2, N, seed=1)
    assert a.task == task and len(a) == N
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt) and a.labels == b.labels
    assert not torch.equal(a.clean, c.clean)
    assert not torch.equal(a.answer, a.foil)
    single = smollm2.tokenizer([_token(smollm2, t) for t in torch.cat([a.answer, a.foil])], add_special_tokens=False)
    assert all(len(ids) == 1 for ids in single["input_ids"])


def test_every_task_declares_its_roles() -> None:
    assert set(TASK_ROLES) == set(TASKS) == set(tasks.GENERATORS)


@pytest.mark.real
@pytest.mark.parametrize("task", sorted(tasks.GENERATORS))
def test_generated_roles_are_the_declared_ones(smollm2: HookedTransformer, task: str) -> None:
    """A spec's roles are checked against TASK_ROLES before any model loads: the declaration must not drift."""
    assert set(tasks.generate(smollm2, task, N).roles) == {*TASK_ROLES[task], END}


@pytest.mark.real
def test_pronoun_resolution_answer_is_the_other_name(smollm2: HookedTransformer) -> None:
    prompts = tasks.pronoun_resolution(smollm2, N)
    cells = Counter(zip(prompts.labels["antecedent_gender"], prompts.labels["order"]))
    assert len(cells) == 4 and set(cells.values()) == {N // 4}
    templates = Counter(prompts.labels["template"])  # every template, equally often (up to one)
    assert len(templates) == len(PRONOUN_TEMPLATES) >= 10 and max(templates.values()) - min(templates.values()) <= 1
    for i, template in enumerate(prompts.labels["template"]):  # a group: the template filled with one name pair
        names = {prompts.labels["antecedent"][i], _token(smollm2, prompts.answer[i]).strip()}
        she = next(name for name in names if name in FEMALE_WORDS)
        assert prompts.groups[i] == f"template {template}: {she}/{(names - {she}).pop()}"
    for i in range(N):
        pronoun, distractor = prompts.role("pronoun")[i], prompts.role("distractor")[i]
        assert _differing_positions(prompts)[i] == [int(pronoun)]
        said = _token(smollm2, prompts.clean[i, pronoun]).lower()
        flipped = _token(smollm2, prompts.corrupt[i, pronoun]).lower()
        female = prompts.labels["antecedent_gender"][i] == "female"
        assert (said, flipped) == ((" she", " he") if female else (" he", " she"))
        antecedent = prompts.labels["antecedent"][i]
        assert smollm2.tokenizer.decode(prompts.clean[i, 1 : prompts.role("antecedent")[i] + 1]).endswith(antecedent)
        assert _token(smollm2, prompts.foil[i]) == " " + antecedent
        other = _token(smollm2, prompts.answer[i])  # the answer is the other name
        assert smollm2.tokenizer.decode(prompts.clean[i, 1 : distractor + 1]).endswith(other.strip())
        assert other != " " + antecedent
        first = prompts.role("antecedent")[i] < distractor
        assert bool(first) == (prompts.labels["order"][i] == "antecedent_first")
        assert (antecedent in FEMALE_WORDS) == female


@pytest.mark.real
def test_gender_tag_swaps_only_the_name(smollm2: HookedTransformer) -> None:
    prompts = tasks.gender_tag(smollm2, N)
    assert Counter(prompts.labels["gender"]) == {"female": N // 2, "male": N // 2}
    for i in range(N):
        name = prompts.role("name")[i]
        assert _differing_positions(prompts)[i] == [int(name)]
        female = prompts.labels["gender"][i] == "female"
        assert _token(smollm2, prompts.clean[i, name]) == " " + prompts.labels["name"][i]
        assert (prompts.labels["name"][i] in FEMALE_WORDS) == female
        assert (_token(smollm2, prompts.corrupt[i, name]).strip() in FEMALE_WORDS) != female
        assert (_token(smollm2, prompts.answer[i]), _token(smollm2, prompts.foil[i])) == (
            (" she", " he") if female else (" he", " she")
        )
        assert _token(smollm2, prompts.clean[i, prompts.end[i]]) == "'t"


@pytest.mark.real
def test_ioi_roles_and_abc_corruption(smollm2: HookedTransformer) -> None:
    assert len(tasks.single_tokens(smollm2, FEMALE_WORDS + MALE_WORDS, "ioi")) >= 50
    assert len(IOI_TEMPLATES) >= 10
    prompts = tasks.ioi(smollm2, N)
    assert Counter(prompts.labels["order"]) == {"BABA": N // 2, "ABBA": N // 2}
    for i in range(N):
        io, s1, s2 = (int(prompts.role(r)[i]) for r in ("IO", "S1", "S2"))
        assert prompts.clean[i, io] == prompts.answer[i]
        assert prompts.clean[i, s1] == prompts.clean[i, s2] == prompts.foil[i]
        assert (s1 < io) == (prompts.labels["order"][i] == "BABA") and s2 > max(io, s1)
        assert _token(smollm2, prompts.answer[i]) == " " + prompts.labels["IO"][i]
        assert _differing_positions(prompts)[i] == sorted([io, s1, s2])
        replaced = prompts.corrupt[i, [io, s1, s2]]
        assert len(set(replaced.tolist())) == 3
        assert not torch.isin(replaced, torch.stack([prompts.answer[i], prompts.foil[i]])).any()


@pytest.mark.real
def test_random_token_tasks_avoid_special_tokens(smollm2: HookedTransformer) -> None:
    special = torch.tensor(smollm2.tokenizer.all_special_ids)
    for prompts in (tasks.previous_token(smollm2, 4), tasks.induction(smollm2, 4)):
        assert (prompts.clean[:, 0] == smollm2.tokenizer.bos_token_id).all()
        assert not torch.isin(prompts.clean[:, 1:], special).any()
        assert not torch.isin(prompts.corrupt[:, 1:], special).any()


def test_random_token_tasks_on_a_tokenizerless_model(toy_model: ToyModel) -> None:
    prev = tasks.previous_token(toy_model.model, N, seed=3)
    n_pos = toy_model.model.cfg.n_ctx  # the default length fills the toy's context
    assert prev.clean.shape == (N, n_pos) and (prev.clean[:, 0] == BOS).all() and (prev.clean[:, 1:] != BOS).all()
    assert torch.equal(prev.role("previous"), prev.end - 1)
    idx = torch.arange(N)
    assert torch.equal(prev.clean[idx, prev.role("previous")], prev.answer)
    assert torch.equal(prev.corrupt[idx, prev.role("previous")], prev.foil)
    assert all(d == [n_pos - 2] for d in _differing_positions(prev))
    assert all(len(set(row.tolist())) == n_pos for row in prev.clean)  # distinct tokens: no accidental repeats

    rep = tasks.induction(toy_model.model, N, seed=3, length=5)
    assert rep.clean.shape == (N, 11) and torch.equal(rep.clean[:, 1:6], rep.clean[:, 6:])
    assert torch.equal(rep.clean[idx, rep.role("induction_target")], rep.answer)
    assert torch.equal(rep.corrupt[:, 6:], rep.clean[:, 6:])  # same last half, nothing earlier to induce from
    for i in range(N):
        first, fresh = set(rep.clean[i, 1:6].tolist()), set(rep.corrupt[i, 1:6].tolist())
        assert first.isdisjoint(fresh) and len(fresh) == 5 and int(rep.foil[i]) not in first | fresh
    with pytest.raises(ProbesError, match="length must be"):
        tasks.induction(toy_model.model, 2, length=8)
    with pytest.raises(ProbesError, match="token pool"):
        tasks.induction(toy_model.model, 2, length=5, vocab=torch.arange(3, 10))
    with pytest.raises(ProbesError, match="no tokenizer"):
        tasks.ioi(toy_model.model, 2)
    with pytest.raises(ProbesError, match="positive integer"):
        tasks.gender_tag(toy_model.model, 0)
    with pytest.raises(ProbesError, match="unknown task 'copying'"):
        tasks.generate(toy_model.model, "copying", 2)


def test_baseline_agrees_with_plain_logits(toy_model: ToyModel) -> None:
    names_and_fillers = torch.tensor(NON_SPECIAL)  # no pronouns: the antecedent head stays quiet
    for prompts in (pronoun_prompts(toy_model, N, seed=1), tasks.induction(toy_model.model, N, length=6, vocab=names_and_fillers)):
        result = behaviour(toy_model.model, prompts)
        with torch.no_grad():
            idx = torch.arange(N)
            clean = toy_model.model(prompts.clean)[idx, prompts.end]
            corrupt = toy_model.model(prompts.corrupt)[idx, prompts.end]
        diff = clean[idx, prompts.answer] - clean[idx, prompts.foil]
        corrupt_diff = corrupt[idx, prompts.answer] - corrupt[idx, prompts.foil]
        assert result.n == N and result.task == prompts.task
        assert result.accuracy_top1.value == (clean.argmax(-1) == prompts.answer).float().mean().item() == 1.0
        assert result.accuracy_vs_foil.value == (diff > 0).float().mean().item()
        clean_ld, corrupt_ld = result.clean_logit_diff, result.corrupt_logit_diff
        assert clean_ld.value == pytest.approx(diff.mean().item(), abs=1e-4)
        assert corrupt_ld.value == pytest.approx(corrupt_diff.mean().item(), abs=1e-4)
        assert clean_ld.n == corrupt_ld.n == N
        assert clean_ld.ci_low <= clean_ld.value <= clean_ld.ci_high and clean_ld.value > 4
        frame = result.to_frame()
        assert list(frame["measure"]) == list(result.estimates())
        assert frame.set_index("measure").loc["clean_logit_diff", "value"] == clean_ld.value


def test_answer_probability_and_rank_are_the_plain_softmax_and_rank(toy_model: ToyModel) -> None:
    """Recomputed from the model's own full logits at the read-off position: a plain softmax, and 1 + the number of
    tokens with a higher logit (scipy's min-rank of the negated logits). Read for the answer (the model's first
    choice: rank 1) and for the foil (not its first choice), so a rank stuck at 1 cannot pass."""
    from scipy import stats

    from probes.evidence.metric import answer_distribution, read_off_resid

    prompts = pronoun_prompts(toy_model, N, seed=1)
    idx = torch.arange(N)
    with torch.no_grad():
        logits = toy_model.model(prompts.clean)[idx, prompts.end].double()
    resid = read_off_resid(toy_model.model, prompts.clean, prompts)
    for target in (prompts.answer, prompts.foil):
        probability, rank = answer_distribution(toy_model.model, resid, target)
        expected = logits.softmax(-1)[idx, target]
        ranks = [int(stats.rankdata(-row, method="min")[t]) for row, t in zip(logits.numpy(), target.tolist())]
        assert probability.double().numpy() == pytest.approx(expected.numpy(), abs=1e-5)
        assert rank.tolist() == ranks
    assert max(answer_distribution(toy_model.model, resid, prompts.foil)[1].tolist()) > 1
    result = behaviour(toy_model.model, prompts)
    assert result.answer_probability.value == pytest.approx(logits.softmax(-1)[idx, prompts.answer].mean().item(), abs=1e-5)
    ranks = [int(stats.rankdata(-row, method="min")[t]) for row, t in zip(logits.numpy(), prompts.answer.tolist())]
    assert result.answer_rank.value == pytest.approx(np.mean(ranks))


@pytest.mark.real
def test_ioi_flip_s2_changes_only_the_second_subject(smollm2: HookedTransformer) -> None:
    prompts = tasks.ioi(smollm2, N, corruption="flip_s2")
    idx = torch.arange(N)
    assert _differing_positions(prompts) == [[int(p)] for p in prompts.role("S2")]
    assert torch.equal(prompts.corrupt[idx, prompts.role("S2")], prompts.clean[idx, prompts.role("IO")])
    base = behaviour(smollm2, prompts)
    assert base.clean_logit_diff.value > 0 > base.corrupt_logit_diff.value  # the right answer flips to S
    with pytest.raises(ProbesError, match="unknown IOI corruption"):
        tasks.ioi(smollm2, 2, corruption="xyz")


@pytest.mark.real
@pytest.mark.parametrize(("task", "family"), [("pronoun_resolution", PRONOUN_TEMPLATES), ("ioi", IOI_TEMPLATES)])
def test_every_n_draws_the_same_population(smollm2: HookedTransformer, task: str, family) -> None:
    """n changes precision, not what is measured: every template at every n; fewer prompts than templates is
    refused with the minimum; a template subset restricts the population; the seed changes the draw only."""
    make = getattr(tasks, task)
    names = "antecedent" if task == "pronoun_resolution" else "IO"
    for n, seed in ((len(family), 0), (2 * len(family) + 3, 0), (2 * len(family) + 3, 5)):
        counts = Counter(make(smollm2, n, seed=seed).labels["template"])
        assert set(counts) == set(range(len(family))) and max(counts.values()) - min(counts.values()) <= 1
    one, other = make(smollm2, 40, seed=0).labels, make(smollm2, 40, seed=1).labels
    population = ["template", "order"] + (["antecedent_gender"] if task == "pronoun_resolution" else [])
    assert [one[k] for k in population] == [other[k] for k in population]  # the seed deals other words only
    assert one[names] != other[names]
    with pytest.raises(ProbesError, match=f"needs n >= {len(family)}"):
        make(smollm2, len(family) - 1)
    subset = make(smollm2, 6, templates=[1, 3])
    assert Counter(subset.labels["template"]) == {1: 3, 3: 3}
    with pytest.raises(ProbesError, match="templates must be"):
        make(smollm2, 6, templates=[len(family)])
    with pytest.raises(ProbesError, match="has no templates"):
        tasks.generate(smollm2, "induction", 6, templates=[0])


@pytest.mark.parametrize("k", [1, 2, 5])
def test_a_deck_deals_every_word_equally_often_for_every_n(k: int) -> None:
    """Counts differ by at most one at every n (i.i.d. draws would not), each hand holds distinct words, even
    across the end of a shuffle, and the seed changes the order."""
    words = [f"w{i}" for i in range(7)]
    deck, dealt = Deck(words, random.Random(0)), Counter()
    for _ in range(40):
        hand = deck.deal(k)
        assert len(set(hand)) == k
        dealt.update(hand)
        assert set(dealt) <= set(words) and max(dealt.values()) - min(dealt[w] for w in words) <= 1
    other = Deck(words, random.Random(1))
    assert [deck.one() for _ in range(7)] != [other.one() for _ in range(7)]


@pytest.mark.parametrize(("n_templates", "n_cells"), [(12, 4), (14, 2), (5, 2)])
def test_template_cells_are_balanced_and_every_template_meets_every_cell(n_templates: int, n_cells: int) -> None:
    for n in range(n_templates, 4 * n_templates * n_cells):
        pairs = template_cells(n, n_templates, n_cells, "task")
        templates, cells = Counter(t for t, _ in pairs), Counter(c for _, c in pairs)
        assert max(templates.values()) - min(templates.values()) <= 1 and len(templates) == n_templates
        assert max(cells.values()) - min(cells.values()) <= 1 + (n_templates % n_cells != 0)
    pairs = template_cells(n_templates * n_cells, n_templates, n_cells, "task")
    assert len(set(pairs)) == n_templates * n_cells
    subset = template_cells(6, n_templates, n_cells, "task", templates=[1, 3])
    assert Counter(t for t, _ in subset) == {1: 3, 3: 3} and len(set(subset)) == min(6, 2 * n_cells)


def test_accuracy_vs_foil_is_a_share_of_groups(toy_model: ToyModel) -> None:
    """As the claims' task gate counts it: six right prompts in one group and two wrong ones in their own groups
    are 1 right group of 3 (a share of prompts would say 75%)."""
    prompts = pronoun_prompts(toy_model, 8, seed=1)
    wrong = torch.arange(8) >= 6
    swapped = dataclasses.replace(
        prompts,
        answer=torch.where(wrong, prompts.foil, prompts.answer),
        foil=torch.where(wrong, prompts.answer, prompts.foil),
        groups=["one"] * 6 + ["two", "three"],
    )
    accuracy = behaviour(toy_model.model, swapped).accuracy_vs_foil
    assert (accuracy.value, accuracy.n) == (pytest.approx(1 / 3), 3)
