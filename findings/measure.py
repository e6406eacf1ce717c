"""The kit's headline findings, measured: each analysis writes ``findings/NAME.json`` and docs/findings.md is
rendered from those files, so no figure in the docs is copied by hand.

An analysis is a few claims (a head's verdict, a head's position/content label, a composition's verdict, a model's
task gate) on one packaged model at a fixed size and seed. Each item records its outcome (a verdict, a label or the
gate), the estimates the docs quote with their intervals, and whether the outcome was the same on seed 1 (other
prompts, other resamples): the sizes are the smallest whose outcomes a second seed reproduces. ``tests/
test_findings.py`` re-runs every analysis at its recorded size and seed and fails, naming the claim, when an
outcome changes or an estimate leaves its recorded interval.

    make findings                                   # every analysis, seeds 0 and 1, then docs/findings.md
    python findings/measure.py previous_token_gemma # one analysis
    python findings/measure.py --docs               # only re-render docs/findings.md from findings/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch

import probes
from probes.claims.types import Thresholds
from probes.claims.verdicts import LEGS, PATH
from probes.core.io import write_text
from probes.core.stats import Estimate
from probes.evidence.position import DEFAULT_FILLER, DEFAULT_REPLACEMENTS
from probes.models.protocol import HookedModel
from probes.prompts import tasks

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bridge import gemm_gflops  # noqa: E402  (bench/ is scripts, not a package)

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "findings.md"
SEEDS = (0, 1)  # the recorded run, and the seed whose outcomes must agree for a size to be kept
MODEL_NAMES = {"gemma-3-270m": "Gemma", "smollm2-135m": "SmolLM2"}

Item = dict  # {"claim", "kind", "outcome", "estimates": {name: {"value", "ci_low", "ci_high"}}, "sentence"}


def _estimate(e: Estimate) -> dict:
    return {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high}


def _head(head: tuple[int, int]) -> str:
    return f"{head[0]}.{head[1]}"


def _claims(model: HookedModel, prompts, claims: list, direction: str, seed: int) -> list[Item]:
    """Each claim's verdict, tested together as one family, with the estimates its verdict read."""
    items = []
    for claim in claims:
        result = probes.evaluate(model, prompts, claim, direction=direction, seed=seed, family=len(claims))
        legs = [PATH] if isinstance(claim, probes.Composition) else LEGS
        items.append({
            "claim": str(claim), "kind": "verdict", "outcome": result.verdict, "sentence": result.sentence,
            "estimates": {leg.measure: _estimate(result.evidence[leg.measure]) for leg in legs},
        })
    return items


def _labels(model: HookedModel, prompts, src: str, dst: str, heads: list[tuple[int, int]], what: str,
            **counterfactuals) -> list[Item]:
    """Each head's position/content label and its two shares (ratios of means, group-bootstrap intervals)."""
    table = probes.position_content(model, prompts, src, dst, heads=heads, **counterfactuals).table
    items = []
    for row in table.itertuples():
        items.append({
            "claim": f"head {row.layer}.{row.head}'s {what} attention is {row.label}", "kind": "label",
            "outcome": row.label, "head": f"{row.layer}.{row.head}", "attention": float(row.attention),
            "estimates": {
                share: {"value": float(getattr(row, share)), "ci_low": float(getattr(row, f"{share}_ci_low")),
                        "ci_high": float(getattr(row, f"{share}_ci_high"))}
                for share in ("positional_share", "content_share")
            },
        })
    return items


def _induction(model: HookedModel, n: int, seed: int):
    return tasks.induction(model, n, seed=seed)


def previous_token(heads: list[tuple[int, int]]) -> Callable[[HookedModel, int, int], list[Item]]:
    """"L.H attends to the previous token" where induction reads it (noising: is the head necessary)."""

    def measure(model: HookedModel, n: int, seed: int) -> list[Item]:
        claims = [probes.Claim(head, "induction_target", "previous") for head in heads]
        return _claims(model, _induction(model, n, seed), claims, "noising", seed)

    return measure


def coreference(heads: list[tuple[int, int]]) -> Callable[[HookedModel, int, int], list[Item]]:
    """"L.H attends from the pronoun to its antecedent" (denoising: does the head restore the answer)."""

    def measure(model: HookedModel, n: int, seed: int) -> list[Item]:
        claims = [probes.Claim(head, "pronoun", "antecedent", "distractor") for head in heads]
        return _claims(model, tasks.pronoun_resolution(model, n, seed=seed), claims, "denoising", seed)

    return measure


def composition(paths: list[tuple[tuple[int, int], tuple[int, int], str]]) -> Callable[[HookedModel, int, int], list[Item]]:
    """"R reads S's output through its q/k/v", by path patching on induction prompts (noising)."""

    def measure(model: HookedModel, n: int, seed: int) -> list[Item]:
        claims = [probes.Composition(sender=s, receiver=r, via=via) for s, r, via in paths]
        return _claims(model, _induction(model, n, seed), claims, "noising", seed)

    return measure


