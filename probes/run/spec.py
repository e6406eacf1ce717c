"""An analysis spec: the TOML in ``analyses/`` that names a model, prompts, a claim's roles and which heads to judge.

::

    title = "Coreference in Gemma-3-270m"
    model = "gemma-3-270m"
    task = "pronoun_resolution"        # a probes.prompts.tasks generator, or `prompts = "pairs.jsonl"`
    n = 48                             # at least one prompt per template: every n draws the same population
    templates = [0, 1, 2]              # optional: a subset of the task's templates (e.g. to hold some out)
    seed = 0
    src = "pronoun"
    dst = "antecedent"
    foil = "distractor"                # optional; without it, attention is compared with uniform attention
    direction = "denoising"            # or "noising": is the head necessary rather than sufficient
    claims = [[5, 2], "top_attention:3", "top_effect:3"]   # named heads: all prompts; selected: held-out groups
    compositions = [[[0, 2], [1, 2], "k"]]   # optional: "head 1.2 reads head 0.2 through its keys" (path patching)
    probe_targets = ["antecedent_gender"]   # optional: linear probes on every head's output at `src`
    [thresholds]                       # optional, see probes.claims.types.Thresholds
    effect = 0.1
    confirm_fraction = 0.5             # share of groups held out to confirm heads chosen from data
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from probes.claims.types import Composition, Thresholds
from probes.core.errors import ProbesError
from probes.evidence.probing import TARGETS as PROBE_TARGETS
from probes.prompts import tasks

SELECTORS = ("top_attention", "top_effect")


@dataclass
class AnalysisSpec:
    """A parsed analysis TOML; command-line options override its fields."""

    model: str
    src: str
    dst: str
    task: str | None = None
    prompts: str | None = None
    title: str = ""
    n: int = 32
    templates: list[int] | None = None
    seed: int = 0
    foil: str | None = None
    direction: str = "denoising"
    claims: list = field(default_factory=lambda: ["top_attention:3", "top_effect:3"])
    compositions: list = field(default_factory=list)
    probe_targets: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    examples: int = 2

    @classmethod
    def from_toml(cls, path: str | Path) -> AnalysisSpec:
        path = Path(path)
        data = read_toml(path, "analysis", "analyses/")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProbesError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        missing = [k for k in ("model", "src", "dst") if k not in data]
        if missing:
            raise ProbesError(f"{path}: missing required key(s) {', '.join(missing)}")
        spec = cls(**data)
        spec.check(str(path))
        return spec

    def check(self, where: str) -> None:
        if (self.task is None) == (self.prompts is None):
            raise ProbesError(f"{where}: give exactly one of `task` (one of {', '.join(tasks.GENERATORS)}) or `prompts`")
        if self.task is not None and self.task not in tasks.GENERATORS:
            raise ProbesError(f"{where}: unknown task '{self.task}'; tasks: {', '.join(tasks.GENERATORS)}")
        if self.direction not in ("denoising", "noising"):
            raise ProbesError(f"{where}: direction must be 'denoising' or 'noising', not '{self.direction}'")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ProbesError(f"{where}: n must be a positive integer, got {self.n!r}")
        if self.templates is not None:
            if self.task not in tasks.TEMPLATED:
                raise ProbesError(f"{where}: `templates` applies to the tasks {', '.join(sorted(tasks.TEMPLATED))}, not to {self.task or 'a prompt file'}")
            if not isinstance(self.templates, list) or not self.templates or any(
                isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.templates
            ):
                raise ProbesError(f"{where}: templates must be a non-empty list of template numbers, got {self.templates!r}")
        for target in self.probe_targets:
            if target not in PROBE_TARGETS:
                raise ProbesError(f"{where}: unknown probe target '{target}'; known: {', '.join(PROBE_TARGETS)}")
        fields = {f.name for f in dataclasses.fields(Thresholds)}
        if set(self.thresholds) - fields:
            bad = ", ".join(sorted(set(self.thresholds) - fields))
            raise ProbesError(f"{where}: unknown threshold(s) {bad}; known: {', '.join(sorted(fields))}")
        for name, value in self.thresholds.items():
            wanted = int if name == "min_prompts" else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                kind = "a whole number" if name == "min_prompts" else "a number"
                raise ProbesError(f"{where}: threshold {name} must be {kind}, got {value!r}")
        for item in self.claims:
            parse_selector(item, where)
        for item in self.compositions:
            parse_composition(item, where)


def read_toml(path: Path, kind: str, examples: str) -> dict:
    """A spec file's TOML, or one line saying it is missing or malformed."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProbesError(f"{kind} file '{path}' not found; see {examples} for examples") from None
    except tomllib.TOMLDecodeError as err:
        raise ProbesError(f"{path} is not valid TOML: {err}") from None


def parse_selector(item, where: str) -> tuple[str, int] | tuple[int, int]:
    """``[L, H]`` -> (L, H) head; ``"top_attention:3"`` -> ("top_attention", 3)."""
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item):
        return (item[0], item[1])
    if isinstance(item, str) and ":" in item:
        name, _, count = item.partition(":")
        if name in SELECTORS and count.isdigit() and int(count) > 0:
            return (name, int(count))
    raise ProbesError(
        f"{where}: claim {item!r} is neither a head [layer, head] nor 'top_attention:K' / 'top_effect:K'"
    )


def parse_composition(item, where: str) -> Composition:
    """``[[L, H], [L2, H2], "k"]`` -> Composition(sender=(L, H), receiver=(L2, H2), via="k")."""
    def head(x) -> bool:
        return isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x)

    if isinstance(item, list) and len(item) == 3 and head(item[0]) and head(item[1]) and item[2] in ("q", "k", "v"):
        return Composition(tuple(item[0]), tuple(item[1]), item[2])
    raise ProbesError(
        f"{where}: composition {item!r} is not [[sender layer, head], [receiver layer, head], \"q\" | \"k\" | \"v\"]"
    )
