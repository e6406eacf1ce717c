"""The run directory: what ``probes run`` writes and ``probes report`` reads. Pure data I/O, no model code; the one
place its schema is written and read.

The report is the last pipeline stage and only ever reads a run directory, so a run can be re-rendered, diffed or
loaded into pandas long after the model is gone. Layout of ``OUT/``:

``results.json`` (written last: a reader that finds it finds every table it names)::

    {
      "format": 5,                                # bumped on incompatible changes; read_run refuses others
      "run_id": "3f2a...",                        # also in the marker file and inside every file that has metadata
      "kit_version": "0.1.0", "created_utc": "2025-01-01T00:00:00+00:00",
      "model": {"name": "smollm2-135m", "n_layers": 30, "n_heads": 9, "weights_sha256": "ab12..."},
      "task": "pronoun_resolution", "n_prompts": 64, "seed": 0,
      "title": "Coreference in Gemma-3-270m", "direction": "denoising",   # the spec's title; how heads were patched
      "stage_times": {"load model": 7.1, "prompts": 0.4, ...},   # seconds each stage of the run took
      "notes": ["probe target antecedent_gender skipped: ..."],  # evidence the run skipped, and why
      "command": "probes run analyses/pronoun.toml --n 64",
      "package_versions": {"python": "3.11.9", "torch": "2.13.0", ...},
      "files": ["heads.parquet", "heads.csv", "probes.parquet", ...],   # the data files this run wrote
      "sha256": {"heads.parquet": "ab12...", ...},   # of each of them: a file from another run is refused
      "baseline": {"clean_logit_diff": ESTIMATE, "corrupt_logit_diff": ESTIMATE, "accuracy": ESTIMATE},
      "evidence": {"attention": {"leg": "attention", "description": "...", "unit": "attention weight",
                                 "test": "greater", "threshold": "attention_margin", "panel": true},
                   "effect_z": {"leg": "causal", ...}, ...},     # the measure registry's entries, see probes.claims.measures
      "claims": [{"kind": "attention", "head": [5, 8], "src": "pronoun", "dst": "antecedent", "foil": "distractor",
                  "verdict": "attention_only", "sentence": "head 5.8 attends ... : attention_only",
                  "evidence": {"attention": ESTIMATE, "effect_z": ESTIMATE, ...},
                  "thresholds": {"attention_margin": 0.1, "effect": 0.1, "alpha": 0.05, "min_prompts": 10}}],
      "verdict_rule": ["gate ...", "attends: ...", ...],    # probes.claims.verdicts.rule_lines, this run's thresholds
      "position_content_thresholds": {"share_high": 0.7, "share_low": 0.3, "min_lift": 2.0},  # the labels' rule
                                                  # (probes.evidence.position.LABEL_THRESHOLDS); {} without the table
      "examples": [{"tokens": ["<bos>", "Alice", ...], "patterns": {"5.8": [[...query row...], ...]},
                    "prompt": 0, "roles": {"pronoun": 7, "antecedent": 1}}]
    }
    ESTIMATE = {"value": 0.87, "ci_low": 0.81, "ci_high": 0.92, "n": 64, "p_value": 0.001}  # n, p_value optional

A run directory holds a marker file ``.probes-run`` (JSON with the ``run_id``): ``probes run --out`` replaces only
a directory that has one, and never writes into a directory of the user's own files. A run is built in a scratch
directory beside ``OUT`` and swapped in whole (:func:`probes.core.io.atomic_dir`), so a crash leaves the previous
run or the new one, never a mix; :func:`read_run` checks the schema of ``results.json`` (naming the bad field), and
that every file is this run's: the run id the file itself carries where it can carry one (the marker; every
``.parquet`` in its key-value schema metadata under ``probes_run_id``; ``index.html`` in
``<meta name="probes-run-id">``), and the sha256 of every data file (the only check a ``.csv`` or ``.jsonl`` has).

Non-finite numbers are written as ``null`` (strict JSON) and read back as NaN. ``verdict`` is one of ``VERDICTS``;
``thresholds`` are the fields of :class:`probes.claims.types.Thresholds`; ``head`` is ``null`` for a claim about no
single head. A composition claim has ``"kind": "composition"`` and ``sender``, ``receiver`` ([layer, head]) and
``via`` (q, k or v) in place of head and roles. An essay claim (:mod:`probes.claims.essay`) has its kind's
``KIND`` (``"self_update"``: ``layer``, ``head``; ``"depth"``: ``src``, ``target``, ``layer``; null where the claim
leaves it open) and ``profile``: the rows of ``ClaimResult.profile`` (``measure``, ``layer``, ``head``, ``value``,
``ci_low``, ``ci_high``, ``verdict``), its curves over layers and per-head statistics. ``examples`` hold attention patterns of a few heads on a few prompts
(``patterns["L.H"][query][key]``, ``prompt`` indexes ``prompts.jsonl``, ``roles`` marks token positions).

Tables (each ``.parquet`` for pandas, plus ``.csv`` for people and spreadsheets where noted):

- ``heads.parquet`` / ``heads.csv``: one row per head; columns ``layer``, ``head`` and, for every measure ``m`` in
  ``evidence``, ``m`` (point estimate), ``m_ci_low``, ``m_ci_high`` (optionally ``m_p_value``).
- ``probes.parquet`` / ``probes.csv`` (optional): one row per (layer, head, target) linear probe; columns
  ``layer``, ``head``, ``target``, and ``accuracy``, ``control_accuracy``, ``selectivity`` each with ``_ci_low`` /
  ``_ci_high`` (selectivity = accuracy - control accuracy, Hewitt & Liang 2019).
- ``per_prompt.parquet`` (optional): long table ``prompt``, ``layer``, ``head``, ``measure``, ``value`` -- the
  per-prompt numbers behind every head-level estimate, a measure of the gap (``of_gap``) in logits -- ``gap`` (that
  prompt's clean-corrupt gap in logits: such a measure's estimate is mean(value) / mean(gap) over the same
  prompts), and ``path``: empty for a head claim's rows, the path's name for a composition's (``path_effect`` rows
  at its receiver).
- ``position_content.parquet`` / ``.csv`` (optional): one row per head, ``probes.evidence.position``'s table
  (``attention``, ``positional_share``, ``content_share``, ``offset_share`` with ``_ci_low`` / ``_ci_high``, ``sink``,
  ``self``, ``lift``, ``label``).
- ``prompts.jsonl`` (optional): one prompt pair per line, in the ``PromptSet.from_jsonl`` format plus any labels.

The ``leg`` of a measure (``attention``, ``causal``, ``representational``, ``context``) tells the report which
panel and which scatter axis it belongs to; the first ``panel`` measure of a leg is that leg's headline measure.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import pandas as pd

from probes.claims.essay import BY_KIND as ESSAY_KINDS
from probes.claims.measures import LEGS, SHAPES, Measure
from probes.claims.types import Claim, ClaimResult, Composition, Thresholds
from probes.claims.verdicts import VERDICTS
from probes.core.errors import ProbesError
from probes.core.io import atomic_dir, read_table_metadata, write_table, write_text
from probes.core.provenance import file_sha256, kit_version, package_versions, utc_now
from probes.core.stats import Estimate
from probes.run.outdir import MARKER, RESULTS, check_out_dir, require_run_dir

FORMAT = 5  # 4: parquet tables and index.html carry the run id; 5: per_prompt values in logits, with their gap
RUN_ID_KEY = "probes_run_id"  # a parquet table's schema metadata key for the run that wrote it
INDEX = "index.html"  # the report page (probes.report.render writes it); its <meta name="probes-run-id"> names the run
_HTML_RUN_ID = re.compile(r'<meta name="probes-run-id" content="([^"]*)">')
HEADS = "heads.parquet"
HEADS_CSV = "heads.csv"
PROBES = "probes.parquet"
PROBES_CSV = "probes.csv"
PER_PROMPT = "per_prompt.parquet"
PROMPTS = "prompts.jsonl"
POSITION_CONTENT = "position_content.parquet"
POSITION_CONTENT_CSV = "position_content.csv"
POSITION_CONTENT_COLUMNS = ("layer", "head", "attention", "positional_share", "content_share", "label")

PROBE_MEASURES = ("accuracy", "control_accuracy", "selectivity")
PER_PROMPT_COLUMNS = ("prompt", "layer", "head", "measure", "value", "gap", "path")


@dataclass
class ModelInfo:
    name: str
    n_layers: int
    n_heads: int
    weights_sha256: str | None = None


@dataclass
class Example:
    """Attention patterns of a few heads on one prompt. ``patterns["L.H"][q][k]`` is query q's weight on key k."""

    tokens: list[str]
    patterns: dict[str, list[list[float]]]
    prompt: int | None = None
    roles: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResults:
    """Everything one run produced; ``write_run`` / ``read_run`` map it to and from a run directory."""

    model: ModelInfo
    task: str
    n_prompts: int
    seed: int | None
    command: str
    heads: pd.DataFrame
    evidence: dict[str, Measure]
    baseline: dict[str, Estimate] = field(default_factory=dict)
    claims: list[ClaimResult] = field(default_factory=list)
    verdict_rule: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    probes: pd.DataFrame | None = None
    per_prompt: pd.DataFrame | None = None
    prompts: list[dict] = field(default_factory=list)
    position_content: pd.DataFrame | None = None
    position_content_thresholds: dict[str, float] = field(default_factory=dict)
    title: str = ""
    direction: str = "denoising"
    stage_times: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    package_versions: dict[str, str] = field(default_factory=package_versions)
    kit_version: str = field(default_factory=kit_version)
    created_utc: str = field(default_factory=utc_now)
    run_id: str = ""  # set by write_run and read_run; the report page carries it

    def validate(self) -> None:
        """Check the invariants the report relies on, so a bad run fails when written, not when rendered."""
        if self.direction not in ("denoising", "noising"):
            raise ProbesError(f"direction is '{self.direction}'; use 'denoising' or 'noising'")
        for name, measure in self.evidence.items():
            if measure.leg not in LEGS:
                raise ProbesError(f"evidence '{name}' has leg '{measure.leg}'; use one of {', '.join(LEGS)}")
        _require_columns(self.heads, "heads", ["layer", "head", *ci_columns(self.evidence)])
        self._require_heads_in_model(self.heads, "heads")
        if self.probes is not None:
            _require_columns(self.probes, "probes", ["layer", "head", "target", *ci_columns(PROBE_MEASURES)])
            self._require_heads_in_model(self.probes, "probes")
        if self.per_prompt is not None:
            _require_columns(self.per_prompt, "per_prompt", PER_PROMPT_COLUMNS)
        if self.position_content is not None:
            _require_columns(self.position_content, "position_content", POSITION_CONTENT_COLUMNS)
            self._require_heads_in_model(self.position_content, "position_content")
        for result in self.claims:
            c = result.claim
            named = ([c.sender, c.receiver] if isinstance(c, Composition) else
                     [c.head] if isinstance(c, Claim) and c.head is not None else [])
            if named:
                self._require_heads_in_model(pd.DataFrame(named, columns=["layer", "head"]), "claims")
            if result.verdict not in VERDICTS:
                raise ProbesError(
                    f"claim about {result.claim.head_name} has verdict '{result.verdict}'; "
                    f"use one of {', '.join(VERDICTS)}"
                )
        for i, example in enumerate(self.examples):
            n = len(example.tokens)
            for head, pattern in example.patterns.items():
                if len(pattern) != n or any(len(row) != n for row in pattern):
                    raise ProbesError(f"example {i}: pattern of head {head} is not {n} x {n} (one row per token)")

    def _require_heads_in_model(self, df: pd.DataFrame, table: str) -> None:
        for column, size in [("layer", self.model.n_layers), ("head", self.model.n_heads)]:
            bad = df.loc[(df[column] < 0) | (df[column] >= size)]
            if len(bad):
                raise ProbesError(
                    f"the {table} table has {column} {bad[column].iloc[0]} but {self.model.name} has {size} "
                    f"{column}s (0..{size - 1}): the table and the model info do not belong together"
                )


