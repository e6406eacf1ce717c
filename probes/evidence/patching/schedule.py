"""How a sweep's jobs run: on worker threads, each with a share of torch's threads and the chosen linear kernel.

A batch of patched runs is short sequences, so much of its time goes to Python and small element-wise kernels that
one thread runs as well as two: on two cores two single-threaded workers beat one two-threaded run. Torch function
modes (oneDNN routing) are per thread, so each job enters its own.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

import torch

from probes.core.errors import ProbesError
from probes.models.bridge import is_bridge
from probes.models.kernels import onednn_linear
from probes.models.protocol import HookedModel

# Worker threads by default on CPU: one per torch thread, up to this many (more mostly wait for the interpreter lock).
MAX_AUTO_WORKERS = 4
Window = TypeVar("Window")
Bucket = TypeVar("Bucket")


def n_workers(model: HookedModel, workers: int | None) -> int:
    """The requested workers, or the default: one per torch thread up to ``MAX_AUTO_WORKERS`` on CPU, else one.
    Also one where the caller's thread state would not reach worker threads (autocast, torch function modes),
    and for Qwen's dynamic NTK rotary, whose table TransformerLens rebuilds inside forward. Always one for a
    TransformerBridge: its forward pass sets per-block state, and its hooks act in every thread."""
    if is_bridge(model):
        return 1
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
            raise ProbesError(f"workers must be a whole number of at least 1, got {workers!r}")
        return int(workers)
    device = torch.device(model.cfg.device or "cpu").type
    if device != "cpu" or model.cfg.use_dynamic_ntk_rope or torch.is_autocast_enabled(device):
        return 1
    if torch.overrides._get_current_function_mode_stack():
        return 1
    return min(torch.get_num_threads(), MAX_AUTO_WORKERS)


class Stopped(Exception):
    """A worker gave up its job because the sweep is ending."""


def run_windows(
    windows: Sequence[Window],
    buckets: Sequence[Bucket],
    run: Callable[[Window, Bucket, threading.Event], None],
    workers: int,
    onednn: bool,
) -> Generator[Window, None, None]:  # a generator: the caller closes it to stop the workers
    """Each window, as soon as ``run(window, bucket, stop)`` has finished for every bucket.

    With several workers, (window, bucket) jobs run on that many threads, torch's threads split among them.
    The caller has run every bucket at full length on this thread first, so caches TransformerLens fills
    inside forward (rotary, alibi) are already complete. A failing job cancels the jobs not yet started; windows
    finished by the others are still yielded (and so checkpointed), then the error is raised. Leaving early
    (Ctrl-C, an error of the caller) sets ``stop``: running jobs give up (:class:`Stopped`) at their next batch.
    """
    stop = threading.Event()

    def job(w: int, bucket: Bucket) -> int:
        with onednn_linear(onednn):  # torch function modes are per thread
            run(windows[w], bucket, stop)
        return w

    if workers == 1:
        for w, window in enumerate(windows):
            for bucket in buckets:
                job(w, bucket)
            yield window
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="probes-patching") as pool:
            futures = [pool.submit(job, w, bucket) for w in range(len(windows)) for bucket in buckets]
            left = [len(buckets)] * len(windows)  # jobs of each window still running or queued
            failure = None
            try:
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        failure = failure or future.exception()
                        for pending in futures:
                            pending.cancel()
                        continue
                    w = future.result()
                    left[w] -= 1
                    if not left[w]:
                        yield windows[w]
            finally:
                stop.set()
                for future in futures:
                    future.cancel()
            if failure is not None:
                raise failure
    finally:
        torch.set_num_threads(threads)
