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
    # a claim may also be written as people say it: "7.0: pronoun -> antecedent vs distractor", or be one of the
    # essay's sentences, settled on its own: "self-update 5", "self-update 5.1", "depth: pronoun -> antecedent from 6"
    compositions = [[[0, 2], [1, 2], "k"]]   # optional: "head 1.2 reads head 0.2 through its keys" (path patching)
    probe_targets = ["antecedent_gender"]   # optional: linear probes on every head's output at `src`
    pattern_patching = true            # patch each head's attention pattern alone (no verdict reads it; a sweep as
                                       # costly as the output sweep: false makes a quick run)
    [position_content]                 # optional: is each head's src -> dst attention positional or content?
    shifts = [1, 2, 4]                 # also: src, dst (default: the claim's), filler, replacements (words or ids)
    [thresholds]                       # optional, see probes.claims.types.Thresholds
    effect = 0.1
    confirm_fraction = 0.5             # share of groups held out to confirm heads chosen from data
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from probes.claims.essay import KINDS as ESSAY_KINDS
from probes.claims.essay import EssayClaim, parse_essay
from probes.core.errors import ProbesError
from probes.models.support import check_model_name
from probes.prompts.catalogue import TASK_ROLES, TASKS, TEMPLATED
from probes.prompts.records import read_records
from probes.prompts.roles import END, PREVIOUS

if TYPE_CHECKING:
    from probes.claims.types import Claim, Composition
    from probes.evidence.patching.sites import Direction

