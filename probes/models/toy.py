"""A two-layer attention-only HookedTransformer with hand-planted heads: ground truth for the kit's own tests.

Nothing is trained. Every weight is set by hand, so which head does what is known by construction, and each
kind of evidence the kit gathers (attention patterns, activation patching, probes, verdicts) can be checked
against a right answer rather than against itself.

The residual stream is a stack of orthogonal blocks (see the ``RESID_*`` constants): the token one-hot, the
position one-hot, a name-gender dim (+1 female name, -1 male name), a pronoun-gender dim (+1 " she", -1 " he"),
a "previous token" block written by layer 0 and an "output" block, the only part the unembedding reads.

Planted heads (``PlantedHeads``), and why each exists:

* previous-token head, L0H2: position ``i`` attends to ``i - 1`` and copies that token's one-hot into the
  previous-token block. Ground truth for attention-pattern tests, and the head the induction head composes with.
* antecedent head, L1H1: at a pronoun, attends to the name of the same gender and copies it into the output
  block, so the model's answer at the pronoun is the antecedent. Ground truth for patching and ablation: the
  logit difference depends on this head and (almost) nothing else. Away from pronouns it rests on ``<bos>``.
* induction head, L1H2: K-composes with the previous-token head (query: current token, key: previous token) and
  copies the token that followed the earlier occurrence, so on ``<bos> r r`` it predicts the repeat. With no
  match it rests on ``<bos>``, a sink whose value is zero.
* decoy head, L1H3: exactly the antecedent head's QK with an all-zero OV circuit. It attends like the antecedent
  head and changes nothing, so it is the case a verdict must not confuse "attends to" with "causes".
* untouched heads, L0H0, L0H1, L0H3, L1H0: small seeded random weights (std 0.02), so rankings over heads have
  no ties. Their effect on any logit stays below ~0.1 (mostly indirect, through what the copy heads read),
  against the 5 a planted head writes.

The antecedent and induction heads write nothing when resting on ``<bos>`` because their OV circuits skip the
``<bos>`` row: the sink keeps them out of the way of each other's answers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from probes.models import tl


VOCAB: list[str] = [
    "<bos>",
    " she",
    " he",
    *[" Mary", " Anna", " Sarah", " Emma", " Lucy", " Kate"],
    *[" John", " Tom", " James", " Paul", " Mark", " David"],
    *[" and", " went", " to", " the", " park", " store", " gave", " ball", " a"],
]
BOS, SHE, HE = 0, 1, 2
FEMALE_NAMES = range(3, 9)
MALE_NAMES = range(9, 15)
FILLERS = range(15, len(VOCAB))
AND = VOCAB.index(" and")

D_VOCAB = len(VOCAB)
N_CTX = 16
D_HEAD = D_VOCAB + 1  # one dim per token for the copy and match circuits, plus one for the <bos> sink

RESID_TOKEN = slice(0, D_VOCAB)
RESID_POSITION = slice(RESID_TOKEN.stop, RESID_TOKEN.stop + N_CTX)
RESID_NAME_GENDER = RESID_POSITION.stop
RESID_PRONOUN_GENDER = RESID_NAME_GENDER + 1
RESID_PREVIOUS = slice(RESID_PRONOUN_GENDER + 1, RESID_PRONOUN_GENDER + 1 + D_VOCAB)
RESID_OUTPUT = slice(RESID_PREVIOUS.stop, RESID_PREVIOUS.stop + D_VOCAB)
D_MODEL = RESID_OUTPUT.stop

SCORE = 20.0  # attention-score gap of a planted match: softmax puts ~1 - e^-10 on the matching position
SINK_SCORE = SCORE / 2  # score of the <bos> sink: beats "no match" (0), loses to a match
COPY = 5.0  # logit an OV copy head writes for the token it attends to
UNTOUCHED_STD = 0.02

NON_SPECIAL = range(FEMALE_NAMES.start, D_VOCAB)  # names and fillers: everything but <bos> and the pronouns


@dataclass(frozen=True)
class PlantedHeads:
    """Where each planted head sits, as (layer, head)."""

    previous_token: tuple[int, int] = (0, 2)
    antecedent: tuple[int, int] = (1, 1)
    induction: tuple[int, int] = (1, 2)
    decoy: tuple[int, int] = (1, 3)
    untouched: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 3), (1, 0))


H = TypeVar("H")  # the builder's planted-heads class


@dataclass
class ToyModel(Generic[H]):
    """The planted model, where its heads are, and the names of its tokens (it has no tokenizer)."""

    model: tl.HookedTransformer
    heads: H
    vocab: list[str]


@dataclass
class _HeadWeights:
    """Views into one head's parameters, so planting code writes straight into the model."""

    W_Q: Float[Tensor, "d_model d_head"]
    W_K: Float[Tensor, "d_model d_head"]
    W_V: Float[Tensor, "d_model d_head"]
    W_O: Float[Tensor, "d_head d_model"]
    b_Q: Float[Tensor, " d_head"]
    b_K: Float[Tensor, " d_head"]
    b_V: Float[Tensor, " d_head"]


