"""Prompt sets for the planted toy model (:mod:`probes.models.toy`), which has no tokenizer: token ids and roles."""

from __future__ import annotations

import random

import torch

from probes.models.toy import AND, BOS, FEMALE_NAMES, FILLERS, HE, MALE_NAMES, NON_SPECIAL, SHE, ToyModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.counterfactual import NamePools
from probes.prompts.tasks.random_tokens import induction
from probes.prompts.tasks.words import check_n

TOY_NAME_POOLS = NamePools(female=tuple(FEMALE_NAMES), male=tuple(MALE_NAMES))  # the toy's names, for name swaps


def pronoun_prompts(toy: ToyModel, n: int, seed: int = 0, echo: bool = False, n_fillers: int = 2) -> PromptSet:
    """``<bos> A and B filler filler PRONOUN``: the answer is the name whose gender matches the pronoun.

    ``n_fillers`` sets how many fillers stand between the names and the pronoun (2 above; at most 8, distinct).

    Prompt ``i`` has a female antecedent when ``i`` is even and the antecedent first when ``i % 4 < 2``, so any
    four consecutive prompts cover every gender x order cell. The corrupt prompt flips the pronoun, which makes
    the foil the antecedent.

    ``echo=True`` says the pronoun twice, ``<bos> A and B filler filler PRONOUN filler PRONOUN`` (the corrupt
    prompt flips both): role ``pronoun`` is the first, ``end`` the second. The antecedent head attends to the
    antecedent from both, but in a two-layer model only its output at ``end`` can reach the answer, so a claim
    about the edge pronoun -> antecedent and one about end -> antecedent come apart.
    """
    check_n(n)
    rng = random.Random(seed)
    clean, corrupt, answer, foil = [], [], [], []
    antecedent_pos, distractor_pos, genders, names, others, templates = [], [], [], [], [], []
    for i in range(n):
        female, first = i % 2 == 0, i % 4 < 2
        she, he = rng.choice(FEMALE_NAMES), rng.choice(MALE_NAMES)
        ante, other = (she, he) if female else (he, she)
        a, b = (ante, other) if first else (other, ante)
        fillers = rng.sample([t for t in FILLERS if t != AND], n_fillers + 1 if echo else n_fillers)
        pronoun, flipped = (SHE, HE) if female else (HE, SHE)
        echo_filler = [fillers.pop()] if echo else []
        tail, tail_flipped = (echo_filler + [pronoun], echo_filler + [flipped]) if echo else ([], [])
        clean.append([BOS, a, AND, b, *fillers, pronoun, *tail])
        corrupt.append([BOS, a, AND, b, *fillers, flipped, *tail_flipped])
        answer.append(ante)
        foil.append(other)
        antecedent_pos.append(1 if first else 3)
        distractor_pos.append(3 if first else 1)
        genders.append("female" if female else "male")
        names.append(toy.vocab[ante])
        others.append(toy.vocab[other])
        templates.append(0 if first else 1)
    last = torch.full((n,), len(clean[0]) - 1)
    first_pronoun = last - 2 if echo else last
    return PromptSet.from_tokens(
        torch.tensor(clean),
        torch.tensor(corrupt),
        torch.tensor(answer),
        torch.tensor(foil),
        {
            "pronoun": first_pronoun,
            "antecedent": torch.tensor(antecedent_pos),
            "distractor": torch.tensor(distractor_pos),
            "end": last,
        },
        task="pronoun_resolution",
        labels={"antecedent_gender": genders, "antecedent": names, "distractor": others, "template": templates},
    )


def distant_pronoun_prompts(toy: ToyModel, n: int, fillers: tuple[int, ...] = (0, 3), seed: int = 0) -> PromptSet:
    """:func:`pronoun_prompts` with the antecedent at several distances: prompt ``i`` has ``fillers[i % k]``
    fillers (each distance its own balanced pronoun set), right-padded with ``<bos>`` after its ``end``, which
    nothing reads. Groups keep the prompts of one distance apart."""
    sets = [pronoun_prompts(toy, n, seed=seed + j, n_fillers=f) for j, f in enumerate(fillers)]
    order = [(i % len(sets), i // len(sets)) for i in range(n)]
    width = max(s.clean.shape[1] for s in sets)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=BOS)

    def pick(get) -> torch.Tensor:
        return torch.stack([get(sets[j])[i] for j, i in order])

    labels = {key: [sets[j].labels[key][i] for j, i in order] for key in sets[0].labels}
    return PromptSet.from_tokens(
        pick(lambda s: pad(s.clean)), pick(lambda s: pad(s.corrupt)), pick(lambda s: s.answer),
        pick(lambda s: s.foil), {role: pick(lambda s, role=role: s.roles[role]) for role in sets[0].roles},
        task="pronoun_resolution", labels=labels | {"fillers": [fillers[j] for j, _ in order]},
    )  # fmt: skip


def repeated_prompts(toy: ToyModel, n: int, seed: int = 0, length: int = 6) -> PromptSet:
    """``<bos> r r``: at the end the induction head predicts ``r[0]``, the token after the first ``r[-1]``.

    The induction task (:func:`probes.prompts.tasks.induction`) over the toy's names and fillers: ``r`` has
    distinct tokens so the induction target is unique; the corrupt prompt ``<bos> r' r`` has the same last half
    but no earlier occurrence to induce from, so heads that build the memory induction reads (the previous-token
    head) get a causal effect. The foil is a token in neither.
    """
    return induction(toy.model, n, seed, length=length, vocab=torch.tensor(NON_SPECIAL))


def marked_name_prompts(toy: ToyModel, n: int, seed: int = 0, length: int = 6) -> PromptSet:
    """``<bos>`` and fillers with one name: at the end the redundant model's reader copies the name (the answer;
    the foil is a name not in the prompt). The corrupt prompt puts a filler in the name's place, so no head marks
    it. Label ``template``: the name's position (prompts sharing it share a template)."""
    check_n(n)
    rng = random.Random(seed)
    names = list(FEMALE_NAMES) + list(MALE_NAMES)
    clean, corrupt, answer, foil, at = [], [], [], [], []
    for i in range(n):
        name, other = rng.sample(names, 2)
        fillers = rng.sample(list(FILLERS), length)
        position = 1 + i % (length - 2)
        tokens = [BOS, *fillers[: length - 1]]
        tokens[position] = name
        clean.append(tokens)
        corrupt.append(tokens[:position] + [fillers[-1]] + tokens[position + 1 :])
        answer.append(name)
        foil.append(other)
        at.append(position)
    return PromptSet.from_tokens(
        torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answer), torch.tensor(foil),
        {"name": torch.tensor(at)}, task="marked_name", labels={"template": at},
    )
def token_sequences(toy: ToyModel, n: int, seed: int = 0, length: int = 12) -> PromptSet:
    """``<bos>`` and ``length`` random names and fillers: the self-update model's prompts
    (:func:`probes.models.toy.build_self_update`). No task: corrupt equals clean, answer and foil are the last two
    tokens; each prompt is its own group."""
    check_n(n)
    rng = random.Random(seed)
    rows = [[BOS, *rng.choices(list(NON_SPECIAL), k=length)] for _ in range(n)]
    clean = torch.tensor(rows)
    return PromptSet.from_tokens(clean, clean.clone(), clean[:, -1], clean[:, -2],
                                 {"end": torch.full((n,), length)}, task="token_sequences")