# Light on purpose (no torch, no TransformerLens): the CLI validates a spec in well under 2 s, before any model.
SELECTORS = ("top_attention", "top_effect")
MAX_SEED = 2**32 - 1  # numpy's and random's seeds both take it; the CLI says so rather than failing late
MAX_EXAMPLES = 16  # attention patterns stored per run: each is a pos x pos matrix per head in results.json


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
    direction: Direction = "denoising"  # checked on reading
    claims: list = field(default_factory=lambda: ["top_attention:3", "top_effect:3"])
    compositions: list = field(default_factory=list)
    probe_targets: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    examples: int = 2
    position_content: dict | None = None
    pattern_patching: bool = True

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
        """Every field's type and range, so a bad spec fails in a second, not after minutes of computation."""
        for name in ("model", "src", "dst"):
            _require(where, name, getattr(self, name), isinstance(getattr(self, name), str) and getattr(self, name),
                     "a non-empty string")
        for name in ("task", "prompts", "foil"):
            value = getattr(self, name)
            _require(where, name, value, value is None or (isinstance(value, str) and value), "a non-empty string")
        _require(where, "title", self.title, isinstance(self.title, str), "a string")
        if (self.task is None) == (self.prompts is None):
            raise ProbesError(f"{where}: give exactly one of `task` (one of {', '.join(TASKS)}) or `prompts`")
        if self.task is not None and self.task not in TASKS:
            raise ProbesError(f"{where}: unknown task '{self.task}'; tasks: {', '.join(TASKS)}")
        if self.direction not in ("denoising", "noising"):
            raise ProbesError(f"{where}: direction must be 'denoising' or 'noising', not {self.direction!r}")
        _require(where, "n", self.n, _whole(self.n) and self.n >= 1, "a positive whole number")
        if self.templates is not None:
            if self.task not in TEMPLATED:
                raise ProbesError(f"{where}: `templates` applies to the tasks {', '.join(sorted(TEMPLATED))}, not to {self.task or 'a prompt file'}")
            if not isinstance(self.templates, list) or not self.templates or any(
                not _whole(t) or t < 0 for t in self.templates
            ):
                raise ProbesError(f"{where}: templates must be a non-empty list of template numbers, got {self.templates!r:.80}")
        _require(where, "seed", self.seed, _whole(self.seed) and 0 <= self.seed <= MAX_SEED,
                 f"a whole number from 0 to {MAX_SEED}")
        _require(where, "examples", self.examples, _whole(self.examples) and 0 <= self.examples <= MAX_EXAMPLES,
                 f"a whole number from 0 to {MAX_EXAMPLES}")
        _require(where, "pattern_patching", self.pattern_patching, isinstance(self.pattern_patching, bool), "true or false")
        for name in ("claims", "compositions", "probe_targets"):
            _require(where, name, getattr(self, name), isinstance(getattr(self, name), list), "a list")
        _require(where, "thresholds", self.thresholds, isinstance(self.thresholds, dict), "a table [thresholds]")
        if self.thresholds:
            self._check_thresholds(where)
        for item in self.claims:
            parse_selector(item, where)
        for item in self.compositions:
            check_composition(item, where)
        if self.position_content is not None:
            check_position_content(self.position_content, where)
        for target in self.probe_targets:
            _require(where, "probe_targets", target, isinstance(target, str), "a list of target names")
        if self.probe_targets:
            from probes.evidence.probing import TARGETS  # heavy: only for specs that ask for probes

            for target in self.probe_targets:
                if target not in TARGETS:
                    raise ProbesError(f"{where}: unknown probe target '{target}'; known: {', '.join(TARGETS)}")

    def check_sources(self, where: str) -> None:
        """What the spec names outside itself, checked before any model loads or any file is written: a model the
        kit can take (:func:`probes.models.support.check_model_name`: packaged, a TransformerLens official name, or
        a model directory with a config it can measure), and roles its prompts will have, wherever a role is named
        (src, dst, foil, written claims, ``[position_content]``): the task's declared roles, or the prompt file's."""
        try:
            check_model_name(self.model)
        except ProbesError as err:
            raise ProbesError(f"{where}: {err}") from None
        if self.task is not None:
            roles, whose = {*TASK_ROLES[self.task], END}, f"task {self.task}"
        else:
            assert self.prompts is not None, "a spec names a task or a prompt file (checked on reading)"
            roles, whose = {*read_records(self.prompts)[0][0]["roles"], END}, f"prompt file {self.prompts}"
        named = [("src", self.src, False), ("dst", self.dst, True), ("foil", self.foil, False)]
        for item in self.claims:
            claim = parse_selector(item, where)
            if isinstance(claim, ESSAY_KINDS):
                named += [(f"claim {item!r}", role, False) for role in claim.roles()]
            elif not isinstance(claim, tuple):
                named += [(f"claim {item!r}", claim.src, False), (f"claim {item!r}", claim.dst, True),
                          (f"claim {item!r}", claim.foil, False)]
        section = self.position_content or {}  # its src and dst default to the spec's
        named += [("position_content.src", section.get("src"), False), ("position_content.dst", section.get("dst"), True)]
        for what, role, is_target in named:
            if role is not None and role not in roles and not (is_target and role == PREVIOUS):
                previous = f" (and '{PREVIOUS}' as a target: the token before the source)" if is_target else ""
                raise ProbesError(
                    f"{where}: unknown role '{role}' in {what}; the prompts of {whose} have the roles "
                    f"{', '.join(sorted(roles))}{previous}"[:400]
                )

    def _check_thresholds(self, where: str) -> None:
        from probes.claims.types import Thresholds  # pandas and scipy: only for specs that set thresholds

        fields = {f.name for f in dataclasses.fields(Thresholds)}
        if set(self.thresholds) - fields:
            bad = ", ".join(sorted(set(self.thresholds) - fields))
            raise ProbesError(f"{where}: unknown threshold(s) {bad}; known: {', '.join(sorted(fields))}")
        for name, value in self.thresholds.items():
            if name == "min_prompts":
                ok, kind = _whole(value) and value >= 1, "a whole number >= 1"
            elif name in ("alpha", "confirm_fraction"):
                ok, kind = _number(value) and 0 < value < 1, "a number between 0 and 1 (exclusive)"
            elif name == "min_accuracy":
                ok, kind = _number(value) and 0 <= value <= 1, "a number from 0 to 1"
            else:
                ok, kind = _number(value) and value >= 0, "a number >= 0"
            if not ok:
                raise ProbesError(f"{where}: threshold {name} must be {kind}, got {value!r}")


POSITION_CONTENT_KEYS = ("src", "dst", "shifts", "filler", "replacements")


