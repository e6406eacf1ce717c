"""Position or content on the packaged models: the findings in docs/analyses.md, and the speed of ``position_content``.

For each model: the top previous-token heads (``head_scores``) and the top pronoun -> antecedent heads (attention on
``pronoun_resolution``), each split into positional and content shares, their rotary bands, and the causal role the
story gives them: previous-token heads feed induction (knock out their edge to the previous token at the induction
target, on ``BOS r r`` sequences), antecedent heads resolve the pronoun (knock out the pronoun -> antecedent edge).
Effects are shares of the clean-corrupt gap the knockout removes (ratio of means, group-bootstrap interval).

    flock /tmp/probes-heavy.lock python bench/position_content.py [gemma-3-270m smollm2-135m] [--n 32]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import probes
from probes.core.stats import ratio_estimate
from probes.evidence.patching import edge_effects
from probes.evidence.position import DEFAULT_FILLER, DEFAULT_REPLACEMENTS
from probes.prompts import tasks


def top(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    order = torch.argsort(scores.flatten(), descending=True)[:k]
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in order]


def knockout_share(model, prompts, src, dst, heads) -> dict[tuple[int, int], str]:
    """Share of the clean-corrupt gap removed by knocking out each head's src -> dst edge."""
    result = edge_effects(model, prompts, src, dst, heads=heads, progress=False)
    gap = (result.clean - result.corrupt).numpy()
    out = {}
    for layer, head in heads:
        est = ratio_estimate(-result.effect[:, layer, head].numpy(), gap, groups=prompts.group_index)
        out[(layer, head)] = f"{est.value:.2f} [{est.ci_low:.2f}, {est.ci_high:.2f}]"
    return out


def bands_line(bands, head) -> str:
    rows = bands.table[(bands.table["layer"] == head[0]) & (bands.table["head"] == head[1])]
    return ", ".join(
        f"{b.split()[-1]}:{m:+.1f}{'*' if w else ''}/{c:+.2f}"
        for b, m, w, c in zip(rows["band"], rows["margin"], rows["wins"], rows["attention_change"])
    )


def report(name: str, n: int) -> None:
    model = probes.load_model(name)
    pronouns = tasks.pronoun_resolution(model, n)
    start = time.perf_counter()
    antecedent = probes.position_content(model, pronouns, "pronoun", "antecedent")
    seconds = time.perf_counter() - start
    print(f"\n## {name}: position_content, all {model.cfg.n_layers * model.cfg.n_heads} heads, {n} prompts, "
          f"shifts (1, 2, 4): {seconds:.1f} s")
    previous_heads = top(probes.head_scores(model, "previous_token"), 3)
    ant = antecedent.table.set_index(["layer", "head"])
    antecedent_heads = top(torch.tensor(ant["attention"].to_numpy()).reshape(model.cfg.n_layers, -1), 3)
    previous = probes.position_content(model, pronouns, "pronoun", "previous").table.set_index(["layer", "head"])
    induction = tasks.induction(model, 16)
    on_induction = probes.position_content(
        model, induction, "induction_target", "previous", heads=previous_heads,
        filler=list(DEFAULT_FILLER), replacements=list(DEFAULT_REPLACEMENTS),
    ).table.set_index(["layer", "head"])
    prev_bands = probes.rotary_bands(model, pronouns, "pronoun", "previous", heads=previous_heads)
    ant_bands = probes.rotary_bands(model, pronouns, "pronoun", "antecedent", foil="distractor", heads=antecedent_heads)
    prev_causal = knockout_share(model, induction, "induction_target", "previous", previous_heads)
    ant_causal = knockout_share(model, pronouns, "pronoun", "antecedent", antecedent_heads)
    print(f"label counts, pronoun -> antecedent: {ant['label'].value_counts().to_dict()}; pronoun -> previous: "
          f"{previous['label'].value_counts().to_dict()}")
    print("| head | kind | where | attention | positional share | content share | offset share | sink | label |"
          " bands (margin, * wins / attention change when ablated) | knockout: gap removed |")
    print("|" + " --- |" * 11)

    def row(head, kind, where, t, bands, causal):
        r = t.loc[head]
        print(f"| {head[0]}.{head[1]} | {kind} | {where} | {r['attention']:.2f} | {r['positional_share']:.2f} "
              f"[{r['positional_share_ci_low']:.2f}, {r['positional_share_ci_high']:.2f}] | {r['content_share']:.2f} "
              f"[{r['content_share_ci_low']:.2f}, {r['content_share_ci_high']:.2f}] | {r['offset_share']:.2f} | "
              f"{r['sink']:.2f} | {r['label']} | {bands} | {causal} |")

    for head in previous_heads:
        row(head, "previous-token", "pronoun -> previous", previous, bands_line(prev_bands, head), "")
        row(head, "previous-token", "BOS r r: target -> previous", on_induction, "", prev_causal[head])
    for head in antecedent_heads:
        row(head, "antecedent", "pronoun -> antecedent", ant, bands_line(ant_bands, head), ant_causal[head])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["gemma-3-270m", "smollm2-135m"])
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table row lands even if a later model is cut short
    torch.set_grad_enabled(False)
    np.set_printoptions(precision=3)
    for name in args.models:
        report(name, args.n)


if __name__ == "__main__":
    main()