def position_content(previous: list[tuple[int, int]], antecedent: list[tuple[int, int]]):
    """Labels of previous-token heads at the induction target (token-id prompts: the default words given as the
    counterfactual tokens) and of pronoun -> antecedent heads on pronoun pairs."""

    def measure(model: HookedModel, n: int, seed: int) -> list[Item]:
        return _labels(
            model, _induction(model, n, seed), "induction_target", "previous", previous, "previous-token",
            filler=list(DEFAULT_FILLER), replacements=list(DEFAULT_REPLACEMENTS),
        ) + _labels(model, tasks.pronoun_resolution(model, n, seed=seed), "pronoun", "antecedent", antecedent,
                    "pronoun -> antecedent")

    return measure


def baselines(task_names: list[str]) -> Callable[[HookedModel, int, int], list[Item]]:
    """Does the model do each task, by the claims' task gate (the answer beats the foil in at least
    ``min_accuracy`` of the groups, with a lower bound above 50%)?"""

    def measure(model: HookedModel, n: int, seed: int) -> list[Item]:
        gate = Thresholds()
        items = []
        for task in task_names:
            result = probes.behaviour(model, getattr(tasks, task)(model, n, seed=seed), seed=seed)
            share = result.accuracy_vs_foil
            does = share.value >= gate.min_accuracy and share.ci_low > 0.5
            items.append({
                "claim": f"the model does the {task} task", "kind": "gate", "task": task,
                "outcome": "does the task" if does else "does not do the task",
                "estimates": {name: _estimate(e) for name, e in result.estimates().items()},
            })
        return items

    return measure


@dataclass(frozen=True)
class Analysis:
    """One headline analysis: a model, a size (prompts per run) and what is measured on it."""

    name: str
    title: str
    model: str
    n: int
    measure: Callable[[HookedModel, int, int], list[Item]]
    question: str  # what the analysis asks, for the docs page


BASELINE = ("Does the model do the task? The claims' task gate: the answer beats the foil in at least 75% of the "
            "groups, with a lower bound above 50% (every claim on a task the model fails is `inconclusive`).")
PREVIOUS = ("\"Head L.H attends to the previous token\", tested where induction reads it (`BOS r r` sequences, at the "
            "token after the first occurrence of the end token), noising: is the head's edge to the previous token "
            "necessary? Attending alone (`attention_only`) is not using it.")
ANALYSES = (
    Analysis("baselines_gemma", "Task baselines, Gemma", "gemma-3-270m", 16, baselines(["ioi", "pronoun_resolution"]),
             BASELINE),
    Analysis("baselines_smollm2", "Task baselines, SmolLM2", "smollm2-135m", 16,
             baselines(["ioi", "pronoun_resolution"]), BASELINE),
    Analysis("coreference_gemma", "Coreference in Gemma: pronoun -> antecedent", "gemma-3-270m", 16,
             coreference([(7, 0), (10, 3)]),
             "\"Head L.H attends from the pronoun to its antecedent\" (\"Alice and Bob went to the park. She gave the "
             "ball to\" -> \" Bob\"; denoising: the clean pronoun restored) for the head that attends most (7.0) and "
             "the head that matters most (10.3)."),
    Analysis("previous_token_gemma", "Previous-token heads in Gemma, at the induction target", "gemma-3-270m", 16,
             previous_token([(10, 1), (2, 3)]), PREVIOUS),
    Analysis("previous_token_smollm2", "Previous-token heads in SmolLM2, at the induction target", "smollm2-135m",
             16, previous_token([(16, 0), (11, 1)]), PREVIOUS),
    Analysis("composition_gemma", "Which keys do Gemma's previous-token heads feed (path patching)", "gemma-3-270m",
             16, composition([((4, 1), (5, 0), "k"), ((2, 3), (5, 0), "k")]),
             "Does layer 5's key/value head (serving heads 5.0-5.3) read a previous-token head's output through its "
             "keys? Path patching on induction prompts, noising, Gemma's post-attention norm recomputed over the mixed "
             "sum of heads."),
    Analysis("position_content_gemma", "Position or content, Gemma", "gemma-3-270m", 16,
             position_content([(2, 3), (4, 1), (10, 1)], [(0, 0), (7, 0), (6, 0)]),
             POSITION := ("Does a head look at WHERE a token is or at WHAT it is? Positional share: the attention "
                          "that survives swapping the token (`table`, `river`, ...); content share: the attention "
                          "that follows it when fillers push it 1, 2, 4 tokens away. Previous-token heads at the "
                          "induction target, pronoun -> antecedent heads on pronoun pairs; labels on the point "
                          "estimates (`probes.evidence.position`).")),
    Analysis("position_content_smollm2", "Position or content, SmolLM2", "smollm2-135m", 16,
             position_content([(16, 0), (11, 1), (2, 1)], [(9, 2), (9, 4), (13, 8)]), POSITION),
)
BY_NAME = {a.name: a for a in ANALYSES}


