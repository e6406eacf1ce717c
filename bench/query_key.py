"""What the query asks and the key offers, on the packaged models: ``query_key`` for the top pronoun heads.

Heads are chosen on one prompt set (seed 1: the largest mean attention pronoun -> antecedent minus pronoun ->
distractor) and measured on another (seed 0), so the choice does not flatter the numbers. For each head: the
attention shift when both names' genders are swapped, the same-gender control, the key's and the query's shares of
the shift (patched as this head's own key and query), the key probe's accuracy and selectivity, and the verdict.

    flock /tmp/probes-heavy.lock python bench/query_key.py [gemma-3-270m] [--n 32] [--top 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import probes
from probes.claims.querykey import decide_query_key
from probes.evidence.querykey import query_key
from probes.prompts import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["gemma-3-270m"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args()
    for name in args.models:
        model = probes.load_model(name)
        discovery = tasks.pronoun_resolution(model, args.n, seed=1)
        margin = (probes.role_attention(model, discovery, "pronoun", "antecedent")
                  - probes.role_attention(model, discovery, "pronoun", "distractor")).mean(0)  # fmt: skip
        order = torch.argsort(margin.flatten(), descending=True)[: args.top]
        heads = [(int(i) // margin.shape[1], int(i) % margin.shape[1]) for i in order]
        prompts = tasks.pronoun_resolution(model, args.n, seed=0)
        for head in heads:
            start = time.perf_counter()
            result = query_key(model, prompts, head)
            seconds = time.perf_counter() - start
            frame = result.to_frame()
            print(f"{name} head {head[0]}.{head[1]} (discovery margin {margin[head].item():.2f}; key head "
                  f"{result.kv_head} shared by {result.heads_per_key} query heads), {seconds:.0f} s:")
            print(frame.drop(columns=["layer", "head"]).round(3).to_string(index=False))
            print(decide_query_key(result))


if __name__ == "__main__":
    main()
