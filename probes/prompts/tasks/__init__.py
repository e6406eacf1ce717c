"""Task generators: balanced minimal-pair prompt sets for a given model, deterministic in ``seed``.

Each generator is ``(model, n, seed=0) -> PromptSet``. Text tasks write records in the JSONL format and go through
:meth:`PromptSet.from_strings`, so generated and hand-written prompts share one tokenisation and role-matching
path. Every name, object, place and adjective is kept only if it is a single token (with its leading space) for
the model's tokenizer: a swap then never changes a prompt's length, and answers are single tokens.

Population: a text task draws every template of its family equally often and balances the cells that could
otherwise explain a result (gender, name order) for every ``n`` (``n`` below the number of templates is refused:
pass a template subset), so ``n`` changes precision, never what is measured. Each prompt carries a group (its
template with its names): the unit every interval resamples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence


from probes.core.errors import ProbesError
from probes.core.memory import require_fits
from probes.models.protocol import HookedModel
from probes.prompts.catalogue import RECORD_BYTES, TEMPLATED
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.gender import gender_max_distinct, gender_tag
from probes.prompts.tasks.ioi import IOI_CORRUPTIONS, ioi, ioi_max_distinct
from probes.prompts.tasks.pronoun import pronoun_max_distinct, pronoun_resolution
from probes.prompts.tasks.random_tokens import (
    RANDOM_SHAPES, class_pool, induction, ordinary_token_ids, previous_token, random_max_distinct,
)
from probes.prompts.tasks.distant import distant_pronoun_resolution
from probes.prompts.tasks.toy import (
    distant_pronoun_prompts, marked_name_prompts, pronoun_prompts, repeated_prompts, token_sequences,
)
from probes.prompts.tasks.words import check_n, single_tokens

__all__ = [
    "GENERATORS", "IOI_CORRUPTIONS", "RANDOM_SHAPES", "TEMPLATED", "check_distinct", "class_pool", "distant_pronoun_prompts",
    "distant_pronoun_resolution", "gender_tag", "generate", "induction", "ioi", "marked_name_prompts",
    "ordinary_token_ids", "previous_token", "pronoun_prompts", "pronoun_resolution", "repeated_prompts", "single_tokens",
    "token_sequences",
]  # fmt: skip

GENERATORS = {
    "ioi": ioi,
    "pronoun_resolution": pronoun_resolution,
    "gender_tag": gender_tag,
    "previous_token": previous_token,
    "induction": induction,
}


# How many distinct prompts each generator can make for a model (its tokenizer's single-token words, its vocabulary)
# within a template subset (None: all its templates).
MAX_DISTINCT: dict[str, Callable[[HookedModel | None, Sequence[int] | None], int]] = {
    "ioi": ioi_max_distinct,
    "pronoun_resolution": pronoun_max_distinct,
    "gender_tag": gender_max_distinct,
    **{task: functools.partial(random_max_distinct, copies=copies, default=default)
       for task, (copies, default) in RANDOM_SHAPES.items()},
}
# What a run keeps per prompt, beyond the model: text and token records (RECORD_BYTES), and per-prompt values of
# every measure for every head (float64), counted generously.
MEASURE_BYTES_PER_HEAD = 16 * 8


def check_distinct(task: str, n: int, templates=None, model: HookedModel | None = None) -> None:
    """Refuse an ``n`` the generator cannot make distinct. Without a model (before one is loaded), the bound of a
    text task counts every word as a single token, an upper bound for any tokenizer; a random-token task's bound
    needs the model's vocabulary, so it waits for the model."""
    if task not in GENERATORS:
        raise ProbesError(f"unknown task '{task}'; tasks: {', '.join(GENERATORS)}")
    if templates is not None and task not in TEMPLATED:
        raise ProbesError(f"task '{task}' has no templates; `templates` applies to {', '.join(sorted(TEMPLATED))}")
    check_n(n)
    if model is None and task not in TEMPLATED:
        return
    limit = MAX_DISTINCT[task](model, templates)
    if n > limit:
        whose = "this model's tokenizer" if model is not None else "any tokenizer"
        raise ProbesError(f"task '{task}' can make {limit:,} distinct prompts for {whose}, not n = {n:,}: lower n")


def generate(model: HookedModel, task: str, n: int, seed: int = 0, templates=None, vocab=None) -> PromptSet:
    """The generator named ``task`` (restricted to a template subset, or for a random-token task to the token ids
    ``vocab``, when given); an ``n`` it cannot make distinct, or whose run would not fit in memory, is refused before
    a single prompt is made."""
    check_distinct(task, n, templates, model)
    per_prompt = RECORD_BYTES + MEASURE_BYTES_PER_HEAD * model.cfg.n_layers * model.cfg.n_heads
    require_fits(n * per_prompt, f"a run of {n:,} prompts", "lower n")
    options = ({} if templates is None else {"templates": templates}) | ({} if vocab is None else {"vocab": vocab})
    return GENERATORS[task](model, n, seed=seed, **options)