def measure_to_dict(m: Measure) -> dict:
    return {f.name: getattr(m, f.name) for f in fields(Measure) if f.name not in ("name", "gather")}


def claim_to_dict(result: ClaimResult) -> dict:
    """A claim's verdict, sentence, estimates and thresholds (per-prompt values go to per_prompt.parquet)."""
    c = result.claim
    if isinstance(c, Composition):
        named = {"kind": "composition", "sender": c.sender, "receiver": c.receiver, "via": c.via}
    elif isinstance(c, Claim):
        named = {"kind": "attention", "head": c.head, "src": c.src, "dst": c.dst, "foil": c.foil}
    else:  # an essay claim: its own fields, and the profile behind its verdict
        named = {"kind": c.KIND, **c.to_dict()}
        if result.profile is not None:
            named["profile"] = result.profile.to_dict(orient="records")
    return named | {
        "verdict": result.verdict, "sentence": result.sentence,
        "evidence": {k: asdict(v) for k, v in result.evidence.items()}, "thresholds": asdict(result.thresholds),
        "selected": result.selected, "discovery": result.discovery, "confirmation": result.confirmation,
        "family": result.family, "tested_on": result.provenance_note,
    }


def claim_from_dict(d: dict) -> ClaimResult:
    if d.get("kind") == "composition":
        claim = Composition(_head(d["sender"]), _head(d["receiver"]), d["via"])
    elif d.get("kind") in ESSAY_KINDS:
        claim = ESSAY_KINDS[d["kind"]].from_dict(d)
    else:
        claim = Claim(None if d.get("head") is None else _head(d["head"]), d["src"], d["dst"], d.get("foil"))
    return ClaimResult(
        claim=claim,
        verdict=d["verdict"],
        sentence=d["sentence"],
        evidence={k: Estimate.from_dict(v) for k, v in d.get("evidence", {}).items()},
        thresholds=Thresholds(**d.get("thresholds", {})),
        selected=bool(d.get("selected", False)),
        discovery=d.get("discovery"),
        confirmation=d.get("confirmation"),
        family=int(d.get("family", 1)),
        profile=pd.DataFrame(d["profile"]) if "profile" in d else None,
    )


