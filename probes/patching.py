"""Activation patching: the exact per-prompt effect on the metric of swapping one activation between minimal pairs.

Denoising runs the corrupt prompt with one activation taken from the clean run (does this piece *restore* the
answer?); noising runs the clean prompt with one activation from the corrupt run (is this piece *necessary*?).
The numbers equal TransformerLens's ``transformer_lens.patching`` functions (checked by the tests), at a fraction
of the cost, because every patched run skips work that cannot change its result:

1. **Start at the patched layer.** Layers before it see nothing of the patch, so each patched run starts from
   the cached residual stream of the run it patches into (``start_at_layer``).
2. **Compute only positions that can change.** Prompts are grouped by read-off position, and nothing after it
   is computed. In a causal model every position before the first token where a group's clean and corrupt
   prompts differ has identical activations in both runs, so a patch changes nothing there: patched runs
   compute only the later positions, attending to the earlier ones through a frozen key/value cache.
3. **Batch the variants, staggered.** Patches of a few consecutive layers (each head, or each position, of
   each prompt) run as one batch in which each run joins at the layer it patches, in chunks sized to a memory
   budget: few, large operations, and memory that does not grow with the number of heads.
4. **Read only the metric.** The last block computes the read-off position alone (the others matter there only
   as keys and values), and each run stops at the final residual stream, projected on the answer and foil
   unembedding columns (:mod:`probes.metrics`): no full-vocabulary logits.
5. **Use the faster float32 kernel.** Linear layers run on oneDNN where this torch has it
   (:mod:`probes.kernels`): the same products, about twice as fast as MKL's on this project's AMD CPU.
6. **Run batches side by side.** Worker threads each take a batch of patched runs with a share of torch's
   threads. A batch is short sequences, so much of its time goes to Python and small element-wise kernels
   that one thread runs as well as two: on two cores two single-threaded workers beat one two-threaded run.
   The patch hook acts only in the thread that registered it, so workers share the model's modules safely.

A sweep can be checkpointed: each finished layer is written atomically (safetensors) under ``checkpoint_dir``,
keyed by a fingerprint of the model, the prompts and the sweep, and a rerun with the same inputs skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import TransformerBlock
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from probes.errors import ProbesError
from probes.kernels import onednn_linear
from probes.metrics import logit_diff_from_resid
from probes.prompts import PromptSet

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")
CHECKPOINT_FORMAT = 1
# Patched runs of up to this many consecutive layers share one staggered batch (each run joins at its own layer):
# a sweep then makes ~4x fewer block calls than layer by layer, while a window still finishes (and is
# checkpointed) every few layers.
WINDOW_LAYERS = 5
# Worker threads by default on CPU: one per torch thread, up to this many (more mostly wait for the interpreter lock).
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class Site:
    """Where a component's patch goes: a hook in each block, and which axes of its activation matter."""

    hook: str  # hook name inside ``blocks.{layer}``
    variant_axis: int  # the axis one patch selects along: head, key/value head or position
    pos_axis: int  # the (query) position axis, cut to the positions a patched run computes
    per_position: bool  # variants are positions (residual-stream components) rather than heads


SITES: dict[str, Site] = {
    "z": Site("attn.hook_z", variant_axis=2, pos_axis=1, per_position=False),
    "pattern": Site("attn.hook_pattern", variant_axis=1, pos_axis=2, per_position=False),
    "q": Site("attn.hook_q", variant_axis=2, pos_axis=1, per_position=False),
    "k": Site("attn.hook_k", variant_axis=2, pos_axis=1, per_position=False),
    "v": Site("attn.hook_v", variant_axis=2, pos_axis=1, per_position=False),
    "resid_pre": Site("hook_resid_pre", variant_axis=1, pos_axis=1, per_position=True),
    "attn_out": Site("hook_attn_out", variant_axis=1, pos_axis=1, per_position=True),
    "mlp_out": Site("hook_mlp_out", variant_axis=1, pos_axis=1, per_position=True),
}
HEAD_COMPONENTS = tuple(name for name, site in SITES.items() if not site.per_position)
RESID_COMPONENTS = tuple(name for name, site in SITES.items() if site.per_position)


