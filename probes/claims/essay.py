"""The essay's sentences as claims: plain data, no model code (settled by :mod:`probes.claims.essay_evaluation`).

The "society of representations" account of transformers says more than "head L.H attends from X to Y". Each
further sentence it makes is a claim kind here, a frozen dataclass beside :class:`~probes.claims.types.Claim`:

- :class:`SelfUpdate`: "if a token attends to itself, it doesn't change much from one layer to the next";
- :class:`ResolutionDepth`: "only after several layers do tokens start resolving references".

Every kind has ``KIND`` (its name in ``results.json``), ``FORM`` (how people write it, for error messages),
``parse(text)`` (the kind from its written form, or None when the text is not of this kind), ``head_name``,
``__str__`` (the sentence it claims), ``describe()`` (the columns naming it in a table), ``roles()`` (the prompt roles
it reads, checked before any model work) and ``to_dict()`` / ``from_dict()`` (its fields in ``results.json``).

Adding a kind (e.g. the essay's ``QueryKey`` and ``LocalGlobal``): write its dataclass here and add it to
:data:`KINDS` (``Claim.parse``, specs and run directories then know it); register its measures in
:mod:`probes.claims.measures` (with their ``shape``); put its measurement in an evidence module and its settling
function in :data:`probes.claims.essay_evaluation.SETTLE`; give the report a panel in
:data:`probes.report.figures.ESSAY_PANELS`. Nothing else dispatches on the kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar



@dataclass(frozen=True)
class SelfUpdate:
    """"A token that attends to itself changes little": per head, the partial rank correlation (given position) of
    the attention a token pays itself with the size of the head's write there (``layer`` and ``head`` None: every
    layer, every head; ``head`` None: every head of ``layer``, and the layer's averaged self-attention against the
    block's relative update)."""

    layer: int | None = None
    head: int | None = None
    KIND: ClassVar[str] = "self_update"
    FORM: ClassVar[str] = "'self-update [LAYER[.HEAD]]', e.g. 'self-update 5' or 'self-update 5.1'"
    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"self[- ]update(?:\s+(\d+)(?:\.(\d+))?)?", re.IGNORECASE)

    @classmethod
    def parse(cls, text: str) -> SelfUpdate | None:
        match = cls.PATTERN.fullmatch(text.strip())
        if match is None:
            return None
        layer, head = match.groups()
        return cls(None if layer is None else int(layer), None if head is None else int(head))

    @property
    def head_name(self) -> str:
        if self.layer is None:
            return "every layer"
        return f"layer {self.layer}" if self.head is None else f"head {self.layer}.{self.head}"

    def __str__(self) -> str:
        return f"in {self.head_name}, a token that attends to itself changes little"

    def describe(self) -> dict:
        return {"layer": -1 if self.layer is None else self.layer, "head": -1 if self.head is None else self.head}

    def roles(self) -> tuple[str, ...]:
        return ()

    def to_dict(self) -> dict:
        return {"layer": self.layer, "head": self.head}

    @classmethod
    def from_dict(cls, d: dict) -> SelfUpdate:
        return cls(d.get("layer"), d.get("head"))


@dataclass(frozen=True)
class ResolutionDepth:
    """"From layer ``layer`` on, the ``src`` token knows its ``target``": a probe for a label neither the src token
    nor the names present give away linearly ("the target is the first-named of its candidates", an XOR of the
    pronoun's gender and the name order) reads above chance at the src token's ``resid_post`` from ``layer`` on and
    not before. ``layer`` None: the depth is chosen on discovery groups and confirmed on held-out ones."""

    src: str = "pronoun"
    target: str = "antecedent"
    layer: int | None = None
    KIND: ClassVar[str] = "depth"
    FORM: ClassVar[str] = "'depth: SOURCE -> TARGET [from LAYER]', e.g. 'depth: pronoun -> antecedent from 6'"
    PATTERN: ClassVar[re.Pattern[str]] = re.compile(
        r"depth\s*:\s*(\w+)\s*->\s*(\w+)(?:\s+from\s+(?:layer\s+)?(\d+))?", re.IGNORECASE
    )

    @classmethod
    def parse(cls, text: str) -> ResolutionDepth | None:
        match = cls.PATTERN.fullmatch(text.strip())
        if match is None:
            return None
        src, target, layer = match.groups()
        return cls(src, target, None if layer is None else int(layer))

    @property
    def head_name(self) -> str:
        return "the residual stream" if self.layer is None else f"the residual stream from layer {self.layer}"

    def __str__(self) -> str:
        depth = "from some layer on" if self.layer is None else f"from layer {self.layer} on and not before"
        return f"the {self.src} knows its {self.target} {depth}"

    def describe(self) -> dict:
        return {"src": self.src, "target": self.target, "layer": -1 if self.layer is None else self.layer}

    def roles(self) -> tuple[str, ...]:
        return (self.src, self.target)

    def to_dict(self) -> dict:
        return {"src": self.src, "target": self.target, "layer": self.layer}

    @classmethod
    def from_dict(cls, d: dict) -> ResolutionDepth:
        return cls(d["src"], d["target"], d.get("layer"))


EssayClaim = SelfUpdate | ResolutionDepth
KINDS: tuple[type, ...] = (SelfUpdate, ResolutionDepth)  # C and D add QueryKey, LocalGlobal here
BY_KIND: dict[str, type] = {kind.KIND: kind for kind in KINDS}


def parse_essay(text: str) -> EssayClaim | None:
    """The essay claim ``text`` writes, or None when it is of none of the kinds."""
    for kind in KINDS:
        claim = kind.parse(text)
        if claim is not None:
            return claim
    return None
