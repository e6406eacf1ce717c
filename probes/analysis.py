"""A scripted run: an analysis spec (TOML in ``analyses/``) -> every piece of evidence -> a run directory.

A spec names a model, a task (or a JSONL file of the user's own minimal pairs), the roles of the claim to test
and which heads to test it on::

    title = "Coreference in Gemma-3-270m"
    model = "gemma-3-270m"
    task = "pronoun_resolution"        # a probes.tasks generator, or `prompts = "pairs.jsonl"`
    n = 48
    seed = 0
    src = "pronoun"
    dst = "antecedent"
    foil = "distractor"                # optional; without it, attention is compared with uniform attention
    direction = "denoising"            # or "noising": is the head necessary rather than sufficient
    claims = [[5, 2], "top_attention:3", "top_effect:3"]
    probe_targets = ["antecedent_gender"]   # optional: linear probes on every head's output at `src`
    [thresholds]                       # optional, see probes.claims.Thresholds
    effect = 0.1

Every head is evaluated (multiple-comparison adjusted), so ``heads.parquet`` has the evidence for all of them;
the ``claims`` list picks which heads get a verdict sentence at the top of the report.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes import claims as claims_mod
from probes import probing, tasks
from probes.activations import ALL_POSITIONS, harvest
from probes.claims import Claim, ClaimResult, Thresholds
from probes.errors import ProbesError
from probes.models import load_model
from probes.prompts import PromptSet
from probes.results import ClaimRecord, Estimate, Example, Measure, ModelInfo, RunResults, write_run

PROBE_TARGETS = {
    "antecedent_gender": probing.antecedent_gender,
    "antecedent_identity": probing.antecedent_identity,
    "previous_token": functools.partial(probing.previous_token_identity, n_buckets=16),
}
SELECTORS = ("top_attention", "top_effect")

MEASURES = {
    "attention": Measure("attention", "attention margin: alpha(src -> dst) - alpha(src -> foil), mean over prompts"),
    "norm_attention": Measure("attention", "norm-weighted attention margin: alpha * ||v W_O|| (Kobayashi et al. 2020)"),
    "effect_z": Measure("causal", "patching the head's output: fraction of the clean-corrupt gap moved"),
    "effect_pattern": Measure("causal", "patching the head's attention pattern only: fraction of the gap moved"),
}


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
    seed: int = 0
    foil: str | None = None
    direction: str = "denoising"
    claims: list = field(default_factory=lambda: ["top_attention:3", "top_effect:3"])
    probe_targets: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    examples: int = 2

    @classmethod
    def from_toml(cls, path: str | Path) -> AnalysisSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ProbesError(f"analysis file '{path}' not found; see analyses/ for examples") from None
        except tomllib.TOMLDecodeError as err:
            raise ProbesError(f"{path} is not valid TOML: {err}") from None
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
        if not isinstance(self.n, int) or self.n < 1:
            raise ProbesError(f"{where}: n must be a positive integer, got {self.n!r}")
        for target in self.probe_targets:
            if target not in PROBE_TARGETS:
                raise ProbesError(f"{where}: unknown probe target '{target}'; known: {', '.join(PROBE_TARGETS)}")
        fields = {f.name for f in dataclasses.fields(Thresholds)}
        if set(self.thresholds) - fields:
            bad = ", ".join(sorted(set(self.thresholds) - fields))
            raise ProbesError(f"{where}: unknown threshold(s) {bad}; known: {', '.join(sorted(fields))}")
        for item in self.claims:
            _parse_selector(item, where)


def _parse_selector(item, where: str) -> tuple[str, int] | tuple[int, int]:
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


def build_prompts(model: HookedTransformer, spec: AnalysisSpec) -> PromptSet:
    if spec.prompts is not None:
        return PromptSet.from_jsonl(spec.prompts, model)
    return tasks.generate(model, spec.task, spec.n, seed=spec.seed)


def _selected_heads(spec: AnalysisSpec, table: pd.DataFrame, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    heads: list[tuple[int, int]] = []
    for item in spec.claims:
        a, b = _parse_selector(item, "claims")
        if isinstance(a, int):
            if not (0 <= a < n_layers and 0 <= b < n_heads):
                raise ProbesError(f"claim head {a}.{b} does not exist: the model has {n_layers} layers x {n_heads} heads")
            picked = [(a, b)]
        else:
            # attention: the heads that attend to the target most; effect: the largest effect either way
            score = table["attention"] if a == "top_attention" else table["effect_z"].abs()
            ranked = table.reindex(score.sort_values(ascending=False).index)
            picked = list(zip(ranked["layer"].astype(int), ranked["head"].astype(int)))[:b]
        heads += [h for h in picked if h not in heads]
    return heads


def _probe_table(model: HookedTransformer, prompts: PromptSet, spec: AnalysisSpec) -> pd.DataFrame | None:
    if not spec.probe_targets:
        return None
    at = ALL_POSITIONS if spec.probe_targets == ["previous_token"] else spec.src
    targets = [PROBE_TARGETS[t] for t in spec.probe_targets]
    with tempfile.TemporaryDirectory(prefix="probes-acts-") as tmp:
        store = harvest(model, prompts, Path(tmp) / "activations", kinds=("z",), at=at)
        table = probing.probe_activations(store, targets, seed=spec.seed)
    return table[table["head"] >= 0].reset_index(drop=True)


@torch.no_grad()
def _examples(model: HookedTransformer, prompts: PromptSet, heads: list[tuple[int, int]], k: int) -> list[Example]:
    """Attention patterns of the claimed heads on the first ``k`` prompts (real tokens only)."""
    out = []
    layers = sorted({layer for layer, _ in heads})
    for i in range(min(k, len(prompts))):
        end = int(prompts.end[i]) + 1
        tokens = prompts.clean[i : i + 1, :end]
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("hook_pattern") and int(name.split(".")[1]) in layers,
            stop_at_layer=max(layers) + 1,
        )
        labels = (
            [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
            if model.tokenizer is not None
            else [str(t) for t in tokens[0].tolist()]
        )
        patterns = {f"{l}.{h}": cache[f"blocks.{l}.attn.hook_pattern"][0, h].tolist() for l, h in heads}
        roles = {name: int(pos[i]) for name, pos in prompts.roles.items()}
        out.append(Example(tokens=labels, patterns=patterns, prompt=i, roles=roles))
    return out


def _record(result: ClaimResult) -> ClaimRecord:
    c = result.claim
    return ClaimRecord(
        head=c.head, src=c.src, dst=c.dst, foil=c.foil, verdict=result.verdict, sentence=result.sentence,
        evidence=result.evidence, thresholds={"attention": result.thresholds.attention_margin,
                                              "effect_z": result.thresholds.effect, "alpha": result.thresholds.alpha,
                                              "min_prompts": result.thresholds.min_prompts},
    )


def _per_prompt_table(results: list[ClaimResult]) -> pd.DataFrame:
    frames = []
    for r in results:
        layer, head = r.claim.head
        for measure in ("attention", "effect_z", "effect_pattern", "norm_attention"):
            values = r.per_prompt[measure]
            frames.append(pd.DataFrame({"prompt": range(len(values)), "layer": layer, "head": head,
                                        "measure": measure, "value": values}))
    return pd.concat(frames, ignore_index=True)


def _prompt_records(model: HookedTransformer, prompts: PromptSet) -> list[dict]:
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
        records.append(record)
    return records


def run_analysis(spec: AnalysisSpec, out_dir: str | Path, command: str | None = None) -> tuple[Path, list[ClaimResult]]:
    """Run ``spec`` end to end and write the run directory; returns (results.json path, claimed results)."""
    model = load_model(spec.model)
    prompts = build_prompts(model, spec)
    thresholds = Thresholds(**spec.thresholds)
    probes_table = _probe_table(model, prompts, spec)
    everything = claims_mod.evaluate(
        model, prompts, Claim(None, spec.src, spec.dst, spec.foil), thresholds,
        probe_table=probes_table, direction=spec.direction, seed=spec.seed,
    )
    heads_table = everything.to_frame()
    chosen = _selected_heads(spec, heads_table, model.cfg.n_layers, model.cfg.n_heads)
    by_head = {r.claim.head: r for r in everything.heads}
    claimed = [by_head[h] for h in chosen]
    base = tasks.baseline(model, prompts, seed=spec.seed)
    provenance = getattr(model, "provenance", None)
    run = RunResults(
        model=ModelInfo(spec.model, model.cfg.n_layers, model.cfg.n_heads,
                        provenance.weights_sha256 if provenance else None),
        task=spec.task or Path(spec.prompts).name,
        n_prompts=len(prompts),
        seed=spec.seed,
        command=command or " ".join(shlex.quote(a) for a in ["probes", *sys.argv[1:]]),
        heads=heads_table,
        evidence=dict(MEASURES),
        baseline={
            "clean_logit_diff": Estimate(base["clean_logit_diff"], *base["clean_logit_diff_ci"], n=base["n"]),
            "corrupt_logit_diff": Estimate(base["corrupt_logit_diff"], *base["corrupt_logit_diff_ci"], n=base["n"]),
            "accuracy_vs_foil": Estimate(base["accuracy_vs_foil"], float("nan"), float("nan"), n=base["n"]),
            "accuracy_top1": Estimate(base["accuracy_top1"], float("nan"), float("nan"), n=base["n"]),
        },
        claims=[_record(r) for r in claimed],
        verdict_rule=claims_mod.__doc__.split("Verdict rule", 1)[1].strip().replace("``", ""),
        examples=_examples(model, prompts, chosen, spec.examples),
        probes=probes_table,
        per_prompt=_per_prompt_table(claimed),
        prompts=_prompt_records(model, prompts),
    )
    return write_run(out_dir, run), claimed
