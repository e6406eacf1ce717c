"""Forward-pass time on a batch of IOI prompts: plain HF model vs TransformerLens as shipped vs the kit's model.

The kit's model is TransformerLens with weights re-laid out (probes.layout); "TL as shipped" is the same model
and weights before the re-layout, so the ratio isolates that change. The ratios go into bench/results.json.
Usage:
    python bench/forward.py [--model smollm2-135m|gemma-3-270m|all] [--repeats 5] [--results PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from baseline import (  # noqa: E402
    RESULTS, hf_checkpoint, kernel_rates, record, seconds_per_call, transformerlens_as_shipped,
)
from conftest import IOI_PROMPTS  # noqa: E402  (the 8 prompts the logit-equality test uses)

import probes  # noqa: E402
from probes.models import loading as models  # noqa: E402


def hf_model(name: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_checkpoint(name), dtype=torch.float32).eval()


@torch.no_grad()
def bench(name: str, repeats: int, results: Path) -> None:
    kit = probes.load_model(name)
    tl = transformerlens_as_shipped(kit)
    hf = hf_model(name)
    tokens = kit.to_tokens(IOI_PROMPTS, padding_side="right")
    t_hf = seconds_per_call(lambda: hf(tokens), repeats)
    t_tl = seconds_per_call(lambda: tl(tokens), repeats)
    t_kit = seconds_per_call(lambda: kit(tokens), repeats)
    same = torch.equal(tl(tokens), kit(tokens))
    print(
        f"{name}: batch {tokens.shape[0]}x{tokens.shape[1]} tokens, median of {repeats}\n"
        f"  HF transformers      {t_hf * 1000:8.1f} ms\n"
        f"  TransformerLens      {t_tl * 1000:8.1f} ms\n"
        f"  probes (re-laid out) {t_kit * 1000:8.1f} ms   {t_tl / t_kit:.2f}x faster than TL, "
        f"{t_hf / t_kit:.2f}x HF's speed; logits identical to TL's: {same}"
    )
    record(f"forward {name}", name, kernel_rates(kit), {
        "batch": list(tokens.shape), "repeats": repeats, "logits_identical_to_transformerlens": same,
        "seconds": {"hf": t_hf, "transformerlens": t_tl, "kit": t_kit},
        "ratios": {"kit_vs_transformerlens": t_tl / t_kit, "kit_vs_hf": t_hf / t_kit},
    }, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=["all", *models.PACKAGED])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the numbers go (default bench/results.json)")
    args = parser.parse_args()
    for name in models.PACKAGED if args.model == "all" else [args.model]:
        bench(name, args.repeats, args.results)


if __name__ == "__main__":
    main()
