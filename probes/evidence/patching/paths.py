"""Path patching: does a sender head's output reach a receiver's input along the direct path?

"Head 0.2 K-composes with head 1.2" is a claim about one path: the sender's output, read by the receiver's keys.
Patching the sender's whole output moves everything downstream of it; path patching moves only the receiver's
input. Per prompt, the run patched into (corrupt when denoising) is kept everywhere, except that the receiver's
query, key or value input (or the logits, for the direct path to the output) is recomputed from

    resid_base + (z_other[sender] - z_base[sender]) @ W_O[sender]

at every position: the sender's change reaches the receiver directly and through nothing else (every other head
and MLP stays at the base run, as when all other components are frozen, Wang et al. 2022). On models that
normalise each block's attention sum again before adding it (Gemma: ``ln1_post``), the sender's change enters as
its layer's output recomputed with the sender's ``z`` patched, ``ln1_post(sum_base + Δz W_O) - ln1_post(sum_base)``
(:func:`probes.models.writes.residual_change`): the same quantity as freezing every other head's ``z`` and every
MLP's output at the base run with hooks. The receiver's layer and everything after it then run normally. For
grouped-query models a ``k``/``v`` receiver is the key/value head that the query head reads, shared with its group.

Cost: one run of the two prompts of every pair, then for each receiver one batched run of all senders from the
receiver's layer on; only the metric is read (no full-vocabulary logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.memory import batches
from probes.evidence.metric import Metric, logit_diff_from_resid, resid_at
from probes.evidence.patching.engine import row_bytes
from probes.evidence.patching.sites import DIRECTIONS, Direction, PatchedMetric
from probes.models.architecture import keys_values_separate, kv_head_of, shortformer_positions
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.kernels import onednn_linear, use_onednn
from probes.models.protocol import ActivationCache, HookedModel
from probes.models.writes import attention_sum, residual_change
from probes.prompts.promptset import PromptSet

LOGITS = "logits"
RECEIVER_INPUTS = ("q", "k", "v")
PATHS_BATCH = 8  # prompts a batch (lowered to fit the memory budget)
Receiver = tuple[int, int, str] | str  # (layer, head, "q" | "k" | "v"), or "logits" for the direct path


@dataclass(frozen=True)
class PathsResult(PatchedMetric):
    """``patched[i, s, r]``: the metric of prompt ``i`` with sender ``s``'s path to receiver ``r`` patched (every
    receiver comes after every sender: :func:`patch_paths` refuses other pairs)."""

    senders: list[tuple[int, int]] = field(default_factory=list)
    receivers: list[Receiver] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, sender, receiver) that was run: patched metric, effect and normalised effect."""
        frame = self._frame(["prompt", "sender", "receiver"])
        frame["sender"] = [f"{layer}.{head}" for layer, head in (self.senders[s] for s in frame["sender"])]
        frame["receiver"] = [receiver_name(self.receivers[r]) for r in frame["receiver"]]
        return frame

    def _axes(self) -> tuple[str, ...]:
        return ("sender", "receiver")

    def _cell_name(self, index: tuple[int, ...]) -> str:
        layer, head = self.senders[index[0]]
        return f"{layer}.{head} -> {receiver_name(self.receivers[index[1]])}"


def receiver_name(receiver: Receiver) -> str:
    return receiver if isinstance(receiver, str) else f"{receiver[0]}.{receiver[1]}.{receiver[2]}"


def _check(model: HookedModel, senders: Sequence[tuple[int, int]], receivers: Sequence[Receiver]) -> None:
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not senders or not receivers:
        raise ProbesError("patch_paths needs at least one sender (layer, head) and one receiver")
    for sender in senders:
        if not (isinstance(sender, (tuple, list)) and len(sender) == 2 and all(isinstance(x, int) for x in sender)):
            raise ProbesError(f"sender {sender!r} is not a head (layer, head)")
        layer, head = sender
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ProbesError(f"sender {layer}.{head} does not exist: the model has {n_layers} layers x {n_heads} heads")
    for receiver in receivers:
        if receiver == LOGITS:
            continue
        if not (
            isinstance(receiver, (tuple, list)) and len(receiver) == 3 and receiver[2] in RECEIVER_INPUTS
            and all(isinstance(x, int) for x in receiver[:2])
        ):
            raise ProbesError(
                f"receiver {receiver!r} is neither (layer, head, 'q' | 'k' | 'v') nor 'logits'"
            )
        layer, head, _ = receiver
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ProbesError(f"receiver {layer}.{head} does not exist: the model has {n_layers} layers x {n_heads} heads")
        early = [f"{s_layer}.{s_head}" for s_layer, s_head in senders if s_layer >= layer]
        if early:
            raise ProbesError(
                f"receiver {receiver_name(receiver)} is not after sender {early[0]}: a head can only read the output "
                "of heads in earlier layers"
            )
    if not keys_values_separate(model):
        raise ProbesError("path patching needs attention whose q/k/v come from ln1(resid); this architecture differs")


