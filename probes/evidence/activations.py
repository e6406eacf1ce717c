"""Harvest activations at chosen hook points and prompt positions, streamed to disk, for linear probes.

A probe needs one vector per (prompt, position) per hook point, never a whole cache: a full cache of SmolLM2 on
2,000 prompts is gigabytes, the rows a probe reads are megabytes. So each batch runs with hooks on only the
hook points asked for, stops after the last layer needed (no unembedding: Gemma's vocabulary is 262k), keeps only
the rows at the probed positions, and writes them as one safetensors shard. Peak memory is one batch, whatever N.

Hook kinds:

* ``resid_pre`` / ``resid_post``: the residual stream entering / leaving block ``layer``, ``[row, d_model]``;
* ``z``: each head's output before ``W_O`` (the attention-weighted values), ``[row, head, d_head]``;
* ``result``: each head's contribution to the residual stream, ``z @ W_O[head]``, ``[row, head, d_model]``,
  computed from ``z`` at the gathered rows only (TransformerLens's ``hook_result`` would materialise it at every
  position of every prompt). The output bias ``b_O`` is shared by the heads, so it belongs to none and is left out;
* ``q`` / ``k``: each head's query / key as the projection makes it (TransformerLens's ``hook_q`` / ``hook_k``),
  before any query/key norm (Gemma-3's) and before the rotary step (``hook_rot_q`` / ``hook_rot_k`` come after):
  what a head asks and offers, not yet turned by position. ``q`` is ``[row, head, d_head]``; ``k`` is
  ``[row, kv_head, d_head]``: in a grouped-query model one key head serves several query heads (Gemma-3-270m:
  one serves all four), so a probe on ``k`` reads the key head query head ``h`` shares.

On disk, a directory: ``shard-00000.safetensors``... each holding every hook's rows for one batch (stored under
TransformerLens hook names, e.g. ``blocks.3.attn.hook_z``) plus per-row ``prompt``, ``position``, ``token`` and
``previous_token`` ids, and ``manifest.json`` (hooks, shapes, shards, the prompt set's task and labels). The
directory appears only once complete. :class:`Activations` reads it back one hook point at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.core.memory import batches
from probes.models.architecture import attention_bytes, n_kv_heads
from probes.models.frozen import frozen_model
from probes.models.hooks import HookPoint, get_act_name
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

RESID_KINDS = ("resid_pre", "resid_post")
HEAD_KINDS = ("z", "result", "q", "k")
HOOK_KINDS = RESID_KINDS + HEAD_KINDS
ALL_POSITIONS = "all"  # ``at=ALL_POSITIONS``: every real position of every prompt (0..end), e.g. previous token
MANIFEST = "manifest.json"
FORMAT = 1
ROW_FIELDS = ("prompt", "position", "token", "previous_token")
NO_PREVIOUS = -1  # ``previous_token`` of position 0
HARVEST_BATCH = 32  # prompts a harvest pass batches (lowered to fit the memory budget)


@dataclass(frozen=True)
class ProbePoint:
    """One place a probe reads: a stored hook, and a head for per-head hooks (``None`` for the residual stream)."""

    hook: str
    kind: str
    layer: int
    head: int | None = None


def hook_name(kind: str, layer: int) -> str:
    """The name a hook kind is stored under: TransformerLens's own (``result`` as ``blocks.L.attn.hook_result``)."""
    return get_act_name(kind, layer)


def _check_request(
    model: HookedModel, prompts: PromptSet, kinds: Sequence[str], layers: Sequence[int], at: str
) -> None:
    prompts.check_model(model)
    if not kinds:
        raise ProbesError(f"no hook kinds given; choose from {', '.join(HOOK_KINDS)}")
    unknown = [k for k in kinds if k not in HOOK_KINDS]
    if unknown:
        raise ProbesError(f"unknown hook kind '{unknown[0]}'; choose from {', '.join(HOOK_KINDS)}")
    n_layers = model.cfg.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ProbesError(f"layers must be a non-empty list within 0..{n_layers - 1} for this model, got {layers}")
    if at != ALL_POSITIONS:
        prompts.role(at)  # raises, naming the roles that exist


def _rows(prompts: PromptSet, index: slice, at: str) -> tuple[Int[Tensor, " row"], Int[Tensor, " row"]]:
    """(prompt-in-batch, position) of every row a batch contributes: one per prompt at a role, or all real positions."""
    if at != ALL_POSITIONS:
        pos = prompts.roles[at][index]
        return torch.arange(len(pos)), pos
    lengths = prompts.end[index] + 1
    batch_idx = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    starts = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    return batch_idx, torch.arange(len(batch_idx)) - starts