def _head(model: tl.HookedTransformer, layer: int, head: int) -> _HeadWeights:
    attn = model.blocks[layer].attn
    return _HeadWeights(
        attn.W_Q.data[head],
        attn.W_K.data[head],
        attn.W_V.data[head],
        attn.W_O.data[head],
        attn.b_Q.data[head],
        attn.b_K.data[head],
        attn.b_V.data[head],
    )


def _plant_embeddings(model: tl.HookedTransformer) -> None:
    """Tokens and positions write one-hots; names and pronouns also write their gender dims."""
    W_E: Float[Tensor, "d_vocab d_model"] = model.embed.W_E.data
    W_pos: Float[Tensor, "n_ctx d_model"] = model.pos_embed.W_pos.data
    W_U: Float[Tensor, "d_model d_vocab"] = model.unembed.W_U.data
    W_E[:, RESID_TOKEN] = torch.eye(D_VOCAB)
    W_E[list(FEMALE_NAMES), RESID_NAME_GENDER] = 1.0
    W_E[list(MALE_NAMES), RESID_NAME_GENDER] = -1.0
    W_E[SHE, RESID_PRONOUN_GENDER] = 1.0
    W_E[HE, RESID_PRONOUN_GENDER] = -1.0
    W_pos[:, RESID_POSITION] = torch.eye(N_CTX)
    W_U[RESID_OUTPUT, :] = torch.eye(D_VOCAB)


def _plant_previous_token(w: _HeadWeights, attn_scale: float) -> None:
    """Query at position i matches the key of position i-1; position 0 can only attend to itself."""
    for i in range(1, N_CTX):
        w.W_Q[RESID_POSITION.start + i, i - 1] = SCORE * attn_scale
        w.W_K[RESID_POSITION.start + i - 1, i - 1] = 1.0
    w.W_V[RESID_TOKEN, :D_VOCAB] = torch.eye(D_VOCAB)
    w.W_O[:D_VOCAB, RESID_PREVIOUS] = torch.eye(D_VOCAB)


def _plant_gender_match(w: _HeadWeights, attn_scale: float) -> None:
    """Pronoun gender times name gender: +SCORE on the matching name, -SCORE on the other, sink on <bos>."""
    w.W_Q[RESID_PRONOUN_GENDER, 0] = SCORE * attn_scale
    w.W_K[RESID_NAME_GENDER, 0] = 1.0
    _plant_sink(w, attn_scale, dim=1)


def _plant_induction_match(w: _HeadWeights, attn_scale: float) -> None:
    """Current token against the previous-token block: a position whose predecessor is this token wins."""
    w.W_Q[RESID_TOKEN, :D_VOCAB] = SCORE * attn_scale * torch.eye(D_VOCAB)
    w.W_K[RESID_PREVIOUS, :D_VOCAB] = torch.eye(D_VOCAB)
    _plant_sink(w, attn_scale, dim=D_VOCAB)


def _plant_induction(w: _HeadWeights, attn_scale: float) -> None:
    """An induction head: the match above, and a copy of the token it finds into the output block."""
    _plant_induction_match(w, attn_scale)
    _plant_copy_to_output(w)


def _plant_sink(w: _HeadWeights, attn_scale: float, dim: int) -> None:
    """A constant query against a <bos>-only key feature, so a head with nothing to match rests on <bos>."""
    w.b_Q[dim] = SINK_SCORE * attn_scale
    w.W_K[RESID_TOKEN.start + BOS, dim] = 1.0


