"""Position or content: does a head look at WHERE a token is, or at WHAT it is?

The story people tell ("*am* wants whatever comes right after it, wherever that is"; "*she* wants a name, wherever
it is") is a claim about two pathways into a head's attention. Two counterfactuals per prompt separate them for
any positional scheme (learned, rotary, none), because they change only the inputs, never the model:

- **content swap**: the token at ``dst`` is replaced by another token, its position kept. The share of the head's
  ``src -> dst`` attention that survives is the **positional share** (what the position alone earns).
- **move**: ``s`` filler tokens are inserted right after ``dst``, so ``dst`` keeps its content and sits ``s``
  tokens further from ``src``. The share of attention that follows ``dst`` to its new distance is the
  **content share**; the share that stays at the old distance (now a filler) is the **offset share**.

Shares are ratios of means over prompts (``mean(counterfactual) / mean(clean)``), with intervals from resampling
whole groups (prompts sharing a template move together). Labels, on the point estimates (``LABEL_THRESHOLDS``,
which a run stores with its results):

- ``positional``: positional share >= ``SHARE_HIGH`` and content share <= ``SHARE_LOW``;
- ``content``: the reverse;
- ``neither``: both shares <= ``SHARE_LOW``, or the head does not single ``dst`` out: its mean clean attention
  is below ``MIN_LIFT`` times uniform attention over the keys ``src`` sees (nothing to split);
- ``mixed``: anything else.

Every check of the input (roles, shifts, filler and replacement tokens, the context length, re-tokenisation) runs
in :func:`counterfactuals`, before any forward pass, so a run can refuse bad input before its heavy stages. Each
counterfactual is then one batched forward pass that stops after the last layer asked for and keeps only the
query row at ``src`` of each needed attention pattern: no logits, no cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.notebook import grid_html, result_html
from probes.core.stats import Estimate, cluster_bootstrap_means, percentile_interval, ratio_draws
from probes.models.frozen import frozen_model
from probes.models.heads import Head
from probes.models.hooks import get_act_name
from probes.models.kernels import onednn_linear, use_onednn
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import Role, src_dst_positions

SHARE_HIGH = 0.7
SHARE_LOW = 0.3
MIN_LIFT = 2.0
LABEL_THRESHOLDS = {"share_high": SHARE_HIGH, "share_low": SHARE_LOW, "min_lift": MIN_LIFT}  # what a run stores
LABELS = ("positional", "content", "mixed", "neither")
# Text defaults. Fillers: adverbs that read as an aside after a word ("Alice really really and Bob"); replacements:
# common nouns that are neither names nor the tasks' answers. Each must be one token for the model's tokenizer.
DEFAULT_FILLER = (" really", " very", " quite", " just")
DEFAULT_REPLACEMENTS = (" table", " river", " window", " paper")
SRC, DST = "__src", "__dst"  # roles added to a prompt set so that the bookkeeping moves them like any other role


@dataclass(frozen=True)
class PositionContentResult:
    """Per-prompt attention under each counterfactual, ``[prompt, ..., layer, head]``, NaN for heads not asked
    for, and ``table``: one row per head asked for (its columns: :func:`position_content`)."""

    table: pd.DataFrame
    attention: Float[Tensor, "prompt layer head"]
    swapped: Float[Tensor, "prompt layer head"]
    moved: Float[Tensor, "prompt shift layer head"]
    offset: Float[Tensor, "prompt shift layer head"]
    sink: Float[Tensor, "prompt layer head"]
    self_mass: Float[Tensor, "prompt layer head"]
    shifts: tuple[int, ...]

    def to_frame(self) -> pd.DataFrame:
        """``table``: one row per head asked for (columns: :func:`position_content`)."""
        return self.table.copy()

    def _repr_html_(self) -> str:
        """In a notebook: how many heads got each label, the heads attending most with their shares, and a
        heatmap of positional minus content share."""
        table = self.table
        counts = table["label"].value_counts()
        sentence = (f"{len(table)} heads split by a content swap and by moving the target {', '.join(map(str, self.shifts))} "
                    f"tokens away: " + ", ".join(f"{c} {label}" for label, c in counts.items()))
        numbers: dict[str, Estimate | str] = {}
        for _, row in table.nlargest(3, "attention").iterrows():
            name = f"head {int(row['layer'])}.{int(row['head'])} ({row['label']}, attention {row['attention']:.2f})"
            for share in ("positional_share", "content_share"):
                numbers[f"{name} {share.replace('_', ' ')}"] = Estimate(
                    float(row[share]), float(row[f"{share}_ci_low"]), float(row[f"{share}_ci_high"]))
        grid = np.full(tuple(self.attention.shape[1:]), np.nan)
        grid[table["layer"], table["head"]] = table["positional_share"] - table["content_share"]
        extra = grid_html(grid, "positional share minus content share")
        return result_html("position or content", sentence, numbers, extra)


PositionContent = PositionContentResult  # its name before the result contract (every result's name ends in Result)


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping: counterfactual prompt sets whose roles follow their tokens


def swap_tokens(prompts: PromptSet, at: Int[Tensor, " prompt"], tokens: Int[Tensor, " prompt"]) -> PromptSet:
    """``prompts`` with the token at ``at[i]`` replaced by ``tokens[i]`` (clean and corrupt); nothing moves."""
    rows = torch.arange(len(prompts))
    clean, corrupt = prompts.clean.clone(), prompts.corrupt.clone()
    clean[rows, at] = tokens
    corrupt[rows, at] = tokens
    return dataclasses.replace(prompts, clean=clean, corrupt=corrupt, roles=dict(prompts.roles), texts=[])


def insert_tokens(prompts: PromptSet, after: Int[Tensor, " prompt"], filler: Int[Tensor, " k"]) -> PromptSet:
    """``prompts`` with ``filler`` inserted right after position ``after[i]``: every role (``end`` included) past
    ``after[i]`` moves ``len(filler)`` to the right with its token; roles at or before it stay."""
    k = len(filler)
    n, n_pos = prompts.clean.shape
    pad = prompts.clean.new_zeros(n, n_pos + k)
    out = []
    for tokens in (prompts.clean, prompts.corrupt):
        moved = pad.clone()
        for i in range(n):
            a = int(after[i]) + 1
            moved[i] = torch.cat([tokens[i, :a], filler, tokens[i, a:]])
        out.append(moved)
    roles = {name: pos + k * (pos > after).long() for name, pos in prompts.roles.items()}
    return dataclasses.replace(prompts, clean=out[0], corrupt=out[1], roles=roles, texts=[])


# ---------------------------------------------------------------------------------------------------------------
# Counterfactual tokens: checked ids from text or ids


def _token_ids(model: HookedModel, items: Sequence[str | int], what: str) -> Int[Tensor, " k"]:
    """Token ids of ``items`` (ids, or words that must be one token each for the model's tokenizer)."""
    if isinstance(items, (str, int)) or len(items) == 0:
        raise ProbesError(f"{what} must be a non-empty list of words or token ids, got {items!r}")
    ids = []
    for item in items:
        if isinstance(item, str):
            if model.tokenizer is None:
                raise ProbesError(f"{what} {item!r} is text but this model has no tokenizer; give token ids")
            encoded = model.tokenizer(item, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ProbesError(
                    f"{what} {item!r} is {len(encoded)} tokens for this tokenizer; it would change the prompts' "
                    "tokenisation length: give single-token words (mind the leading space)"
                )
            ids.append(encoded[0])
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < model.cfg.d_vocab:
            ids.append(item)
        else:
            raise ProbesError(f"{what} {item!r} is neither a word nor a token id in 0..{model.cfg.d_vocab - 1}")
    return torch.tensor(ids)


def _replacement_per_prompt(original: Int[Tensor, " prompt"], candidates: Int[Tensor, " k"]) -> Int[Tensor, " prompt"]:
    """One replacement per prompt, cycling through the candidates (prompt ``i`` starts at candidate ``i mod k``)
    and skipping the token already there, so every swap changes the content and the swap is one batched pass."""
    out = []
    for i, token in enumerate(original.tolist()):
        order = [int(c) for c in candidates.roll(-i)]
        kept = [c for c in order if c != token]
        if not kept:
            raise ProbesError(f"replacements {candidates.tolist()} leave nothing to swap in for token {token}; add one")
        out.append(kept[0])
    return torch.tensor(out)


def _check_retokenises(model: HookedModel, base: PromptSet, variant: PromptSet, what: str) -> None:
    """A text prompt's variant must read back as text of the same token count, else it is not the prompt it
    pretends to be (a filler merged with its neighbour, say)."""
    tokenizer = model.tokenizer
    assert tokenizer is not None, "text prompts come from the model's tokenizer"
    skip = 1 if model.cfg.default_prepend_bos and tokenizer.bos_token_id is not None else 0

    def n_tokens(p: PromptSet, i: int) -> int:
        text = tokenizer.decode(p.clean[i, skip : int(p.end[i]) + 1].tolist())
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for i in range(len(base)):
        grown = int(variant.end[i] - base.end[i])
        if n_tokens(variant, i) != n_tokens(base, i) + grown:
            raise ProbesError(
                f"prompt {i}: the {what} changes the tokenisation length (the text re-tokenises differently); "
                "choose other filler/replacement words"
            )


# ---------------------------------------------------------------------------------------------------------------
# Running: the src query row of every needed pattern


@torch.no_grad()
def src_rows(
    model: HookedModel, prompts: PromptSet, src: Int[Tensor, " prompt"], layers: list[int], batch_size: int = 32
) -> Float[Tensor, "prompt layer head key"]:
    """Attention of the query at ``src`` over all keys, for ``layers`` (other layers stay NaN); each batch is
    trimmed to its longest prompt and stops after the last layer in ``layers``."""
    n, n_pos = len(prompts), prompts.n_pos
    out = torch.full((n, model.cfg.n_layers, model.cfg.n_heads, n_pos), torch.nan)
    names = {get_act_name("pattern", layer) for layer in layers}
    onednn = use_onednn(model)
    for start in tqdm(range(0, n, batch_size), desc="position/content", disable=None, leave=False):
        idx = slice(start, start + batch_size)
        width = int(prompts.end[idx].max()) + 1
        rows = torch.arange(len(prompts.clean[idx]))
        query = src[idx]

        def hook(pattern: Float[Tensor, "batch head query key"], hook) -> None:
            out[idx, hook.layer(), :, :width] = pattern[rows, :, query.to(pattern.device)].float().cpu()

        with onednn_linear(onednn):
            model.run_with_hooks(
                prompts.clean[idx, :width].to(model.cfg.device),
                fwd_hooks=[(lambda name: name in names, hook)],
                stop_at_layer=max(layers) + 1,
            )
    return out


def _at(rows: Float[Tensor, "prompt layer head key"], key: Int[Tensor, " prompt"]) -> Float[Tensor, "prompt layer head"]:
    return rows[torch.arange(len(rows)), :, :, key]


# ---------------------------------------------------------------------------------------------------------------
# Shares and labels


def label(lift: float, positional_share: float, content_share: float) -> str:
    """The module docstring's rule, on point estimates (``lift``: attention over uniform attention)."""
    if lift < MIN_LIFT or (positional_share <= SHARE_LOW and content_share <= SHARE_LOW):
        return "neither"
    if positional_share >= SHARE_HIGH and content_share <= SHARE_LOW:
        return "positional"
    if content_share >= SHARE_HIGH and positional_share <= SHARE_LOW:
        return "content"
    return "mixed"


def share_estimates(
    clean: Float[np.ndarray, "prompt head"],
    counterfactuals: list[Float[np.ndarray, "prompt head"]],
    groups: Int[np.ndarray, " prompt"],
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Mean clean attention, and per counterfactual ``mean(counterfactual) / mean(clean)``, per head, each as
    (value, low, high) with a percentile interval over one set of resampled groups (a ratio of means: per-prompt
    ratios explode where a head barely attends)."""
    k = clean.shape[1]
    # one set of draws for the clean attention and every counterfactual: numerators repeat the clean denominator
    value, draws = ratio_draws(np.concatenate(counterfactuals, axis=1), np.tile(clean, len(counterfactuals)), groups,
                               seed=seed)
    shares = [(value[j * k:(j + 1) * k], *percentile_interval(draws[:, j * k:(j + 1) * k]))
              for j in range(len(counterfactuals))]
    clean_draws = cluster_bootstrap_means(clean, groups, seed=seed)
    return (clean.mean(0), *percentile_interval(clean_draws)), shares


def check_heads(model: HookedModel, heads: Sequence[Head] | None) -> list[Head]:
    if heads is None:
        return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    given = [tuple(h) for h in heads]
    bad = [h for h in given if len(h) != 2 or not (0 <= h[0] < model.cfg.n_layers and 0 <= h[1] < model.cfg.n_heads)]
    if bad or not given:
        raise ProbesError(
            f"heads {bad or given} are not (layer, head) pairs of this model "
            f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads)"
        )
    return [(layer, head) for layer, head in given]


@dataclass
class Counterfactuals:
    """Checked counterfactual prompt sets for one ``src -> dst`` question (see :func:`counterfactuals`): ``base``
    is the prompts with roles ``SRC``/``DST`` added, ``swapped`` has the token at ``dst`` replaced, ``moved`` one
    set per shift with fillers inserted after ``dst``."""

    base: PromptSet
    swapped: PromptSet
    moved: list[PromptSet]
    shifts: tuple[int, ...]


def counterfactuals(
    model: HookedModel,
    prompts: PromptSet,
    src: Role,
    dst: Role,
    *,
    filler: Sequence[str | int] | None = None,
    replacements: Sequence[str | int] | None = None,
    shifts: Sequence[int] = (1, 2, 4),
) -> Counterfactuals:
    """Every check of :func:`position_content`'s input, and the counterfactual prompt sets it runs. No forward
    pass: a run calls it right after building its prompts, so bad input is refused before the heavy stages."""
    prompts.check_model(model)
    shifts = tuple(shifts)
    if not shifts or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shifts):
        raise ProbesError(f"shifts must be positive whole numbers of tokens, got {shifts!r}")
    text = bool(prompts.texts)
    if not text and (filler is None or replacements is None):
        raise ProbesError(
            "this prompt set is made of token ids: pass filler=[token ids] and replacements=[token ids] to "
            "position_content (the kit picks defaults only for text prompts)"
        )
    filler_ids = _token_ids(model, DEFAULT_FILLER if filler is None else filler, "filler")
    candidates = _token_ids(model, DEFAULT_REPLACEMENTS if replacements is None else replacements, "replacement")
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)
    if (src_pos == dst_pos).any():
        raise ProbesError(f"src {src!r} and dst {dst!r} coincide in some prompts: nothing can be moved between them")
    longest = int(prompts.end.max()) + 1 + max(shifts)
    if longest > model.cfg.n_ctx:
        raise ProbesError(
            f"a shift of {max(shifts)} makes the longest prompt {longest} tokens, past the model's context of "
            f"{model.cfg.n_ctx}: use smaller shifts or shorter prompts"
        )
    base = dataclasses.replace(prompts, roles=prompts.roles | {SRC: src_pos, DST: dst_pos})
    rows = torch.arange(len(base))
    swapped = swap_tokens(base, dst_pos, _replacement_per_prompt(base.clean[rows, dst_pos], candidates))
    moved = [insert_tokens(base, dst_pos, filler_ids[torch.arange(s) % len(filler_ids)]) for s in shifts]
    if text:
        _check_retokenises(model, base, swapped, "replacement")
        for variant in moved:
            _check_retokenises(model, base, variant, "filler")
    return Counterfactuals(base, swapped, moved, shifts)


@frozen_model
def position_content(
    model: HookedModel,
    prompts: PromptSet,
    src: Role,
    dst: Role,
    *,
    heads: Sequence[Head] | None = None,
    filler: Sequence[str | int] | None = None,
    replacements: Sequence[str | int] | None = None,
    shifts: Sequence[int] = (1, 2, 4),
    seed: int = 0,
    batch_size: int = 32,
) -> PositionContentResult:
    """Split each head's ``src -> dst`` attention into what survives a content swap at ``dst`` (positional share)
    and what follows ``dst`` when fillers push it ``s`` tokens away, for each ``s`` in ``shifts`` (content share).

    ``filler``/``replacements``: words (one token each) or token ids. Text prompt sets default to
    ``DEFAULT_FILLER`` (cycled to length ``s``) and ``DEFAULT_REPLACEMENTS`` (cycled over prompts, never the token
    already there); token-id sets must pass both.
    ``table`` columns: layer, head, attention (mean clean ``src -> dst`` attention), positional_share,
    content_share, offset_share (each with ``_ci_low``/``_ci_high``), sink (attention on position 0, the BOS),
    self (on ``src`` itself), lift (attention over uniform attention ``1 / (src + 1)``), label.
    ``content_share`` and ``offset_share`` are each the mean over all shifts of that shift's share (one clean
    denominator); each shift's per-prompt attention is in ``.moved`` / ``.offset``.
    ``label`` (on the point estimates): ``positional`` if positional share >= ``SHARE_HIGH`` = 0.7 and content
    share <= ``SHARE_LOW`` = 0.3; ``content`` the reverse; ``neither`` if both are <= 0.3 or lift < ``MIN_LIFT``
    = 2; else ``mixed``.
    """
    plan = counterfactuals(model, prompts, src, dst, filler=filler, replacements=replacements, shifts=shifts)
    return measure_shares(model, plan, heads=heads, seed=seed, batch_size=batch_size)


def measure_shares(
    model: HookedModel,
    plan: Counterfactuals,
    *,
    heads: Sequence[Head] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> PositionContentResult:
    """The forward passes of :func:`position_content` on counterfactuals already checked."""
    heads = check_heads(model, heads)
    base = plan.base
    src_pos, dst_pos = base.roles[SRC], base.roles[DST]
    layers = sorted({layer for layer, _ in heads})
    clean_rows = src_rows(model, base, src_pos, layers, batch_size)
    attention = _at(clean_rows, dst_pos)
    sink = clean_rows[:, :, :, 0]
    self_mass = _at(clean_rows, src_pos)
    swapped = _at(src_rows(model, plan.swapped, src_pos, layers, batch_size), dst_pos)
    moved, offset = [], []
    for variant in plan.moved:
        variant_rows = src_rows(model, variant, variant.roles[SRC], layers, batch_size)
        moved.append(_at(variant_rows, variant.roles[DST]))  # dst's token, at its new distance
        offset.append(_at(variant_rows, variant.roles[SRC] - (src_pos - dst_pos)))  # the old distance: a filler
    moved, offset = torch.stack(moved, 1), torch.stack(offset, 1)

    mask = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    for tensor in (attention, swapped, moved, offset, sink, self_mass):
        tensor[..., ~mask] = torch.nan
    uniform = float((1.0 / (src_pos + 1)).mean())
    table = _table(heads, attention, swapped, moved, offset, sink, self_mass, uniform, base.group_index, seed)
    return PositionContentResult(table, attention, swapped, moved, offset, sink, self_mass, plan.shifts)


def _table(heads, attention, swapped, moved, offset, sink, self_mass, uniform, groups, seed) -> pd.DataFrame:
    layer_idx, head_idx = torch.tensor([h[0] for h in heads]), torch.tensor([h[1] for h in heads])

    def pick(t: Tensor) -> np.ndarray:  # [prompt, (shift,) layer, head] -> [prompt, head asked for], mean over shifts
        t = t[..., layer_idx, head_idx]
        return (t.mean(1) if t.ndim == 3 else t).double().numpy()

    clean = pick(attention)
    names = ("positional_share", "content_share", "offset_share")
    overall, shares = share_estimates(clean, [pick(t) for t in (swapped, moved, offset)], groups, seed=seed)
    table = pd.DataFrame({"layer": layer_idx.numpy(), "head": head_idx.numpy()})
    for name, (value, low, high) in zip(("attention", *names), (overall, *shares)):
        table[name], table[f"{name}_ci_low"], table[f"{name}_ci_high"] = value, low, high
    table["sink"] = pick(sink).mean(0)
    table["self"] = pick(self_mass).mean(0)
    table["lift"] = table["attention"] / uniform
    table["label"] = [
        label(a, p, c) for a, p, c in zip(table["lift"], table["positional_share"], table["content_share"])
    ]
    return table
