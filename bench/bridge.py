"""The same sweeps on a HookedTransformer and on a TransformerBridge (compatibility mode, unprocessed weights).

One packaged model loaded both ways (``probes.load_model`` and ``probes.load_bridge``, the latter from the model
written once as an HF checkpoint), the same IOI pairs: per-head z patching (``probes.patch_heads``) and edge
knockout of every head's end -> IO attention (``probes.edge_effects``). The HookedTransformer runs the exact
engine (patched runs start at the patched layer, compute only the positions that can change, several worker
threads); the bridge runs every patched run as a whole forward pass with hooks, in one thread. Prints both times,
their ratio, the largest difference between the two results, and the float32 matrix-product rate (this machine
family's rate varies 2-3x between machines: compare ratios, not seconds).
Usage:
    python bench/bridge.py [--model smollm2-135m] [--n 4] [--seed 0] [--corruption flip_s2|abc]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from baseline import seconds_per_call

import probes
from probes import tasks
from probes.models.registry import PACKAGED


def gemm_gflops(n: int = 1024) -> float:
    """float32 rate of one square matrix product, torch's default kernel."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / seconds_per_call(lambda: a @ b, 20) / 1e9


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=list(PACKAGED))
    parser.add_argument("--n", type=int, default=4, help="IOI pairs (probes.tasks.ioi, templates 0 and 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corruption", default="abc", choices=tasks.IOI_CORRUPTIONS)
    args = parser.parse_args()

    hooked, bridge = probes.load_model(args.model), probes.load_bridge(args.model)
    prompts = tasks.ioi(hooked, args.n, seed=args.seed, corruption=args.corruption, templates=[0, 1])
    sweeps = {
        "patch_heads (z, denoising)": lambda m: probes.patch_heads(m, prompts, "z", progress=False),
        "edge_effects (knockout end -> IO)": lambda m: probes.edge_effects(m, prompts, "end", "IO", progress=False).effect,
    }
    print(f"{args.model}, {len(prompts)} IOI pairs ({args.corruption}), {prompts.n_pos} positions, "
          f"{torch.get_num_threads()} torch threads")
    for name, sweep in sweeps.items():
        ours, t_hooked = timed(lambda: sweep(hooked))
        theirs, t_bridge = timed(lambda: sweep(bridge))
        print(f"{name:36s} HookedTransformer {t_hooked:7.1f} s   bridge {t_bridge:7.1f} s   "
              f"bridge/hooked {t_bridge / t_hooked:5.1f}x   max |difference| {(ours - theirs).abs().max():.1e}")
    print(f"float32 GEMM 1024^3: {gemm_gflops():.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f} "
          "(indicative numbers on a shared machine)")


if __name__ == "__main__":
    main()
