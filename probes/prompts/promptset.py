"""Minimal pairs with named role positions: the unit every kind of evidence is measured on.

Prompts of different lengths are right-padded. For a causal model right padding changes nothing at the real
positions, so every metric is read at the per-prompt ``end`` role (the last real token), never at ``[-1]``.

Prompt pairs written as text (JSONL, one pair a line) name their roles by the words they sit on::

    {"clean": "Alice and Bob went to the park. She gave the ball to", "corrupt": "... He gave the ball to",
     "answer": " Bob", "foil": " Alice", "roles": {"pronoun": "She", "antecedent": "Alice", "distractor": "Bob"}}

Roles are matched in the clean text as :mod:`probes.prompts.roles` describes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.io import write_text
from probes.models.bridge import check_bridge
from probes.models.protocol import HookedModel
from probes.models.support import require_supported
from probes.prompts.records import RECORD_KEYS, RepeatedLines, check_group, check_record, read_records
from probes.prompts.roles import END, role_position


@dataclass
class PromptSet:
    """A batch of clean/corrupt minimal pairs.

    ``roles[name][i]`` is the token position of role ``name`` in prompt ``i`` (same in clean and corrupt).
    ``labels`` carries per-prompt metadata (template id, names, genders...) used to group cross-validation
    folds and to explain results; ``texts`` keeps the original strings (if any) for reports. ``groups`` holds one
    id per prompt: prompts sharing an id (one template filled with the same names, a duplicated line) are one
    independent unit for every interval and test; by default each prompt is its own group. ``tokenizer`` is the
    fingerprint of the tokenizer that made the ids (:func:`tokenizer_fingerprint`; None for hand-made ids):
    :meth:`check_model` refuses a model with another one, since the same ids mean other words there.
    """

    clean: Int[Tensor, "prompt pos"]
    corrupt: Int[Tensor, "prompt pos"]
    answer: Int[Tensor, " prompt"]
    foil: Int[Tensor, " prompt"]
    roles: dict[str, Int[Tensor, " prompt"]]
    task: str = "custom"
    labels: dict[str, list] = field(default_factory=dict)
    texts: list[dict] = field(default_factory=list)
    groups: list = field(default_factory=list)  # empty: each prompt its own group
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        self.clean = torch.as_tensor(self.clean, dtype=torch.long)
        self.corrupt = torch.as_tensor(self.corrupt, dtype=torch.long)
        self.answer = torch.as_tensor(self.answer, dtype=torch.long).reshape(-1)
        self.foil = torch.as_tensor(self.foil, dtype=torch.long).reshape(-1)
        self.roles = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1) for k, v in self.roles.items()}
        if self.clean.ndim != 2:
            raise ProbesError(f"clean tokens must be a 2-d [prompt, pos] tensor, got shape {tuple(self.clean.shape)}")
        n, n_pos = self.clean.shape
        if self.corrupt.shape != self.clean.shape:
            raise ProbesError(
                f"clean and corrupt must have the same shape, got {tuple(self.clean.shape)} and "
                f"{tuple(self.corrupt.shape)}: build minimal pairs that tokenise to the same length"
            )
        if n == 0 or n_pos == 0:
            raise ProbesError(f"the prompt set is empty ({n} prompts of {n_pos} tokens): give at least one pair")
        for name, t in [("answer", self.answer), ("foil", self.foil)] + list(self.roles.items()):
            if t.shape[0] != n:
                raise ProbesError(f"'{name}' has {t.shape[0]} entries but there are {n} prompts")
        for name, ids in [("clean", self.clean), ("corrupt", self.corrupt), ("answer", self.answer), ("foil", self.foil)]:
            if (ids < 0).any():
                i = int((ids < 0).nonzero()[0, 0])
                raise ProbesError(f"prompt {i}: {name} holds a negative token id; token ids count from 0")
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
        self.groups = list(self.groups) if self.groups else list(range(n))
        if len(self.groups) != n:
            raise ProbesError(f"groups has {len(self.groups)} entries but there are {n} prompts")
        for i, g in enumerate(self.groups):
            check_group(g, f"prompt {i}")

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
        groups: list | None = None,
        tokenizer: str | None = None,
    ) -> PromptSet:
        """Build a prompt set from token ids, for toy models that have no tokenizer (or ids drawn from a
        tokenizer's vocabulary: pass its :func:`tokenizer_fingerprint`)."""
        return cls(clean, corrupt, answer, foil, dict(roles), task=task, labels=dict(labels or {}), groups=groups or [],
                   tokenizer=tokenizer)

    @classmethod
    def from_strings(cls, model: HookedModel, records: list[dict], task: str = "custom") -> PromptSet:
        """Tokenise text records (the JSONL format of the module docstring) into a prompt set for ``model``.

        Errors name the record, counted from 1.
        """
        return _from_records(model, list(records), [f"record {i}" for i in range(1, len(records) + 1)], task)

    @classmethod
    def from_jsonl(cls, path: str | Path, model: HookedModel, task: str = "custom") -> PromptSet:
        """Read one prompt pair per line (blank lines skipped); errors name the file and line, and exact duplicate
        lines are kept with a :class:`RepeatedLines` warning."""
        records, where, note = read_records(path)
        if note is not None:
            warnings.warn(note, RepeatedLines, stacklevel=2)
        return _from_records(model, records, where, task)

    def to_jsonl(self, path: str | Path) -> None:
        """Write the text records (with this set's labels) one a line; atomic, so a reader never sees half a file."""
        if len(self.texts) != len(self):
            raise ProbesError(
                f"this '{self.task}' prompt set was built from token ids and has no text to write; "
                "only prompt sets made from strings (from_strings, from_jsonl, text tasks) can be saved as JSONL"
            )
        path = Path(path)
        lines = []
        for i, text in enumerate(self.texts):
            record = {key: text[key] for key in RECORD_KEYS} | {"group": self.groups[i]}
            if self.labels:
                record["labels"] = {key: values[i] for key, values in self.labels.items()}
            try:
                lines.append(json.dumps(record, ensure_ascii=False))
            except TypeError as err:
                raise ProbesError(f"prompt {i} cannot be written as JSON ({err}); keep labels to str/int/float") from None
        try:
            write_text(path, "\n".join(lines) + "\n")
        except OSError as err:
            raise ProbesError(f"cannot write prompt file {path}: {err.strerror or err}") from None

    def check_pairs(self) -> None:
        """Refuse what cannot be a minimal pair where one is needed (the metric, patching): answer = foil makes
        the logit difference 0, identical clean and corrupt tokens leave nothing to patch. Attention-only uses
        (head scores on plain sentences) need neither."""
        same = (self.answer == self.foil).nonzero()
        if len(same):
            raise ProbesError(f"prompt {int(same[0])}: answer and foil are the same token: the logit difference is 0")
        identical = (self.clean == self.corrupt).all(dim=1).nonzero()
        if len(identical):
            raise ProbesError(f"prompt {int(identical[0])}: clean and corrupt are the same tokens: not a minimal pair")

    def check_model(self, model: HookedModel) -> None:
        """Refuse a model the kit cannot measure (:func:`probes.models.support.require_supported`), or one these
        prompts were not made for: another tokenizer, ids past its vocabulary, or prompts longer than its context
        (which would fail deep inside attention, or ask for memory it cannot have)."""
        require_supported(model)
        check_bridge(model)
        own, name = model_fingerprint(model), model_name(model)
        if self.tokenizer is not None and own is not None and own != self.tokenizer:
            raise ProbesError(
                f"these prompts were tokenised by {self.tokenizer} but the model {name} uses "
                f"{own}: the same ids are other words there; build the prompts with this model"
            )
        for what, ids in [("clean", self.clean), ("corrupt", self.corrupt), ("answer", self.answer), ("foil", self.foil)]:
            if int(ids.max()) >= model.cfg.d_vocab:
                raise ProbesError(
                    f"{what} token id {int(ids.max())} is past the vocabulary of {name} "
                    f"({model.cfg.d_vocab} tokens): these prompts were made for another model"
                )
        longest = int(self.end.max()) + 1
        if longest > model.cfg.n_ctx:
            i = int(self.end.argmax())
            raise ProbesError(
                f"prompt {i} is {longest} tokens but {name} reads at most {model.cfg.n_ctx} "
                "(its context): shorten it"
            )

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def end(self) -> Int[Tensor, " prompt"]:
        """Position of the last real token of each prompt: where the answer is read off."""
        return self.roles[END]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    @property
    def group_index(self) -> np.ndarray:
        """Dense group ids 0..G-1, one per prompt (in order of first appearance)."""
        first = {}
        return np.array([first.setdefault(g, len(first)) for g in self.groups], dtype=np.int64)

    @property
    def n_groups(self) -> int:
        return len(set(self.groups))

    def role(self, name: str) -> Int[Tensor, " prompt"]:
        """Positions of a role, with a clear error naming the roles that exist."""
        if name not in self.roles:
            raise ProbesError(f"unknown role '{name}'; this prompt set has roles: {', '.join(sorted(self.roles))}")
        return self.roles[name]

    def subset(self, index: slice | Int[Tensor, " k"] | Int[np.ndarray, " k"] | list[int]) -> PromptSet:
        """The prompts at ``index`` (a slice, list, tensor or array), keeping labels and texts aligned."""
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
            groups=[self.groups[i] for i in ids],
            tokenizer=self.tokenizer,
        )


