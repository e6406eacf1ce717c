"""The essay's sentences A and B on a packaged model: the findings in docs/essay.md.

A: "a token that attends to itself changes little" (``SelfUpdate()``: every layer, every head) and B: "the pronoun
knows its antecedent from layer L on and not before" (``ResolutionDepth``), both on ``pronoun_resolution``,
tested together (a family of 2). Prints each verdict sentence, the per-layer verdicts of A, how often the sink
vs the token itself does the do-nothing job, and B's three curves.

    flock /tmp/probes-heavy.lock python bench/essay.py [gemma-3-270m] [--n 16] [--depth 6]
"""

from __future__ import annotations

import argparse
import time

import probes
from probes.prompts import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="gemma-3-270m")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--depth", type=int, default=None, help="the depth claimed (default: chosen from data)")
    parser.add_argument("--task", default="pronoun_resolution")
    args = parser.parse_args()
    model = probes.load_model(args.model)
    prompts = tasks.generate(model, args.task, args.n, seed=0)
    src, target = ("pronoun", "antecedent") if args.task == "pronoun_resolution" else ("S2", "S1")
    claims = [probes.SelfUpdate(), probes.ResolutionDepth(src, target, args.depth)]
    for claim in claims:
        start = time.perf_counter()
        result = probes.evaluate(model, prompts, claim, family=len(claims))
        print(f"\n== {claim} ({time.perf_counter() - start:.0f} s)\n{result.sentence}")
        table = result.profile
        if isinstance(claim, probes.SelfUpdate):
            layers = table[(table["head"] == -1) & (table["measure"] == "self_update_correlation")]
            print(layers[["layer", "value", "ci_low", "ci_high", "verdict"]].round(3).to_string(index=False))
            heads = table[(table["head"] >= 0) & (table["measure"] == "self_update_correlation")]
            print("head verdicts:", heads["verdict"].value_counts().to_dict())
        else:
            wide = table.pivot(index="layer", columns="measure", values=["value", "ci_low", "ci_high"]).round(2)
            print(wide.to_string())


if __name__ == "__main__":
    main()
