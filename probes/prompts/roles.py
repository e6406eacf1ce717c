"""Roles: named token positions of a prompt, found by words in text prompts and resolved for evidence gathering.

A role is a word or phrase of the clean text, matched case-sensitively at word boundaries ("he" never matches
inside "the") and at token boundaries (the phrase starts and ends where tokens do); the first such occurrence
unless given as ``{"text": "Bob", "occurrence": 2}`` (counted from 1). A phrase spanning several tokens sits at
its last token, the one that has read the whole phrase. ``end`` is always the last real token; ``previous`` as a
destination means the token before the source (unless the set has a role of that name).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Union

from probes.core.errors import ProbesError

if TYPE_CHECKING:  # torch is imported where positions are resolved: the role names serve torch-free readers too
    from jaxtyping import Int
    from torch import Tensor

    from probes.prompts.promptset import PromptSet

END = "end"
PREVIOUS = "previous"
Role = Union[str, "Tensor"]  # a role name, or explicit per-prompt positions


def role_position(text: str, offsets: list[tuple[int, int]], name: str, spec: object, loc: str) -> int:
    """Index (without BOS) of the last token of the ``occurrence``-th match of the role phrase in ``text``."""
    if isinstance(spec, dict) and set(spec) <= {"text", "occurrence"}:
        phrase, occurrence = spec.get("text"), spec.get("occurrence", 1)
    else:
        phrase, occurrence = spec, 1
    if not isinstance(phrase, str) or not phrase.strip():
        raise ProbesError(
            f"{loc}: role '{name}' must be a word of the clean text or "
            f"{{\"text\": ..., \"occurrence\": k}}, got {spec!r}"
        )
    if isinstance(occurrence, bool) or not isinstance(occurrence, int) or occurrence < 1:
        raise ProbesError(f"{loc}: role '{name}' occurrence must be an integer counted from 1, got {occurrence!r}")
    phrase = phrase.strip()
    token_at = [-1] * len(text)  # character -> index of the token covering it
    for t, (start, stop) in enumerate(offsets):
        for c in range(start, stop):
            token_at[c] = t
    found = 0
    for match in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text):
        first, last = token_at[match.start()], token_at[match.end() - 1]
        if first < 0 or last < 0:
            continue
        starts_a_token = not text[offsets[first][0] : match.start()].strip()  # only a leading space before it
        if starts_a_token and offsets[last][1] == match.end():
            found += 1
            if found == occurrence:
                return last
    where = "" if occurrence == 1 else f" {occurrence} times"
    raise ProbesError(
        f"{loc}: role '{name}' {phrase!r} does not occur{where} as a whole word at token boundaries in the clean "
        f"text {text!r}"
    )


def positions(prompts: PromptSet, role: Role) -> Int[Tensor, " prompt"]:
    """Per-prompt positions of a role name, or the given positions checked against the set's size."""
    import torch

    if isinstance(role, str):
        return prompts.role(role)
    resolved = torch.as_tensor(role, dtype=torch.long).reshape(-1)
    if resolved.shape[0] != len(prompts):
        raise ProbesError(f"got {resolved.shape[0]} positions for {len(prompts)} prompts")
    return resolved


def src_dst_positions(
    prompts: PromptSet, src: Role, dst: Role
) -> tuple[Int[Tensor, " prompt"], Int[Tensor, " prompt"]]:
    """Source and destination positions; ``dst="previous"`` is ``src - 1`` unless the set has such a role."""
    src_pos = positions(prompts, src)
    if isinstance(dst, str) and dst == PREVIOUS and PREVIOUS not in prompts.roles:
        dst_pos = src_pos - 1
    else:
        dst_pos = positions(prompts, dst)
    bad = ((dst_pos > src_pos) | (dst_pos < 0)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ProbesError(
            f"prompt {i}: destination {dst!r} (position {int(dst_pos[i])}) is not at or before source {src!r} "
            f"(position {int(src_pos[i])}); a causal head attends only backwards, so swap src and dst"
        )
    return src_pos, dst_pos
