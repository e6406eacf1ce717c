"""Name-swap counterfactuals of a pronoun prompt set: the minimal pairs a query/key claim needs.

"The pronoun's query asks for a female name, the name's key offers one" predicts what happens when the names'
genders change and nothing else does. :func:`gender_swaps` makes, from each clean prompt, two rewrites at the two
name positions only:

* ``swapped``: each name replaced by a name of the OTHER gender. The pronoun is untouched, so it now refers to the
  other person: a head that matches on gender must move its attention to the other position;
* ``same_gender``: each name replaced by another name of the SAME gender (the control). The referent stays: a head
  matching on gender moves nothing, a head matching on name identity moves as much as under ``swapped``.

Names are single tokens drawn from gendered pools (:func:`name_pools`), so a rewrite never changes a prompt's
length or any other position. Replacements are dealt by a seeded :class:`~probes.prompts.tasks.words.Deck`, so
the swaps are deterministic in ``seed``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.words import FEMALE_NAMES, MALE_NAMES, Deck, tokenizer_of

FEATURES = ("gender",)  # the features these rewrites flip


@dataclass(frozen=True)
class NamePools:
    """Token ids of single-token names of each gender: with their leading space, as they sit mid-text, and bare
    (``*_bare``), as a name opening the text is tokenised. A name is replaced by one of the same form."""

    female: tuple[int, ...]
    male: tuple[int, ...]
    female_bare: tuple[int, ...] = ()
    male_bare: tuple[int, ...] = ()

    def pool(self, gender: str, bare: bool) -> tuple[int, ...]:
        return getattr(self, f"{gender}_bare" if bare else gender)

    def form_of(self, token: int) -> tuple[str, bool] | None:
        """(gender, bare) of a name token, None for any other token."""
        for gender in ("female", "male"):
            for bare in (False, True):
                if token in self.pool(gender, bare):
                    return gender, bare
        return None

    def gender_of(self, token: int) -> str | None:
        form = self.form_of(token)
        return None if form is None else form[0]


def name_pools(model: HookedModel, task: str = "query/key") -> NamePools:
    """The task word lists' names that are one token for this model's tokenizer (toy models without a tokenizer:
    pass :data:`probes.prompts.tasks.toy.TOY_NAME_POOLS`)."""
    tokenizer = tokenizer_of(model, task)

    def ids(words: Sequence[str], prefix: str) -> tuple[int, ...]:
        encoded = tokenizer([prefix + w for w in dict.fromkeys(words)], add_special_tokens=False)["input_ids"]
        return tuple(ids[0] for ids in encoded if len(ids) == 1)

    return NamePools(female=ids(FEMALE_NAMES, " "), male=ids(MALE_NAMES, " "), female_bare=ids(FEMALE_NAMES, ""),
                     male_bare=ids(MALE_NAMES, ""))  # fmt: skip


@dataclass(frozen=True)
class GenderSwaps:
    """The clean prompts with both names' genders swapped, and with both names swapped within their gender."""

    swapped: Int[Tensor, "prompt pos"]
    same_gender: Int[Tensor, "prompt pos"]


def check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise ProbesError(
            f"feature '{feature}' cannot be flipped by these prompts: the name swaps flip {', '.join(FEATURES)} "
            "(both names' genders swapped, so the pronoun refers to the other person)"
        )


def gender_swaps(prompts: PromptSet, pools: NamePools, dst: str, other: str, seed: int = 0) -> GenderSwaps:
    """Rewrite the names at roles ``dst`` and ``other`` (which must hold one name of each gender) as the module
    docstring says; a prompt whose names the pools do not know, or of one gender, is refused with its index."""
    dst_pos, other_pos = prompts.role(dst), prompts.role(other)
    rows = torch.arange(len(prompts))
    names = torch.stack([prompts.clean[rows, dst_pos], prompts.clean[rows, other_pos]], dim=1).tolist()
    forms: list[list[tuple[str, bool]]] = []
    for i, pair in enumerate(names):
        known = [f for f in map(pools.form_of, pair) if f is not None]
        forms.append(known)
        if len(known) < 2 or known[0][0] == known[1][0]:
            raise ProbesError(
                f"prompt {i}: feature 'gender' cannot be flipped: roles '{dst}' and '{other}' must hold one "
                f"single-token name of each gender from the name pools (got {[pools.gender_of(t) for t in pair]}); "
                "use pronoun_resolution prompts"
            )
    rng = random.Random(seed)
    decks = {(g, bare): Deck(list(pools.pool(g, bare)), rng) for g in ("female", "male") for bare in (False, True)}
    flip = {"female": "male", "male": "female"}
    swapped, same = prompts.clean.clone(), prompts.clean.clone()
    for i, (pair, pair_forms) in enumerate(zip(names, forms)):
        for pos, token, (gender, bare) in zip((int(dst_pos[i]), int(other_pos[i])), pair, pair_forms):
            swapped[i, pos] = decks[flip[gender], bare].one()
            same[i, pos] = next(t for t in decks[gender, bare].deal(2) if t != token)
    return GenderSwaps(swapped=swapped, same_gender=same)