def _head(pair) -> tuple[int, int]:
    return int(pair[0]), int(pair[1])


def ci_columns(measures) -> list[str]:
    """The columns of each measure in a wide table: the estimate, then its interval."""
    return [col for m in measures for col in (m, f"{m}_ci_low", f"{m}_ci_high")]


def _require_columns(df: pd.DataFrame, table: str, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns))
        raise ProbesError(f"the {table} table lacks columns {', '.join(missing)}; it has {have}")


def jsonable(x: Any) -> Any:
    """Plain JSON values: NaN/inf become None, numpy and torch scalars/arrays become Python numbers and lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy / torch, without importing either
        return jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int, bool)):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} in results.json: {x!r}")


def _prompt_lines(prompts: list[dict]) -> str:
    return "".join(json.dumps(jsonable(p), ensure_ascii=False, allow_nan=False) + "\n" for p in prompts)


def write_run(out_dir: str | os.PathLike, run: RunResults, *, overwrite: bool = True) -> Path:
    """Write ``run`` as the run directory ``out_dir``; returns the path of ``results.json``.

    The directory is built beside ``out_dir`` and swapped in whole, so an interrupted write leaves the earlier run
    (or nothing), never a mix. ``out_dir`` may be new, empty, or an earlier run (unless ``overwrite=False``); a
    directory of other files is refused (:func:`check_out_dir`).
    """
    run.validate()
    out = check_out_dir(out_dir, overwrite)
    optional = {PROBES: run.probes, PROBES_CSV: run.probes, PER_PROMPT: run.per_prompt, PROMPTS: run.prompts or None,
                POSITION_CONTENT: run.position_content, POSITION_CONTENT_CSV: run.position_content}
    data = {name: value for name, value in {HEADS: run.heads, HEADS_CSV: run.heads, **optional}.items()
            if value is not None}
    run_id = run.run_id = uuid.uuid4().hex
    summary = {
        "format": FORMAT,
        "run_id": run_id,
        "kit_version": run.kit_version,
        "created_utc": run.created_utc,
        "model": asdict(run.model),
        "task": run.task,
        "n_prompts": run.n_prompts,
        "seed": run.seed,
        "title": run.title,
        "direction": run.direction,
        "stage_times": run.stage_times,
        "notes": run.notes,
        "command": run.command,
        "package_versions": run.package_versions,
        "files": list(data),
        "baseline": {k: asdict(v) for k, v in run.baseline.items()},
        "evidence": {k: measure_to_dict(v) for k, v in run.evidence.items()},
        "claims": [claim_to_dict(c) for c in run.claims],
        "verdict_rule": run.verdict_rule,
        "position_content_thresholds": run.position_content_thresholds,
        "examples": [asdict(e) for e in run.examples],
    }
    jsonable(summary)  # fails here, before anything is written, on a value JSON cannot hold
    try:
        with atomic_dir(out) as tmp:
            write_text(tmp / MARKER, json.dumps({"run_id": run_id}) + "\n")
            for name, value in data.items():
                if name == PROMPTS:
                    write_text(tmp / name, _prompt_lines(value))
                else:
                    write_table(value, tmp / name, metadata={RUN_ID_KEY: run_id})
            summary["sha256"] = {name: file_sha256(tmp / name) for name in data}
            text = json.dumps(jsonable(summary), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
            write_text(tmp / RESULTS, text)
    except OSError as err:
        raise ProbesError(f"cannot write run directory '{out}': {err.strerror or err}") from None
    return out / RESULTS


def _nullable(kind: str | list[str]) -> dict:
    return {"type": [*([kind] if isinstance(kind, str) else kind), "null"]}


_NUMBER = _nullable("number")
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_HEAD = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
_ESTIMATE = {
    "type": "object",
    "required": ["value", "ci_low", "ci_high"],
    "properties": {"value": _NUMBER, "ci_low": _NUMBER, "ci_high": _NUMBER, "n": _nullable("integer"),
                   "p_value": _NUMBER},
    "additionalProperties": False,
}
_ESTIMATES = {"type": "object", "additionalProperties": _ESTIMATE}
# What read_run accepts in results.json: every field the reader and the report use, with its type.
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["format", "run_id", "model", "task", "n_prompts", "files", "sha256"],
    "properties": {
        "format": {"const": FORMAT},
        "run_id": {"type": "string"},
        "kit_version": {"type": "string"},
        "created_utc": {"type": "string"},
        "model": {
            "type": "object",
            "required": ["name", "n_layers", "n_heads"],
            "properties": {"name": {"type": "string"}, "n_layers": {"type": "integer", "minimum": 1},
                           "n_heads": {"type": "integer", "minimum": 1}, "weights_sha256": _nullable("string")},
            "additionalProperties": False,
        },
        "task": {"type": "string"},
        "n_prompts": {"type": "integer", "minimum": 0},
        "seed": _nullable("integer"),
        "command": {"type": "string"},
        "package_versions": _STRINGS,
        "title": {"type": "string"},
        "direction": {"enum": ["denoising", "noising"]},
        "stage_times": {"type": "object", "additionalProperties": {"type": "number"}},
        "notes": {"type": "array", "items": {"type": "string"}},
        "files": {"type": "array", "items": {"enum": [HEADS, HEADS_CSV, PROBES, PROBES_CSV, PER_PROMPT, PROMPTS,
                                                      POSITION_CONTENT, POSITION_CONTENT_CSV]},
                  "contains": {"const": HEADS}},
        "sha256": _STRINGS,
        "baseline": _ESTIMATES,
        "evidence": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["leg", "description", "unit"],
                # every stored field of Measure (a flag unless named here), and no other: Measure(**entry) must work
                "properties": {f.name: {"type": "boolean"} for f in fields(Measure) if f.name not in ("name", "gather")}
                | {"leg": {"enum": list(LEGS)}, "description": {"type": "string"}, "unit": {"type": "string"},
                   "test": _nullable("string"), "threshold": _nullable("string"), "shape": {"enum": list(SHAPES)}},
                "additionalProperties": False,
            },
        },
        "claims": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["verdict", "sentence"],
                "properties": {
                    "kind": {"enum": ["attention", "composition", *ESSAY_KINDS]},
                    "layer": _nullable("integer"), "target": {"type": "string"},
                    "profile": {"type": "array", "items": {"type": "object"}},
                    "head": {"anyOf": [_HEAD, {"type": ["integer", "null"]}]}, "sender": _HEAD, "receiver": _HEAD,
                    "via": {"enum": ["q", "k", "v"]}, "src": {"type": "string"}, "dst": {"type": "string"},
                    "foil": _nullable("string"), "verdict": {"enum": list(VERDICTS)}, "sentence": {"type": "string"},
                    "evidence": _ESTIMATES,
                    "thresholds": {"type": "object", "additionalProperties": False,
                                   "properties": {f.name: {"type": "number"} for f in fields(Thresholds)}},
                    "selected": {"type": "boolean"}, "family": {"type": "integer", "minimum": 1},
                    "discovery": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}},
                    "confirmation": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}},
                    "tested_on": {"type": "string"},
                },
                "allOf": [
                    {"if": {"properties": {"kind": {"const": "composition"}}, "required": ["kind"]},
                     "then": {"required": ["sender", "receiver", "via"]}},
                    {"if": {"properties": {"kind": {"enum": ["composition", *ESSAY_KINDS]}}, "required": ["kind"]},
                     "else": {"required": ["src", "dst"]}},
                ],
            },
        },
        "verdict_rule": {"type": "array", "items": {"type": "string"}},
        "position_content_thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
        "examples": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tokens", "patterns"],
                "properties": {
                    "tokens": {"type": "array", "items": {"type": "string"}},
                    "patterns": {"type": "object", "additionalProperties": {
                        "type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
                    "prompt": {"type": ["integer", "null"], "minimum": 0},
                    "roles": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
                "additionalProperties": False,
            },
        },
    },
}


def read_run(out_dir: str | os.PathLike) -> RunResults:
    """Load a run directory written by ``write_run``; optional tables the run did not write come back as ``None``.

    Anything that is not one whole run (a bad field, a file from another run, a truncated table) is a
    ProbesError naming the file and the field.
    """
    out = require_run_dir(out_dir)
    path = out / RESULTS
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ProbesError(f"'{path}' is not readable JSON ({err}): re-run `probes run` to rewrite it") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else f"a JSON {type(d).__name__}"
        raise ProbesError(f"'{path}' has format {found!r} but this kit reads format {FORMAT}: re-run with this kit version")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(RESULTS_SCHEMA).iter_errors(d))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise ProbesError(f"'{path}' field {where or '(top level)'}: {error.message[:200]}; re-run `probes run`")
    _check_belongs(out, d)
    return _run_from(out, d)


def _check_belongs(out: Path, d: dict) -> None:
    """Every data file named in results.json is there and is the one this run wrote: the run id inside each file
    that can carry one (marker, parquet tables, the report page), then the sha256 of every data file."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        marker = None
    if marker != d["run_id"]:
        raise ProbesError(f"'{out / MARKER}' is missing or names another run than {RESULTS}: re-run `probes run`")
    missing = [name for name in d["files"] if not (out / name).is_file()]
    if missing:
        names = ", ".join(missing)
        raise ProbesError(f"'{out}' lacks {names} named in {RESULTS}: copy the whole run directory, or re-run")
    for name in [*d["files"], *([INDEX] if (out / INDEX).is_file() else [])]:
        found = embedded_run_id(out / name)
        if found is not None and found != d["run_id"]:
            whose = f"run {found}" if found else "no run (it carries no run id)"
            raise ProbesError(
                f"'{out / name}' belongs to {whose}, not to run {d['run_id']} of {RESULTS}: files of different runs "
                "are mixed; copy the whole run directory, or re-run `probes run`"
            )
    for name in d["files"]:
        if file_sha256(out / name) != d["sha256"].get(name):
            raise ProbesError(
                f"'{out / name}' is not the file this run wrote (its sha256 differs from {RESULTS}): files of "
                "different runs are mixed or it was changed; re-run `probes run`"
            )


