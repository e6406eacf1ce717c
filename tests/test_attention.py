"""Attention evidence finds the toy's planted heads and agrees with independent computations.

Ground truth: the toy's planted heads (by construction), full TransformerLens caches computed per prompt, and
TransformerLens's own ``head_detector.detect_head``.
"""

import math

import pytest
import torch
from scipy.stats import spearmanr
from transformer_lens import HookedTransformer
from transformer_lens.head_detector import detect_head

from probes import tasks
from probes.evidence.attention import (
    KINDS,
    head_score_samples,
    head_scores,
    norm_weighted_attention,
    role_attention,
)
from probes.core.errors import ProbesError
from probes.prompts.promptset import PromptSet
from probes.models.toy import COPY, SCORE, SINK_SCORE, ToyModel
from probes.prompts.tasks import pronoun_prompts

N = 16
# Most attention a planted head can leave off its target: the <bos> sink scores SCORE - SINK_SCORE below a match
# (softmax weight ~exp(SINK_SCORE - SCORE)), every other key SCORE below it; doubled for the untouched heads' small
# writes into the residual stream, which the planted queries and keys also read.
LEAK = 2 * math.exp(SINK_SCORE - SCORE)


@pytest.fixture(scope="module")
def pronouns(toy_model: ToyModel) -> PromptSet:
    return pronoun_prompts(toy_model, N, seed=1)


def _ranking(scores: torch.Tensor) -> list[tuple[int, int]]:
    """Heads as (layer, head), best first."""
    n_heads = scores.shape[-1]
    return [divmod(int(i), n_heads) for i in scores.flatten().argsort(descending=True)]


def test_role_attention_matches_the_cached_pattern(toy_model: ToyModel, pronouns: PromptSet) -> None:
    got = role_attention(toy_model.model, pronouns, "pronoun", "antecedent", batch_size=5)
    cfg = toy_model.model.cfg
    assert got.shape == (N, cfg.n_layers, cfg.n_heads)
    with torch.no_grad():
        _, cache = toy_model.model.run_with_cache(pronouns.clean)
    idx = torch.arange(N)
    for layer in range(cfg.n_layers):
        pattern = cache["pattern", layer]
        expected = pattern[idx, :, pronouns.role("pronoun"), pronouns.role("antecedent")]
        torch.testing.assert_close(got[:, layer], expected)


def test_antecedent_and_decoy_attend_but_only_the_antecedent_head_writes(toy_model: ToyModel, pronouns: PromptSet) -> None:
    heads = toy_model.heads
    alpha = role_attention(toy_model.model, pronouns, "pronoun", "antecedent")
    assert set(_ranking(alpha.mean(0))[:2]) == {heads.antecedent, heads.decoy}
    assert (1 - alpha[:, *heads.antecedent] < LEAK).all() and (1 - alpha[:, *heads.decoy] < LEAK).all()

    weighted = norm_weighted_attention(toy_model.model, pronouns, "pronoun", "antecedent")
    assert _ranking(weighted.mean(0))[0] == heads.antecedent
    assert (weighted[:, *heads.decoy] == 0).all()  # zero OV: attends fully and moves nothing
    # ~1 attention times the copied one-hot, written as a logit of COPY; the untouched heads' writes into the
    # residual stream, which the copy circuit also reads, move it by less than ~0.1 (see probes.models.toy)
    torch.testing.assert_close(weighted[:, *heads.antecedent], torch.full((N,), COPY), atol=0.1, rtol=0)


def test_norm_weighted_attention_matches_the_ov_circuit(toy_model: ToyModel, pronouns: PromptSet) -> None:
    """Independent route: residual stream times W_V, plus b_V, times W_O, from a full cache."""
    got = norm_weighted_attention(toy_model.model, pronouns, "pronoun", "distractor")
    with torch.no_grad():
        _, cache = toy_model.model.run_with_cache(pronouns.clean)
    idx = torch.arange(N)
    src, dst = pronouns.role("pronoun"), pronouns.role("distractor")
    for layer in range(toy_model.model.cfg.n_layers):
        attn = toy_model.model.blocks[layer].attn
        x = cache["resid_pre", layer][idx, dst]  # attention-only, no norm: the head reads the residual directly
        written = torch.einsum("bm,hmd->bhd", x, attn.W_V) + attn.b_V
        norms = torch.einsum("bhd,hdm->bhm", written, attn.W_O).norm(dim=-1)
        torch.testing.assert_close(got[:, layer], cache["pattern", layer][idx, :, src, dst] * norms)


def test_previous_and_role_positions(toy_model: ToyModel, pronouns: PromptSet) -> None:
    on_previous = role_attention(toy_model.model, pronouns, "end", "previous")
    assert _ranking(on_previous.mean(0))[0] == toy_model.heads.previous_token
    assert (1 - on_previous[:, *toy_model.heads.previous_token] < LEAK).all()
    explicit = role_attention(toy_model.model, pronouns, pronouns.end, pronouns.end - 1)
    torch.testing.assert_close(on_previous, explicit)
    with pytest.raises(ProbesError, match="attends only backwards"):
        role_attention(toy_model.model, pronouns, "antecedent", "pronoun")
    with pytest.raises(ProbesError, match="unknown role 'subject'"):
        role_attention(toy_model.model, pronouns, "subject", "pronoun")