def check_position_content(section, where: str) -> None:
    """The ``[position_content]`` table: known keys, positive whole shifts, word or token-id lists (what needs the
    model, each word one token, the context, re-tokenisation, is checked as soon as the run has its prompts)."""
    if not isinstance(section, dict):
        raise ProbesError(f"{where}: position_content must be a table ([position_content]), got {section!r}")
    unknown = sorted(set(section) - set(POSITION_CONTENT_KEYS))
    if unknown:
        raise ProbesError(
            f"{where}: unknown key(s) {', '.join(unknown)} in [position_content]; known: {', '.join(POSITION_CONTENT_KEYS)}"
        )
    for key in ("src", "dst"):
        if key in section and not isinstance(section[key], str):
            raise ProbesError(f"{where}: position_content.{key} must be a role name, got {section[key]!r}")
    shifts = section.get("shifts", [1])
    if not isinstance(shifts, list) or not shifts or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in shifts):
        raise ProbesError(f"{where}: position_content.shifts must be a list of positive whole numbers, got {shifts!r}")
    for key in ("filler", "replacements"):
        items = section.get(key, ["x"])
        if not isinstance(items, list) or not items or any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in items):
            raise ProbesError(f"{where}: position_content.{key} must be a list of words or token ids, got {items!r}")


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _require(where: str, name: str, value, ok, kind: str) -> None:
    if not ok:
        raise ProbesError(f"{where}: {name} must be {kind}, got {value!r}"[:300])


def read_toml(path: Path, kind: str, examples: str) -> dict:
    """A spec file's TOML, or one line saying it is missing, unreadable or malformed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProbesError(f"{kind} file '{path}' not found; see {examples} for examples") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProbesError(f"cannot read {kind} file '{path}': {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ProbesError(f"{path} is not valid TOML: {err}") from None


def parse_selector(item, where: str) -> tuple[str, int] | tuple[int, int] | Claim | EssayClaim:
    """``[L, H]`` -> (L, H) head; ``"top_attention:3"`` -> ("top_attention", 3); a claim as people write it,
    ``"7.0: pronoun -> antecedent vs distractor"`` -> that :class:`Claim` (its own roles, which may differ from
    the spec's); an essay claim (``"self-update 5"``, ``"depth: pronoun -> antecedent from 6"``, see
    :mod:`probes.claims.essay`) -> that claim, settled on its own."""
    if isinstance(item, list) and len(item) == 2 and all(_whole(x) and x >= 0 for x in item):
        return (item[0], item[1])
    essay = parse_essay(item) if isinstance(item, str) else None
    if essay is not None:
        return essay
    if isinstance(item, str) and "->" in item:
        from probes.claims.types import Claim  # only for claims written as sentences: keeps validation light

        try:
            claim = Claim.parse(item)
        except ProbesError as err:
            raise ProbesError(f"{where}: {err}") from None
        if claim.head is None:
            raise ProbesError(f"{where}: claim {item!r} names no head; write 'LAYER.HEAD: ...' or use top_attention:K")
        return claim
    if isinstance(item, str) and ":" in item:
        name, _, count = item.partition(":")
        if name in SELECTORS and count.isdecimal() and count.isascii() and int(count) > 0:
            return (name, int(count))
    raise ProbesError(
        f"{where}: claim {item!r:.80} is neither a head [layer, head], 'top_attention:K' / 'top_effect:K', "
        f"'LAYER.HEAD: SOURCE -> TARGET [vs FOIL]', nor an essay claim ({'; '.join(k.FORM for k in ESSAY_KINDS)})"
    )


def parse_composition(item, where: str) -> Composition:
    """``[[L, H], [L2, H2], "k"]`` -> Composition(sender=(L, H), receiver=(L2, H2), via="k")."""
    from probes.claims.types import Composition  # pandas and scipy: not needed to check a spec

    check_composition(item, where)
    return Composition(tuple(item[0]), tuple(item[1]), item[2])


def check_composition(item, where: str) -> None:
    def head(x) -> bool:
        return isinstance(x, list) and len(x) == 2 and all(_whole(v) and v >= 0 for v in x)

    if not (isinstance(item, list) and len(item) == 3 and head(item[0]) and head(item[1]) and item[2] in ("q", "k", "v")):
        raise ProbesError(
            f"{where}: composition {item!r:.80} is not [[sender layer, head], [receiver layer, head], \"q\" | \"k\" | \"v\"]"
        )