@dataclass
class PatchingResult:
    """Per-prompt metric of every patched run of a sweep, with the two baselines it is read against.

    ``patched[i, layer, j]`` is the logit difference of prompt ``i`` with variant ``j`` of ``layer`` patched
    (``j`` is a head, a key/value head or a position, see ``index``); NaN where the sweep did not run it.
    """

    patched: Float[Tensor, "prompt layer index"]
    clean: Float[Tensor, " prompt"]
    corrupt: Float[Tensor, " prompt"]
    component: str
    direction: Direction
    index: Literal["head", "kv_head", "pos"]
    kv_groups: Int[Tensor, "kv_head group"] | None = None  # query heads sharing each key/value head (k, v)

    @property
    def baseline(self) -> Float[Tensor, " prompt"]:
        """The metric of the run patched into: corrupt when denoising, clean when noising."""
        return self.corrupt if self.direction == "denoising" else self.clean

    @property
    def effect(self) -> Float[Tensor, "prompt layer index"]:
        """How far the patch moved the metric: patched minus the unpatched run it went into."""
        return self.patched - self.baseline[:, None, None]

    @property
    def normalised(self) -> Float[Tensor, "prompt layer index"]:
        """Per prompt, 0 = the corrupt metric, 1 = the clean metric (inf/NaN where the two coincide)."""
        gap = (self.clean - self.corrupt)[:, None, None]
        return (self.patched - self.corrupt[:, None, None]) / gap

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, layer, index) that was run: patched metric, effect and normalised effect."""
        n, n_layers, n_index = self.patched.shape
        grid = torch.stack(
            torch.meshgrid(torch.arange(n), torch.arange(n_layers), torch.arange(n_index), indexing="ij"), -1
        ).reshape(-1, 3)
        frame = pd.DataFrame(grid.numpy(), columns=["prompt", "layer", self.index])
        frame["patched"] = self.patched.reshape(-1).numpy()
        frame["effect"] = self.effect.reshape(-1).numpy()
        frame["normalised"] = self.normalised.reshape(-1).numpy()
        frame["component"] = self.component
        frame["direction"] = self.direction
        return frame[frame["patched"].notna()].reset_index(drop=True)


def kv_groups(model: HookedTransformer) -> Int[Tensor, "kv_head group"]:
    """Row ``g`` lists the query heads that read key/value head ``g`` (TransformerLens repeats kv heads in order)."""
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    return torch.arange(model.cfg.n_heads).reshape(n_kv, model.cfg.n_heads // n_kv)


def patch_activations(
    model: HookedTransformer,
    prompts: PromptSet,
    component: str = "z",
    direction: Direction = "denoising",
    *,
    layers: Sequence[int] | None = None,
    cells: Sequence[tuple[int, int]] | None = None,
    checkpoint_dir: str | Path | None = None,
    memory_mb: float = 1024.0,
    progress: bool = True,
    onednn: bool = True,
    workers: int | None = None,
) -> PatchingResult:
    """Patch every head (``z``, ``pattern``, ``q``, ``k``, ``v``) or every position (``resid_pre``, ``attn_out``,
    ``mlp_out``) of every layer, one at a time, and record each prompt's metric.

    ``layers`` restricts the sweep to some layers, ``cells`` to explicit ``(layer, head-or-position)`` pairs
    (what a screen-then-verify pass re-checks); the rest of ``patched`` is NaN. Grouped-query models patch a
    key/value head for ``k``/``v``: the index axis then has ``n_key_value_heads`` entries and
    ``result.kv_groups`` says which query heads share each. ``memory_mb`` bounds the activations of the batches
    of patched runs in flight (each worker's batches get an equal share); ``checkpoint_dir`` makes an interrupted
    sweep resume where it stopped. ``onednn=False`` keeps torch's default matrix-product kernel
    (:func:`probes.kernels.onednn_linear`). ``workers`` threads share the batches, each with an equal share of
    torch's threads (default on CPU: one per torch thread, at most 4; see :func:`_n_workers`).
    """
    site = _check_inputs(model, prompts, component, direction, memory_mb)
    n_workers = _n_workers(model, workers)
    n_index = int(prompts.end.max()) + 1 if site.per_position else _n_heads(model, component)
    todo = _cells_by_layer(model, component, n_index, layers, cells)
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)

    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = _Checkpoint(Path(checkpoint_dir), model, prompts, component, direction, todo)
    done = {layer: checkpoint.load(layer, (len(prompts), len(todo[layer]))) for layer in todo} if checkpoint else {}
    done = {layer: values for layer, values in done.items() if values is not None}
    remaining = [layer for layer in todo if layer not in done]

    with onednn_linear(onednn):
        buckets = [
            _prepare_bucket(model, prompts, members, end, split, target, source, site, remaining)
            for members, end, split in _buckets(prompts)
        ]
    target_metric, source_metric = torch.empty(len(prompts)), torch.empty(len(prompts))
    for bucket in buckets:
        target_metric[bucket.members], source_metric[bucket.members] = bucket.target_metric, bucket.source_metric
    clean, corrupt = (source_metric, target_metric) if direction == "denoising" else (target_metric, source_metric)

    patched = torch.full((len(prompts), model.cfg.n_layers, n_index), float("nan"))
    for layer, values in done.items():
        patched[:, layer, todo[layer]] = values
    budget = memory_mb * 2**20 / n_workers  # each worker's batches
    windows = _windows(remaining, todo, buckets, budget)
    bar = tqdm(
        total=len(todo),
        initial=len(done),
        desc=f"patching {component}",
        unit="layer",
        disable=None if progress else True,
    )
    sweep = _sweep(model, buckets, site, windows, todo, budget, n_workers, onednn, len(prompts))
    with bar, contextlib.closing(sweep):
        for window, values in sweep:
            for layer in window:
                if checkpoint:
                    checkpoint.save(layer, values[layer])
                patched[:, layer, todo[layer]] = values[layer]
            bar.update(len(window))
    return PatchingResult(
        patched,
        clean,
        corrupt,
        component,
        direction,
        index="pos" if site.per_position else ("kv_head" if n_index != model.cfg.n_heads else "head"),
        kv_groups=kv_groups(model) if component in ("k", "v") else None,
    )


def patch_heads(
    model: HookedTransformer,
    prompts: PromptSet,
    component: str = "z",
    direction: Direction = "denoising",
    **kwargs,
) -> Float[Tensor, "prompt layer head"]:
    """Effect of patching each head on each prompt's logit difference: patched minus the run patched into.

    ``component`` is ``z`` (the head's output), ``pattern``, ``q``, ``k`` or ``v``; keyword arguments go to
    :func:`patch_activations`, whose :class:`PatchingResult` also gives the normalised effect and baselines.
    """
    if component not in HEAD_COMPONENTS:
        raise ProbesError(f"patch_heads patches {', '.join(HEAD_COMPONENTS)}, not '{component}'")
    return patch_activations(model, prompts, component, direction, **kwargs).effect


def patch_resid(
    model: HookedTransformer,
    prompts: PromptSet,
    component: str = "resid_pre",
    direction: Direction = "denoising",
    **kwargs,
) -> Float[Tensor, "prompt layer pos"]:
    """Effect of patching the residual stream (``resid_pre``), or a layer's ``attn_out`` or ``mlp_out``, at each
    position, on each prompt's logit difference (same conventions as :func:`patch_heads`)."""
    if component not in RESID_COMPONENTS:
        raise ProbesError(f"patch_resid patches {', '.join(RESID_COMPONENTS)}, not '{component}'")
    return patch_activations(model, prompts, component, direction, **kwargs).effect


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _check_inputs(model: HookedTransformer, prompts: PromptSet, component: str, direction: str, memory_mb: float) -> Site:
    if component not in SITES:
        raise ProbesError(f"unknown component '{component}'; choose one of: {', '.join(SITES)}")
    if direction not in DIRECTIONS:
        raise ProbesError(f"unknown direction '{direction}'; choose 'denoising' (clean into corrupt) or 'noising'")
    if memory_mb <= 0:
        raise ProbesError(f"memory_mb must be positive, got {memory_mb}")
    if len(prompts) == 0:
        raise ProbesError("the prompt set is empty: there is nothing to patch")
    if component == "mlp_out" and model.cfg.attn_only:
        raise ProbesError("component 'mlp_out' needs MLP layers, but this model is attention-only; use 'attn_out'")
    if model.cfg.attention_dir != "causal" or model.cfg.positional_embedding_type == "shortformer":
        raise ProbesError("patching needs a causal model whose residual stream carries its positions")
    if prompts.clean.max() >= model.cfg.d_vocab or prompts.corrupt.max() >= model.cfg.d_vocab:
        raise ProbesError(f"prompt token ids reach past the model's vocabulary of {model.cfg.d_vocab}: wrong model?")
    return SITES[component]


def _n_heads(model: HookedTransformer, component: str) -> int:
    """Query heads, except for keys and values of grouped-query models, which have their own (fewer) heads."""
    if component in ("k", "v") and model.cfg.n_key_value_heads is not None:
        return model.cfg.n_key_value_heads
    return model.cfg.n_heads


def _cells_by_layer(
    model: HookedTransformer,
    component: str,
    n_index: int,
    layers: Sequence[int] | None,
    cells: Sequence[tuple[int, int]] | None,
) -> dict[int, list[int]]:
    """Which indices to patch in each layer, layers in increasing order."""
    n_layers = model.cfg.n_layers
    if layers is not None and cells is not None:
        raise ProbesError("give either layers or cells, not both")
    if cells is None:
        chosen = range(n_layers) if layers is None else layers
        cells = [(layer, index) for layer in chosen for index in range(n_index)]
    todo: dict[int, set[int]] = {}
    for layer, index in cells:
        if not 0 <= layer < n_layers:
            raise ProbesError(f"layer {layer} does not exist: the model has layers 0..{n_layers - 1}")
        if not 0 <= index < n_index:
            raise ProbesError(f"index {index} of '{component}' does not exist: valid indices are 0..{n_index - 1}")
        todo.setdefault(int(layer), set()).add(int(index))
    if not todo:
        raise ProbesError("nothing to patch: layers or cells is empty")
    return {layer: sorted(todo[layer]) for layer in sorted(todo)}


# ---------------------------------------------------------------------------------------------------------------
# The two unpatched runs


@dataclass
class _Bucket:
    """Prompts read off at the same position whose pairs first differ at the same position: their patched runs
    compute the same positions, so they batch.

    Every position before ``split`` holds the same token in both runs of every member, so (the model being
    causal) the same activations: patched runs compute only positions ``split..end`` and read the target run's
    keys and values for the rest from ``prefix``.
    """

    members: Int[Tensor, " member"]  # indices into the prompt set
    split: int
    end: int
    answer: Int[Tensor, " member"]
    foil: Int[Tensor, " member"]
    target_resid: dict[int, Float[Tensor, "member suffix d_model"]]  # resid_pre of the run patched into
    source_acts: dict[int, Tensor]  # the patched component of the other run, suffix only, variant axis first
    prefix: list[tuple[Tensor, Tensor]] | None  # per layer, the target run's keys and values before ``split``
    target_metric: Float[Tensor, " member"]
    source_metric: Float[Tensor, " member"]
    row_bytes: int  # rough memory of one patched run through one block


def _buckets(prompts: PromptSet) -> list[tuple[Int[Tensor, " member"], int, int]]:
    """Prompt indices grouped by read-off position ``end`` and ``split``, the first position where clean and
    corrupt differ (``end`` if they never do before it), as ``(members, end, split)``."""
    positions = torch.arange(prompts.n_pos)
    differs = (prompts.clean != prompts.corrupt) & (positions <= prompts.end[:, None])
    first = torch.where(differs.any(1), differs.int().argmax(1), prompts.end)
    keys = torch.stack([prompts.end, first], 1)
    return [(torch.nonzero((keys == key).all(1))[:, 0], int(key[0]), int(key[1])) for key in keys.unique(dim=0)]


@torch.no_grad()
def _prepare_bucket(
    model: HookedTransformer,
    prompts: PromptSet,
    members: Int[Tensor, " member"],
    end: int,
    split: int,
    target_tokens: Int[Tensor, "prompt pos"],
    source_tokens: Int[Tensor, "prompt pos"],
    site: Site,
    layers: list[int],
) -> _Bucket:
    """Run both sides once, caching what the patched runs start from and what they patch in."""
    target, source = target_tokens[members, : end + 1], source_tokens[members, : end + 1]
    n_layers = model.cfg.n_layers
    # TransformerLens wants an attention mask with a key/value cache; all ones masks nothing.
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(members))
    resid_names = {f"blocks.{layer}.hook_resid_pre" for layer in layers}
    target_final, target_cache = model.run_with_cache(
        target,
        past_kv_cache=cache,
        attention_mask=torch.ones_like(target),
        stop_at_layer=n_layers,
        names_filter=lambda name: name in resid_names,
    )
    site_names = {f"blocks.{layer}.{site.hook}" for layer in layers}
    source_final, source_cache = model.run_with_cache(
        source, stop_at_layer=n_layers, names_filter=lambda name: name in site_names
    )
    answer, foil = prompts.answer[members], prompts.foil[members]
    n_suffix = end + 1 - split

    def metric(final: Float[Tensor, "member pos d_model"]) -> Float[Tensor, " member"]:
        return logit_diff_from_resid(model, final[:, end], answer, foil).float()

    return _Bucket(
        members=members,
        split=split,
        end=end,
        answer=answer,
        foil=foil,
        target_resid={layer: target_cache[f"blocks.{layer}.hook_resid_pre"][:, split:] for layer in layers},
        source_acts={
            layer: source_cache[f"blocks.{layer}.{site.hook}"]
            .narrow(site.pos_axis, split, n_suffix)
            .movedim(site.variant_axis, 1)
            for layer in layers
        },
        prefix=[(entry.past_keys[:, :split], entry.past_values[:, :split]) for entry in cache.entries] if split else None,
        target_metric=metric(target_final),
        source_metric=metric(source_final),
        row_bytes=_row_bytes(model, split, n_suffix),
    )


def _row_bytes(model: HookedTransformer, split: int, n_suffix: int) -> int:
    """Rough float32 footprint of one patched run through one block: residual, attention and MLP activations at
    the computed positions, attention scores, and its copy of one layer's prefix keys and values."""
    cfg = model.cfg
    per_position = 8 * cfg.d_model + 3 * (cfg.d_mlp or 0) + 4 * cfg.n_heads * cfg.d_head
    scores = 3 * cfg.n_heads * n_suffix * (split + n_suffix)
    prefix = 2 * split * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    return 4 * (n_suffix * per_position + scores + prefix)


# ---------------------------------------------------------------------------------------------------------------
# Patched runs


@dataclass
class _Rows:
    """Patched runs, one per row, sorted by the layer they patch."""

    layer: Int[Tensor, " row"]
    member: Int[Tensor, " row"]  # which prompt of the bucket
    column: Int[Tensor, " row"]  # which of the layer's requested indices (a column of that layer's results)
    at: Int[Tensor, " row"]  # where that index sits on the variant axis of the computed activation

    def __len__(self) -> int:
        return len(self.layer)

    def __getitem__(self, index: slice) -> _Rows:
        return _Rows(self.layer[index], self.member[index], self.column[index], self.at[index])


def _windows(remaining: list[int], todo: dict[int, list[int]], buckets: list[_Bucket], budget: float) -> list[list[int]]:
    """Consecutive layers whose patched runs fit the memory budget together: at least one layer each, at most
    ``WINDOW_LAYERS`` so that progress and checkpoints advance often."""
    windows: list[list[int]] = []
    load = 0.0
    for layer in remaining:
        need = max(len(b.members) * len(todo[layer]) * b.row_bytes for b in buckets)
        if windows and len(windows[-1]) < WINDOW_LAYERS and load + need <= budget:
            windows[-1].append(layer)
            load += need
        else:
            windows.append([layer])
            load = need
    return windows


def _window_rows(bucket: _Bucket, site: Site, window: list[int], todo: dict[int, list[int]]) -> _Rows:
    """One row per (layer, index, member) whose patch can change the metric, in layer order."""
    layer_, member, column_, at_ = [], [], [], []
    n = len(bucket.members)
    for layer in window:
        index = torch.as_tensor(todo[layer])
        column = torch.arange(len(index))
        if site.per_position:  # outside split..end a patch swaps identical activations or comes after the read-off
            column = column[(index >= bucket.split) & (index <= bucket.end)]
        at = index[column] - (bucket.split if site.per_position else 0)
        layer_.append(torch.full((n * len(column),), layer))
        member.append(torch.arange(n).repeat(len(column)))
        column_.append(column.repeat_interleave(n))
        at_.append(at.repeat_interleave(n))
    return _Rows(torch.cat(layer_), torch.cat(member), torch.cat(column_), torch.cat(at_))


def _patch_window(
    model: HookedTransformer,
    bucket: _Bucket,
    site: Site,
    window: list[int],
    todo: dict[int, list[int]],
    values: dict[int, Float[Tensor, "prompt index"]],
    budget: float,
    stop: threading.Event | None = None,
) -> None:
    """Fill ``values`` for this bucket's prompts, one batch of patched runs per memory budget; once ``stop``
    is set, give up before the next batch."""
    if site.per_position:  # patches that cannot change the metric leave the run patched into as it was
        for layer in window:
            values[layer][bucket.members] = bucket.target_metric[:, None]
    rows = _window_rows(bucket, site, window, todo)
    per_batch = max(1, int(budget // bucket.row_bytes))
    for start in range(0, len(rows), per_batch):
        if stop is not None and stop.is_set():
            raise _Stopped
        batch = rows[start : start + per_batch]
        metric = _staggered_run(model, bucket, site, batch)
        for layer in batch.layer.unique().tolist():
            mine = batch.layer == layer
            values[layer][bucket.members[batch.member[mine]], batch.column[mine]] = metric[mine]


def _n_workers(model: HookedTransformer, workers: int | None) -> int:
    """The requested workers, or the default: one per torch thread up to ``MAX_AUTO_WORKERS`` on CPU, else one.
    Also one where the caller's thread state would not reach worker threads (autocast, torch function modes),
    and for Qwen's dynamic NTK rotary, whose table TransformerLens rebuilds inside forward."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
            raise ProbesError(f"workers must be a whole number of at least 1, got {workers!r}")
        return int(workers)
    device = torch.device(model.cfg.device).type
    if device != "cpu" or model.cfg.use_dynamic_ntk_rope or torch.is_autocast_enabled(device):
        return 1
    if torch.overrides._get_current_function_mode_stack():
        return 1
    return min(torch.get_num_threads(), MAX_AUTO_WORKERS)


class _Stopped(Exception):
    """A worker gave up its job because the sweep is ending."""


def _sweep(
    model: HookedTransformer,
    buckets: list[_Bucket],
    site: Site,
    windows: list[list[int]],
    todo: dict[int, list[int]],
    budget: float,
    workers: int,
    onednn: bool,
    n_prompts: int,
) -> Iterator[tuple[list[int], dict[int, Float[Tensor, "prompt index"]]]]:
    """Each window with its values, as soon as every bucket of it is done.

    With several workers, (window, bucket) jobs run on that many threads, torch's threads split among them.
    Worker threads start after every bucket ran at full length on this thread, so caches TransformerLens fills
    inside forward (rotary, alibi) are already complete. A failing job cancels the jobs not yet started; windows
    finished by the others are still yielded (and so checkpointed), then the error is raised. Leaving early
    (Ctrl-C, an error of the caller) stops running jobs at their next batch.
    """
    values = [{layer: torch.empty(n_prompts, len(todo[layer])) for layer in window} for window in windows]
    stop = threading.Event()

    def job(w: int, bucket: _Bucket) -> int:
        with onednn_linear(onednn):  # torch function modes are per thread
            _patch_window(model, bucket, site, windows[w], todo, values[w], budget, stop)
        return w

    if workers == 1:
        for w, window in enumerate(windows):
            for bucket in buckets:
                job(w, bucket)
            yield window, values[w]
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
                        yield windows[w], values[w]
            finally:
                stop.set()
                for future in futures:
                    future.cancel()
            if failure is not None:
                raise failure
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _staggered_run(model: HookedTransformer, bucket: _Bucket, site: Site, rows: _Rows) -> Float[Tensor, " row"]:
    """Patched runs that start at different layers, as one batch: each row joins at the layer it patches, from
    the target run's residual stream there, so no block runs for a row before its patch.

    Blocks are called directly, as ``HookedTransformer.forward`` calls them after ``start_at_layer``, with one
    plain torch hook on the patched hook point: ``run_with_hooks`` would add and remove hooks on every hook
    point of the model for each block, which costs as much as a short block itself."""
    resid = bucket.target_resid[int(rows.layer[0])][:0]
    joined = 0
    last = model.cfg.n_layers - 1
    for layer in range(int(rows.layer[0]), model.cfg.n_layers):
        block = model.blocks[layer]
        stop = int((rows.layer <= layer).sum())
        prefix = _row_prefix(bucket, rows.member[:stop], layer)
        if stop == joined and layer == last and resid.shape[1] > 1 and _keys_values_separate(model):
            resid = _read_off_block(block, resid, prefix)
            continue
        handle = None
        if stop > joined:
            new = rows[joined:stop]
            resid = torch.cat([resid, bucket.target_resid[layer][new.member]])
            patch = _patch_hook(site, joined, new.at, bucket.source_acts[layer][new.member, new.at])
            handle = block.get_submodule(site.hook).register_forward_hook(patch)
            joined = stop
        try:
            resid = block(resid, past_kv_cache_entry=prefix)
        finally:
            if handle is not None:
                handle.remove()
    return logit_diff_from_resid(model, resid[:, -1], bucket.answer[rows.member], bucket.foil[rows.member]).float()


# Configurations whose attention takes keys and values from ``ln1(resid)`` through ``calculate_qkv_matrices``
# straight into the key/value cache (see AbstractAttention.forward and TransformerBlock.forward in
# transformer_lens 3.9); the others run the last block in full.
_QK_NORM_IN_FORWARD = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _keys_values_separate(model: HookedTransformer) -> bool:
    cfg = model.cfg
    return not (
        cfg.use_attn_in
        or cfg.use_split_qkv_input
        or cfg.clip_qkv is not None
        or cfg.original_architecture in POST_NORM_ARCHITECTURES
        or cfg.original_architecture in _QK_NORM_IN_FORWARD
    )


def _read_off_block(
    block: TransformerBlock, resid: Float[Tensor, "row pos d_model"], prefix: TransformerLensKeyValueCacheEntry | None
) -> Float[Tensor, "row 1 d_model"]:
    """The last block at the read-off (last) position only. Upstream of it the other positions matter to the
    metric only as keys and values, so they get ``ln1`` and the key/value projection, and no attention output
    or MLP: about one layer less per patched run."""
    context = block.ln1(resid[:, :-1])
    _, keys, values = block.attn.calculate_qkv_matrices(context[:, :0], context, context)
    if prefix is not None:
        keys, values = torch.cat([prefix.past_keys, keys], 1), torch.cat([prefix.past_values, values], 1)
    entry = TransformerLensKeyValueCacheEntry(keys, values, frozen=True)
    return block(resid[:, -1:], past_kv_cache_entry=entry)


def _patch_hook(site: Site, first_row: int, at: Int[Tensor, " new"], patch: Tensor):
    """A forward hook giving row ``first_row + i`` ``patch[i]`` at variant ``at[i]``; earlier rows (patched
    upstream) pass as they are. It acts only in the thread that made it: other workers run the same module."""
    rows = first_row + torch.arange(len(at))
    owner = threading.get_ident()

    def hook(module, inputs, activation: Tensor) -> Tensor:
        if threading.get_ident() == owner:
            activation.movedim(site.variant_axis, 1)[rows, at] = patch
        return activation

    return hook


def _row_prefix(bucket: _Bucket, members: Int[Tensor, " row"], layer: int) -> TransformerLensKeyValueCacheEntry | None:
    """The target run's keys and values of ``layer`` before ``split``, one copy per row."""
    if bucket.prefix is None:
        return None
    keys, values = bucket.prefix[layer]
    return TransformerLensKeyValueCacheEntry(keys[members], values[members], frozen=True)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


class _Checkpoint:
    """Per-layer results of one sweep, in a directory named by a fingerprint of everything they depend on."""

    def __init__(
        self,
        root: Path,
        model: HookedTransformer,
        prompts: PromptSet,
        component: str,
        direction: str,
        todo: dict[int, list[int]],
    ) -> None:
        self.fingerprint = _fingerprint(model, prompts, component, direction, todo)
        self.dir = root / f"{component}-{direction}-{self.fingerprint[:16]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ProbesError(f"cannot create checkpoint directory {self.dir}: {err.strerror or err}") from None

    def path(self, layer: int) -> Path:
        return self.dir / f"layer{layer:03d}.safetensors"

    def load(self, layer: int, shape: tuple[int, int]) -> Float[Tensor, "prompt index"] | None:
        """A finished layer, or None if it is missing, unreadable or from other inputs."""
        try:
            with safe_open(str(self.path(layer)), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") != self.fingerprint:
                    return None
                values = f.get_tensor("patched")
        except (OSError, SafetensorError):  # missing or truncated: the layer is simply recomputed
            return None
        return values if tuple(values.shape) == shape else None

    def save(self, layer: int, values: Float[Tensor, "prompt index"]) -> None:
        """Write to a temporary file, then rename: a kill mid-write never leaves a half-written layer."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".layer{layer:03d}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"patched": values.contiguous()}, tmp, metadata={"fingerprint": self.fingerprint})
            os.replace(tmp, self.path(layer))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fingerprint(
    model: HookedTransformer, prompts: PromptSet, component: str, direction: str, todo: dict[int, list[int]]
) -> str:
    """sha256 of the sweep settings, the prompts and a digest of every weight (name, shape, sum, norm and 16
    values spread over it): under a second for a 270M-parameter model, and changed by any edit of the weights
    in practice. A digest that differs only by rounding (another thread count) just means recomputing."""
    digest = hashlib.sha256()
    settings = {"format": CHECKPOINT_FORMAT, "component": component, "direction": direction, "cells": todo}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for tensor in (prompts.clean, prompts.corrupt, prompts.answer, prompts.foil, prompts.end):
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    with torch.no_grad():
        for name, param in model.named_parameters():
            spread = torch.arange(16) * (param.numel() - 1) // 15
            summary = (float(param.sum()), float(torch.linalg.vector_norm(param)), torch.take(param, spread).tolist())
            digest.update(f"{name}{tuple(param.shape)}{summary!r}".encode())
    return digest.hexdigest()