def tokenizer_fingerprint(tokenizer) -> str:
    """``NAME#sha256[:12]`` of a tokenizer's full definition (vocabulary, merges, normalisers); memoised on it.

    Padding and truncation are left out: a batch call with ``padding=True`` (TransformerLens's ``to_tokens`` makes
    one) switches them on in the backend, yet they do not change which word an id is."""
    cached = getattr(tokenizer, "_probes_fingerprint", None)
    if cached is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
            text = json.dumps(definition, sort_keys=True)
        else:
            text = json.dumps(sorted(tokenizer.get_vocab().items()))
        name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name
        cached = f"{name}#{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        tokenizer._probes_fingerprint = cached
    return cached


def model_name(model: HookedModel) -> str:
    """What the user called the model (packaged name, directory, hub name), for error messages."""
    provenance = getattr(model, "provenance", None)
    return provenance.name if provenance is not None else model.cfg.model_name


def model_fingerprint(model: HookedModel) -> str | None:
    return None if model.tokenizer is None else tokenizer_fingerprint(model.tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Text records -> tokens and role positions


PROGRESS_FROM = 1000  # records from which matching roles shows a progress bar (on a terminal)


def _from_records(model: HookedModel, records: list[dict], where: list[str], task: str) -> PromptSet:
    require_supported(model)  # the first call a text prompt set makes with the model: refuse it here, not later
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ProbesError("this model has no tokenizer, so text prompts cannot be used; use PromptSet.from_tokens")
    if not getattr(tokenizer, "is_fast", False):
        raise ProbesError("role matching needs a fast tokenizer (offset mappings); give the model a tokenizer.json")
    if not records:
        raise ProbesError("no prompt records given")
    for record, loc in zip(records, where):
        check_record(record, loc)
    role_names = list(records[0]["roles"])
    texts = [r["clean"] for r in records] + [r["corrupt"] for r in records]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    bos = [tokenizer.bos_token_id] if model.cfg.default_prepend_bos and tokenizer.bos_token_id is not None else []
    n = len(records)
    clean_ids, corrupt_ids, answer, foil = [], [], [], []
    roles: dict[str, list[int]] = {name: [] for name in role_names}
    lines = tqdm(zip(records, where), total=n, desc="prompts", unit="pair", disable=None if n >= PROGRESS_FROM else True)
    for i, (record, loc) in enumerate(lines):
        clean, corrupt = encoded["input_ids"][i], encoded["input_ids"][n + i]
        if len(clean) != len(corrupt):
            raise ProbesError(
                f"{loc}: clean and corrupt tokenise to different lengths ({len(clean)} vs {len(corrupt)} tokens) in "
                f"corrupt {record['corrupt']!r}; a minimal pair must change tokens, not add or remove them"
            )
        if set(record["roles"]) != set(role_names):
            raise ProbesError(
                f"{loc}: roles {sorted(record['roles'])} differ from the first record's {sorted(role_names)}; "
                "every prompt in a set needs the same roles"
            )
        clean_ids.append(bos + clean)
        corrupt_ids.append(bos + corrupt)
        answer.append(_single_token(tokenizer, record, "answer", loc))
        foil.append(_single_token(tokenizer, record, "foil", loc))
        offsets = encoded["offset_mapping"][i]
        for name in role_names:
            roles[name].append(len(bos) + role_position(record["clean"], offsets, name, record["roles"][name], loc))
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    label_keys = list(dict.fromkeys(key for r in records for key in r.get("labels", {})))
    return PromptSet(
        _right_pad(clean_ids, pad),
        _right_pad(corrupt_ids, pad),
        torch.tensor(answer),
        torch.tensor(foil),
        {name: torch.tensor(pos) for name, pos in roles.items()} | {END: torch.tensor([len(c) - 1 for c in clean_ids])},
        task=task,
        labels={key: [r.get("labels", {}).get(key) for r in records] for key in label_keys},
        texts=records,
        groups=_record_groups(records),
        tokenizer=tokenizer_fingerprint(tokenizer),
    )


def _record_groups(records: list[dict]) -> list:
    """A record's ``group``, else its own: an exact repeat of an earlier record joins that record's group, so a
    duplicated line is counted once in the statistics."""
    first: dict[str, int] = {}
    return [
        r["group"] if "group" in r else f"record {first.setdefault(json.dumps(r, sort_keys=True), i) + 1}"
        for i, r in enumerate(records)
    ]


def _single_token(tokenizer, record: dict, key: str, loc: str) -> int:
    ids = tokenizer(record[key], add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ProbesError(
            f"{loc}: {key} {record[key]!r} is {len(ids)} tokens {pieces} for this tokenizer; answers and foils "
            "must be single tokens (mind the leading space)"
        )
    return ids[0]


def _right_pad(rows: list[list[int]], pad: int) -> Int[Tensor, "prompt pos"]:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out
