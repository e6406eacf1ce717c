"""The patching engine: patched runs that compute only what their patches can change.

A patched run is the run of one prompt (the *target*: corrupt when denoising, clean when noising) with one or
more activations replaced by the other run's (*slots*: a sweep has one per run, :func:`patch_runs
<probes.evidence.patching.patch_runs>` several). The numbers equal TransformerLens's ``transformer_lens.patching``
functions (checked by the tests), at a fraction of the cost, because every patched run skips work that cannot
change its result:

1. **Start at the patched layer.** Layers before the earliest patch see nothing of it, so each run starts from
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
   unembedding columns (:mod:`probes.evidence.metric`): no full-vocabulary logits.
5. **Use the faster float32 kernel.** Linear layers run on the kernel measured fastest on this machine for the
   model's shapes (:mod:`probes.models.kernels`: torch's default or oneDNN's, the same products).
6. **Run batches side by side.** Worker threads each take a batch of patched runs with a share of torch's
   threads. A batch is short sequences, so much of its time goes to Python and small element-wise kernels
   that one thread runs as well as two: on two cores two single-threaded workers beat one two-threaded run.
   The patch hook acts only in the thread that registered it, so workers share the model's modules safely.

Public entry points are in :mod:`probes.evidence.patching`; this module plans and runs the patched batches,
:mod:`.schedule` spreads them over worker threads and :mod:`.checkpoint` makes a sweep resumable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.evidence.metric import Metric
from probes.evidence.patching.reference import SideRun
from probes.evidence.patching.schedule import Stopped
from probes.evidence.patching.sites import Edge, Site
from probes.models.architecture import keys_values_separate, n_kv_heads, shortformer_positions
from probes.models.bridge import is_bridge
from probes.models.hooks import get_act_name
from probes.models.kv_cache import KeysValues, run_block, run_block_at_last
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

# Patched runs of up to this many consecutive layers share one staggered batch (each run joins at its own layer):
# a sweep then makes ~4x fewer block calls than layer by layer, while a window still finishes (and is
# checkpointed) every few layers.
WINDOW_LAYERS = 5


def n_variants_of(model: HookedModel, component: str) -> int:
    """Query heads, except for keys and values of grouped-query models, which have their own (fewer) heads."""
    return n_kv_heads(model) if component in ("k", "v") else model.cfg.n_heads


def cells_by_layer(
    model: HookedModel,
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
class Bucket:
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
    target_tokens: Int[Tensor, "member pos"]  # the run patched into, positions 0..end (what hooked runs run)
    target_resid: dict[int, Float[Tensor, "member suffix d_model"]]  # resid_pre of the run patched into
    source_acts: dict[str, dict[int, Tensor]]  # component -> layer -> the other run's activation, suffix only,
    # variant axis first
    prefix: list[KeysValues] | None  # per layer, the target run's keys and values before ``split``
    target_metric: Float[Tensor, " member"]
    source_metric: Float[Tensor, " member"]
    row_bytes: int  # rough memory of one patched run through one block
    metric: Metric  # what each patched run reports, from its final residual stream at the read-off position


def bucket_keys(
    prompts: PromptSet, start: Int[Tensor, " prompt"] | None = None
) -> list[tuple[Int[Tensor, " member"], int, int]]:
    """Prompt indices grouped by read-off position ``end`` and ``split``, as ``(members, end, split)``.

    ``split`` is the first position where clean and corrupt differ (``end`` if they never do before it): a patch
    copies activations across, so earlier positions are the same in both. An edge intervention (``start``: its
    query position) changes the run patched into at that position only, so before it nothing differs whatever
    the prompts: ``split = start``, which skips the positions between (half of an induction prompt)."""
    positions = torch.arange(prompts.n_pos)
    differs = (prompts.clean != prompts.corrupt) & (positions <= prompts.end[:, None])
    first = torch.where(differs.any(1), differs.int().argmax(1), prompts.end)
    if start is not None:
        first = start
    keys = torch.stack([prompts.end, first], 1)
    return [(torch.nonzero((keys == key).all(1))[:, 0], int(key[0]), int(key[1])) for key in keys.unique(dim=0)]


def prepare_bucket(
    model: HookedModel,
    prompts: PromptSet,
    members: Int[Tensor, " member"],
    end: int,
    split: int,
    target: SideRun,
    source: SideRun,
    rows: Int[Tensor, " member"],
    sites: Sequence[Site],
    layers: list[int],
    metric: Metric,
) -> Bucket:
    """What the patched runs of ``members`` start from and patch in, read from the two unpatched runs (rows
    ``rows`` of each; :mod:`.reference` makes them)."""
    answer, foil = prompts.answer[members], prompts.foil[members]
    n_suffix = end + 1 - split
    return Bucket(
        members=members,
        split=split,
        end=end,
        answer=answer,
        foil=foil,
        target_tokens=target.tokens[members, : end + 1],
        target_resid={layer: target.acts[get_act_name("resid_pre", layer)][rows, split:] for layer in layers},
        source_acts={
            site.component: {
                layer: source.acts[site.hook_name(layer)][rows]
                .narrow(site.pos_axis, split, n_suffix)
                .movedim(site.variant_axis, 1)
                for layer in layers
            }
            for site in sites
        },
        prefix=[(keys[rows, :split], values[rows, :split]) for keys, values in target.kv] if split and target.kv else None,
        target_metric=metric(model, target.final[rows], answer, foil).float(),
        source_metric=metric(model, source.final[rows], answer, foil).float(),
        metric=metric,
        row_bytes=row_bytes(model, 0, end + 1) if is_bridge(model) else row_bytes(model, split, n_suffix),
    )


def row_bytes(model: HookedModel, split: int, n_suffix: int) -> int:
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
class Slot:
    """One patch of every run in a batch: the same site, at each run's own layer and variant (``at``).

    By default the run gets the other run's activation for that variant at every computed position. ``position``
    (relative to the bucket's ``split``) restricts the patch to one (query) position. ``knockout_key`` makes it
    an edit of the run's own attention pattern instead: at that query position, the weight on that key position
    (absolute) is set to 0 and the rest of the row renormalised.
    """

    site: Site
    layer: Int[Tensor, " row"]
    at: Int[Tensor, " row"]  # where the variant sits on the variant axis of the computed activation
    position: Int[Tensor, " row"] | None = None
    knockout_key: Int[Tensor, " row"] | None = None

    def __getitem__(self, index: slice | Tensor) -> Slot:
        def part(values: Tensor | None) -> Tensor | None:
            return None if values is None else values[index]

        return Slot(self.site, self.layer[index], self.at[index], part(self.position), part(self.knockout_key))


@dataclass
class Rows:
    """Patched runs, one per row, sorted by the layer they join at (their earliest patch). Each run applies one
    patch per slot: a sweep has one slot, a run that patches several sites at once has several."""

    member: Int[Tensor, " row"]  # which prompt of the bucket
    column: Int[Tensor, " row"]  # where the run's metric goes: a column of its join layer's results
    slots: list[Slot]

    @property
    def layer(self) -> Int[Tensor, " row"]:
        """The layer each run joins the batch at: its earliest patch."""
        return torch.stack([slot.layer for slot in self.slots]).min(0).values

    def __len__(self) -> int:
        return len(self.member)

    def __getitem__(self, index: slice) -> Rows:
        return Rows(self.member[index], self.column[index], [slot[index] for slot in self.slots])


def plan_windows(remaining: list[int], todo: dict[int, list[int]], buckets: list[Bucket], budget: float) -> list[list[int]]:
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


def _window_rows(
    bucket: Bucket, site: Site, window: list[int], todo: dict[int, list[int]], edge: Edge | None = None
) -> Rows:
    """One row per (layer, index, member) whose patch can change the metric, in layer order; with ``edge``, each
    patch acts at the member's own query position (and key position, for a knockout)."""
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
    member = torch.cat(member)
    slot = Slot(site, torch.cat(layer_), torch.cat(at_))
    if edge is not None:
        prompt = bucket.members[member]
        slot.position = edge.src[prompt] - bucket.split
        slot.knockout_key = edge.dst[prompt] if edge.knockout else None
    return Rows(member, torch.cat(column_), [slot])


def patch_window(
    model: HookedModel,
    bucket: Bucket,
    site: Site,
    window: list[int],
    todo: dict[int, list[int]],
    values: dict[int, Float[Tensor, "prompt index"]],
    budget: float,
    stop: threading.Event | None = None,
    edge: Edge | None = None,
) -> None:
    """Fill ``values`` for this bucket's prompts, one batch of patched runs per memory budget; once ``stop``
    is set, give up before the next batch."""
    if site.per_position:  # patches that cannot change the metric leave the run patched into as it was
        for layer in window:
            values[layer][bucket.members] = bucket.target_metric[:, None]
    rows = _window_rows(bucket, site, window, todo, edge)
    metric = run_rows(model, bucket, rows, budget, stop)
    joins = rows.layer
    for layer in joins.unique().tolist():
        mine = joins == layer
        values[layer][bucket.members[rows.member[mine]], rows.column[mine]] = metric[mine]


def run_rows(
    model: HookedModel, bucket: Bucket, rows: Rows, budget: float, stop: threading.Event | None = None
) -> Float[Tensor, " row"]:
    """The metric of every patched run, in batches of at most ``budget`` bytes; once ``stop`` is set, give up
    before the next batch. ``rows`` must be sorted by the layer they join at."""
    from probes.evidence.patching.hooked import hooked_run  # (it imports this module)

    run = hooked_run if is_bridge(model) else staggered_run  # a bridge cannot start mid-model
    per_batch = max(1, int(budget // bucket.row_bytes))
    out = []
    for start in range(0, len(rows), per_batch):
        if stop is not None and stop.is_set():
            raise Stopped
        out.append(run(model, bucket, rows[start : start + per_batch]))
    return torch.cat(out) if out else torch.empty(0)


def runs_rows(bucket: Bucket, sites: Sequence[Site], runs: Int[Tensor, "run patch 2"]) -> Rows:
    """One row per (run, member): run ``r`` patches ``sites[k]`` at layer ``runs[r, k, 0]``, head
    ``runs[r, k, 1]``; rows sorted by the layer they join at (``column`` is the run)."""
    n = len(bucket.members)
    layer, at = runs[..., 0].repeat_interleave(n, 0), runs[..., 1].repeat_interleave(n, 0)  # [row, patch]
    member = torch.arange(n).repeat(len(runs))
    column = torch.arange(len(runs)).repeat_interleave(n)
    order = torch.sort(layer.min(1).values, stable=True).indices
    return Rows(member[order], column[order], [Slot(site, layer[order, k], at[order, k]) for k, site in enumerate(sites)])


@torch.no_grad()
def staggered_run(model: HookedModel, bucket: Bucket, rows: Rows) -> Float[Tensor, " row"]:
    """Patched runs that start at different layers, as one batch: each row joins at its earliest patch, from the
    target run's residual stream there, so no block runs for a row before its first patch; each slot's patch is
    applied at the row's layer for that slot.

    Blocks are called directly, as ``HookedTransformer.forward`` calls them after ``start_at_layer``, with plain
    torch hooks on the patched hook points only: ``run_with_hooks`` would add and remove hooks on every hook
    point of the model for each block, which costs as much as a short block itself. Shortformer blocks get the
    positions they compute (``split..end``), which their residual stream does not carry."""
    joins = rows.layer
    first = int(joins[0])
    resid = bucket.target_resid[first][:0]
    positions = shortformer_positions(model, bucket.split, resid.shape[1])
    joined = 0
    last = model.cfg.n_layers - 1
    patched_last = any(bool((slot.layer == last).any()) for slot in rows.slots)
    for layer in range(first, model.cfg.n_layers):
        block = model.blocks[layer]
        stop = int((joins <= layer).sum())
        prefix = _row_prefix(bucket, rows.member[:stop], layer)
        if layer == last and not patched_last and resid.shape[1] > 1 and keys_values_separate(model):
            resid = run_block_at_last(block, resid, prefix, positions)
            continue
        if stop > joined:
            resid = torch.cat([resid, bucket.target_resid[layer][rows.member[joined:stop]]])
            joined = stop
        handles = []
        for slot in rows.slots:
            here = (slot.layer[:stop] == layer).nonzero()[:, 0]
            if len(here):
                hook = patch_hook(slot[here], here, patch_values(bucket, slot[here], rows.member[here], layer))
                handles.append(model.get_submodule(slot.site.hook_name(layer)).register_forward_hook(hook))
        try:
            resid = run_block(block, resid, prefix, positions)
        finally:
            for handle in handles:
                handle.remove()
    return bucket.metric(model, resid[:, -1], bucket.answer[rows.member], bucket.foil[rows.member]).float()


def patch_values(bucket: Bucket, slot: Slot, members: Int[Tensor, " new"], layer: int) -> Tensor | None:
    """What the other run had where ``slot`` patches (None for a knockout, which edits the run's own pattern)."""
    if slot.knockout_key is not None:
        return None
    source = bucket.source_acts[slot.site.component][layer]
    if slot.position is None:
        return source[members, slot.at]
    return source[members, slot.at, slot.position]


def patch_hook(slot: Slot, rows: Int[Tensor, " new"], values: Tensor | None):
    """A forward hook applying ``slot``'s patch to batch rows ``rows`` (``values[i]`` to ``rows[i]``); other rows
    pass as they are. It acts only in the thread that made it: other workers run the same module."""
    owner = threading.get_ident()

    def hook(module, inputs, activation: Tensor) -> Tensor:
        if threading.get_ident() != owner:
            return activation
        view = activation.movedim(slot.site.variant_axis, 1)  # [batch, variant, (query) position, ...]
        if slot.position is None or slot.knockout_key is None:
            assert values is not None, "only a knockout patches no values"
            view[(rows, slot.at) if slot.position is None else (rows, slot.at, slot.position)] = values
        else:
            weights = view[rows, slot.at, slot.position]  # [new, key]
            total = weights.sum(-1, keepdim=True)  # 1, or less where attention sinks take a share
            weights[torch.arange(len(rows)), slot.knockout_key] = 0
            rest = weights.sum(-1, keepdim=True)  # 0 where the head looked only at dst: it then reads nothing
            view[rows, slot.at, slot.position] = torch.where(rest > 0, weights * (total / rest), weights)
        return activation

    return hook


def _row_prefix(bucket: Bucket, members: Int[Tensor, " row"], layer: int) -> KeysValues | None:
    """The target run's keys and values of ``layer`` before ``split``, one copy per row."""
    if bucket.prefix is None:
        return None
    keys, values = bucket.prefix[layer]
    return keys[members], values[members]


