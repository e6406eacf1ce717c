"""Minimal pairs with named role positions: the unit every kind of evidence is measured on.

Prompts of different lengths are right-padded. For a causal model right padding changes nothing at the real
positions, so every metric is read at the per-prompt ``end`` role (the last real token), never at ``[-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from probes.errors import ProbesError

END = "end"


@dataclass
class PromptSet:
    """A batch of clean/corrupt minimal pairs.

    ``roles[name][i]`` is the token position of role ``name`` in prompt ``i`` (same in clean and corrupt).
    ``labels`` carries per-prompt metadata (template id, names, genders...) used to group cross-validation
    folds and to explain results; ``texts`` keeps the original strings (if any) for reports.
    """

    clean: Int[Tensor, "prompt pos"]
    corrupt: Int[Tensor, "prompt pos"]
    answer: Int[Tensor, " prompt"]
    foil: Int[Tensor, " prompt"]
    roles: dict[str, Int[Tensor, " prompt"]]
    task: str = "custom"
    labels: dict[str, list] = field(default_factory=dict)
    texts: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clean = torch.as_tensor(self.clean, dtype=torch.long)
        self.corrupt = torch.as_tensor(self.corrupt, dtype=torch.long)
        self.answer = torch.as_tensor(self.answer, dtype=torch.long).reshape(-1)
        self.foil = torch.as_tensor(self.foil, dtype=torch.long).reshape(-1)
        self.roles = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1) for k, v in self.roles.items()}
        n, n_pos = self.clean.shape if self.clean.ndim == 2 else (None, None)
        if n is None:
            raise ProbesError(f"clean tokens must be a 2-d [prompt, pos] tensor, got shape {tuple(self.clean.shape)}")
        if self.corrupt.shape != self.clean.shape:
            raise ProbesError(
                f"clean and corrupt must have the same shape, got {tuple(self.clean.shape)} and "
                f"{tuple(self.corrupt.shape)}: build minimal pairs that tokenise to the same length"
            )
        for name, t in [("answer", self.answer), ("foil", self.foil)] + list(self.roles.items()):
            if t.shape[0] != n:
                raise ProbesError(f"'{name}' has {t.shape[0]} entries but there are {n} prompts")
        if END not in self.roles:
            self.roles[END] = torch.full((n,), n_pos - 1, dtype=torch.long)
        for name, pos in self.roles.items():
            bad = ((pos < 0) | (pos >= n_pos)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise ProbesError(f"role '{name}' of prompt {i} is at position {int(pos[i])}, outside 0..{n_pos - 1}")
        for key, values in self.labels.items():
            if len(values) != n:
                raise ProbesError(f"label '{key}' has {len(values)} entries but there are {n} prompts")

    @classmethod
    def from_tokens(
        cls,
        clean: Int[Tensor, "prompt pos"],
        corrupt: Int[Tensor, "prompt pos"],
        answer: Int[Tensor, " prompt"],
        foil: Int[Tensor, " prompt"],
        roles: dict[str, Int[Tensor, " prompt"]],
        task: str = "custom",
        labels: dict[str, list] | None = None,
    ) -> PromptSet:
        """Build a prompt set from token ids, for toy models that have no tokenizer."""
        return cls(clean, corrupt, answer, foil, dict(roles), task=task, labels=dict(labels or {}))

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def end(self) -> Int[Tensor, " prompt"]:
        """Position of the last real token of each prompt: where the answer is read off."""
        return self.roles[END]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    def role(self, name: str) -> Int[Tensor, " prompt"]:
        """Positions of a role, with a clear error naming the roles that exist."""
        if name not in self.roles:
            raise ProbesError(f"unknown role '{name}'; this prompt set has roles: {', '.join(sorted(self.roles))}")
        return self.roles[name]

    def subset(self, index: slice | Int[Tensor, " k"] | list[int]) -> PromptSet:
        """The prompts at ``index`` (a slice, list or tensor), keeping labels and texts aligned."""
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        ids = idx.tolist()
        return PromptSet(
            self.clean[idx],
            self.corrupt[idx],
            self.answer[idx],
            self.foil[idx],
            {k: v[idx] for k, v in self.roles.items()},
            task=self.task,
            labels={k: [v[i] for i in ids] for k, v in self.labels.items()},
            texts=[self.texts[i] for i in ids] if self.texts else [],
        )