@frozen_model
def patch_paths(
    model: HookedModel,
    prompts: PromptSet,
    senders: Sequence[tuple[int, int]],
    receivers: Sequence[Receiver],
    direction: Direction = "denoising",
    *,
    batch_size: int = PATHS_BATCH,
    progress: bool = True,
    onednn: bool | None = None,
    metric: Metric = logit_diff_from_resid,
) -> PathsResult:
    """Per prompt, the metric with each sender's output from the other run reaching only each receiver's input
    (``(layer, head, "q" | "k" | "v")``, or ``"logits"``: the direct path to the output); see the module doc."""
    prompts.check_model(model)
    if direction not in DIRECTIONS:
        raise ProbesError(f"unknown direction '{direction}'; choose 'denoising' (clean into corrupt) or 'noising'")
    if batch_size < 1:
        raise ProbesError(f"batch_size must be at least 1, got {batch_size}")
    _check(model, senders, receivers)
    senders = [(int(layer), int(head)) for layer, head in senders]
    receivers = [r if r == LOGITS else (int(r[0]), int(r[1]), r[2]) for r in receivers]
    target_tokens, source_tokens = (
        (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    )
    n = len(prompts)
    patched = torch.full((n, len(senders), len(receivers)), float("nan"))
    target_metric, source_metric = torch.empty(n), torch.empty(n)
    lengths = (prompts.end + 1).tolist()
    def need(batch: int, length: int) -> int:
        return paths_bytes(model, batch, length, len(senders))

    fix = "shorten the prompts, use fewer senders, or raise PROBES_MEMORY_FRACTION"
    with onednn_linear(use_onednn(model, onednn)), tqdm(
        total=n, desc="path patching", unit="prompt", disable=None if progress else True
    ) as bar:
        for index in batches(lengths, batch_size, need, "path patching", fix):
            batch = prompts.subset(index)
            length = int(batch.end.max()) + 1
            out = _paths_batch(
                model, batch, target_tokens[index, :length], source_tokens[index, :length], senders, receivers, metric
            )
            patched[index], target_metric[index], source_metric[index] = out
            bar.update(index.stop - index.start)
    clean, corrupt = (source_metric, target_metric) if direction == "denoising" else (target_metric, source_metric)
    return PathsResult(patched, clean, corrupt, direction, prompts.group_index, senders=senders, receivers=receivers)


def paths_bytes(model: HookedModel, batch: int, n_pos: int, n_senders: int) -> int:
    """Rough peak bytes of one batch of :func:`patch_paths`: its prompts run once per sender, plus the two
    unpatched runs, each as one patched run through one block (:func:`.engine.row_bytes`)."""
    return batch * (n_senders + 2) * row_bytes(model, 0, n_pos)


def _paths_batch(
    model: HookedModel,
    prompts: PromptSet,
    target: Tensor,
    source: Tensor,
    senders: list[tuple[int, int]],
    receivers: list[Receiver],
    metric: Metric,
) -> tuple[Float[Tensor, "prompt sender receiver"], Float[Tensor, " prompt"], Float[Tensor, " prompt"]]:
    n_layers = model.cfg.n_layers
    z_names = {get_act_name("z", layer) for layer, _ in senders}
    resid_names = {get_act_name("resid_pre", r[0]) for r in receivers if r != LOGITS}
    target_final, target_cache = model.run_with_cache(
        target, stop_at_layer=n_layers, names_filter=lambda name: name in z_names | resid_names
    )
    source_final, source_cache = model.run_with_cache(source, stop_at_layer=n_layers, names_filter=lambda name: name in z_names)

    def read(final: Float[Tensor, "row pos d_model"], rows: int) -> Float[Tensor, " row"]:
        end = prompts.end.repeat(rows // len(prompts))
        answer, foil = prompts.answer.repeat(rows // len(prompts)), prompts.foil.repeat(rows // len(prompts))
        return metric(model, resid_at(final, end), answer, foil).float()

    deltas = _sender_deltas(model, senders, target_cache, source_cache)
    out = torch.full((len(prompts), len(senders), len(receivers)), float("nan"))
    for r, receiver in enumerate(receivers):
        if isinstance(receiver, str):  # LOGITS
            final = (target_final[None] + deltas).flatten(0, 1)
            out[:, :, r] = read(final, final.shape[0]).reshape(len(senders), -1).T
            continue
        layer, head, component = receiver
        base = target_cache[get_act_name("resid_pre", layer)]
        inputs = _receiver_inputs(model, layer, component, base[None] + deltas)  # [sender, prompt, pos, d_head]
        variant = int(kv_head_of(model, inputs.shape[-2])[head]) if component in ("k", "v") else head
        final = _run_with_receiver(model, layer, component, variant, base, inputs)
        out[:, :, r] = read(final, final.shape[0]).reshape(len(senders), -1).T
    return out, read(target_final, len(prompts)), read(source_final, len(prompts))


def _sender_deltas(
    model: HookedModel,
    senders: list[tuple[int, int]],
    target_cache: ActivationCache,
    source_cache: ActivationCache,
) -> Float[Tensor, "sender prompt pos d_model"]:
    """What each sender's change (its ``z`` from the source run) adds to the base run's residual stream at every
    position, through its layer's post-norm where the model has one."""
    sums = {}  # each sender layer's pre-norm attention output in the base run
    deltas = []
    for layer, head in senders:
        name = get_act_name("z", layer)
        if layer not in sums:
            sums[layer] = attention_sum(model, layer, target_cache[name])
        written = (source_cache[name][:, :, head] - target_cache[name][:, :, head]) @ model.blocks[layer].attn.W_O[head]
        deltas.append(residual_change(model, layer, "attn", sums[layer], written))
    return torch.stack(deltas)


def _receiver_inputs(
    model: HookedModel, layer: int, component: str, resid: Float[Tensor, "sender prompt pos d_model"]
) -> Tensor:
    """The receiver layer's ``hook_{q,k,v}`` activation (every head) as the block computes it from ``resid``
    (shortformer positions added to the query and key inputs, as the block adds them)."""
    block = model.blocks[layer]
    captured: list[Tensor] = []

    def keep(module: nn.Module, inputs: object, output: Tensor) -> None:
        captured.append(output)

    hook = block.attn.get_submodule(f"hook_{component}").register_forward_hook(keep)
    try:
        x = block.ln1(resid.flatten(0, 1))
        positions = shortformer_positions(model, 0, x.shape[1])
        with_positions = x if positions is None else x + positions
        block.attn.calculate_qkv_matrices(with_positions, with_positions, x)
    finally:
        hook.remove()
    return captured[0].reshape(*resid.shape[:2], *captured[0].shape[1:])


def _run_with_receiver(
    model: HookedModel, layer: int, component: str, variant: int, base: Tensor, inputs: Tensor
) -> Float[Tensor, "row pos d_model"]:
    """The base run from ``layer`` on, once per sender, with the receiver head's input replaced: every other head of
    the layer reads the base residual stream."""
    n_senders = inputs.shape[0]
    values = inputs[..., variant, :].flatten(0, 1)  # [sender * prompt, pos, d_head]

    def hook(activation: Tensor, hook) -> Tensor:
        activation[:, :, variant] = values
        return activation

    resid = base.repeat(n_senders, 1, 1)
    return model.run_with_hooks(
        resid, start_at_layer=layer, stop_at_layer=model.cfg.n_layers,
        shortformer_pos_embed=shortformer_positions(model, 0, resid.shape[1]),
        fwd_hooks=[(get_act_name(component, layer), hook)],
    )