def head_results(
    model: HookedModel, layer: int, z: Float[Tensor, "row head d_head"]
) -> Float[Tensor, "row head d_model"]:
    """Each head's write into the residual stream, ``z @ W_O[head]``, for the given rows only."""
    return einops.einsum(z, model.blocks[layer].attn.W_O, "row head d_head, head d_head d_model -> row head d_model")


@torch.no_grad()
def _harvest_batch(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    batch_idx: Int[Tensor, " row"],
    pos_idx: Int[Tensor, " row"],
    kinds: Sequence[str],
    layers: Sequence[int],
) -> dict[str, Tensor]:
    """Run one batch with hooks on only the needed hook points; return just the gathered rows."""
    gathered: dict[str, Tensor] = {}
    by_source: dict[str, list[tuple[str, int]]] = {}
    for layer in layers:
        for kind in kinds:
            source = hook_name("z" if kind == "result" else kind, layer)
            by_source.setdefault(source, []).append((kind, layer))

    def gather(act: Tensor, hook: HookPoint) -> None:
        rows = act[batch_idx.to(act.device), pos_idx.to(act.device)]
        assert hook.name is not None, "TransformerLens names every hook point of a model"
        for kind, layer in by_source[hook.name]:
            out = head_results(model, layer, rows) if kind == "result" else rows
            gathered[hook_name(kind, layer)] = out.detach().to("cpu", copy=True).contiguous()

    model.run_with_hooks(
        tokens.to(model.cfg.device),
        fwd_hooks=[(source, gather) for source in by_source],
        stop_at_layer=max(layers) + 1,
    )
    return gathered


def hook_shape(model: HookedModel, kind: str) -> list[int]:
    """The shape of one stored row of a hook kind (as the module docstring lists them)."""
    cfg = model.cfg
    return {"resid_pre": [cfg.d_model], "resid_post": [cfg.d_model], "z": [cfg.n_heads, cfg.d_head],
            "result": [cfg.n_heads, cfg.d_model], "q": [cfg.n_heads, cfg.d_head], "k": [n_kv_heads(model), cfg.d_head]}[kind]


def harvest_bytes(
    model: HookedModel, batch: int, n_pos: int, kinds: Sequence[str], n_layers: int, every_position: bool
) -> int:
    """Rough peak bytes of one harvest batch: one layer's attention scores, plus the rows it gathers (every real
    position, or one per prompt) of each kind at each layer, float32."""
    rows = batch * (n_pos if every_position else 1)
    width = sum(math.prod(hook_shape(model, kind)) for kind in kinds)
    return attention_bytes(model, batch, n_pos) + 4 * rows * n_layers * width


def _json_value(value: object) -> object:
    """Labels come as Python, numpy or torch scalars: store them as plain JSON values (anything else as text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


@frozen_model
def harvest(
    model: HookedModel,
    prompts: PromptSet,
    out_dir: str | Path,
    kinds: Sequence[str] = ("resid_post",),
    layers: Iterable[int] | None = None,
    at: str = "end",
    *,
    side: str = "clean",
    batch_size: int = HARVEST_BATCH,
    overwrite: bool = False,
) -> Activations:
    """Gather ``kinds`` at ``layers`` (default: all) at role ``at`` (or every position) and stream them to ``out_dir``.

    ``side`` picks the clean or the corrupt tokens. Returns the reader for the finished directory.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else sorted(set(int(layer) for layer in layers))
    kinds = list(dict.fromkeys(kinds))
    _check_request(model, prompts, kinds, layers, at)
    if side not in ("clean", "corrupt"):
        raise ProbesError(f"side must be 'clean' or 'corrupt', got '{side}'")
    if batch_size < 1:
        raise ProbesError(f"batch_size must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    _check_writable(out_dir, overwrite)
    tokens_all = prompts.clean if side == "clean" else prompts.corrupt
    with atomic_dir(out_dir) as tmp:
        shards, shapes = [], {}
        need = lambda batch, n_pos: harvest_bytes(model, batch, n_pos, kinds, len(layers), at == ALL_POSITIONS)  # noqa: E731
        fits = batches((prompts.end + 1).tolist(), batch_size, need, "harvesting activations", "shorten the prompts")
        for number, index in enumerate(tqdm(list(fits), desc=f"harvest {len(prompts)}", unit="batch", disable=None)):
            start = index.start
            batch_idx, pos_idx = _rows(prompts, index, at)
            tokens = tokens_all[index, : int(prompts.end[index].max()) + 1]  # padding after the last end is never read
            tensors = _harvest_batch(model, tokens, batch_idx, pos_idx, kinds, layers)
            previous = tokens[batch_idx, (pos_idx - 1).clamp(min=0)]
            tensors.update(
                prompt=batch_idx + start,
                position=pos_idx,
                token=tokens[batch_idx, pos_idx],
                previous_token=torch.where(pos_idx > 0, previous, NO_PREVIOUS),
            )
            file = f"shard-{number:05d}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / file))
            shards.append({"file": file, "rows": len(batch_idx)})
            shapes = {name: list(t.shape[1:]) for name, t in tensors.items() if name not in ROW_FIELDS}
        manifest = {
            "format": FORMAT,
            "model": model.cfg.model_name,
            "task": prompts.task,
            "at": at,
            "side": side,
            "n_prompts": len(prompts),
            "n_rows": sum(s["rows"] for s in shards),
            "hooks": {
                hook_name(kind, layer): {"kind": kind, "layer": layer, "shape": shapes[hook_name(kind, layer)]}
                for layer in layers
                for kind in kinds
            },
            "shards": shards,
            "labels": {key: [_json_value(v) for v in values] for key, values in prompts.labels.items()},
            "groups": [_json_value(g) for g in prompts.groups],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest))
    return Activations(out_dir)


