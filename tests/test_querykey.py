"""Query/key claims on planted toys: a gender-matching head is supported, a name-identity head is refuted for gender.

Ground truth is construction (probes.models.toy.build_query_key): L0H0's query reads the pronoun's gender and its
key the name's gender; L0H1's query is constant and its key scores each name by identity. Bad input (a feature the
swaps cannot flip, a head outside the model, prompts whose names have no gender, a corrupt side that changes more
than the pronoun) is one line.
"""

import pytest
import torch

from probes import tasks
from probes.claims.querykey import QueryKey, QueryKeyThresholds, decide_query_key
from probes.core.errors import ProbesError
from probes.evidence.activations import harvest
from probes.evidence.querykey import query_key
from probes.models import toy
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.counterfactual import gender_swaps
from probes.prompts.tasks.toy import TOY_NAME_POOLS

N = 96


@pytest.fixture(scope="module")
def planted():
    return toy.build_query_key()


@pytest.fixture(scope="module")
def prompts(planted):
    return tasks.pronoun_prompts(planted, N)


@pytest.fixture(scope="module")
def gender_head(planted, prompts):
    return query_key(planted.model, prompts, planted.heads.gender, pools=TOY_NAME_POOLS)


@pytest.fixture(scope="module")
def identity_head(planted, prompts):
    return query_key(planted.model, prompts, planted.heads.identity, pools=TOY_NAME_POOLS, key_probe=False)


def test_swaps_change_only_the_names_and_flip_or_keep_their_gender(prompts):
    swaps = gender_swaps(prompts, TOY_NAME_POOLS, "antecedent", "distractor")
    rows = torch.arange(len(prompts))
    names = torch.stack([prompts.role("antecedent"), prompts.role("distractor")], 1)
    for new, same in ((swaps.swapped, False), (swaps.same_gender, True)):
        changed = (new != prompts.clean).nonzero()
        assert set(map(tuple, changed.tolist())) == {(i, int(p)) for i in range(len(prompts)) for p in names[i]}
        for col in range(2):
            before, after = prompts.clean[rows, names[:, col]], new[rows, names[:, col]]
            female_before = torch.isin(before, torch.tensor(TOY_NAME_POOLS.female))
            female_after = torch.isin(after, torch.tensor(TOY_NAME_POOLS.female))
            assert bool(((female_before == female_after) == same).all())


def test_gender_head_follows_gender_through_query_and_key(gender_head):
    assert gender_head.shift.ci_low > 1.9  # from the antecedent (margin ~ +1) to the other name (~ -1)
    assert abs(gender_head.control_shift.value) < 1e-3
    assert gender_head.key_share.ci_low > 0.99 and gender_head.query_share.ci_low > 0.99
    assert gender_head.key_probe is not None and gender_head.key_probe["accuracy"] > 0.95
    assert gender_head.key_probe["selectivity"] > 0.3 and gender_head.key_probe["attachable"] is False
    assert decide_query_key(gender_head).verdict == "supported"


def test_identity_head_moves_under_both_swaps_and_is_refuted_for_gender(identity_head):
    margins = identity_head.margins
    assert (margins["clean"] - margins["same_gender"]).abs().mean() > 0.1  # the control swap moves it
    assert identity_head.query_share.value == pytest.approx(0.0, abs=1e-6)  # its query is constant
    verdict = decide_query_key(identity_head)
    assert verdict.verdict == "refuted", verdict.sentence
    assert "does not follow gender" in verdict.sentence


def test_key_patch_is_this_heads_own_key(planted, prompts, identity_head):
    """The key-patched run equals the swapped run for a one-layer model: the margin depends only on the keys at the
    names (the query at the pronoun is the same), so the patch is exact."""
    margins = identity_head.margins
    assert torch.allclose(torch.tensor(margins["key_patched"].values), torch.tensor(margins["swapped"].values),
                          atol=1e-6)


def test_a_strict_share_threshold_leaves_the_verdict_inconclusive_or_refuted(gender_head):
    assert decide_query_key(gender_head, QueryKeyThresholds(share=1.5)).verdict == "refuted"
    assert decide_query_key(gender_head, QueryKeyThresholds(shift=3.0)).verdict == "refuted"


def test_harvest_q_and_k_are_the_projections_before_rotary(planted, prompts, tmp_path):
    store = harvest(planted.model, prompts, tmp_path / "acts", ["q", "k"], at="pronoun")
    _, cache = planted.model.run_with_cache(prompts.clean)
    rows = torch.arange(len(prompts))
    pos = prompts.role("pronoun")
    for kind in ("q", "k"):
        want = cache[f"blocks.0.attn.hook_{kind}"][rows, pos]
        assert torch.equal(store.load(f"blocks.0.attn.hook_{kind}"), want)
    assert store.load("blocks.0.attn.hook_q", head=0)[:, 0].abs().max() > 0  # the pronoun's gender, as planted


def test_bad_input_is_one_line(planted, prompts):
    model, head = planted.model, planted.heads.gender
    with pytest.raises(ProbesError, match="feature 'identity' cannot be flipped"):
        query_key(model, prompts, head, feature="identity", pools=TOY_NAME_POOLS)
    with pytest.raises(ProbesError, match="feature 'colour' cannot be flipped"):
        QueryKey((0, 0), feature="colour")
    with pytest.raises(ProbesError, match=r"head 3\.0 is not in this model: layers 0\.\.0, heads 0\.\.2"):
        query_key(model, prompts, (3, 0), pools=TOY_NAME_POOLS)
    rows, distractor, antecedent = torch.arange(N), prompts.role("distractor"), prompts.role("antecedent")
    clean, corrupt = prompts.clean.clone(), prompts.corrupt.clone()
    clean[rows, distractor] = clean[rows, antecedent]
    corrupt[rows, distractor] = corrupt[rows, antecedent]
    one_gender = PromptSet.from_tokens(clean, corrupt, prompts.answer, prompts.foil, prompts.roles)
    with pytest.raises(ProbesError, match="prompt 0: feature 'gender' cannot be flipped"):
        query_key(model, one_gender, head, pools=TOY_NAME_POOLS)
    with pytest.raises(ProbesError, match="must flip the source token only"):
        flipped = prompts.corrupt.clone()
        flipped[:, 2] = toy.VOCAB.index(" the")
        query_key(model, PromptSet.from_tokens(prompts.clean, flipped, prompts.answer, prompts.foil, prompts.roles),
                  head, pools=TOY_NAME_POOLS)
    with pytest.raises(ProbesError, match="has no tokenizer"):
        query_key(model, prompts, head)
