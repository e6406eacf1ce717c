"""Local vs global layers on Gemma-3-270m: the task gate at ~600 tokens and where the pronoun's long link runs.

Prompts: the pronoun task's two-sentence templates with neutral filler sentences between the names and the pronoun
(``tasks.distant_pronoun_resolution``): one distance inside the 512-token window, one beyond it. Prints the layer
types and window read from the config, the task gate per distance (``behaviour``), then ``local_global``: the
largest local-layer weight beyond the window (0 by the mask), the strongest head's pronoun -> antecedent weight by
layer type, and the share of the clean logit difference removed by cutting every edge across the antecedent in the
global layers only vs in the local layers only; then the verdict.

    flock /tmp/probes-heavy.lock python bench/local_global.py [--n 16] [--fillers 300 600]
"""

from __future__ import annotations

import argparse
import time

import probes
from probes.claims.localglobal import decide_local_global
from probes.evidence.localglobal import layer_types, local_global
from probes.prompts import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--fillers", type=int, nargs="+", default=[300, 600])
    args = parser.parse_args()
    model = probes.load_model("gemma-3-270m")
    types = layer_types(model)
    print(f"window {types.window}; global layers {types.layers('global')} of {len(types.types)}")
    prompts = tasks.distant_pronoun_resolution(model, args.n, tuple(args.fillers))
    distance = (prompts.role("pronoun") - prompts.role("antecedent")).tolist()
    print(f"{len(prompts)} prompts, {int(prompts.end.max()) + 1} tokens at most, pronoun - antecedent {min(distance)}.."
          f"{max(distance)} tokens")
    for tokens in args.fillers:
        keep = [i for i, t in enumerate(prompts.labels["filler_tokens"]) if t == tokens]
        gate = probes.behaviour(model, prompts.subset(keep))
        print(f"filler {tokens}: answer beats foil in {gate.accuracy_vs_foil.value:.0%} of groups "
              f"[{gate.accuracy_vs_foil.ci_low:.0%}, {gate.accuracy_vs_foil.ci_high:.0%}], clean logit diff "
              f"{gate.clean_logit_diff.value:.2f} [{gate.clean_logit_diff.ci_low:.2f}, {gate.clean_logit_diff.ci_high:.2f}]")
    start = time.perf_counter()
    result = local_global(model, prompts)
    seconds = time.perf_counter() - start
    print(result.to_frame().round(3).to_string(index=False))
    print(f"largest local-layer weight on an antecedent beyond the window: {result.local_beyond_max}")
    print(decide_local_global(result))
    print(f"local_global: {seconds:.0f} s for {len(prompts)} prompts (4 passes each)")


if __name__ == "__main__":
    main()
