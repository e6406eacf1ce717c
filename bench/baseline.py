"""What the benchmarks share: the baseline they compare against (TransformerLens as shipped), the timer, the
plain Hugging Face checkpoint the peers load, and ``bench/results.json``.

The kit's models have their weights re-laid out (probes.layout), which TransformerLens's own functions also
profit from. A fair baseline is the same model and weights in TransformerLens's own layout, as a TransformerLens
user has them.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from probes.core.io import atomic_path
from probes.core.provenance import cpu_model, utc_now
from probes.models.bridge import packaged_hf_checkpoint as hf_checkpoint  # noqa: F401  (the benches' HF model)
from probes.models.kernels import choose_kernel, linear_shapes

RESULTS = Path(__file__).resolve().parent / "results.json"


def transformerlens_as_shipped(model: HookedTransformer) -> HookedTransformer:
    """A copy of ``model`` with every parameter made contiguous again: TransformerLens's own layout."""
    plain = copy.deepcopy(model)
    for param in plain.parameters():
        param.data = param.data.contiguous()
    return plain


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call: the machine's speed drifts."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def kernel_rates(model: HookedTransformer) -> dict:
    """The float32 linear kernel the kit runs for ``model`` here and the measured rates that chose it."""
    choice = choose_kernel(linear_shapes(model.cfg))
    return {"kernel": choice.kernel, "reason": choice.reason, "gflops": choice.gflops}


def record(section: str, model_name: str, kernels: dict, values: dict, path: Path = RESULTS) -> None:
    """Put one bench's numbers into ``path`` (written whole or not at all): the machine, the kernel rates per
    model, and ``values`` under ``section``. A file from another machine or torch is started afresh, so it
    never mixes machines."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        results = {}
    if results.get("machine") != machine():
        results = {"machine": machine(), "kernels": {}, "benches": {}}
    results["kernels"][model_name] = kernels
    results["benches"][section] = {"measured_at": utc_now(), **values}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
