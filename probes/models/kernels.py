"""Faster matrix products for float32 inference on CPU, without changing what is computed, chosen by measurement.

Every projection of a TransformerLens block (Q, K, V, O, gated-MLP in/gate/out) is one ``F.linear`` call. A torch
CPU wheel has two float32 kernels for it: torch's default (MKL's sgemm on x86) and oneDNN's, the same products
summed in another order (differences at float32 rounding, ~1e-6 relative). Which is faster depends on the CPU, not
only its family: on one AMD EPYC machine oneDNN ran a block's shapes ~2.3x faster, on another of the same family
~10% slower. So nothing is assumed: :func:`choose_kernel` times both on a model's own shapes, interleaved, for a
fraction of a second, and leaves torch's default only on a clear win (:func:`decide`). The choice is cached per
machine (CPU model, torch threads, torch version) and shapes under the kit's cache dir, so a machine keeps one
choice and its results do not change in the last digits from run to run. Wherever the kit takes ``onednn=``,
``True`` or ``False`` overrides the measured choice.

Other float32 routes torch 2.13 has are not candidates: MKL's packed sgemm (``torch.ops.mkl._mkl_linear``) packs
a weight for one row count and runs the default sgemm for any other, and a sweep's batches vary; oneDNN on
mkldnn-layout tensors (``torch._C._nn.mkldnn_linear``) converts input and weight on every call; and
``torch.backends.mkldnn.matmul.fp32_precision = "bf16" | "tf32"`` computes in lower precision (other numbers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from probes.core.io import atomic_path
from probes.core.provenance import cpu_model, utc_now
from probes.models.cache import cache_root

DEFAULT = "torch"
KERNEL_LABELS = {"torch": "torch's default", "onednn": "oneDNN"}
MARGIN = 0.10  # another kernel must be more than 10% faster than torch's default ...
CONSISTENT = 0.75  # ... in at least this share of the interleaved rounds (timings drift ~15% over minutes)
ROWS = 512  # rows of each timed product: a batch of patched runs (runs x positions)
BUDGET_S = 0.4  # time spent measuring, at least MIN_ROUNDS rounds
MIN_ROUNDS, MAX_ROUNDS = 6, 40
# Multiply-adds per row of one block's linears under which the kernel cannot matter (Python overhead dominates,
# as in the toy models): torch's default, nothing measured. SmolLM2's block has 3.5M.
MIN_MACS = 1_000_000
CACHE_DIR = "kernels"

Shape = tuple[int, int]  # (d_in, d_out) of one F.linear


@cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's float32 linear and it agrees with ``F.linear`` (checked once, on fixed
    inputs, so that the global random state is left alone)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x = torch.linspace(-1, 1, 40).reshape(5, 8)
    w, b = torch.linspace(-2, 2, 48).reshape(6, 8), torch.linspace(0, 1, 6)
    try:
        ours = onednn_product(x, w, b)
    except (AttributeError, RuntimeError):
        return False
    return ours.shape == (5, 6) and torch.allclose(ours, F.linear(x, w, b), atol=1e-5)


def onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _routable(x: Tensor, weight: Tensor, bias: object) -> bool:
    """Float32 strided CPU tensors in the shapes oneDNN's kernel takes, none of which needs a gradient; the
    rest (other dtypes, devices or layouts, odd biases, anything autograd must see) stays with ``F.linear``."""
    if bias is not None and not isinstance(bias, Tensor):
        return False
    tensors = [x, weight] if bias is None else [x, weight, bias]
    if not all(
        isinstance(t, Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided
        for t in tensors
    ):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    shapes_fit = x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1]
    return shapes_fit and (bias is None or tuple(bias.shape) == (weight.shape[0],))


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, weight, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
            if isinstance(x, Tensor) and isinstance(weight, Tensor) and _routable(x, weight, bias):
                return onednn_product(x, weight, None if bias is None else bias.contiguous())
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linear(enabled: bool = True) -> Iterator[None]:
    """Inside this block, float32 CPU ``F.linear`` calls without gradients run on oneDNN (a no-op where it is
    unavailable, disabled here or by ``torch.backends.mkldnn.enabled``, and for any call it does not fit). Torch
    function modes belong to a thread: worker threads must enter it themselves."""
    if not (enabled and torch.backends.mkldnn.enabled and onednn_available()):
        yield
        return
    with _OneDNNLinear():
        yield


def linear_shapes(cfg: object) -> tuple[Shape, ...]:
    """(d_in, d_out) of each ``F.linear`` one block runs, for a TransformerLens config (its object, or the dict of
    a cached model's ``config.json``): Q, K, V, O, and gate, in, out of a gated MLP (TransformerLens runs a plain
    MLP through ``addmm``, which no routing touches)."""

    def get(name: str) -> Any:
        return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)

    d_model, attn = get("d_model"), get("n_heads") * get("d_head")
    kv = (get("n_key_value_heads") or get("n_heads")) * get("d_head")
    shapes = [(d_model, attn), (d_model, kv), (d_model, kv), (attn, d_model)]
    if get("gated_mlp") and not get("attn_only"):
        shapes += [(d_model, get("d_mlp")), (d_model, get("d_mlp")), (get("d_mlp"), d_model)]
    return tuple(shapes)


def candidates() -> dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]]:
    """The float32 linear kernels this torch can run here, torch's default first."""
    found: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {DEFAULT: F.linear}
    if torch.backends.mkldnn.enabled and onednn_available():
        found["onednn"] = onednn_product
    return found


