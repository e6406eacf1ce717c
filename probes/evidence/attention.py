"""Attention evidence, per prompt and per head: where a head looks, and how much of what it looks at it moves.

Every function here returns one value per prompt (``[prompt, layer, head]``), so claims get a distribution and a
CI rather than a batch mean. Only the hooks a quantity needs are attached (``pattern``, ``v``), each hook
keeps only the entries it needs, and the forward pass stops before the unembedding: nothing vocabulary-sized and
no full activation cache is ever built.

- :func:`role_attention`: the attention weight alpha from a source role to a destination role.
- :func:`norm_weighted_attention`: alpha times the norm of what the head writes from the destination token,
  ``alpha_ij * ||v_j W_O^h||`` (Kobayashi et al. 2020, "Attention is not only a weight"). A head can put all
  its attention on a token and still write nothing (a zero or tiny OV circuit): this is the number that sees it.
- :func:`head_scores` / :func:`head_score_samples`: previous-token, duplicate-token and induction scores on
  random-token sequences, the usual detectors for those head types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.memory import batches
from probes.evidence.patching.reference import sharing, side_run
from probes.models.architecture import attention_bytes, kept_attention_bytes, kv_head_of
from probes.models.frozen import frozen_model
from probes.models.hooks import get_act_name
from probes.models.protocol import HookedModel
from probes.prompts import tasks
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import Role, src_dst_positions
# Given one attention activation of a layer (pattern or values) and the layer index, the [batch, head] values kept.
Reader = Callable[[Tensor, int], Float[Tensor, "batch head"]]

KINDS = ("previous_token", "duplicate_token", "induction")
SHARED = ("pattern", "v")  # what attention readers read: kept together inside a shared_runs scope
ATTENTION_BATCH = 16  # prompts a pass batches (lowered to fit the memory budget)


@torch.no_grad()
def _per_head(
    model: HookedModel,
    prompts: PromptSet,
    make_readers: Callable[[slice, Int[Tensor, "batch pos"]], dict[str, Reader]],
    batch_size: int,
    desc: str,
) -> dict[str, Float[Tensor, "prompt layer head"]]:
    """Run the clean prompts in batches, calling each batch's readers on every layer's named attention hook.

    ``make_readers(idx, tokens)`` returns, per TransformerLens activation name (``"pattern"``, ``"v"``), a
    reader; what it returns for layer ``L`` lands in ``out[name][idx, L]``. Batches are halved until their
    attention tensors fit the memory budget (:mod:`probes.core.memory`) and trimmed to their longest real prompt.
    Inside a :func:`probes.evidence.patching.shared_runs` scope the batch's patterns and values are run once and
    kept, so a run's several attention measures share one pass.
    """
    prompts.check_model(model)
    n, n_layers, n_heads = len(prompts), model.cfg.n_layers, model.cfg.n_heads
    out: dict[str, Tensor] = {}
    lengths = (prompts.end + 1).tolist()
    need = functools.partial(shared_attention_bytes if sharing() else attention_bytes, model)
    fits = batches(lengths, batch_size, need, "attention", "shorten the prompts")
    for idx in tqdm(list(fits), desc=desc, disable=None, leave=False):
        tokens = prompts.clean[idx, : max(lengths[idx])]
        readers = make_readers(idx, tokens)
        if sharing():  # a run's attention measures read one kept pass: patterns and values of every layer
            names = {get_act_name(name, layer) for name in SHARED for layer in range(n_layers)}
            acts = side_run(model, prompts.clean, torch.arange(n)[idx], tokens.shape[1] - 1, names).acts
            for name, read in readers.items():
                store = out.setdefault(name, torch.zeros(n, n_layers, n_heads))
                for layer in range(n_layers):
                    store[idx, layer] = read(acts[get_act_name(name, layer)], layer).float().cpu()
            continue
        hooks = []
        for name, read in readers.items():
            store = out.setdefault(name, torch.zeros(n, n_layers, n_heads))

            def hook(activation: Tensor, hook, read: Reader = read, store: Tensor = store) -> None:
                store[idx, hook.layer()] = read(activation, hook.layer()).float().cpu()

            names = {get_act_name(name, layer) for layer in range(n_layers)}
            hooks.append((lambda hook_name, names=names: hook_name in names, hook))
        model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=n_layers)
    return out


def shared_attention_bytes(model: HookedModel, batch: int, n_pos: int) -> int:
    """Peak bytes of one batch inside a shared-runs scope: the pass itself and the patterns and values it keeps."""
    return attention_bytes(model, batch, n_pos) + kept_attention_bytes(model, batch, n_pos)


def _pattern_reader(src: Int[Tensor, " batch"], dst: Int[Tensor, " batch"]) -> Reader:
    def read(pattern: Float[Tensor, "batch head query key"], layer: int) -> Float[Tensor, "batch head"]:
        rows = torch.arange(pattern.shape[0], device=pattern.device)
        return pattern[rows, :, src.to(pattern.device), dst.to(pattern.device)]

    return read


def _value_norm_reader(model: HookedModel, dst: Int[Tensor, " batch"]) -> Reader:
    """||v_dst W_O^h|| per head: the size of what head h writes per unit of attention on ``dst``."""

    def read(v: Float[Tensor, "batch pos kv_head d_head"], layer: int) -> Float[Tensor, "batch head"]:
        rows = torch.arange(v.shape[0], device=v.device)
        v_dst = v[rows, dst.to(v.device)]
        v_dst = v_dst[:, kv_head_of(model, v_dst.shape[1]).to(v.device)]  # grouped-query: each query head's value head
        written = torch.einsum("bhd,hdm->bhm", v_dst, model.blocks[layer].attn.W_O)
        return written.norm(dim=-1)

    return read


@frozen_model
def role_attention(
    model: HookedModel, prompts: PromptSet, src: Role, dst: Role, batch_size: int = ATTENTION_BATCH
) -> Float[Tensor, "prompt layer head"]:
    """Attention weight from the ``src`` role's position to the ``dst`` role's position, on the clean prompts.

    Roles are role names or per-prompt position tensors; ``dst="previous"`` means ``src - 1`` when the prompt set
    has no role of that name.
    """
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)

    def readers(idx: slice, tokens: Tensor) -> dict[str, Reader]:
        return {"pattern": _pattern_reader(src_pos[idx], dst_pos[idx])}

    return _per_head(model, prompts, readers, batch_size, "attention")["pattern"]


@frozen_model
def norm_weighted_attention(
    model: HookedModel, prompts: PromptSet, src: Role, dst: Role, batch_size: int = ATTENTION_BATCH
) -> Float[Tensor, "prompt layer head"]:
    """``alpha[src, dst] * ||v_dst W_O^h||`` (Kobayashi et al. 2020), in residual-stream units, unnormalised.

    This is the norm of the part of head h's output at ``src`` that comes from ``dst``: zero for a head that
    attends but has no OV circuit, whatever its pattern. ``v`` includes the value bias; ``b_O`` (shared by all
    heads) and any post-attention normalisation (Gemma's) are left out, so it measures the head's write into the
    attention output. Kobayashi et al. compare these raw norms across tokens; so compare values within a model.
    """
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)

    def readers(idx: slice, tokens: Tensor) -> dict[str, Reader]:
        return {
            "v": _value_norm_reader(model, dst_pos[idx]),
            "pattern": _pattern_reader(src_pos[idx], dst_pos[idx]),
        }

    out = _per_head(model, prompts, readers, batch_size, "norm-weighted attention")
    return out["pattern"] * out["v"]


def detection_mask(
    kind: str, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"]
) -> Bool[Tensor, "batch query key"]:
    """The (query, key) pairs a head of type ``kind`` attends to, as in TransformerLens's head_detector.

    previous_token: key = query - 1 (query 0, the BOS, has no previous token). duplicate_token: earlier keys
    holding the query's token. induction: keys right after an earlier occurrence of the query's token. Only
    real (unpadded) positions count.
    """
    n_pos = tokens.shape[1]
    pos = torch.arange(n_pos)
    query, key = pos[:, None], pos[None, :]
    real = pos[None, :] <= end[:, None]
    if kind == "previous_token":
        mask = (key == query - 1).expand(len(tokens), n_pos, n_pos)
    elif kind in ("duplicate_token", "induction"):
        duplicate = (tokens[:, :, None] == tokens[:, None, :]) & (key < query)
        if kind == "duplicate_token":
            mask = duplicate
        else:
            mask = torch.zeros_like(duplicate)
            mask[:, :, 1:] = duplicate[:, :, :-1]  # the token after each earlier occurrence
    else:
        raise ProbesError(f"unknown head kind '{kind}'; kinds: {', '.join(KINDS)}")
    return mask & real[:, :, None] & real[:, None, :]


def _score_reader(mask: Bool[Tensor, "batch query key"]) -> Reader:
    """Mean over queries that have a target of the attention they put on their targets."""
    n_queries = mask.any(-1).sum(-1).float()

    def read(pattern: Float[Tensor, "batch head query key"], layer: int) -> Float[Tensor, "batch head"]:
        on_target = (pattern * mask[:, None].to(pattern.device)).sum((-1, -2))
        return on_target / n_queries[:, None].to(pattern.device)

    return read


@frozen_model
def head_score_samples(
    model: HookedModel,
    kind: str,
    n: int = 16,
    seed: int = 0,
    prompts: PromptSet | None = None,
    batch_size: int = ATTENTION_BATCH,
) -> Float[Tensor, "prompt layer head"]:
    """Per-prompt head-type scores: for each prompt, the attention a head puts on its targets, averaged over queries.

    Inputs: ``prompts`` if given, else :func:`probes.prompts.tasks.previous_token` sequences for ``previous_token`` and
    :func:`probes.prompts.tasks.induction` sequences (``BOS r r``) for ``duplicate_token`` and ``induction``. Only queries
    that have a target are averaged (so the BOS never counts as a query for previous_token). This equals
    TransformerLens's ``detect_head(..., error_measure="mul")`` on one sequence of T tokens times T / (number of
    queries with a target): same ranking on equal-length sequences, but 1 means "all attention on the targets".
    """
    if kind not in KINDS:
        raise ProbesError(f"unknown head kind '{kind}'; kinds: {', '.join(KINDS)}")
    if prompts is None:
        make = tasks.previous_token if kind == "previous_token" else tasks.induction
        prompts = make(model, n, seed=seed)

    def readers(idx: slice, tokens: Tensor) -> dict[str, Reader]:
        return {"pattern": _score_reader(detection_mask(kind, tokens, prompts.end[idx]))}

    return _per_head(model, prompts, readers, batch_size, f"{kind} scores")["pattern"]


def head_scores(
    model: HookedModel, kind: str, n: int = 16, seed: int = 0, prompts: PromptSet | None = None
) -> Float[Tensor, "layer head"]:
    """Mean over prompts of :func:`head_score_samples`: one score per head (see there for the definition)."""
    return head_score_samples(model, kind, n=n, seed=seed, prompts=prompts).mean(0)


@torch.no_grad()
def attention_patterns(model: HookedModel, prompts: PromptSet, heads: list[tuple[int, int]], k: int) -> list[dict]:
    """Whole attention patterns of ``heads`` on the first ``k`` clean prompts (real tokens only), for showing:
    ``{"tokens", "patterns": {"L.H": [query][key]}, "prompt", "roles"}`` per prompt."""
    out = []
    layers = sorted({layer for layer, _ in heads})
    for i in range(min(k, len(prompts))):
        end = int(prompts.end[i]) + 1
        tokens = prompts.clean[i : i + 1, :end]
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name in {get_act_name("pattern", layer) for layer in layers},
            stop_at_layer=max(layers) + 1,
        )
        labels = (
            [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
            if model.tokenizer is not None
            else [str(t) for t in tokens[0].tolist()]
        )
        patterns = {f"{layer}.{h}": cache[get_act_name("pattern", layer)][0, h].tolist() for layer, h in heads}
        roles = {name: int(pos[i]) for name, pos in prompts.roles.items()}
        out.append({"tokens": labels, "patterns": patterns, "prompt": i, "roles": roles})
    return out