def _plant_copy_to_output(w: _HeadWeights) -> None:
    """Copy the attended token into the output block as a logit of COPY; <bos> copies nothing (the sink)."""
    eye = torch.eye(D_VOCAB)
    eye[BOS, BOS] = 0.0
    w.W_V[RESID_TOKEN, :D_VOCAB] = eye
    w.W_O[:D_VOCAB, RESID_OUTPUT] = COPY * torch.eye(D_VOCAB)


def _plant_untouched(w: _HeadWeights, gen: torch.Generator) -> None:
    for weight in (w.W_Q, w.W_K, w.W_V, w.W_O):
        weight.copy_(torch.randn(weight.shape, generator=gen) * UNTOUCHED_STD)


def build(seed: int = 0) -> ToyModel[PlantedHeads]:
    """The planted model; ``seed`` only sets the untouched heads' small random weights."""
    model = _blank_model(n_layers=2, n_heads=4)
    cfg = model.cfg
    heads = PlantedHeads()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _plant_embeddings(model)
        _plant_previous_token(_head(model, *heads.previous_token), cfg.attn_scale)
        antecedent = _head(model, *heads.antecedent)
        _plant_gender_match(antecedent, cfg.attn_scale)
        _plant_copy_to_output(antecedent)
        _plant_induction(_head(model, *heads.induction), cfg.attn_scale)
        _plant_gender_match(_head(model, *heads.decoy), cfg.attn_scale)
        for layer, head in heads.untouched:
            _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


