"""The task metric: answer-minus-foil logit difference at each prompt's ``end`` position.

Computed from the final residual stream through only the two unembedding columns that matter, so no sweep ever
materialises full-vocabulary logits (Gemma-3's vocabulary is 262k).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.core.memory import batches
from probes.models.architecture import attention_bytes
from probes.models.bridge import final_resid
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

# (model, final residual at the read-off position, answer ids, foil ids) -> one number per row: what a patched
# run reports. The engine takes any such function; logit_diff_from_resid is the default.
Metric = Callable[[HookedModel, Float[Tensor, "batch d_model"], Int[Tensor, " batch"], Int[Tensor, " batch"]], Float[Tensor, " batch"]]

FORWARD_BATCH = 16  # prompts a forward pass batches (lowered to fit the memory budget)


def resid_at(resid: Float[Tensor, "batch pos d_model"], positions: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_model"]:
    """The residual vector of each batch row at its own position."""
    return resid[torch.arange(resid.shape[0], device=resid.device), positions.to(resid.device)]


def final_norm(model: HookedModel, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
    """The model's final normalisation (none for norm-free toy models)."""
    ln_final = getattr(model, "ln_final", None)
    return x if ln_final is None else ln_final(x[:, None, :])[:, 0, :]


def logit_diff_from_resid(
    model: HookedModel,
    final_resid: Float[Tensor, "batch d_model"],
    answer: Int[Tensor, " batch"],
    foil: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """logit(answer) - logit(foil) from the residual after the last block, at the read-off position."""
    x = final_norm(model, final_resid)
    w_u = model.unembed.W_U
    b_u = model.unembed.b_U
    answer, foil = answer.to(x.device), foil.to(x.device)
    logit_answer = (x * w_u[:, answer].T).sum(-1) + b_u[answer]
    logit_foil = (x * w_u[:, foil].T).sum(-1) + b_u[foil]
    cap = model.cfg.output_logits_soft_cap
    if cap > 0:
        logit_answer = cap * torch.tanh(logit_answer / cap)
        logit_foil = cap * torch.tanh(logit_foil / cap)
    return logit_answer - logit_foil


@torch.no_grad()
def read_off_resid(
    model: HookedModel, tokens: Int[Tensor, "prompt pos"], prompts: PromptSet, batch_size: int = FORWARD_BATCH
) -> Float[Tensor, "prompt d_model"]:
    """The residual stream after the last block at each prompt's read-off position, on ``tokens`` (the clean or
    the corrupt side): all the metric and the answer's distribution need, from one pass."""
    out = []
    for idx in _batches(model, tokens, batch_size):
        out.append(resid_at(final_resid(model, tokens[idx])[0], prompts.end[idx]))
    return torch.cat(out)


@torch.no_grad()
def answer_distribution(
    model: HookedModel, resid: Float[Tensor, "prompt d_model"], answer: Int[Tensor, " prompt"],
    batch_size: int = FORWARD_BATCH,
) -> tuple[Float[Tensor, " prompt"], Int[Tensor, " prompt"]]:  # fmt: skip
    """The answer's probability and its rank (1 = the argmax) over the whole vocabulary, from the read-off
    residual (:func:`read_off_resid`): the output distribution beside the logit difference, which only compares
    two tokens. Batched: a vocabulary can be 262k."""
    probs, ranks = [], []
    for start in range(0, len(resid), batch_size):
        idx = slice(start, start + batch_size)
        logits = model.unembed(final_norm(model, resid[idx])[:, None, :])[:, 0, :]
        target = answer[idx].to(logits.device)[:, None]
        probs.append(logits.float().softmax(-1).gather(1, target)[:, 0])
        ranks.append(1 + (logits > logits.gather(1, target)).sum(-1))
    return torch.cat(probs), torch.cat(ranks)


def _batches(model: HookedModel, tokens: Int[Tensor, "prompt pos"], batch_size: int) -> Iterator[slice]:
    """Batches of full-width prompts whose attention tensors fit the memory budget."""
    need = functools.partial(attention_bytes, model)
    return batches([tokens.shape[1]] * len(tokens), batch_size, need, "a forward pass", "shorten the prompts")
