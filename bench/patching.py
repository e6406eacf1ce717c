"""Per-head activation patching: TransformerLens's loop vs the kit's sweep, on the same IOI pairs, in one run.

TransformerLens: ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (one full forward pass with
full logits per head; its metric is the batch mean of the logit difference), timed twice: on the model as
TransformerLens ships it (the baseline), and with the kit's kernel-level levers (re-laid-out weights and oneDNN's
linear, ``probes.kernels``), which splits the kit's speed-up into what faster kernels give and what the sweep
skips. The float32 matrix-product rates of MKL and oneDNN on a block's MLP shape are printed too.
The kit: ``probes.patch_activations`` (per-prompt values; their mean over prompts is compared with
TransformerLens's number for every head). Then attribution patching: its time, and its Pearson r and top-10
overlap with the exact sweep; edge knockout of every head's end -> IO attention (``probes.edge_effects``), timed
against the z sweep; and path patching of one receiver (the last layer's head 0, via its queries) from every head
of the earlier layers (``probes.patch_paths``).

The default pairs are those of TransformerLens's activation-patching demo: the corrupt prompt names the other
person as the repeated subject (``flip_s2``), so the pair shares every token before S2. With ``--corruption abc``
all three names change and the pair shares only the first two tokens, which leaves the kit less to skip.
Usage:
    python bench/patching.py [--model smollm2-135m] [--n 8] [--seed 0] [--corruption flip_s2|abc] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from functools import partial

import numpy as np
import torch
from baseline import seconds_per_call, transformerlens_as_shipped
from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

import probes
from probes import tasks
from probes.models import loading as models
from probes.evidence.attribution import attribute_heads
from probes.models.kernels import onednn_linear
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


def linear_gflops(kernel_on: bool, rows: int, d_in: int, d_out: int, repeats: int = 100) -> float:
    """float32 rate of ``F.linear`` at one shape, with torch's default kernel or oneDNN's."""
    x, weight = torch.randn(rows, d_in), torch.randn(d_out, d_in)
    with onednn_linear(kernel_on):
        seconds = seconds_per_call(lambda: torch.nn.functional.linear(x, weight), repeats)
    return 2 * rows * d_in * d_out / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=list(models.PACKAGED))
    parser.add_argument("--n", type=int, default=8, help="IOI pairs (probes.tasks.ioi)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corruption", default="flip_s2", choices=tasks.IOI_CORRUPTIONS,
                        help="flip_s2: only S2 changes (TransformerLens's demo pairs); abc: all names fresh")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-mb", type=float, default=1024.0, help="the kit's memory budget for the batches in flight")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = probes.load_model(args.model)
    prompts = tasks.ioi(model, args.n, seed=args.seed, corruption=args.corruption)
    cfg = model.cfg
    print(
        f"{args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads = {cfg.n_layers * cfg.n_heads} heads, "
        f"{len(prompts)} IOI pairs padded to {prompts.n_pos} tokens, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
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
    with onednn_linear():
        _, t_tl_kernels = transformerlens_sweep(model)
    t_last = our_sweep()[1]
    t_ours = statistics.median([t_first, t_between, t_last])
    start = time.perf_counter()
    edge_effects(model, prompts, "end", "IO", memory_mb=args.memory_mb, progress=False)
    t_edge = time.perf_counter() - start
    receiver = (cfg.n_layers - 1, 0, "q")
    senders = [(layer, head) for layer in range(cfg.n_layers - 1) for head in range(cfg.n_heads)]
    start = time.perf_counter()
    patch_paths(model, prompts, senders, [receiver], progress=False)
    t_paths = time.perf_counter() - start

    mlp_shape = (len(prompts) * cfg.n_heads * 5, cfg.d_model, cfg.d_mlp)  # one layer of runs x ~5 positions
    rate_default, rate_onednn = linear_gflops(False, *mlp_shape), linear_gflops(True, *mlp_shape)

    difference = (ours.patched.mean(0) - reference).abs().max().item()
    exact, estimate = ours.effect, attribution
    r_heads = np.corrcoef(exact.mean(0).flatten(), estimate.mean(0).flatten())[0, 1]
    r_prompts = np.corrcoef(exact.flatten(), estimate.flatten())[0, 1]
    overlap = len(top(exact.mean(0), 10) & top(estimate.mean(0), 10))
    print(
        f"TransformerLens get_act_patch_attn_head_out_all_pos  {t_tl:8.1f} s   (TransformerLens as shipped)\n"
        f"  the same with the kit's kernels                    {t_tl_kernels:8.1f} s   {t_tl / t_tl_kernels:.1f}x faster "
        f"(re-laid-out weights, oneDNN linear)\n"
        f"probes.patch_activations (z, denoising)              {t_ours:8.1f} s   {t_tl / t_ours:.1f}x faster "
        f"({t_tl_kernels / t_ours:.1f}x against TransformerLens with the kit's kernels)\n"
        f"  median of three sweeps: {t_first:.1f} s, {t_between:.1f} s, {t_last:.1f} s (before, between, after)\n"
        f"  max |mean over prompts - TransformerLens| = {difference:.2e} (logits; baselines: clean "
        f"{ours.clean.mean():.2f}, corrupt {ours.corrupt.mean():.2f})\n"
        f"  peak RSS {rss_before:.0f} MB after loading, {rss_ours:.0f} MB after the sweep "
        f"(memory budget {args.memory_mb:.0f} MB)\n"
        f"probes.edge_effects (knockout end -> IO, all heads)  {t_edge:8.1f} s   {t_edge / t_ours:.2f}x the z sweep's time\n"
        f"probes.patch_paths ({len(senders)} senders -> {receiver[0]}.{receiver[1]}.{receiver[2]})          {t_paths:8.1f} s\n"
        f"probes.attribute_heads                               {t_attr:8.1f} s   {t_tl / t_attr:.0f}x faster than TL\n"
        f"  vs exact effects: Pearson r {r_heads:.3f} over head means, {r_prompts:.3f} over (prompt, head); "
        f"top-10 heads shared {overlap}/10\n"
        f"float32 linear, {mlp_shape[0]}x{mlp_shape[1]}x{mlp_shape[2]}: torch's default {rate_default:.0f} GFLOP/s, "
        f"oneDNN {rate_onednn:.0f} GFLOP/s\n"
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
