"""What the benchmarks share: the baseline they compare against (TransformerLens as shipped) and the timer.

The kit's models have their weights re-laid out (probes.layout), which TransformerLens's own functions also
profit from. A fair baseline is the same model and weights in TransformerLens's own layout, as a TransformerLens
user has them.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

from transformer_lens import HookedTransformer


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
