"""The names of the task generators, importable without torch: the CLI checks a spec against them before any heavy
import (``probes.prompts.tasks.GENERATORS`` maps the same names to the generators)."""

TASKS = ("ioi", "pronoun_resolution", "gender_tag", "previous_token", "induction")
TEMPLATED = {"ioi", "pronoun_resolution", "gender_tag"}  # the tasks whose `templates` a spec may restrict
# The roles each task's prompts carry besides ``end``, declared here so a spec's roles are checked before any model
# loads (tests/test_tasks.py checks every generator's prompt sets against it).
TASK_ROLES = {
    "ioi": ("IO", "S1", "S2"),
    "pronoun_resolution": ("pronoun", "antecedent", "distractor"),
    "gender_tag": ("name",),
    "previous_token": ("previous",),
    "induction": ("induction_target",),
}
# What a run keeps per prompt at the least (text and token records), counted generously: n prompts that cannot
# fit even these are refused before torch is imported (probes.prompts.tasks adds the per-head measures).
RECORD_BYTES = 4096


def require_records_fit(n: int) -> None:
    """Refuse, before anything heavy, an ``n`` whose prompt records alone exceed the memory budget."""
    from probes.core.memory import require_fits

    require_fits(n * RECORD_BYTES, f"a run of {n:,} prompts", "lower n")
