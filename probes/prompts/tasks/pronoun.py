"""Pronoun resolution: "Alice and Bob went to the park. She gave the ball to" -> " Bob"."""

from __future__ import annotations

import random


from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.words import (
    FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES, Deck, check_n, single_token_pool, template_cells,
    template_family, words_kept,
)

PRONOUN_TEMPLATES = (
    "{A} and {B} went to the {place}. {P} gave the {object} to",
    "{A} and {B} were at the {place}. {P} handed the {object} to",
    "{A} met {B} at the {place}. {P} passed the {object} to",
    "After {A} and {B} arrived at the {place}, {p} gave the {object} to",
    "{A} and {B} spent the day at the {place}. Later, {p} threw the {object} to",
    "At the {place}, {A} sat next to {B}. {P} offered the {object} to",
    "{A} and {B} walked into the {place}. {P} showed the {object} to",
    "{A} was talking with {B} at the {place}. {P} sold the {object} to",
    "While {A} and {B} were at the {place}, {p} lent the {object} to",
    "{A} visited {B} at the {place}. {P} brought the {object} to",
    "Yesterday {A} and {B} went to the {place}, where {p} gave the {object} to",
    "{A} and {B} had lunch at the {place}. Afterwards {p} gave the {object} to",
)
def pronoun_max_distinct(model: HookedModel | None, templates=None) -> int:
    """How many distinct clean prompts :func:`pronoun_resolution` can write for this tokenizer: every template (of
    the subset), antecedent gender and name order, with every female-male name pair, place and object."""
    task = "pronoun_resolution"
    females, males = len(words_kept(model, FEMALE_NAMES, task)), len(words_kept(model, MALE_NAMES, task))
    places, objects = len(words_kept(model, PLACES, task)), len(words_kept(model, OBJECTS, task))
    return len(template_family(templates, len(PRONOUN_TEMPLATES), task)) * 2 * 2 * females * males * places * objects


def pronoun_resolution(model: HookedModel, n: int, seed: int = 0, templates=None) -> PromptSet:
    """"Alice and Bob went to the park. She gave the ball to" -> " Bob": the answer is the non-antecedent.

    One name is female and one male, so the pronoun picks the antecedent (the giver) and the answer is the
    other name; the corrupt prompt flips the pronoun, which swaps answer and foil. Templates and the four cells
    (antecedent gender x name order) are balanced as :func:`~probes.prompts.tasks.words.template_cells` says;
    a prompt's group is its template with its two names. Roles: ``pronoun``, ``antecedent``, ``distractor``
    (the answer name), ``end``.
    """
    task = "pronoun_resolution"
    check_n(n)
    rng = random.Random(seed)
    females = Deck(single_token_pool(model, FEMALE_NAMES, "female names", task, 2), rng)
    males = Deck(single_token_pool(model, MALE_NAMES, "male names", task, 2), rng)
    places = Deck(single_token_pool(model, PLACES, "places", task, 1), rng)
    objects = Deck(single_token_pool(model, OBJECTS, "objects", task, 1), rng)
    records = []
    for template, cell in template_cells(n, len(PRONOUN_TEMPLATES), 4, task, templates):
        female, antecedent_first = cell % 2 == 0, cell < 2
        she, he = females.one(), males.one()
        antecedent, other = (she, he) if female else (he, she)
        a, b = (antecedent, other) if antecedent_first else (other, antecedent)
        place, obj = places.one(), objects.one()

        def fill(pronoun: str) -> str:
            return PRONOUN_TEMPLATES[template].format(
                A=a, B=b, place=place, object=obj, P=pronoun.capitalize(), p=pronoun
            )

        pronoun, flipped = ("she", "he") if female else ("he", "she")
        pronoun_word = pronoun.capitalize() if "{P}" in PRONOUN_TEMPLATES[template] else pronoun
        records.append(
            {
                "clean": fill(pronoun),
                "corrupt": fill(flipped),
                "answer": " " + other,
                "foil": " " + antecedent,
                "roles": {"pronoun": pronoun_word, "antecedent": antecedent, "distractor": other},
                "group": f"template {template}: {she}/{he}",
                "labels": {
                    "template": template,
                    "antecedent": antecedent,
                    "distractor": other,
                    "antecedent_gender": "female" if female else "male",
                    "order": "antecedent_first" if antecedent_first else "distractor_first",
                },
            }
        )
    return PromptSet.from_strings(model, records, task=task)
