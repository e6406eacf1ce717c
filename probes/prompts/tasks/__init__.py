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

from transformer_lens import HookedTransformer

from probes.core.errors import ProbesError
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.gender import gender_tag
from probes.prompts.tasks.ioi import IOI_CORRUPTIONS, ioi
from probes.prompts.tasks.pronoun import pronoun_resolution
from probes.prompts.tasks.random_tokens import induction, ordinary_token_ids, previous_token
from probes.prompts.tasks.toy import pronoun_prompts, repeated_prompts
from probes.prompts.tasks.words import single_tokens

__all__ = [
    "GENERATORS", "IOI_CORRUPTIONS", "TEMPLATED", "gender_tag", "generate", "induction", "ioi", "ordinary_token_ids",
    "previous_token", "pronoun_prompts", "pronoun_resolution", "repeated_prompts", "single_tokens",
]  # fmt: skip

GENERATORS = {
    "ioi": ioi,
    "pronoun_resolution": pronoun_resolution,
    "gender_tag": gender_tag,
    "previous_token": previous_token,
    "induction": induction,
}


TEMPLATED = {"ioi", "pronoun_resolution", "gender_tag"}


def generate(model: HookedTransformer, task: str, n: int, seed: int = 0, templates=None) -> PromptSet:
    """The generator named ``task`` (restricted to a template subset when given), with a clear error listing the
    tasks that exist."""
    if task not in GENERATORS:
        raise ProbesError(f"unknown task '{task}'; tasks: {', '.join(GENERATORS)}")
    if templates is None:
        return GENERATORS[task](model, n, seed=seed)
    if task not in TEMPLATED:
        raise ProbesError(f"task '{task}' has no templates; `templates` applies to {', '.join(sorted(TEMPLATED))}")
    return GENERATORS[task](model, n, seed=seed, templates=templates)
