"""Gender tag: "So Alice is such a funny person, isn't" -> " she"."""

from __future__ import annotations

import random


from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.words import (
    ADJECTIVES, FEMALE_NAMES, MALE_NAMES, Deck, check_n, single_token_pool, template_cells,
    template_family, words_kept,
)

GENDER_TEMPLATES = (
    "So {name} is such a {adj} person, isn't",
    "Honestly, {name} is such a {adj} person, isn't",
    "I think {name} is a very {adj} person, isn't",
    "Wow, {name} is really a {adj} friend, isn't",
    "Well, {name} is such a {adj} neighbour, isn't",
    "You know, {name} is a truly {adj} teacher, isn't",
)
# Wang et al. (2022)'s BABA templates ({S} the subject, said twice; {IO} the indirect object), final name removed.
def gender_max_distinct(model: HookedModel | None, templates=None) -> int:
    """How many distinct clean prompts :func:`gender_tag` can write for this tokenizer: every template (of the
    subset), name and adjective."""
    names = len(words_kept(model, FEMALE_NAMES, "gender_tag")) + len(words_kept(model, MALE_NAMES, "gender_tag"))
    family = template_family(templates, len(GENDER_TEMPLATES), "gender_tag")
    return len(family) * names * len(words_kept(model, ADJECTIVES, "gender_tag"))


def gender_tag(model: HookedModel, n: int, seed: int = 0, templates=None) -> PromptSet:
    """"So Alice is such a funny person, isn't" -> " she" (foil " he"); the corrupt prompt has a male name.

    Templates and genders are balanced as :func:`~probes.prompts.tasks.words.template_cells` says; a prompt's
    group is its template with its names. Names are single tokens, so the swap keeps the length. Roles: ``name``,
    ``end``.
    """
    task = "gender_tag"
    check_n(n)
    rng = random.Random(seed)
    females = Deck(single_token_pool(model, FEMALE_NAMES, "female names", task, 1), rng)
    males = Deck(single_token_pool(model, MALE_NAMES, "male names", task, 1), rng)
    adjectives = Deck(single_token_pool(model, ADJECTIVES, "adjectives", task, 1), rng)
    records = []
    for template, cell in template_cells(n, len(GENDER_TEMPLATES), 2, task, templates):
        female = cell == 0
        she, he = females.one(), males.one()
        name, swapped = (she, he) if female else (he, she)
        adj = adjectives.one()
        answer, foil = (" she", " he") if female else (" he", " she")
        records.append(
            {
                "clean": GENDER_TEMPLATES[template].format(name=name, adj=adj),
                "corrupt": GENDER_TEMPLATES[template].format(name=swapped, adj=adj),
                "answer": answer,
                "foil": foil,
                "roles": {"name": name},
                "group": f"template {template}: {'/'.join(sorted((name, swapped)))}",
                "labels": {"name": name, "gender": "female" if female else "male", "template": template},
            }
        )
    return PromptSet.from_strings(model, records, task=task)
