"""Circuit costs and how well edge attribution tracks exact edge ablation (printed; never a timed test).

Timing (``--timing``): EAP over every edge of the model's graph on ``--n`` prompts, EAP-IG with ``--steps``
steps, one exact ``run_circuit`` (the top 200 EAP edges kept, every other edge carrying its corrupt value), and
exact edge ablation of a sample of edges extrapolated to every edge (what attribution saves), beside this run's
float32 GEMM rate on the model's linear shapes (``probes.models.kernels``) and the load average.

Correlation (``--correlation``): per model and task, on ``--corr-n`` prompts, Pearson and Spearman correlation of
EAP's and EAP-IG's scores with ``probes.edge_ablation``'s exact effects over a uniform random sample of
``--sample`` edges (seed 0): over edge means (what discovery ranks by) and over (prompt, edge) pairs.

Usage:
    python bench/circuit.py [--timing] [--correlation] [--models gemma-3-270m smollm2-135m] [--n 32]
                            [--steps 5] [--corr-n 8] [--sample 300] [--tasks ioi pronoun_resolution]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
from scipy import stats

import probes
from probes import tasks
from probes.models.kernels import KERNEL_LABELS, candidates, linear_shapes, rates, time_kernels


MIN_N = {"ioi": 14, "pronoun_resolution": 12}  # each task's one prompt per template


def task_prompts(model, task: str, n: int):
    """``n`` prompts of ``task`` (seed 0): the first ``n`` of the smallest set that covers every template."""
    return getattr(tasks, task)(model, max(n, MIN_N.get(task, n)), seed=0).subset(list(range(n)))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def timing(name: str, task: str, n: int, steps: int, exact_sample: int) -> None:
    model = probes.load_model(name)
    prompts = task_prompts(model, task, n)
    shapes = linear_shapes(model.cfg)
    gemm = rates(shapes, time_kernels(shapes, candidates()))
    n_edges = len(probes.circuit_graph(model).edges)
    print(f"{name}: {n_edges} edges, {len(prompts)} {task} prompts padded to {prompts.n_pos} tokens, "
          f"{torch.get_num_threads()} torch threads, {load()}")  # fmt: skip
    print("  float32 GEMM on the model's linear shapes: "
          + ", ".join(f"{KERNEL_LABELS[k]} {rate:.0f} GFLOP/s" for k, rate in gemm.items()))  # fmt: skip
    eap, t_eap = timed(lambda: probes.edge_attribution(model, prompts, "eap"))
    print(f"  EAP, every edge:               {t_eap:7.1f} s   ({load()})")
    _, t_ig = timed(lambda: probes.edge_attribution(model, prompts, "eap-ig", steps=steps))
    print(f"  EAP-IG {steps} steps, every edge:   {t_ig:7.1f} s   ({load()})")
    top = [tuple(edge) for edge in eap.top(200)[["upstream", "downstream"]].values.tolist()]
    run, t_run = timed(lambda: probes.run_circuit(model, prompts, top))
    print(f"  run_circuit (200 edges kept):  {t_run:7.1f} s   faithfulness {run.faithfulness.value:+.3f}   ({load()})")
    sample = random.Random(0).sample(list(eap.edges), exact_sample)
    _, t_exact = timed(lambda: probes.edge_ablation(model, prompts, sample))
    print(f"  edge_ablation of {exact_sample} edges:   {t_exact:7.1f} s, so every edge ~ "
          f"{t_exact / exact_sample * n_edges / 60:.0f} min (extrapolated; {load()})")  # fmt: skip


def correlations(name: str, task_names: list[str], n: int, steps: int, n_sample: int) -> None:
    model = probes.load_model(name)
    shapes = linear_shapes(model.cfg)
    gemm = rates(shapes, time_kernels(shapes, candidates()))
    print(f"{name}: float32 GEMM on its linear shapes: "
          + ", ".join(f"{KERNEL_LABELS[k]} {rate:.0f} GFLOP/s" for k, rate in gemm.items()) + f"; {load()}")  # fmt: skip
    for task in task_names:
        prompts = task_prompts(model, task, n)
        scores, seconds = {}, {}
        for method in ("eap", "eap-ig"):
            scores[method], seconds[method] = timed(lambda: probes.edge_attribution(model, prompts, method, steps=steps))
        edges = list(scores["eap"].edges)
        sample = sorted(random.Random(0).sample(range(len(edges)), n_sample))
        exact, t_exact = timed(lambda: probes.edge_ablation(model, prompts, [edges[e] for e in sample]))
        effect = exact.effect.double().numpy()
        print(f"{name}, {task}, {len(prompts)} prompts, {n_sample} of {len(edges)} edges (exact: {t_exact:.0f} s, "
              f"{load()}); exact |mean effect| max {np.abs(effect.mean(0)).max():.3f}, "
              f"clean logit difference {float(exact.clean.mean()):.2f}")  # fmt: skip
        for method, result in scores.items():
            got = result.scores[:, sample]
            means = (stats.pearsonr(got.mean(0), effect.mean(0)).statistic,
                     stats.spearmanr(got.mean(0), effect.mean(0)).statistic)  # fmt: skip
            pairs = (stats.pearsonr(got.ravel(), effect.ravel()).statistic,
                     stats.spearmanr(got.ravel(), effect.ravel()).statistic)  # fmt: skip
            top = np.argsort(-np.abs(effect.mean(0)))[:10]
            found = len(set(top) & set(np.argsort(-np.abs(got.mean(0)))[:10]))
            print(f"  {method:7s} ({seconds[method]:.0f} s) edge means: Pearson {means[0]:+.3f} Spearman {means[1]:+.3f};  (prompt, edge): "
                  f"Pearson {pairs[0]:+.3f} Spearman {pairs[1]:+.3f};  top-10 |exact| in its top 10: {found}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--correlation", action="store_true")
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m"])
    parser.add_argument("--tasks", nargs="+", default=["ioi", "pronoun_resolution"])
    parser.add_argument("--n", type=int, default=32, help="prompts for the timing")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--corr-n", type=int, default=8, help="prompts for the correlation")
    parser.add_argument("--sample", type=int, default=300, help="edges ablated exactly for the correlation")
    parser.add_argument("--exact-sample", type=int, default=64, help="edges ablated exactly for the cost estimate")
    args = parser.parse_args()
    for name in args.models:
        if args.timing:
            timing(name, args.tasks[-1], args.n, args.steps, args.exact_sample)
        if args.correlation:
            correlations(name, args.tasks, args.corr_n, args.steps, args.sample)


if __name__ == "__main__":
    main()
