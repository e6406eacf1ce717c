"""A scripted run: an analysis spec -> every piece of evidence -> a run directory.

A spec (:mod:`probes.run.spec`) names a model, a task (or a JSONL file of the user's own minimal pairs), the
roles of the claim to test and which heads to judge.


Every head is screened on every prompt (a family of all heads), so ``heads.parquet`` has the evidence for all of
them; the ``claims`` list picks which heads get a verdict: heads named in the spec are judged on every prompt,
heads chosen from data (``top_attention:K``, ``top_effect:K``) are ranked on a discovery split of the groups and
judged on the held-out confirmation groups only. Every claim of the run (heads and compositions) is one family:
its intervals are simultaneous over them all.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from probes.claims.evaluation import evaluate, judge, select_and_confirm
from probes.claims.gathering import EvidenceContext, gather
from probes.claims.measures import MEASURES
from probes.claims.types import Claim, ClaimResult, Composition, Thresholds, claims_frame
from probes.claims.essay import KINDS as ESSAY_KINDS
from probes.claims.essay import EssayClaim
from probes.claims.verdicts import PATH, essay_rule_lines, rule_lines
from probes.core.errors import ProbesError
from probes.core.stats import split_groups
from probes.evidence import probing
from probes.evidence.activations import ALL_POSITIONS, harvest
from probes.evidence.attention import attention_patterns
from probes.evidence.behaviour import behaviour
from probes.evidence.position import LABEL_THRESHOLDS, Counterfactuals, counterfactuals, measure_shares
from probes.evidence.patching import shared_runs
from probes.models.loading import load_model
from probes.models.protocol import HookedModel
from probes.prompts import tasks
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import PREVIOUS
from probes.run.estimate import estimate_run
from probes.run.rundir import Example, ModelInfo, RunResults, write_run
from probes.evidence.probing import MIN_CLASS_ROWS, TARGET_LABELS
from probes.evidence.probing import TARGETS as PROBE_TARGETS
from probes.run.spec import AnalysisSpec, parse_composition, parse_selector


def build_prompts(model: HookedModel, spec: AnalysisSpec) -> PromptSet:
    """The spec's prompts. A random-token task whose previous-token identity is probed draws its tokens from a
    bounded pool (:func:`probes.prompts.tasks.class_pool`): from a whole vocabulary almost no token recurs often
    enough to be a class."""
    vocab = None
    if spec.prompts is None and spec.task in tasks.RANDOM_SHAPES and "previous_token" in spec.probe_targets:
        vocab = tasks.class_pool(model, spec.task, spec.n, MIN_CLASS_ROWS, seed=spec.seed)
    prompts = (
        PromptSet.from_jsonl(spec.prompts, model) if spec.prompts is not None
        else tasks.generate(model, spec.task, spec.n, seed=spec.seed, templates=spec.templates, vocab=vocab)
    )
    prompts.check_model(model)
    return prompts


def _named_heads(spec: AnalysisSpec, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """The heads the spec names outright (``[L, H]``, or a written claim about the spec's roles): hypotheses
    stated before the data, judged on every prompt."""
    heads: list[tuple[int, int]] = []
    for item in spec.claims:
        selector = _head_of(parse_selector(item, "claims"), spec)
        if selector is None:
            continue
        a, b = selector
        if isinstance(a, int):
            if not (0 <= a < n_layers and 0 <= b < n_heads):
                raise ProbesError(f"claim head {a}.{b} does not exist: the model has {n_layers} layers x {n_heads} heads")
            heads += [(a, b)] if (a, b) not in heads else []
    return heads


def _selectors(spec: AnalysisSpec) -> list[tuple[str, int]]:
    parsed = (parse_selector(item, "claims") for item in spec.claims)
    return [sel for sel in parsed if isinstance(sel, tuple) and isinstance(sel[0], str)]


def _head_of(selector, spec: AnalysisSpec):
    """A selector or head as is; a written claim's head when its roles are the spec's, else None (also for an
    essay claim, which names no head of the spec's claim)."""
    if isinstance(selector, ESSAY_KINDS):
        return None
    if not isinstance(selector, Claim):
        return selector
    return selector.head if (selector.src, selector.dst, selector.foil) == (spec.src, spec.dst, spec.foil) else None


def _own_claims(spec: AnalysisSpec) -> list[Claim | EssayClaim]:
    """Written claims about other roles than the spec's, and essay claims: each is settled on its own."""
    parsed = [parse_selector(item, "claims") for item in spec.claims]
    return [c for c in parsed if isinstance(c, ESSAY_KINDS) or (isinstance(c, Claim) and _head_of(c, spec) is None)]


def probe_targets(spec: AnalysisSpec, prompts: PromptSet) -> tuple[list[str], list[str]]:
    """The spec's probe targets these prompts carry the labels for, and a one-line note for each skipped one
    (a user's own pairs need not have the labels a shipped analysis probes for)."""
    usable, notes = [], []
    for target in spec.probe_targets:
        missing = [label for label in TARGET_LABELS[target] if label not in prompts.labels]
        if missing:
            notes.append(
                f"probe target {target} skipped: the prompts have no label {', '.join(missing)} "
                "(a JSONL line gives labels in its \"labels\" object)"
            )
        else:
            usable.append(target)
    return usable, notes


def _probe_table(
    model: HookedModel, prompts: PromptSet, spec: AnalysisSpec, names: list[str]
) -> pd.DataFrame | None:
    if not names:
        return None
    at = ALL_POSITIONS if _every_position(names) else spec.src
    targets = [PROBE_TARGETS[t] for t in names]
    with tempfile.TemporaryDirectory(prefix="probes-acts-") as tmp:
        store = harvest(model, prompts, Path(tmp) / "activations", kinds=("z",), at=at)
        table = probing.probe_activations(store, targets, seed=spec.seed).table
    return table[table["head"] >= 0].reset_index(drop=True)


def _held_out_probes(
    model: HookedModel, confirmation: PromptSet, spec: AnalysisSpec, names: list[str], notes: list[str]
) -> pd.DataFrame | None:
    """Probes on the confirmation prompts alone: the only probe evidence a head chosen from data may carry (the
    full table's folds include the prompts it was chosen on). Too few prompts to probe: none, and a note says so."""
    try:
        return _probe_table(model, confirmation, spec, names)
    except ProbesError as err:
        notes.append(f"probe evidence left off the heads chosen from data: their {len(confirmation)} confirmation "
                     f"prompts are too few to probe ({err})")
        return None


def _every_position(names: list[str]) -> bool:
    """Whether the probes read every position (previous-token identity) rather than the src role's."""
    return names == ["previous_token"]


def _position_content_plan(model: HookedModel, prompts: PromptSet, spec: AnalysisSpec) -> Counterfactuals | None:
    """The counterfactual prompts of the spec's ``[position_content]``, checked (tokens, lengths, context) as soon
    as the prompts exist: bad input is refused before the heavy stages, not after them."""
    if spec.position_content is None:
        return None
    options = dict(spec.position_content)
    src, dst = options.pop("src", spec.src), options.pop("dst", spec.dst)
    return counterfactuals(model, prompts, src, dst, **options)


def _per_prompt_table(results: list[ClaimResult]) -> pd.DataFrame | None:
    """The per-prompt values behind the claims' headline measures (the registry's panel measures; a composition's
    path effect), so a sweep can pool them across cells: each in logits for a measure of the gap, beside the
    prompt's clean-corrupt ``gap`` (a sweep redraws the two together). A composition's rows sit at its receiver
    and name the path in ``path`` (two paths may share a receiver); a head claim's ``path`` is empty."""
    frames = []
    for r in results:
        if isinstance(r.claim, ESSAY_KINDS):  # its evidence is in its profile, not per prompt
            continue
        if isinstance(r.claim, Composition):
            (layer, head), path, kept = r.claim.receiver, r.claim.head_name, {PATH.measure}
        else:
            (layer, head), path, kept = r.claim.head, "", {m for m in r.per_prompt if MEASURES[m].panel}
        for measure, values in r.per_prompt.items():
            if measure in kept:
                frames.append(pd.DataFrame({"prompt": range(len(values)), "layer": layer, "head": head,
                                            "measure": measure, "value": values, "gap": r.per_prompt["gap_logits"],
                                            "path": path}))
    return pd.concat(frames, ignore_index=True) if frames else None


def _prompt_records(model: HookedModel, prompts: PromptSet) -> list[dict]:
    """What the report shows of each prompt: its text record (decoded tokens for token-id prompts) and labels."""
    decode = (lambda ids: model.tokenizer.decode(ids)) if model.tokenizer is not None else (lambda ids: str(ids))
    records = []
    for i in range(len(prompts)):
        end = int(prompts.end[i]) + 1
        record = dict(prompts.texts[i]) if prompts.texts else {
            "clean": decode(prompts.clean[i, :end].tolist()),
            "corrupt": decode(prompts.corrupt[i, :end].tolist()),
            "answer": decode([int(prompts.answer[i])]),
            "foil": decode([int(prompts.foil[i])]),
        }
        record |= {key: values[i] for key, values in prompts.labels.items()}
        record.setdefault("group", prompts.groups[i])  # the resampling unit, so a sweep can pool runs by it
        records.append(record)
    return records


class StageTimer:
    """Seconds per stage of a run, in the order the stages ran (shown in the summary and the report)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start


def run_analysis(
    spec: AnalysisSpec, out_dir: str | Path, command: str | None = None, model: HookedModel | None = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[Path, RunResults]:  # fmt: skip
    """Run ``spec`` end to end and write the run directory; returns (results.json path, what was written).

    ``model`` is ``spec.model`` already loaded (a sweep's worker loads it once for many runs); None loads it here.
    Before the heavy work, a run that cannot fit the memory budget is refused (:mod:`probes.run.estimate`), and
    ``announce`` (the CLI's ``print``) is given the estimate's lines.
    """
    stage = StageTimer()
    with stage("load model"):
        model = load_model(spec.model) if model is None else model
    with stage("prompts"):
        prompts = build_prompts(model, spec)
    thresholds = Thresholds(**spec.thresholds)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    named, selectors, own = _named_heads(spec, n_layers, n_heads), _selectors(spec), _own_claims(spec)
    for role in (spec.src, spec.dst, spec.foil):
        if role is not None and role != PREVIOUS:
            prompts.role(role)
    position_plan = _position_content_plan(model, prompts, spec)
    if selectors:  # before any model work: a split that cannot confirm anything is an input error
        discovery, confirmation = split_groups(
            prompts.group_index, thresholds.confirm_fraction, spec.seed, thresholds.min_prompts
        )
    targets, notes = probe_targets(spec, prompts)
    swept = ("z", "pattern") if spec.pattern_patching else ("z",)
    plan = estimate_run(model, prompts, ("z",) if targets else (), _every_position(targets), swept,
                        len(spec.compositions))
    plan.require()
    for line in plan.lines() if announce else []:
        announce(line)
    with stage("probes"):
        probes_table = _probe_table(model, prompts, spec, targets)
        held_out_probes = _held_out_probes(model, prompts.subset(confirmation), spec, targets, notes) if selectors else None
    notes += [] if probes_table is None else probing.refusals(probes_table)
    claim = Claim(None, spec.src, spec.dst, spec.foil)
    every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    options = dict(thresholds=thresholds, direction=spec.direction, seed=spec.seed, probe_table=probes_table)
    with shared_runs():  # every sweep and attention measure of the run shares the clean and corrupt passes
        with stage("evidence, every head"):
            context = EvidenceContext(model, prompts, spec.src, spec.dst, spec.foil, None, spec.direction)
            gathered = gather(context, every, skip=() if spec.pattern_patching else ("effect_pattern",))
            heads_table = claims_frame(judge(claim, gathered, every, family=len(every), **options))
        besides = len(named) + len(own) + len(spec.compositions)
        confirmed = select_and_confirm(
            claim, gathered, selectors, discovery, confirmation, exclude=named, family_besides=besides,
            held_out_probes=held_out_probes, **options,
        ) if selectors else []
        family = besides + len(confirmed)
        claimed = judge(claim, gathered, named, family=family, **options) + confirmed
        chosen = named + [r.claim.head for r in confirmed]
        with stage("claims with their own roles, essay claims, compositions"):
            claimed += [evaluate(model, prompts, c, family=family, **options) for c in own]
            for item in spec.compositions:
                claimed.append(evaluate(model, prompts, parse_composition(item, "compositions"), thresholds,
                                        direction=spec.direction, seed=spec.seed, family=family))
    position_table = None
    if position_plan is not None:
        with stage("position and content"):
            position_table = measure_shares(model, position_plan, seed=spec.seed).table
    with stage("baseline and examples"):
        baseline = behaviour(model, prompts, seed=spec.seed).estimates()
        examples = [Example(**e) for e in attention_patterns(model, prompts, chosen, spec.examples)]
    provenance = getattr(model, "provenance", None)
    run = RunResults(
        model=ModelInfo(spec.model, model.cfg.n_layers, model.cfg.n_heads,
                        provenance.weights_sha256 if provenance else None),
        task=spec.task or Path(spec.prompts).name,
        n_prompts=len(prompts),
        seed=spec.seed,
        command=command or " ".join(shlex.quote(a) for a in ["probes", *sys.argv[1:]]),
        heads=heads_table,
        evidence={name: m for name, m in MEASURES.items() if name in heads_table.columns},
        baseline=baseline,
        claims=claimed,
        verdict_rule=rule_lines(thresholds) + (essay_rule_lines(thresholds) if any(
            isinstance(c, ESSAY_KINDS) for c in own) else []),
        examples=examples,
        probes=probes_table,
        per_prompt=_per_prompt_table(claimed),
        prompts=_prompt_records(model, prompts),
        position_content=position_table,
        position_content_thresholds=LABEL_THRESHOLDS if position_table is not None else {},
        title=spec.title,
        direction=spec.direction,
        stage_times=stage.times,
        notes=notes,
    )
    return write_run(out_dir, run), run