@torch.no_grad()
def time_kernels(
    shapes: Sequence[Shape], kernels: Mapping[str, Callable], budget_s: float = BUDGET_S
) -> dict[str, list[float]]:
    """Seconds per pass over ``shapes`` (``ROWS`` rows each), per kernel and round. In each round every kernel
    makes one pass, in an order reversed every other round, so drift of the machine's speed hits them alike."""
    generator = torch.Generator().manual_seed(0)  # leaves the global random state alone
    operands = [(torch.randn(ROWS, d_in, generator=generator), torch.randn(d_out, d_in, generator=generator))
                for d_in, d_out in shapes]
    names = list(kernels)

    def one_pass(kernel: Callable) -> float:
        start = time.perf_counter()
        for x, weight in operands:
            kernel(x, weight, None)
        return time.perf_counter() - start

    for name in names:  # warm-up: first calls allocate and pick code paths
        one_pass(kernels[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    while len(times[names[0]]) < MIN_ROUNDS or (
        len(times[names[0]]) < MAX_ROUNDS and time.perf_counter() < deadline
    ):
        order = names if len(times[names[0]]) % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(one_pass(kernels[name]))
    return times


def rates(shapes: Sequence[Shape], times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """GFLOP/s of each kernel's median pass over ``shapes`` (``ROWS`` rows each)."""
    flop = 2 * ROWS * sum(d_in * d_out for d_in, d_out in shapes)
    return {name: flop / statistics.median(seconds) / 1e9 for name, seconds in times.items()}


def decide(times: Mapping[str, Sequence[float]], default: str = DEFAULT) -> str:
    """The kernel to run, from paired per-round timings: ``default`` unless another is more than ``MARGIN``
    faster in at least ``CONSISTENT`` of the rounds (then, of those, the one with the largest median speed-up).
    A clear win, not the bare faster one, so that kernels within noise of each other never trade places from
    one measurement to the next."""
    best, best_speedup = default, 1.0
    for name, seconds in times.items():
        if name == default:
            continue
        speedups = [base / own for base, own in zip(times[default], seconds, strict=True)]
        clear = sum(s > 1 + MARGIN for s in speedups) >= CONSISTENT * len(speedups)
        if clear and statistics.median(speedups) > best_speedup:
            best, best_speedup = name, statistics.median(speedups)
    return best


@dataclass(frozen=True)
class KernelChoice:
    """Which float32 linear kernel runs for some shapes, and why: ``gflops`` holds each candidate's measured rate
    (median pass), empty where nothing was measured, and ``reason`` says what decided."""

    kernel: str
    reason: str
    gflops: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        rates = ", ".join(f"{KERNEL_LABELS[k]} {rate:.0f} GFLOP/s" for k, rate in self.gflops.items())
        return f"{KERNEL_LABELS[self.kernel]} ({self.reason}{': ' + rates if rates else ''})"


def machine_key(shapes: Sequence[Shape]) -> dict:
    """What a measured choice holds for: this CPU model, torch's thread count and version, and the shapes."""
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "rows": ROWS, "shapes": [list(shape) for shape in shapes]}


def choice_path(key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / CACHE_DIR / f"{digest}.json"


def choose_kernel(shapes: Sequence[Shape]) -> KernelChoice:
    """The kernel for these shapes on this machine: measured on first use, then read from the cache."""
    shapes = tuple((int(d_in), int(d_out)) for d_in, d_out in shapes)
    if len(candidates()) == 1:
        return KernelChoice(DEFAULT, "the only float32 linear kernel here (oneDNN unavailable or disabled)")
    if sum(d_in * d_out for d_in, d_out in shapes) < MIN_MACS:
        return KernelChoice(DEFAULT, "not measured: shapes too small for the kernel to matter")
    key = machine_key(shapes)
    return _measured(str(choice_path(key)), json.dumps(key, sort_keys=True))


@cache
def _measured(path: str, key_json: str) -> KernelChoice:
    """Read the choice for ``key`` from ``path``, or measure it and write it there (whole or not at all); once
    per process."""
    key, file = json.loads(key_json), Path(path)
    known = _read_choice(file, key)
    if known is not None:
        return known
    shapes = [tuple(shape) for shape in key["shapes"]]
    times = time_kernels(shapes, candidates())
    gflops = rates(shapes, times)
    choice = KernelChoice(decide(times), f"measured {utc_now()}, {len(times[DEFAULT])} interleaved rounds", gflops)
    record = {"key": key, "kernel": choice.kernel, "reason": choice.reason, "gflops": gflops, "seconds": times}
    try:
        with atomic_path(file) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    except OSError:  # a read-only cache: the choice holds for this process and is measured again in the next
        pass
    return choice


def _read_choice(path: Path, key: Mapping) -> KernelChoice | None:
    """The cached choice at ``path`` if it is readable, for exactly ``key``, and names a kernel this torch has."""
    try:
        record = json.loads(path.read_text())
        if record["key"] != key or record["kernel"] not in candidates():
            return None
        return KernelChoice(record["kernel"], record["reason"], dict(record["gflops"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def use_onednn(model, override: bool | None = None) -> bool:
    """Whether ``model``'s float32 linears run on oneDNN: ``override`` if given, else the measured choice for its
    shapes (:func:`choose_kernel`; a model off the CPU keeps torch's kernels)."""
    if override is not None:
        return bool(override)
    if torch.device(model.cfg.device).type != "cpu":
        return False
    return choose_kernel(linear_shapes(model.cfg)).kernel == "onednn"