def test_head_scores_rank_the_planted_heads_first(toy_model: ToyModel) -> None:
    previous = head_score_samples(toy_model.model, "previous_token", n=N)
    cfg = toy_model.model.cfg
    assert previous.shape == (N, cfg.n_layers, cfg.n_heads)
    assert _ranking(previous.mean(0))[0] == toy_model.heads.previous_token
    assert (1 - previous[:, *toy_model.heads.previous_token] < LEAK).all()
    torch.testing.assert_close(head_scores(toy_model.model, "previous_token", n=N), previous.mean(0))
    induction = head_scores(toy_model.model, "induction", n=N)
    assert _ranking(induction)[0] == toy_model.heads.induction and 1 - induction[toy_model.heads.induction] < LEAK
    with pytest.raises(ProbesError, match="unknown head kind"):
        head_scores(toy_model.model, "successor")


SENTENCES = [
    "The cat sat on the mat. The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary",
    "One two three four five, one two three four five",
]


@pytest.fixture(scope="module")
def sentence_caches(smollm2: HookedTransformer) -> list:
    """One pattern-only cache per sentence, in the layout detect_head expects (batch dim removed)."""
    with torch.no_grad():
        return [
            smollm2.run_with_cache(s, remove_batch_dim=True, names_filter=lambda name: name.endswith("hook_pattern"))[1]
            for s in SENTENCES
        ]


@pytest.mark.real
@pytest.mark.parametrize("kind", KINDS)
def test_head_scores_agree_with_transformer_lens_detect_head(
    smollm2: HookedTransformer, sentence_caches: list, kind: str
) -> None:
    tokens = [smollm2.to_tokens(s)[0] for s in SENTENCES]
    padded = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
    ends = torch.tensor([len(t) - 1 for t in tokens])
    prompts = PromptSet.from_tokens(padded, padded, torch.zeros(len(tokens)), torch.zeros(len(tokens)), {"end": ends})
    ours = head_score_samples(smollm2, kind, prompts=prompts, batch_size=2)
    theirs = torch.stack(
        [detect_head(smollm2, s, f"{kind}_head", cache=cache) for s, cache in zip(SENTENCES, sentence_caches)]
    )
    for i, ids in enumerate(t.tolist() for t in tokens):
        # detect_head divides by all T queries; ours averages over the queries that have a target: all but the
        # first for previous_token, those whose token occurred before for duplicate and induction
        with_target = len(ids) - 1 if kind == "previous_token" else sum(ids[q] in ids[:q] for q in range(len(ids)))
        torch.testing.assert_close(ours[i] * with_target / len(ids), theirs[i], atol=1e-5, rtol=1e-4)
    mean_ours, mean_theirs = ours.mean(0).flatten(), theirs.mean(0).flatten()
    assert spearmanr(mean_ours, mean_theirs).statistic >= 0.98
    assert mean_ours.argmax() == mean_theirs.argmax()


@pytest.mark.real
def test_grouped_value_heads_map_like_transformer_lens(smollm2: HookedTransformer) -> None:
    """SmolLM2 has 9 query heads over 3 value heads; TransformerLens's ungrouped mode expands W_V itself."""
    cfg = smollm2.cfg
    assert cfg.n_key_value_heads is not None and cfg.n_key_value_heads < cfg.n_heads  # grouped-query attention
    prompts = tasks.pronoun_resolution(smollm2, 3, templates=[0, 1, 2])
    grouped = norm_weighted_attention(smollm2, prompts, "pronoun", "antecedent")
    smollm2.cfg.ungroup_grouped_query_attention = True
    try:
        ungrouped = norm_weighted_attention(smollm2, prompts, "pronoun", "antecedent")
    finally:
        smollm2.cfg.ungroup_grouped_query_attention = False
    torch.testing.assert_close(grouped, ungrouped, atol=1e-5, rtol=1e-4)
    assert grouped.shape == (len(prompts), cfg.n_layers, cfg.n_heads) and (grouped > 0).all()


@pytest.mark.real
def test_padded_batches_match_single_prompt_runs(smollm2: HookedTransformer) -> None:
    prompts = tasks.ioi(smollm2, 6, templates=list(range(6))).subset([0, 2, 4])
    assert len(set(prompts.end.tolist())) > 1  # different lengths, so padding is exercised
    got = role_attention(smollm2, prompts, "end", "IO")
    for i in range(len(prompts)):
        tokens = prompts.clean[i : i + 1, : prompts.end[i] + 1]
        with torch.no_grad():
            _, cache = smollm2.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
        last = smollm2.cfg.n_layers - 1
        for layer in (0, last // 2, last):
            expected = cache["pattern", layer][0, :, prompts.end[i], prompts.role("IO")[i]]
            torch.testing.assert_close(got[i, layer], expected, atol=1e-5, rtol=1e-4)
