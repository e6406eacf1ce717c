"""Random-token tasks: the inputs of attention-pattern detectors (previous-token, duplicate, induction heads)."""

from __future__ import annotations

import math
import random
from collections.abc import Set as AbstractSet

import torch
from jaxtyping import Int
from torch import Tensor

from probes.core.errors import ProbesError
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet, model_fingerprint
from probes.prompts.tasks.words import check_n


def ordinary_token_ids(model: HookedModel) -> Int[Tensor, " token"]:
    """Token ids a random sequence may use: all but special and added tokens (BOS, EOS, PAD, UNK, <unused..>).

    A tokenizer-less model (a toy) has only its id 0 excluded, the BOS by convention.
    """
    n_vocab = model.cfg.d_vocab
    allowed = torch.ones(n_vocab, dtype=torch.bool)
    tokenizer = model.tokenizer
    if tokenizer is None:
        allowed[0] = False
    else:
        allowed[len(tokenizer) :] = False
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        allowed[[i for i in special if i < n_vocab]] = False
    return allowed.nonzero()[:, 0]


def _pool_of(model: HookedModel, vocab: Tensor | None, need: int) -> Int[Tensor, " token"]:
    pool = ordinary_token_ids(model) if vocab is None else torch.as_tensor(vocab, dtype=torch.long).unique()
    if len(pool) < need:
        raise ProbesError(f"the token pool has {len(pool)} tokens but {need} distinct ones are needed; shorten length")
    return pool


def _draw(rng: random.Random, pool: Int[Tensor, " token"], k: int, exclude: AbstractSet[int] = frozenset()) -> list[int]:
    """``k`` distinct tokens from ``pool``, none in ``exclude``; O(k), even for Gemma's 262k-token pool."""
    picks: list[int] = []
    while len(picks) < k:
        for j in rng.sample(range(len(pool)), k - len(picks)):
            token = int(pool[j])
            if token not in exclude and token not in picks:
                picks.append(token)
    return picks


def _bos(model: HookedModel) -> int:
    tokenizer = model.tokenizer
    return tokenizer.bos_token_id if tokenizer is not None and isinstance(tokenizer.bos_token_id, int) else 0


def _length(model: HookedModel, length: int | None, default: int, copies: int) -> int:
    longest = (model.cfg.n_ctx - 1) // copies
    length = min(default, longest) if length is None else length
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= longest:
        raise ProbesError(
            f"length must be an integer from 1 to {longest} for a context of {model.cfg.n_ctx}, got {length!r}"
        )
    return length


RANDOM_SHAPES = {"previous_token": (1, 32), "induction": (2, 20)}  # task -> (copies of the sequence, default length)


def random_max_distinct(model: HookedModel | None, templates=None, *, copies: int, default: int) -> int:
    """How many distinct sequences of distinct ordinary tokens fit the default length: astronomically many for
    a real vocabulary, fewer for a toy one (random tasks have no templates: ``templates`` is None)."""
    assert model is not None, "the bound needs the model's vocabulary: check_distinct waits for the model"
    return math.perm(len(ordinary_token_ids(model)), _length(model, None, default, copies))


def class_pool(
    model: HookedModel, task: str, n: int, rows_per_class: int, seed: int = 0
) -> Int[Tensor, " token"]:
    """A bounded pool of ordinary tokens for a random-token ``task`` whose previous-token identity will be probed.

    A probe can only name tokens it was trained on, so each token must be the previous token of many rows: drawn
    from a whole vocabulary (49k-262k ids) almost none recurs. The pool holds about one token per
    ``2 * rows_per_class`` rows the ``n`` prompts give (each prompt's tokens are distinct, so never fewer than one
    prompt needs), so a token is expected to be the previous token of about twice ``rows_per_class`` rows.
    """
    copies, default = RANDOM_SHAPES[task]
    length = _length(model, None, default, copies)
    ordinary = ordinary_token_ids(model)
    size = min(len(ordinary), max(copies * length + 1, n * copies * length // (2 * rows_per_class)))
    return ordinary[torch.randperm(len(ordinary), generator=torch.Generator().manual_seed(seed))[:size]].sort().values


def previous_token(
    model: HookedModel, n: int, seed: int = 0, length: int | None = None, vocab: Tensor | None = None
) -> PromptSet:
    """``BOS r`` with ``r`` ``length`` distinct random tokens (default 32, or what fits the context).

    The corrupt prompt changes only the token before the last, so the pair isolates previous-token
    information; answer = that token on the clean side, foil = its corrupt replacement (a weak behavioural
    metric: previous-token heads are judged by attention first). Roles: ``end`` and ``previous`` (= end - 1).
    ``vocab`` restricts the token ids drawn (default: :func:`ordinary_token_ids`).
    """
    check_n(n)
    length = _length(model, length, 32, copies=1)
    if length < 2:
        raise ProbesError("previous_token needs length >= 2: the last token must have a real previous token")
    pool, rng, bos = _pool_of(model, vocab, length + 1), random.Random(seed), _bos(model)
    clean, corrupt, answer, foil = [], [], [], []
    for _ in range(n):
        r = _draw(rng, pool, length)
        (swap,) = _draw(rng, pool, 1, exclude=set(r))
        clean.append([bos, *r])
        corrupt.append([bos, *r[:-2], swap, r[-1]])
        answer.append(r[-2])
        foil.append(swap)
    end = torch.full((n,), length)
    return PromptSet.from_tokens(
        torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answer), torch.tensor(foil),
        {"end": end, "previous": end - 1}, task="previous_token", tokenizer=model_fingerprint(model),
    )


def induction(
    model: HookedModel, n: int, seed: int = 0, length: int | None = None, vocab: Tensor | None = None
) -> PromptSet:
    """``BOS r r`` (``r``: ``length`` distinct random tokens, default 20): at the end the repeat predicts ``r[0]``.

    The last token is ``r[-1]``, whose first occurrence was followed by ``r[0]``: that is the answer. The corrupt
    prompt is ``BOS r' r`` with ``r'`` fresh and disjoint from ``r``: same last half, nothing to induce; the foil is a
    token in neither. Roles as in :func:`probes.toy.repeated_prompts`: ``end``, and ``induction_target`` = the position
    right after the first occurrence of the end token (where an induction head looks).
    """
    check_n(n)
    length = _length(model, length, 20, copies=2)
    pool, rng, bos = _pool_of(model, vocab, 2 * length + 1), random.Random(seed), _bos(model)
    clean, corrupt, answer, foil = [], [], [], []
    for _ in range(n):
        r = _draw(rng, pool, length)
        fresh = _draw(rng, pool, length + 1, exclude=set(r))
        clean.append([bos, *r, *r])
        corrupt.append([bos, *fresh[:length], *r])
        answer.append(r[0])
        foil.append(fresh[length])
    return PromptSet.from_tokens(
        torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answer), torch.tensor(foil),
        {"end": torch.full((n,), 2 * length), "induction_target": torch.full((n,), length + 1)}, task="induction",
        tokenizer=model_fingerprint(model),
    )
