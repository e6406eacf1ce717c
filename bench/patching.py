"""Per-head activation patching: TransformerLens's loop, nnsight's and the kit's sweep, on the same IOI pairs, in
one run.

TransformerLens: ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (one full forward pass with
full logits per head; its metric is the batch mean of the logit difference), timed twice: on the model as
TransformerLens ships it (the baseline), and with the kit's kernel-level levers (re-laid-out weights and the
float32 linear kernel the kit measured fastest here, ``probes.models.kernels``), which splits the kit's speed-up
into what faster kernels give and what the sweep skips. nnsight 0.8 (optional: ``pip install -e '.[bench]'``)
runs the same sweep on the plain Hugging Face model, one trace per head as its documentation shows
(``bench/peer_nnsight.py``); its per-prompt, per-head values must equal the kit's to < 1e-4.
The kit: ``probes.patch_activations`` (per-prompt values; their mean over prompts is compared with
TransformerLens's number for every head). Then attribution patching: its time, and its Pearson r and top-10
overlap with the exact sweep; edge knockout of every head's end -> IO attention (``probes.edge_effects``), timed
against the z sweep; and path patching of one receiver (the last layer's head 0, via its queries) from every head
of the earlier layers (``probes.patch_paths``).

So that the gap to this CPU's limit is a number: the multiply-adds each side computes (torch's FlopCounterMode)
and the rate each achieves, against the float32 GEMM rate measured in the same run on the model's shapes.
Every ratio goes into ``bench/results.json`` (``--results``) with the machine and the kernel rates.

The default pairs are those of TransformerLens's activation-patching demo: the corrupt prompt names the other
person as the repeated subject (``flip_s2``), so the pair shares every token before S2. With ``--corruption abc``
all three names change and the pair shares only the first two tokens, which leaves the kit less to skip.
Usage:
    python bench/patching.py [--model smollm2-135m] [--n 14] [--templates 0,1] [--seed 0]
                             [--corruption flip_s2|abc] [--threads T] [--results PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from baseline import RESULTS, hf_checkpoint, kernel_rates, record, transformerlens_as_shipped
from torch.utils.flop_counter import FlopCounterMode
from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

import probes
from probes import tasks
from probes.models import loading as models
from probes.evidence.attribution import attribute_heads
from probes.models.kernels import (
    DEFAULT, KERNEL_LABELS, ROWS, candidates, linear_shapes, onednn_linear, rates, time_kernels, use_onednn,
)
from probes.evidence.patching import edge_effects, patch_activations, patch_paths
from probes.prompts.promptset import PromptSet


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def mean_logit_diff(logits: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
    idx = torch.arange(len(prompts))
    at_end = logits[idx, prompts.end]
    return (at_end[idx, prompts.answer] - at_end[idx, prompts.foil]).mean()


def top(scores: torch.Tensor, k: int) -> set[tuple[int, int]]:
    """The k heads with the largest |score|, as (layer, head)."""
    n_heads = scores.shape[-1]
    return {divmod(int(i), n_heads) for i in scores.abs().flatten().argsort(descending=True)[:k]}


def multiply_adds(fn) -> int:
    """Multiply-adds of the matrix products (linear, matmul, attention) ``fn()`` runs, counted by torch's
    FlopCounterMode (2 flops each): what a side computes, whatever its kernels' speed."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=list(models.PACKAGED))
    parser.add_argument("--n", type=int, default=14, help="IOI pairs (probes.tasks.ioi; at least one per template)")
    parser.add_argument("--templates", type=lambda text: [int(t) for t in text.split(",")], default=None,
                        help="a subset of the IOI templates, e.g. 0,1 (default: all 14), for a quick run with small n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corruption", default="flip_s2", choices=tasks.IOI_CORRUPTIONS,
                        help="flip_s2: only S2 changes (TransformerLens's demo pairs); abc: all names fresh")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-mb", type=float, default=1024.0, help="the kit's memory budget for the batches in flight")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the numbers go (default bench/results.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = probes.load_model(args.model)
    prompts = tasks.ioi(model, args.n, seed=args.seed, corruption=args.corruption, templates=args.templates)
    cfg = model.cfg
    n_heads_total = cfg.n_layers * cfg.n_heads
    print(
        f"{args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads = {n_heads_total} heads, "
        f"{len(prompts)} IOI pairs ({args.corruption}) padded to {prompts.n_pos} tokens, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    kernels = kernel_rates(model)
    kit_kernel = kernels["kernel"]
    shapes = linear_shapes(cfg)
    gemm = rates(shapes, time_kernels(shapes, candidates()))  # this run's rates, beside the cached choice's
    rss_before = peak_rss_mb()

    def our_sweep():
        start = time.perf_counter()
        result = patch_activations(model, prompts, "z", memory_mb=args.memory_mb, progress=False)
        return result, time.perf_counter() - start

    def transformerlens_sweep(tl_model):
        start = time.perf_counter()
        with torch.no_grad():
            _, clean_cache = tl_model.run_with_cache(prompts.clean)
            result = get_act_patch_attn_head_out_all_pos(
                tl_model, prompts.corrupt, clean_cache, partial(mean_logit_diff, prompts=prompts)
            )
        return result, time.perf_counter() - start

    # The machine's speed drifts over minutes: the kit's sweep runs before, between and after TransformerLens's
    # two, and its median time is the one compared.
    ours, t_first = our_sweep()
    rss_ours = peak_rss_mb()
    start = time.perf_counter()
    attribution = attribute_heads(model, prompts)
    t_attr = time.perf_counter() - start
    reference, t_tl = transformerlens_sweep(transformerlens_as_shipped(model))
    t_between = our_sweep()[1]
    with onednn_linear(use_onednn(model)):
        _, t_tl_kernels = transformerlens_sweep(model)
    t_last = our_sweep()[1]
    t_ours = statistics.median([t_first, t_between, t_last])
    peer = nnsight_sweep(args.model, prompts, ours)
    start = time.perf_counter()
    edge_effects(model, prompts, "end", "IO", memory_mb=args.memory_mb, progress=False)
    t_edge = time.perf_counter() - start
    receiver = (cfg.n_layers - 1, 0, "q")
    senders = [(layer, head) for layer in range(cfg.n_layers - 1) for head in range(cfg.n_heads)]
    start = time.perf_counter()
    patch_paths(model, prompts, senders, [receiver], progress=False)
    t_paths = time.perf_counter() - start

    # What each side computes (counted on torch's kernel, whose products the counter knows): TransformerLens
    # runs one clean pass with cache and one full corrupt pass per head; the kit's sweep is counted as it runs.
    with torch.no_grad():
        macs_tl = (n_heads_total + 1) * multiply_adds(lambda: model(prompts.corrupt))
    macs_ours = multiply_adds(lambda: patch_activations(model, prompts, "z", memory_mb=args.memory_mb,
                                                         progress=False, onednn=False, workers=1))

    difference = (ours.patched.mean(0) - reference).abs().max().item()
    exact, estimate = ours.effect, attribution
    r_heads = np.corrcoef(exact.mean(0).flatten(), estimate.mean(0).flatten())[0, 1]
    r_prompts = np.corrcoef(exact.flatten(), estimate.flatten())[0, 1]
    overlap = len(top(exact.mean(0), 10) & top(estimate.mean(0), 10))
    achieved = {"transformerlens": 2 * macs_tl / t_tl / 1e9, "transformerlens_kernels": 2 * macs_tl / t_tl_kernels / 1e9,
                "kit": 2 * macs_ours / t_ours / 1e9}
    limits = {"transformerlens": gemm[DEFAULT], "transformerlens_kernels": gemm[kit_kernel], "kit": gemm[kit_kernel]}
    ratios = {
        "kit_vs_transformerlens": t_tl / t_ours,
        "kit_vs_transformerlens_kernels": t_tl_kernels / t_ours,
        "transformerlens_kernels_vs_transformerlens": t_tl / t_tl_kernels,
        "attribution_vs_transformerlens": t_tl / t_attr,
        "edge_effects_time_over_z_sweep": t_edge / t_ours,
    }
    print(
        f"TransformerLens get_act_patch_attn_head_out_all_pos  {t_tl:8.1f} s   (TransformerLens as shipped)\n"
        f"  the same with the kit's kernels                    {t_tl_kernels:8.1f} s   {t_tl / t_tl_kernels:.1f}x faster "
        f"(re-laid-out weights, {KERNEL_LABELS[kit_kernel]} linear)\n"
        f"probes.patch_activations (z, denoising)              {t_ours:8.1f} s   {t_tl / t_ours:.1f}x faster "
        f"({t_tl_kernels / t_ours:.1f}x against TransformerLens with the kit's kernels)\n"
        f"  median of three sweeps: {t_first:.1f} s, {t_between:.1f} s, {t_last:.1f} s (before, between, after)\n"
        f"  max |mean over prompts - TransformerLens| = {difference:.2e} (logits; baselines: clean "
        f"{ours.clean.mean():.2f}, corrupt {ours.corrupt.mean():.2f})\n"
        f"  peak RSS {rss_before:.0f} MB after loading, {rss_ours:.0f} MB after the sweep "
        f"(memory budget {args.memory_mb:.0f} MB)"
    )
    if peer is not None:
        ratios["kit_vs_nnsight"] = peer["seconds"] / t_ours
        ratios["nnsight_vs_transformerlens"] = t_tl / peer["seconds"]
        achieved["nnsight"] = 2 * peer["multiply_adds"] / peer["seconds"] / 1e9
        limits["nnsight"] = gemm[DEFAULT]
        print(
            f"nnsight {peer['version']} (plain HF model, one trace per head) {peer['seconds']:8.1f} s   "
            f"the kit {peer['seconds'] / t_ours:.1f}x faster; {t_tl / peer['seconds']:.2f}x TransformerLens's speed\n"
            f"  max |nnsight - kit| = {peer['max_abs_difference']:.2e} (per prompt and head, logits), "
            f"{peer['max_abs_difference_normalised']:.2e} normalised"
        )
    print(
        f"probes.edge_effects (knockout end -> IO, all heads)  {t_edge:8.1f} s   {t_edge / t_ours:.2f}x the z sweep's time\n"
        f"probes.patch_paths ({len(senders)} senders -> {receiver[0]}.{receiver[1]}.{receiver[2]})          {t_paths:8.1f} s\n"
        f"probes.attribute_heads                               {t_attr:8.1f} s   {t_tl / t_attr:.0f}x faster than TL\n"
        f"  vs exact effects: Pearson r {r_heads:.3f} over head means, {r_prompts:.3f} over (prompt, head); "
        f"top-10 heads shared {overlap}/10\n"
        f"float32 linear on the model's shapes ({ROWS} rows), this run: "
        + ", ".join(f"{KERNEL_LABELS[k]} {rate:.0f} GFLOP/s" for k, rate in gemm.items())
        + f"; the kit runs {KERNEL_LABELS[kit_kernel]} ({kernels['reason']})\n"
        f"multiply-adds: TransformerLens {macs_tl / 1e12:.3f}T, the kit {macs_ours / 1e12:.3f}T "
        f"({macs_tl / macs_ours:.1f}x fewer)"
        + (f", nnsight {peer['multiply_adds'] / 1e12:.3f}T" if peer else "") + "\n"
        + "achieved rate (2 x multiply-adds / time) against this run's GEMM rate of the kernel each runs: "
        + ", ".join(f"{side} {rate:.0f} GFLOP/s ({rate / limits[side]:.0%})" for side, rate in achieved.items())
        + f"\nload average at the end {os.getloadavg()[0]:.1f}"
    )
    values = {
        "model": args.model, "corruption": args.corruption, "n": len(prompts), "n_pos": prompts.n_pos,
        "torch_threads": torch.get_num_threads(),
        "seconds": {"transformerlens": t_tl, "transformerlens_kernels": t_tl_kernels, "kit": t_ours,
                    "kit_runs": [t_first, t_between, t_last], "attribution": t_attr, "edge_effects": t_edge,
                    "patch_paths": t_paths, **({"nnsight": peer["seconds"]} if peer else {})},
        "ratios": ratios,
        "max_abs_difference": {"kit_vs_transformerlens": difference,
                               **({"kit_vs_nnsight": peer["max_abs_difference"]} if peer else {})},
        "multiply_adds": {"transformerlens": macs_tl, "kit": macs_ours,
                          **({"nnsight": peer["multiply_adds"]} if peer else {})},
        "gemm_gflops": gemm, "achieved_gflops": achieved,
        "attribution": {"pearson_head_means": r_heads, "pearson_prompt_heads": r_prompts, "top10_shared": overlap},
    }
    record(f"patching {args.corruption}", args.model, kernels, values, args.results)
    print(f"written to {args.results}")


def nnsight_sweep(name: str, prompts: PromptSet, ours) -> dict | None:
    """nnsight's all-heads z sweep on the plain HF model (None, said, where nnsight is not installed): its time,
    its multiply-adds, and its largest difference from the kit's per-prompt, per-head values; fails the bench
    where they differ by 1e-4 or more."""
    try:
        import nnsight
    except ImportError:
        print("nnsight: not installed (an optional bench dependency: pip install -e '.[bench]'); skipped")
        return None
    from peer_nnsight import load, patch_heads_nnsight

    lm = load(hf_checkpoint(name))
    start = time.perf_counter()
    theirs = patch_heads_nnsight(lm, prompts)
    seconds = time.perf_counter() - start
    inputs = {"input_ids": prompts.corrupt, "attention_mask": torch.ones_like(prompts.corrupt)}
    with torch.no_grad():
        forward = multiply_adds(lambda: lm._module(**inputs))
    n_heads = theirs.patched[0].numel()
    differences = {
        "max_abs_difference": (theirs.patched - ours.patched).abs().max().item(),
        "max_abs_difference_normalised": (theirs.normalised - ours.normalised).abs().max().item(),
    }
    assert max(differences.values()) < 1e-4, f"nnsight and the kit disagree: {differences}"
    return {"version": nnsight.__version__, "seconds": seconds, "multiply_adds": (n_heads + 2) * forward,
            **differences}


if __name__ == "__main__":
    main()