def _blank_model(**overrides) -> tl.HookedTransformer:
    """An attention-only model of this module's sizes with every weight zero, frozen, for planting into."""
    tl.require_hooked_transformer("probes.toy")
    cfg = tl.HookedTransformerConfig(
        **{
            "d_model": D_MODEL,
            "d_head": D_HEAD,
            "d_vocab": D_VOCAB,
            "d_vocab_out": D_VOCAB,
            "n_ctx": N_CTX,
            "act_fn": "relu",
            "attn_only": True,
            "normalization_type": None,
            "positional_embedding_type": "standard",
            "init_weights": False,  # every weight is set by the builder; this also leaves the global RNG alone
            "device": "cpu",
        }
        | overrides
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = tl.HookedTransformer(cfg)
    model.eval()
    model.requires_grad_(False)
    for param in model.parameters():
        param.data.zero_()
    return model


# ---------------------------------------------------------------------------------------------------------------
# Position or content (probes.evidence.position, probes.evidence.rotary): heads whose pathway is known


@dataclass(frozen=True)
class PositionContentHeads:
    """The one-layer position/content model's heads: L0H0 attends to ``i - 1`` whatever the tokens (position
    one-hots only), L0H1 attends to any name wherever it is (token class only; rests on ``<bos>`` without one)."""

    positional: tuple[int, int] = (0, 0)
    content: tuple[int, int] = (0, 1)
    untouched: tuple[tuple[int, int], ...] = ((0, 2), (0, 3))


def _plant_token_class(w: _HeadWeights, attn_scale: float, tokens: range) -> None:
    """A constant query against a key feature shared by ``tokens``: the class wins wherever it stands."""
    w.b_Q[0] = SCORE * attn_scale
    w.W_K[[RESID_TOKEN.start + t for t in tokens], 0] = 1.0
    _plant_sink(w, attn_scale, dim=1)


def build_position_content(seed: int = 0) -> ToyModel[PositionContentHeads]:
    """One layer: a purely positional head and a purely content head (see :class:`PositionContentHeads`), both
    copying what they attend to into the output block; ``seed`` sets the untouched heads."""
    model = _blank_model(n_layers=1, n_heads=4)
    heads = PositionContentHeads()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _plant_embeddings(model)
        _plant_previous_token(_head(model, *heads.positional), model.cfg.attn_scale)
        content = _head(model, *heads.content)
        _plant_token_class(content, model.cfg.attn_scale, range(FEMALE_NAMES.start, MALE_NAMES.stop))
        _plant_copy_to_output(content)
        for layer, head in heads.untouched:
            _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


ROTARY_D_HEAD = 16  # 8 rotary pairs: 4 bands of 2 pairs under probes.evidence.rotary's default split
ROTARY_MAX_LEN = 7  # the fastest band turns 1 radian a token: past ~7 tokens its cosine comes round again


@dataclass(frozen=True)
class RotaryHeads:
    """The rotary model's heads: L0H0 attends to ``i - 1`` through the fastest rotary pair alone (constant query
    and key, so no content at all; its OV circuit is zero: it is ground truth for attention only); L0H1 has small
    random weights."""

    fastest_band: tuple[int, int] = (0, 0)
    untouched: tuple[tuple[int, int], ...] = ((0, 1),)


def build_rotary(seed: int = 0) -> ToyModel[RotaryHeads]:
    """One layer, rotary positions (NeoX pairs ``(j, j + d/2)``, base 10000), no learned positions.

    The planted head's query and key are biases in pair 0 (angle 1 radian per token): the query ``(a, 0)`` and the
    key ``(cos 1, sin 1)`` give the score ``a cos(1 - delta)`` at distance ``delta``, largest at ``delta = 1``.
    Keep prompts within ``ROTARY_MAX_LEN`` tokens (the cosine is periodic).
    """
    model = _blank_model(
        n_layers=1, n_heads=2, d_head=ROTARY_D_HEAD, positional_embedding_type="rotary", rotary_dim=ROTARY_D_HEAD
    )
    heads = RotaryHeads()
    gen = torch.Generator().manual_seed(seed)
    half = ROTARY_D_HEAD // 2
    with torch.no_grad():
        model.embed.W_E.data[:, RESID_TOKEN] = torch.eye(D_VOCAB)
        model.unembed.W_U.data[RESID_OUTPUT, :] = torch.eye(D_VOCAB)
        w = _head(model, *heads.fastest_band)
        w.b_Q[0] = 2 * SCORE * model.cfg.attn_scale
        w.b_K[0], w.b_K[half] = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
        for layer, head in heads.untouched:
            _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


@dataclass(frozen=True)
class ShortformerHeads:
    """The shortformer model's heads: L0H1 attends to ``i - 1`` through the positions its query and key inputs
    get (the residual stream has none) and copies that token into the previous-token block; L1H0 is an induction
    head that K-composes with it; the others have small random weights."""

    previous_token: tuple[int, int] = (0, 1)
    induction: tuple[int, int] = (1, 0)
    untouched: tuple[tuple[int, int], ...] = ((0, 0), (1, 1))


def build_shortformer(seed: int = 0) -> ToyModel[ShortformerHeads]:
    """Two attention-only layers with shortformer positions, as TransformerLens's classic induction-head models:
    the position one-hots (``W_pos``) are added to each layer's query and key inputs only, never to the residual
    stream or the values, so the previous-token head finds ``i - 1`` by position while what it copies, and all the
    induction head reads, is token content. ``seed`` sets the untouched heads."""
    model = _blank_model(n_layers=2, n_heads=2, positional_embedding_type="shortformer")
    heads = ShortformerHeads()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _plant_embeddings(model)
        _plant_previous_token(_head(model, *heads.previous_token), model.cfg.attn_scale)
        _plant_induction(_head(model, *heads.induction), model.cfg.attn_scale)
        for layer, head in heads.untouched:
            _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


# ---------------------------------------------------------------------------------------------------------------
# Circuit discovery (probes.evidence.circuits.discovery): planted circuits whose other heads are EXACTLY zero, so
# the planted edges alone give faithfulness 1 to float precision and every other edge's effect is exactly 0


DECOY_WRITE = 10 * COPY  # the decoy's write: twice the norm of everything the planted circuit writes, unread


@dataclass(frozen=True)
class TwoHopHeads:
    """The two-hop model's heads (``<bos> r r`` induction prompts, :func:`probes.tasks.repeated_prompts`).

    L0H2 is a previous-token head; L1H1 an induction head reading it through its KEY and copying the induced
    token (+COPY); L1H0 a negative head, the induction head's match with half the copy subtracted (so the full
    model's logit difference is COPY / 2 and a circuit without the negative head overshoots to faithfulness 2);
    L1H3 a decoy with the induction head's match (it attends as strongly, to the same position) that writes
    ``DECOY_WRITE`` times the attended token's one-hot into the token block, which the unembedding does not read.
    Every other head is zero."""

    previous_token: tuple[int, int] = (0, 2)
    negative: tuple[int, int] = (1, 0)
    induction: tuple[int, int] = (1, 1)
    decoy: tuple[int, int] = (1, 3)

    @property
    def circuit(self) -> list[tuple[str, str]]:
        """The planted edges under corrupt ablation (a corrupt prompt changes the first ``r``): the previous-token
        head's value (the token it copies), its output into the induction and negative heads' keys, and their
        outputs into the logits. Queries and the previous-token head's query and key read positions or the
        unchanged second half, so their edges carry nothing the corruption changes."""
        prev, neg, ind = (f"a{layer}.{head}" for layer, head in (self.previous_token, self.negative, self.induction))
        return [("input", f"{prev}.v"), (prev, f"{ind}.k"), (prev, f"{neg}.k"), (ind, "logits"), (neg, "logits")]


def build_two_hop() -> ToyModel:
    """The two-hop circuit with a negative head and a decoy (see :class:`TwoHopHeads`); nothing random."""
    model = _blank_model(n_layers=2, n_heads=4)
    heads = TwoHopHeads()
    scale = model.cfg.attn_scale
    with torch.no_grad():
        _plant_embeddings(model)
        _plant_previous_token(_head(model, *heads.previous_token), scale)
        _plant_induction(_head(model, *heads.induction), scale)
        negative = _head(model, *heads.negative)
        _plant_induction(negative, scale)
        negative.W_O.mul_(-0.5)
        decoy = _head(model, *heads.decoy)
        _plant_induction_match(decoy, scale)
        decoy.W_V[RESID_TOKEN, :D_VOCAB] = torch.eye(D_VOCAB)
        decoy.W_O[:D_VOCAB, RESID_TOKEN] = DECOY_WRITE * torch.eye(D_VOCAB)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


RESID_MARKER = D_MODEL  # the redundant model's one extra residual dim: "this position holds a name"
MARKER_SCORE = 2 * SCORE  # the reader's score per unit of marker: one marker beats its sink (SCORE) by 20


@dataclass(frozen=True)
class RedundantHeads:
    """The redundant model's heads (:func:`probes.tasks.marked_name_prompts`): L0H1 and L0H3 each attend to their
    own position and write 1 into the marker dim at a name; L1H2 reads the marker through its KEY (score
    ``MARKER_SCORE`` per unit against a ``<bos>`` sink at ``SCORE``) and copies the marked name (+COPY).

    Either marker head alone saturates the reader's softmax (attention 1 - e^-20 on the name; an unmarked name gets
    e^-20 of the sink's), so ablating one changes the logit difference by ~COPY e^-20 (zero in float32): each alone
    is sufficient, neither is necessary, and only removing both removes the behaviour. What methods see: exact
    single-edge ablation and EAP (the gradient at the clean run, where the saturated softmax is flat) score each
    marker head's edges 0; EAP-IG averages the gradient over inputs from the corrupt run (no marker: attention on
    the sink) to the clean one, crosses the unsaturated region, and scores the two heads' edges equal and nonzero
    (more as ``steps`` grows and the midpoint rule resolves the sharp transition). Equal scores tie, and ties keep
    the graph's order, so a ranking picks one of the two paths. Every other head is zero."""

    markers: tuple[tuple[int, int], ...] = ((0, 1), (0, 3))
    reader: tuple[int, int] = (1, 2)

    def path(self, marker: tuple[int, int]) -> list[tuple[str, str]]:
        """One marker head's edges: its value (the name it marks) and its output into the reader's key."""
        node, reader = f"a{marker[0]}.{marker[1]}", f"a{self.reader[0]}.{self.reader[1]}"
        return [("input", f"{node}.v"), (node, f"{reader}.k")]

    @property
    def reader_edges(self) -> list[tuple[str, str]]:
        """The reader's edges the corruption (the name replaced by a filler) changes: its value and its output."""
        reader = f"a{self.reader[0]}.{self.reader[1]}"
        return [("input", f"{reader}.v"), (reader, "logits")]


def build_redundant() -> ToyModel:
    """Two redundant marker heads and a reader (see :class:`RedundantHeads`); nothing random."""
    model = _blank_model(n_layers=2, n_heads=4, d_model=D_MODEL + 1)
    heads = RedundantHeads()
    scale = model.cfg.attn_scale
    with torch.no_grad():
        _plant_embeddings(model)
        for marker in heads.markers:
            w = _head(model, *marker)
            for i in range(N_CTX):
                w.W_Q[RESID_POSITION.start + i, i] = SCORE * scale
                w.W_K[RESID_POSITION.start + i, i] = 1.0
            w.W_V[[RESID_TOKEN.start + t for t in range(FEMALE_NAMES.start, MALE_NAMES.stop)], 0] = 1.0
            w.W_O[0, RESID_MARKER] = 1.0
        reader = _head(model, *heads.reader)
        reader.b_Q[0] = MARKER_SCORE * scale
        reader.W_K[RESID_MARKER, 0] = 1.0
        _plant_sink(reader, 2 * scale, dim=1)  # at SCORE, not SINK_SCORE: an unmarked name's leak is e^-20
        _plant_copy_to_output(reader)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


# The essay's claims (probes.claims.essay): a self-update model and a resolution-depth model


@dataclass(frozen=True)
class SelfUpdateHeads:
    """The self-update model's heads (one layer). Both planted heads attend to the token itself or away from it by
    the query token's identity, so their self-attention varies from token to token:

    * ``sink_writer``, L0H0: self against the ``<bos>`` sink, with a score that differs per token (self-attention
      spread over ~0.05..0.95); its value reads only the ``<bos>`` token feature, which no self-attended token has.
      Attending to itself it writes nothing, attending to the sink it writes a lot: "attending to itself, a token
      changes little" holds, and the token itself does the do-nothing job.
    * ``copier``, L0H1: names attend to position 1, other tokens to themselves; the value copies the attended token
      with a per-token size (0.5..1.5, ``<bos>`` zero), so attending to itself it writes as much as elsewhere (the
      sentence fails) and the sink would be the place that writes nothing.
    * ``previous``, L0H2: a previous-token head: its self-attention does not vary (always ~0), so the sentence does
      not apply to it.
    """

    sink_writer: tuple[int, int] = (0, 0)
    copier: tuple[int, int] = (0, 1)
    previous: tuple[int, int] = (0, 2)


SELF_DIMS = N_CTX  # query/key dims 0..N_CTX-1 match a position with itself; dim N_CTX is the "elsewhere" score


def _plant_self_or_elsewhere(w: _HeadWeights, attn_scale: float, elsewhere: dict[int, float], key_row: int) -> None:
    """Score SCORE on the token itself (position one-hots matched with themselves) against ``elsewhere[t]`` (by
    query token ``t``) on the key that carries residual row ``key_row``."""
    for i in range(N_CTX):
        w.W_Q[RESID_POSITION.start + i, i] = SCORE * attn_scale
        w.W_K[RESID_POSITION.start + i, i] = 1.0
    for token, score in elsewhere.items():
        w.W_Q[RESID_TOKEN.start + token, SELF_DIMS] = score * attn_scale
    w.W_K[key_row, SELF_DIMS] = 1.0


def build_self_update(seed: int = 0) -> ToyModel:
    """The self-update model (:class:`SelfUpdateHeads`); ``seed`` draws the per-token sink scores and copy sizes."""
    model = _blank_model(n_layers=1, n_heads=3)
    heads = SelfUpdateHeads()
    gen = torch.Generator().manual_seed(seed)
    scale = model.cfg.attn_scale
    with torch.no_grad():
        _plant_embeddings(model)
        sink_writer = _head(model, *heads.sink_writer)
        offsets = (torch.rand(D_VOCAB, generator=gen) * 6 - 3).tolist()  # self-attention ~0.05..0.95
        _plant_self_or_elsewhere(sink_writer, scale, {t: SCORE + offsets[t] for t in range(D_VOCAB)},
                                 RESID_TOKEN.start + BOS)
        sink_writer.W_V[RESID_TOKEN.start + BOS, 0] = 1.0
        sink_writer.W_O[0, RESID_OUTPUT.start + BOS] = COPY
        copier = _head(model, *heads.copier)
        names = range(FEMALE_NAMES.start, MALE_NAMES.stop)
        _plant_self_or_elsewhere(copier, scale, {t: SCORE + (10 if t in names else -10) for t in range(D_VOCAB)},
                                 RESID_POSITION.start + 1)
        sizes = torch.rand(D_VOCAB, generator=gen) + 0.5
        sizes[BOS] = 0.0
        copier.W_V[RESID_TOKEN, :D_VOCAB] = torch.diag(sizes)
        copier.W_O[:D_VOCAB, RESID_OUTPUT] = torch.eye(D_VOCAB)
        _plant_previous_token(_head(model, *heads.previous), scale)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


@dataclass(frozen=True)
class DepthHeads:
    """The resolution-depth model's heads (three layers; every other head is zero): at the pronoun, ``antecedent``
    (L1H0) attends to the name of the pronoun's gender and copies it into the output block (the answer);
    ``position`` (L1H1) attends the same way and copies that name's position one-hot into the (otherwise unused)
    previous-token block, so from layer 1 on the pronoun's residual stream says where its antecedent stood:
    "the antecedent is the first-named person" becomes linear there, and nowhere before. Built with
    ``resolves=False``, the position head's OV circuit is zero: the pronoun never knows (only the answer is
    copied, which is a name, not an order)."""

    antecedent: tuple[int, int] = (1, 0)
    position: tuple[int, int] = (1, 1)
    depth: int = 1


def build_depth(resolves: bool = True) -> ToyModel:
    """The resolution-depth model (:class:`DepthHeads`): prompts from
    :func:`probes.prompts.tasks.toy.pronoun_prompts`."""
    model = _blank_model(n_layers=3, n_heads=2)
    heads = DepthHeads()
    scale = model.cfg.attn_scale
    with torch.no_grad():
        _plant_embeddings(model)
        antecedent = _head(model, *heads.antecedent)
        _plant_gender_match(antecedent, scale)
        _plant_copy_to_output(antecedent)
        position = _head(model, *heads.position)
        _plant_gender_match(position, scale)
        if resolves:
            position.W_V[RESID_POSITION, :N_CTX] = torch.eye(N_CTX)
            position.W_V[RESID_POSITION.start, :N_CTX] = 0.0  # the <bos> sink copies nothing
            position.W_O[:N_CTX, RESID_PREVIOUS.start : RESID_PREVIOUS.start + N_CTX] = torch.eye(N_CTX)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


# ---------------------------------------------------------------------------------------------------------------
# Folded weights (what ``from_pretrained`` gives by default): not planted, random, for exactness checks


def build_random(normalization_type: str = "LN", seed: int = 0) -> tl.HookedTransformer:
    """A small random model with every part TransformerLens's weight processing rewrites: GPT-2-like for ``"LN"``
    (learned positions, GELU MLP), Llama-like for ``"RMS"`` (rotary, gated MLP). Its biases and norm weights are
    random too (TransformerLens initialises them to 0 and 1), so folding and centring change every weight they touch."""
    tl.require_hooked_transformer("probes.toy")
    llama = normalization_type == "RMS"
    cfg = tl.HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=N_CTX * 2, d_vocab=48, act_fn="silu" if llama
        else "gelu_new", gated_mlp=llama, normalization_type=normalization_type,
        positional_embedding_type="rotary" if llama else "standard", rotary_dim=8 if llama else None, seed=seed,
        device="cpu",
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = tl.HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".b_" in name or name.startswith("b_") or name.endswith(".w") or name.endswith(".b"):
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    model.eval()
    return model.requires_grad_(False)


def processed(model: tl.HookedTransformer) -> tl.HookedTransformer:
    """A copy of ``model`` with the weight processing ``HookedTransformer.from_pretrained`` applies by default:
    norms folded into the next weights (``LNPre`` / ``RMSPre``), writing weights and the unembedding centred (LN
    models), value biases folded into the output bias. Same logit differences; other activations change."""
    import copy

    out = copy.deepcopy(model)
    out.load_and_process_state_dict(
        out.state_dict(), fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Query and key (probes.evidence.querykey): a head that matches on gender, one that matches on name identity


@dataclass(frozen=True)
class QueryKeyHeads:
    """The one-layer query/key model's heads: L0H0's query reads the pronoun's gender and its key the name's gender
    (the planted direction), and it copies what it attends to; L0H1's query is constant and its key gives each name
    its own fixed score (name identity, nothing about gender), with a zero OV circuit; L0H2 has small random weights."""

    gender: tuple[int, int] = (0, 0)
    identity: tuple[int, int] = (0, 1)
    untouched: tuple[tuple[int, int], ...] = ((0, 2),)


def _plant_name_identity(w: _HeadWeights, attn_scale: float, gen: torch.Generator) -> None:
    """A constant query against one score per name: spread evenly over [0.98, 1.02] x SCORE and dealt to the names
    by a seeded shuffle, so which name wins depends on which two names a prompt holds, never on their gender."""
    names = [*FEMALE_NAMES, *MALE_NAMES]
    scores = torch.linspace(0.98, 1.02, len(names))[torch.randperm(len(names), generator=gen)]
    w.b_Q[0] = SCORE * attn_scale
    w.W_K[[RESID_TOKEN.start + t for t in names], 0] = scores
    _plant_sink(w, attn_scale, dim=1)


def build_query_key(seed: int = 0) -> ToyModel:
    """One layer: a gender-matching head and a name-identity head (see :class:`QueryKeyHeads`); ``seed`` sets the
    identity head's name scores and the untouched head."""
    model = _blank_model(n_layers=1, n_heads=3)
    heads = QueryKeyHeads()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _plant_embeddings(model)
        gender = _head(model, *heads.gender)
        _plant_gender_match(gender, model.cfg.attn_scale)
        _plant_copy_to_output(gender)
        _plant_name_identity(_head(model, *heads.identity), model.cfg.attn_scale, gen)
        for layer, head in heads.untouched:
            _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))


