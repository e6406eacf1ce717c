"""The names of the task generators, importable without torch: the CLI checks a spec against them before any heavy
import (``probes.prompts.tasks.GENERATORS`` maps the same names to the generators)."""

TASKS = ("ioi", "pronoun_resolution", "gender_tag", "previous_token", "induction")
TEMPLATED = {"ioi", "pronoun_resolution", "gender_tag"}  # the tasks whose `templates` a spec may restrict