def run(analysis: Analysis, model: HookedModel, seed: int, n: int | None = None) -> dict:
    """One analysis at ``n`` prompts (default: its size) and ``seed``: every item, and how long it took."""
    n = analysis.n if n is None else n
    start = time.perf_counter()
    with torch.no_grad():
        items = analysis.measure(model, n, seed)
    return {"name": analysis.name, "title": analysis.title, "model": analysis.model, "n": n, "seed": seed,
            "seconds": round(time.perf_counter() - start, 1), "items": items}


def differences(recorded: dict, fresh: dict) -> list[str]:
    """What moved between a recorded run and a fresh one, one line per claim: an outcome that changed, an
    estimate whose fresh value left its recorded interval, a claim that is missing."""
    fresh_items = {item["claim"]: item for item in fresh["items"]}
    lines = []
    for item in recorded["items"]:
        claim = f"{MODEL_NAMES[recorded['model']]}: {item['claim']}"
        now = fresh_items.get(item["claim"])
        if now is None:
            lines.append(f"{claim}: not measured any more")
            continue
        if now["outcome"] != item["outcome"]:
            lines.append(f"{claim}: {item['kind']} was '{item['outcome']}', now '{now['outcome']}'")
        for name, e in item["estimates"].items():
            value = now["estimates"][name]["value"]
            if not e["ci_low"] <= value <= e["ci_high"]:
                lines.append(f"{claim}: {name} {value:+.3f} left its recorded interval "
                             f"[{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]")
    return lines


def path(name: str) -> Path:
    return HERE / f"{name}.json"


def record(analysis: Analysis, model: HookedModel) -> dict:
    """Seed 0 recorded; each item marked stable when seed 1 gives it the same outcome."""
    runs = [run(analysis, model, seed) for seed in SEEDS]
    other = {item["claim"]: item["outcome"] for item in runs[1]["items"]}
    for item in runs[0]["items"]:
        item["seed_1_outcome"] = other.get(item["claim"])
    finding = runs[0] | {"stable_seeds": list(SEEDS), "seconds_seed_1": runs[1]["seconds"],
                         "gemm_gflops": round(gemm_gflops()), "load_average": round(os.getloadavg()[0], 1)}
    write_text(path(analysis.name), json.dumps(finding, indent=1) + "\n")
    return finding


def _stability(item: Item) -> str:
    if item["outcome"] == item["seed_1_outcome"]:
        return "same"
    return f"**not stable**: {item['seed_1_outcome']}"


def _stable(items: list[Item]) -> str:
    same = sum(item["outcome"] == item["seed_1_outcome"] for item in items)
    return "all" if same == len(items) else f"**{same} of {len(items)}**"


def render() -> str:
    """docs/findings.md's text, from findings/*.json through findings/findings.md.j2."""
    findings = {a.name: json.loads(path(a.name).read_text()) for a in ANALYSES if path(a.name).exists()}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda x: f"{x:.2f}"
    env.filters["est"] = lambda e: f"{e['value']:+.2f} [{e['ci_low']:+.2f}, {e['ci_high']:+.2f}]"
    env.filters["share"] = lambda e: f"{e['value']:.0%} [{e['ci_low']:.0%}, {e['ci_high']:.0%}]"
    env.globals |= {"stability": _stability, "stable": _stable}
    return env.get_template("findings.md.j2").render(f=findings, analyses=ANALYSES, models=MODEL_NAMES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"analyses (default all): {', '.join(BY_NAME)}")
    parser.add_argument("--docs", action="store_true", help="only re-render docs/findings.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BY_NAME))
    if unknown:
        sys.exit(f"unknown analysis {', '.join(unknown)}; analyses: {', '.join(BY_NAME)}")
    if not args.docs:
        models: dict[str, HookedModel] = {}
        for analysis in [BY_NAME[n] for n in args.names] or ANALYSES:
            if analysis.model not in models:
                models[analysis.model] = probes.load_model(analysis.model)
            finding = record(analysis, models[analysis.model])
            unstable = [i["claim"] for i in finding["items"] if i["outcome"] != i["seed_1_outcome"]]
            print(f"{analysis.name}: n={analysis.n}, {finding['seconds']} s + {finding['seconds_seed_1']} s (seed 1)"
                  + (f"; NOT stable on seed 1: {'; '.join(unstable)}" if unstable else "; stable on seed 1"),
                  flush=True)
    write_text(DOCS, render())
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