# ---------------------------------------------------------------------------------------------------------------
# Local and global layers (probes.evidence.localglobal): long links through a global layer, or a local relay

LOCAL_WINDOW = 4  # keys a local query sees, itself included: pronoun prompts with 3 fillers put both names beyond it


@dataclass(frozen=True)
class LocalGlobalHeads:
    """The three-layer local/global model (layers local, local, global; window ``LOCAL_WINDOW``). Direct: L2H0 is
    the antecedent head (gender match, copy), in the global layer. Relay: L0H0 at every position collects the names
    within its window (token class) into the previous-token block; at the pronoun L1H0 (" she") and L1H1 (" he")
    attend to positions holding a name of the pronoun's gender there and copy it out; the global layer holds only
    small random heads. Every other head has small random weights."""

    antecedent: tuple[int, int] | None
    relay: tuple[tuple[int, int], ...]


def _plant_relay_reader(w: _HeadWeights, attn_scale: float, names: range, sign: float) -> None:
    """At a pronoun of gender ``sign`` (+1 she, -1 he), attend to positions whose previous-token block holds a name
    of ``names`` (half a name's weight is enough to beat the sink) and copy that name into the output block."""
    w.W_Q[RESID_PRONOUN_GENDER, 0] = sign * 2 * SCORE * attn_scale
    for t in names:
        w.W_K[RESID_PREVIOUS.start + t, 0] = 1.0
        w.W_V[RESID_PREVIOUS.start + t, t] = 1.0
        w.W_O[t, RESID_OUTPUT.start + t] = COPY
    _plant_sink(w, attn_scale, dim=D_VOCAB)


