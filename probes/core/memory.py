"""How much memory one step may take: a fraction of what the machine has free.

A prompt of thousands of tokens or an ``n`` in the millions is batched smaller or refused here, with one line, before
the work starts, instead of failing deep inside torch or driving the machine into swap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from probes.core.errors import ProbesError

FRACTION_ENV = "PROBES_MEMORY_FRACTION"
DEFAULT_FRACTION = 0.5


def available_bytes() -> int:
    """Memory the kernel says it can give without swapping (``MemAvailable``), else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes() -> int:
    """``PROBES_MEMORY_FRACTION`` (default 0.5) of the available memory."""
    raw = os.environ.get(FRACTION_ENV, str(DEFAULT_FRACTION))
    try:
        fraction = float(raw)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise ProbesError(f"{FRACTION_ENV}={raw!r} must be a number in (0, 1]: the share of free memory a step may use")
    return int(fraction * available_bytes())


def format_bytes(n: float) -> str:
    """GB to one decimal, or MB below a tenth of a GB (a budget of "0.0 GB" says nothing)."""
    return f"{n / 1e9:.1f} GB" if n >= 0.1e9 else f"{n / 1e6:.1f} MB"


def require_fits(need: int, what: str, fix: str) -> None:
    """Refuse, in one line, a step whose estimated peak memory exceeds the budget."""
    budget = budget_bytes()
    if need > budget:
        raise ProbesError(
            f"{what} needs about {format_bytes(need)} of memory, more than the budget of {format_bytes(budget)} "
            f"(set by {FRACTION_ENV}, a share of the free memory): {fix}"
        )


def fitted_batch(batch_size: int, need: Callable[[int], int], budget: int | None = None) -> int:
    """``batch_size`` halved until ``need(batch)`` fits the budget (at least 1: the caller refuses what one item
    cannot fit). The one rule every batched stage and :mod:`probes.run.estimate` use."""
    budget = budget_bytes() if budget is None else budget
    batch = batch_size
    while batch > 1 and need(batch) > budget:
        batch //= 2
    return batch


def batches(
    lengths: Sequence[int], batch_size: int, need: Callable[[int, int], int], what: str, fix: str
) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` items, each halved until its estimated peak
    ``need(batch, longest length in it)`` fits the budget; one item that cannot fit is refused in one line."""
    budget, start = budget_bytes(), 0
    while start < len(lengths):
        batch = fitted_batch(batch_size, lambda b: need(b, max(lengths[start : start + b])), budget)
        require_fits(need(batch, max(lengths[start : start + batch])), f"{what} (item {start})", fix)
        yield slice(start, start + batch)
        start += batch
