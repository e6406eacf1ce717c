"""Pronoun resolution with the antecedent far back: filler sentences between the names and the pronoun.

For claims about how far attention reaches (Gemma-3's local layers see 512 tokens): the pronoun-resolution prompts
whose names and pronoun sit in separate sentences, with neutral sentences (no names, no pronouns, no gendered
words) inserted between them until the filler holds at least the requested number of tokens. Roles, answers and
labels are the pronoun task's (the names and the pronoun are matched before the filler begins, so the filler
cannot capture a role); prompt ``i`` gets ``filler_tokens[i % k]`` tokens, so every distance sees every template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from probes.core.errors import ProbesError
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.pronoun import PRONOUN_TEMPLATES, pronoun_resolution
from probes.prompts.tasks.words import tokenizer_of

# the templates whose names and pronoun are in separate sentences: a filler goes after the first full stop
SPLIT_TEMPLATES = tuple(i for i, t in enumerate(PRONOUN_TEMPLATES) if re.search(r"\}\. \{P\}|\}\. Later", t))
FILLER_SENTENCES = (
    "The weather was mild and the streets were quiet.",
    "A bus stopped at the corner and then drove on.",
    "Somewhere a radio played an old song about the sea.",
    "The light changed slowly as the afternoon went by.",
    "There were a few clouds over the hills to the west.",
    "A dog barked twice in a garden down the road.",
    "The shop windows were full of bright winter coats.",
    "Nothing much happened for a long while after that.",
)


def filler(model: HookedModel, tokens: int) -> str:
    """Neutral sentences, in order and cycling, until they hold at least ``tokens`` tokens for this tokenizer."""
    tokenizer = tokenizer_of(model, "distant pronoun resolution")
    text, i = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += " " + FILLER_SENTENCES[i % len(FILLER_SENTENCES)]
        i += 1
    return text


def distant_pronoun_resolution(
    model: HookedModel, n: int, filler_tokens: Sequence[int] = (0, 600), seed: int = 0
) -> PromptSet:
    """:func:`~probes.prompts.tasks.pronoun.pronoun_resolution` on its two-sentence templates with a filler of
    ``filler_tokens[i % k]`` tokens after the first sentence; label ``filler_tokens``, group per template, names
    and filler length."""
    if not filler_tokens or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in filler_tokens):
        raise ProbesError(f"filler_tokens must be a non-empty list of token counts >= 0, got {filler_tokens!r}")
    base = pronoun_resolution(model, n, seed=seed, templates=list(SPLIT_TEMPLATES))
    fillers = {t: filler(model, t) if t else "" for t in set(filler_tokens)}
    records = []
    for i, record in enumerate(base.texts):
        tokens = filler_tokens[i % len(filler_tokens)]
        stop = record["clean"].index(". ") + 1

        def insert(text: str, stop: int = stop, tokens: int = tokens) -> str:
            return text[:stop] + fillers[tokens] + text[stop:]

        records.append(record | {
            "clean": insert(record["clean"]), "corrupt": insert(record["corrupt"]),
            "group": f"{record['group']}, filler {tokens}",
            "labels": record["labels"] | {"filler_tokens": tokens},
        })  # fmt: skip
    return PromptSet.from_strings(model, records, task="pronoun_resolution")