def build_local_global(relay: bool = False, seed: int = 0) -> ToyModel:
    """Three layers, the first two local (window ``LOCAL_WINDOW``) and the last global; the antecedent reaches the
    pronoun through the global layer's long link (``relay=False``) or through two local hops (``relay=True``), as
    :class:`LocalGlobalHeads` says. ``seed`` sets the untouched heads."""
    model = _blank_model(n_layers=3, n_heads=2, use_local_attn=True, attn_types=["local", "local", "global"],
                         window_size=LOCAL_WINDOW)  # fmt: skip
    heads = LocalGlobalHeads(antecedent=None if relay else (2, 0), relay=((0, 0), (1, 0), (1, 1)) if relay else ())
    planted = set(heads.relay) | ({heads.antecedent} if heads.antecedent else set())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _plant_embeddings(model)
        if heads.antecedent is not None:
            antecedent = _head(model, *heads.antecedent)
            _plant_gender_match(antecedent, model.cfg.attn_scale)
            _plant_copy_to_output(antecedent)
        else:
            collector = _head(model, 0, 0)
            _plant_token_class(collector, model.cfg.attn_scale, range(FEMALE_NAMES.start, MALE_NAMES.stop))
            eye = torch.eye(D_VOCAB)
            eye[BOS, BOS] = 0.0
            collector.W_V[RESID_TOKEN, :D_VOCAB] = eye
            collector.W_O[:D_VOCAB, RESID_PREVIOUS] = torch.eye(D_VOCAB)
            _plant_relay_reader(_head(model, 1, 0), model.cfg.attn_scale, FEMALE_NAMES, 1.0)
            _plant_relay_reader(_head(model, 1, 1), model.cfg.attn_scale, MALE_NAMES, -1.0)
        for layer in range(3):
            for head in range(2):
                if (layer, head) not in planted:
                    _plant_untouched(_head(model, layer, head), gen)
    return ToyModel(model=model, heads=heads, vocab=list(VOCAB))
