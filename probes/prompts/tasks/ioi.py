"""Indirect object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary"."""

from __future__ import annotations

import random


from probes.core.errors import ProbesError
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.words import (
    FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES, Deck, check_n, single_token_pool, template_cells,
    template_family, words_kept,
)

IOI_TEMPLATES = (
    "Then, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} had a lot of fun at the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} were working at the {place}. {S} decided to give a {object} to",
    "Then, {S} and {IO} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "Then, {S} and {IO} had a long argument, and afterwards {S} said to",
    "After {S} and {IO} went to the {place}, {S} gave a {object} to",
    "When {S} and {IO} got a {object} at the {place}, {S} decided to give it to",
    "When {S} and {IO} got a {object} at the {place}, {S} decided to give the {object} to",
    "While {S} and {IO} were working at the {place}, {S} gave a {object} to",
    "While {S} and {IO} were commuting to the {place}, {S} gave a {object} to",
    "After the lunch, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Afterwards, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} had a long argument. Afterwards {S} said to",
    "Friends {S} and {IO} found a {object} at the {place}. {S} gave it to",
)


IOI_CORRUPTIONS = ("abc", "flip_s2")


def ioi_max_distinct(model: HookedModel | None, templates=None) -> int:
    """How many distinct clean prompts :func:`ioi` can write for this tokenizer (no model: for any tokenizer):
    both name orders of every template (of the subset), with every ordered pair of names and every place and
    object the template has."""
    names = len(words_kept(model, FEMALE_NAMES + MALE_NAMES, "ioi"))
    places, objects = len(words_kept(model, PLACES, "ioi")), len(words_kept(model, OBJECTS, "ioi"))
    return sum(
        2 * names * (names - 1) * (places if "{place}" in t else 1) * (objects if "{object}" in t else 1)
        for t in (IOI_TEMPLATES[i] for i in template_family(templates, len(IOI_TEMPLATES), "ioi"))
    )


def ioi(model: HookedModel, n: int, seed: int = 0, corruption: str = "abc", templates=None) -> PromptSet:
    """Indirect object identification (Wang et al. 2022): "... Mary and John ... John gave a drink to" -> " Mary".

    Templates and orders (BABA: subject first, ABBA) are balanced as
    :func:`~probes.prompts.tasks.words.template_cells` says; a prompt's group is its template with its two
    names. Answer IO,
    foil S; roles ``IO``, ``S1``, ``S2``, ``end``. Two corruptions:

    - ``"abc"`` (default): Wang et al.'s ABC distribution: the three name slots (S1, IO, S2) get three fresh
      distinct names, so it keeps the sentence and its length but no name is repeated and neither IO nor S
      occurs; the logit difference there measures what the model says without the task's information.
    - ``"flip_s2"``: only the repeated subject S2 becomes the IO name (TransformerLens's exploratory-analysis
      demo), so the correct answer flips to S; clean and corrupt share every token before S2.
    """
    task = "ioi"
    check_n(n)
    if corruption not in IOI_CORRUPTIONS:
        raise ProbesError(f"unknown IOI corruption '{corruption}'; choose one of: {', '.join(IOI_CORRUPTIONS)}")
    rng = random.Random(seed)
    names = Deck(single_token_pool(model, FEMALE_NAMES + MALE_NAMES, "names", task, 5), rng)
    places = Deck(single_token_pool(model, PLACES, "places", task, 1), rng)
    objects = Deck(single_token_pool(model, OBJECTS, "objects", task, 1), rng)
    records = []
    for template, cell in template_cells(n, len(IOI_TEMPLATES), 2, task, templates):
        baba = cell == 0
        s, io, c1, c2, c3 = names.deal(5)
        place, obj = places.one(), objects.one()
        text = IOI_TEMPLATES[template]
        if not baba:  # ABBA: the indirect object is named first
            text = text.replace("{S} and {IO}", "{IO} and {S}", 1)
        first, second = ("S", "IO") if baba else ("IO", "S")
        clean = text.format(S=s, IO=io, place=place, object=obj)
        if corruption == "abc":  # the first two names become c1, c2 and the repeated subject a third name c3
            abc = text.replace("{" + first + "}", "{c1}", 1).replace("{" + second + "}", "{c2}", 1)
            corrupt = abc.replace("{S}", "{c3}").format(c1=c1, c2=c2, c3=c3, place=place, object=obj)
        else:  # the second (last) subject mention becomes the indirect object
            at = text.rindex("{S}")
            corrupt = (text[:at] + "{IO}" + text[at + 3 :]).format(S=s, IO=io, place=place, object=obj)
        records.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "answer": " " + io,
                "foil": " " + s,
                "roles": {"IO": io, "S1": s, "S2": {"text": s, "occurrence": 2}},
                "group": f"template {template}: {'/'.join(sorted((s, io)))}",
                "labels": {"template": template, "order": "BABA" if baba else "ABBA", "IO": io, "S": s},
            }
        )
    return PromptSet.from_strings(model, records, task=task)