def embedded_run_id(path: Path) -> str | None:
    """The run id a file carries inside it ("" if it could and does not), or None for a kind of file that has
    nowhere to keep one (CSV, JSONL: their sha256 in results.json stands in)."""
    try:
        if path.suffix == ".parquet":
            return read_table_metadata(path).get(RUN_ID_KEY, "")
        if path.name == INDEX:
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(8192)  # the meta tag sits in <head>, before the inlined plotly.js
            match = _HTML_RUN_ID.search(head)
            return match.group(1) if match else ""
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ProbesError(f"'{path}' is unreadable ({type(err).__name__}: {str(err)[:120]}); re-run `probes run`") from None
    return None


def _run_from(out: Path, d: dict) -> RunResults:
    files = d["files"]
    try:
        tables = {name: pd.read_parquet(out / name) for name in (HEADS, PROBES, PER_PROMPT, POSITION_CONTENT)
                  if name in files}
        lines = (out / PROMPTS).read_text(encoding="utf-8").splitlines() if PROMPTS in files else []
        prompts = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ProbesError(f"'{out}' has an unreadable table ({type(err).__name__}: {str(err)[:120]}); re-run") from None
    run = RunResults(
        model=ModelInfo(**d["model"]),
        task=d["task"],
        n_prompts=d["n_prompts"],
        seed=d.get("seed"),
        command=d.get("command", ""),
        heads=tables[HEADS],
        evidence={k: Measure(name=k, **v) for k, v in d.get("evidence", {}).items()},
        baseline={k: Estimate.from_dict(v) for k, v in d.get("baseline", {}).items()},
        claims=[claim_from_dict(c) for c in d.get("claims", [])],
        verdict_rule=d.get("verdict_rule", []),
        examples=[Example(**e) for e in d.get("examples", [])],
        probes=tables.get(PROBES),
        per_prompt=tables.get(PER_PROMPT),
        prompts=prompts,
        position_content=tables.get(POSITION_CONTENT),
        position_content_thresholds=d.get("position_content_thresholds", {}),
        title=d.get("title", ""),
        direction=d.get("direction", "denoising"),
        stage_times=d.get("stage_times", {}),
        notes=d.get("notes", []),
        package_versions=d.get("package_versions", {}),
        kit_version=d.get("kit_version", "unknown"),
        created_utc=d.get("created_utc", ""),
        run_id=d["run_id"],
    )
    run.validate()
    return run
