"""Shared by the text tasks: word pools (names, places, objects, adjectives) and the checks that keep them honest.

Every word is kept only if it is a single token (with its leading space) for the model's tokenizer: a swap then
never changes a prompt's length, and answers are single tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


from probes.core.errors import ProbesError
from probes.models.protocol import HookedModel

FEMALE_NAMES = (
    "Mary Anna Sarah Emma Lucy Kate Alice Laura Jessica Emily Rachel Rose Grace Julia Linda Susan Karen Lisa "
    "Nancy Helen Sandra Donna Carol Ruth Sharon Michelle Amy Angela Melissa Anne Maria Diana Kelly Claire Sophie "
    "Olivia Hannah Chloe Ella Amber Megan Natalie Victoria Jane Joan Nicole Christina Elizabeth Catherine Jennifer "
    "Heather Rebecca Samantha Stephanie Katherine Lauren Martha Monica Paula Wendy Tina Beth Jenny Molly Sally"
).split()
MALE_NAMES = (
    "John Tom James Paul Mark David Michael Robert William Richard Thomas Charles Daniel Matthew George Steven "
    "Kevin Brian Edward Jason Jeff Ryan Gary Eric Jacob Peter Frank Scott Andrew Raymond Gregory Joshua Henry "
    "Patrick Jack Dennis Adam Nathan Douglas Kyle Carl Arthur Roger Joe Sam Ben Alex Chris Dan Mike Bob "
    "Tim Luke Max Oliver Harry Simon Victor Martin Philip Louis Bruce Howard Fred Ray Leo Ian Neil Oscar"
).split()
PLACES = (
    "park store garden restaurant school hospital office house station beach library market church museum "
    "hotel cafe airport kitchen"
).split()
OBJECTS = "ball book ring drink snack gift letter key bag cup pen bottle flower basket hat coin card".split()
ADJECTIVES = (
    "funny kind nice smart quiet happy brave good great lovely sweet friendly honest calm strong clever gentle "
    "warm polite cheerful"
).split()

# {A} and {B} are the two names, {P}/{p} the pronoun (capitalised or not): the answer is the name the pronoun
# does NOT refer to, because the antecedent is the one giving something to the other.
def single_tokens(model: HookedModel, words: Sequence[str], task: str) -> list[str]:
    """The words (deduplicated, in order) that are one token when preceded by a space, as they appear mid-text."""
    tokenizer = tokenizer_of(model, task)
    words = list(dict.fromkeys(words))
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, i in zip(words, ids) if len(i) == 1]


def words_kept(model: HookedModel | None, words: Sequence[str], task: str) -> list[str]:
    """:func:`single_tokens`, or with no model every (distinct) word: the upper bound that lets a count of
    distinct prompts refuse an impossible ``n`` before a model is loaded."""
    return list(dict.fromkeys(words)) if model is None else single_tokens(model, words, task)


def tokenizer_of(model: HookedModel, task: str):
    if model.tokenizer is None:
        raise ProbesError(
            f"task '{task}' writes text and this model has no tokenizer; for toy models use probes.toy's "
            "prompt builders or PromptSet.from_tokens"
        )
    return model.tokenizer


def single_token_pool(model: HookedModel, words: Sequence[str], what: str, task: str, need: int) -> list[str]:
    kept = single_tokens(model, words, task)
    if len(kept) < need:
        raise ProbesError(
            f"task '{task}' needs at least {need} {what} that are single tokens for this tokenizer, found {len(kept)}"
        )
    return kept


def check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProbesError(f"n must be a positive integer, got {n!r}")


def template_cells(
    n: int, n_templates: int, n_cells: int, task: str, templates=None
) -> list[tuple[int, int]]:
    """A fixed, balanced population: (template, cell) for each of ``n`` prompts, the same for every seed.

    Every template of the family (or of the subset ``templates``) is used equally often (counts differ by at most
    one), so ``n`` changes the precision, never the population; the cells that could otherwise explain a result
    (gender, name order) are balanced within each round of templates and rotate across rounds, so every template
    meets every cell. The seed only deals the words (:class:`Deck`): which template meets which cell is not
    drawn, so two seeds measure the same population.
    """
    family = template_family(templates, n_templates, task)
    if n < len(family):
        raise ProbesError(
            f"task '{task}' needs n >= {len(family)} (one prompt per template, so every run covers the same "
            f"population); got n={n}: raise n or pass a template subset (templates=[...])"
        )
    return [(family[i % len(family)], (i % len(family) + i // len(family)) % n_cells) for i in range(n)]


class Deck:
    """Deals words so that, for every ``n``, their counts differ by at most one: the pool is dealt in seeded
    shuffles, each dealt to the end before the next begins. Independent draws would leave some names over- and
    others under-represented at small ``n``, and which ones would change with the seed."""

    def __init__(self, words: list[str], rng: random.Random) -> None:
        self.words, self.rng, self.stack = list(words), rng, []

    def deal(self, k: int = 1) -> list[str]:
        """``k`` distinct words: a hand that runs past the end of a shuffle takes the rest from a fresh one, with
        the words it already holds moved to that shuffle's back (so each shuffle still deals every word once)."""
        hand, self.stack = self.stack[:k], self.stack[k:]
        if len(hand) < k:
            fresh = self.rng.sample(self.words, len(self.words))
            fresh = [w for w in fresh if w not in hand] + [w for w in fresh if w in hand]
            need = k - len(hand)
            hand, self.stack = hand + fresh[:need], fresh[need:]
        return hand

    def one(self) -> str:
        return self.deal(1)[0]


def template_family(templates, n_templates: int, task: str) -> list[int]:
    if templates is None:
        return list(range(n_templates))
    picked = list(templates)
    if not picked or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_templates for t in picked):
        raise ProbesError(
            f"task '{task}': templates must be a non-empty list of template numbers 0..{n_templates - 1}, got {templates!r}"
        )
    return sorted(set(picked))
