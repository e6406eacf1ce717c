"""Which measures depend on TransformerLens's weight processing: the same model loaded as the kit loads it (no
processing) and as ``from_pretrained`` gives it by default (folded norms, centred writing weights and unembedding,
folded value biases), measured side by side. Numbers for docs/models.md. Usage:
    python bench/processing.py [--n 14] [--claims 3]

1. A random GPT-2-like (LayerNorm, biases) and a Llama-like (RMSNorm, random biases) model, induction prompts:
   the largest change of each measure over every head and prompt, against its largest value.
2. SmolLM2-135M on IOI prompts: the same (patching and edges of the claimed heads only: a full sweep takes
   minutes on a shared CPU), and the verdicts and evidence of claims "head L.H attends from the end
   to the indirect object (foil: the subject)" for the heads that attend most, on each load.
"""

from __future__ import annotations

import argparse
import time

import torch

import probes
from probes import tasks, toy
from probes.claims.types import Claim

EDGES = {"induction": ("end", "induction_target"), "ioi": ("end", "IO")}


def measures(model, prompts, src: str, dst: str, heads: list | None) -> dict[str, torch.Tensor]:
    """Every head's attention measures and attribution; patching and edges of ``heads`` (None: every head)."""
    z = probes.patch_activations(model, prompts, "z", cells=heads, progress=False)
    edges = probes.edge_effects(model, prompts, src, dst, heads=heads, progress=False)
    patched = (slice(None),) * 3 if heads is None else (slice(None), *zip(*heads))
    return {
        "logit difference (clean)": z.clean,
        "attention (role_attention)": probes.role_attention(model, prompts, src, dst),
        "norm-weighted attention": probes.norm_weighted_attention(model, prompts, src, dst),
        "z patching effect": z.effect[patched],
        "edge knockout effect": edges.effect[patched],
        "attribution": probes.attribute_heads(model, prompts),
    }


def compare(name: str, model, folded, prompts, src: str, dst: str, heads: list | None = None) -> None:
    before, after = measures(model, prompts, src, dst, heads), measures(folded, prompts, src, dst, heads)
    which = "every head" if heads is None else f"patching and edges of heads {heads}"
    print(f"\n{name}: {len(prompts)} prompts, edge {src} -> {dst}, {which}; "
          "max |processed - unprocessed| (max |unprocessed|)")
    for key in before:
        diff = (after[key] - before[key]).abs().max().item()
        print(f"  {key:28s} {diff:10.3g}  ({before[key].abs().max().item():.3g})")


def smollm2_claims(n: int, n_claims: int) -> None:
    model = probes.load_model("smollm2-135m")
    prompts = tasks.ioi(model, n, seed=0)
    folded = toy.processed(model)
    attention = probes.role_attention(model, prompts, *EDGES["ioi"]).mean(0)
    heads = [divmod(int(i), model.cfg.n_heads) for i in attention.flatten().argsort(descending=True)[:n_claims]]
    compare("smollm2-135m", model, folded, prompts, *EDGES["ioi"], heads=heads)
    print(f"\nsmollm2-135m claims (src end, dst IO, foil S1), {n} IOI prompts:")
    for head in heads:
        claim = Claim(head, src="end", dst="IO", foil="S1")
        a, b = probes.evaluate(model, prompts, claim), probes.evaluate(folded, prompts, claim)
        worst = max(abs(a.evidence[k].value - b.evidence[k].value) for k in a.evidence if k in b.evidence)
        shown = ("attention", "norm_attention", "edge_knockout", "effect_z")
        print(f"  head {head[0]}.{head[1]}: verdict {a.verdict} / {b.verdict} (unprocessed / processed); "
              f"largest evidence change {worst:.3g}")
        for key in shown:
            print(f"    {key:15s} {a.evidence[key].value:+.4f} / {b.evidence[key].value:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14, help="IOI prompts on SmolLM2 (one per template)")
    parser.add_argument("--claims", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    for norm in ("LN", "RMS"):
        model = toy.build_random(norm)
        prompts = tasks.induction(model, 8, seed=1, length=8, vocab=torch.arange(1, model.cfg.d_vocab))
        compare(f"random {norm} model", model, toy.processed(model), prompts, *EDGES["induction"])
    smollm2_claims(args.n, args.claims)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