def _check_writable(out_dir: Path, overwrite: bool) -> None:
    """Never clobber anything but an earlier harvest, and that only when asked."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not (out_dir / MANIFEST).is_file():
        raise ProbesError(f"{out_dir} exists and is not an activations directory; choose a new or empty directory")
    if not overwrite:
        raise ProbesError(f"{out_dir} already holds activations; pass overwrite=True or choose another directory")


class Activations:
    """Read-only view of a harvested directory: row metadata, prompt labels, and one hook point at a time."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            manifest = json.loads((self.directory / MANIFEST).read_text())
        except OSError:
            raise ProbesError(
                f"{self.directory} is not an activations directory (no {MANIFEST}); make one with probes.harvest"
            ) from None
        except ValueError as err:
            raise ProbesError(f"{self.directory / MANIFEST} is not valid JSON ({err}); harvest again") from None
        if manifest.get("format") != FORMAT:
            version = manifest.get("format")
            raise ProbesError(f"{self.directory} was written by another version (format {version}); harvest again")
        self.manifest = manifest
        self._rows: dict[str, np.ndarray] | None = None

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def labels(self) -> dict[str, list]:
        return self.manifest["labels"]

    @property
    def groups(self) -> list | None:
        """Each prompt's group (the unit of resampling); None for stores harvested before groups existed."""
        return self.manifest.get("groups")

    @property
    def at(self) -> str:
        return self.manifest["at"]

    @property
    def n_rows(self) -> int:
        return self.manifest["n_rows"]

    @property
    def n_prompts(self) -> int:
        return self.manifest["n_prompts"]

    def points(self) -> list[ProbePoint]:
        """Every place a probe can read: one per residual hook, one per head of each per-head hook."""
        out = []
        for name, info in self.manifest["hooks"].items():
            heads = range(info["shape"][0]) if info["kind"] in HEAD_KINDS else [None]
            out.extend(ProbePoint(name, info["kind"], info["layer"], head) for head in heads)
        return out

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """Per-row ``prompt``, ``position``, ``token``, ``previous_token`` (small; read once)."""
        if self._rows is None:
            parts = {field: [] for field in ROW_FIELDS}
            for shard in self.manifest["shards"]:
                with safe_open(str(self.directory / shard["file"]), framework="pt") as f:
                    for field in ROW_FIELDS:
                        parts[field].append(f.get_tensor(field))
            self._rows = {field: torch.cat(parts[field]).numpy() for field in ROW_FIELDS}
        return self._rows

    def load(self, hook: str, head: int | None = None) -> Float[Tensor, "row ..."]:
        """One hook's rows, read shard by shard (memory-mapped), optionally only one head of a per-head hook."""
        info = self.manifest["hooks"].get(hook)
        if info is None:
            raise ProbesError(f"no hook '{hook}' in {self.directory}; it holds: {', '.join(self.hooks)}")
        if head is not None and (info["kind"] not in HEAD_KINDS or not 0 <= head < info["shape"][0]):
            what = f"heads 0..{info['shape'][0] - 1}" if info["kind"] in HEAD_KINDS else "no heads (residual stream)"
            raise ProbesError(f"head {head} is not in '{hook}', which has {what}")
        parts = []
        for shard in self.manifest["shards"]:
            with safe_open(str(self.directory / shard["file"]), framework="pt") as f:
                parts.append(f.get_tensor(hook) if head is None else f.get_slice(hook)[:, head])
        return torch.cat(parts)
