"""The essay's claims SelfUpdate and ResolutionDepth on planted toys: ground truth from construction
(probes.models.toy.build_self_update, build_depth) and from plain TransformerLens hooks."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import probes
from probes import tasks, toy
from probes.claims.essay import ResolutionDepth, SelfUpdate
from probes.claims.measures import MEASURES
from probes.claims.types import Claim, Thresholds
from probes.core.errors import ProbesError
from probes.evidence.depth import first_named
from probes.evidence.self_update import FIRST_POSITIONS, self_updates
from probes.prompts.promptset import PromptSet
from probes.report.render import render_html
from probes.run.rundir import ModelInfo, RunResults, read_run, write_run
from probes.run.spec import AnalysisSpec, parse_selector


@pytest.fixture(scope="module")
def self_toy():
    planted = toy.build_self_update()
    return planted, tasks.token_sequences(planted, 48)


@pytest.fixture(scope="module")
def depth_toys():
    return {resolves: toy.build_depth(resolves) for resolves in (True, False)}


# --- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, claim", [
    ("self-update 5", SelfUpdate(5)),
    ("self-update 5.1", SelfUpdate(5, 1)),
    ("Self update", SelfUpdate()),
    ("depth: pronoun -> antecedent", ResolutionDepth("pronoun", "antecedent")),
    ("depth: pronoun -> antecedent from 6", ResolutionDepth("pronoun", "antecedent", 6)),
    ("depth: S2 -> S1 from layer 3", ResolutionDepth("S2", "S1", 3)),
    ("7.0: pronoun -> antecedent vs distractor", Claim((7, 0), "pronoun", "antecedent", "distractor")),
])
def test_claims_parse_from_text(text, claim):
    assert Claim.parse(text) == claim
    assert parse_selector(text, "spec") == claim if not isinstance(claim, Claim) else True


@pytest.mark.parametrize("text", ["self-update five", "self-update 5.", "depth pronoun -> antecedent", "depth: -> x"])
def test_malformed_claims_are_refused_in_one_line_naming_the_forms(text):
    with pytest.raises(ProbesError) as err:
        Claim.parse(text)
    assert "\n" not in str(err.value) and "self-update" in str(err.value) and "depth:" in str(err.value)


def test_a_spec_lists_essay_claims_and_checks_their_roles(tmp_path):
    spec = AnalysisSpec(model="smollm2-135m", src="pronoun", dst="antecedent", task="pronoun_resolution",
                        claims=["self-update 5", "depth: pronoun -> antecedent from 6"])
    spec.check("spec")
    spec.check_sources("spec")
    bad = replace(spec, claims=["depth: pronoun -> nobody"])
    with pytest.raises(ProbesError, match="unknown role 'nobody'"):
        bad.check_sources("spec")


# --- A: SelfUpdate ------------------------------------------------------------------------------------------------


def test_self_update_verdicts_follow_the_planted_heads(self_toy):
    planted, prompts = self_toy
    heads = planted.heads
    sink_writer = probes.evaluate(planted.model, prompts, SelfUpdate(*heads.sink_writer))
    copier = probes.evaluate(planted.model, prompts, SelfUpdate(*heads.copier))
    previous = probes.evaluate(planted.model, prompts, SelfUpdate(*heads.previous))
    # attending to itself the sink writer writes nothing: the more self-attention, the smaller its update
    assert sink_writer.verdict == "supported"
    assert sink_writer.evidence["self_update_correlation"].ci_high < -0.9
    assert "the token itself does the do-nothing job" in sink_writer.sentence
    # the copier writes as much attending to itself as elsewhere; the (zero-valued) sink is its do-nothing place
    assert copier.verdict == "refuted"
    assert "the sink does the do-nothing job" in copier.sentence
    assert previous.verdict == "not applicable"
    for result in (sink_writer, copier, previous):
        assert result.sentence.endswith(f": {result.verdict}")
        assert f"{result.evidence['self_update_correlation'].n} groups" in result.sentence


def test_a_layer_claim_judges_every_head_and_the_block(self_toy):
    planted, prompts = self_toy
    result = probes.evaluate(planted.model, prompts, SelfUpdate(0))
    by_head = {r.claim.head: r.verdict for r in result.heads}
    assert by_head == {0: "supported", 1: "refuted", 2: "not applicable", None: result.verdict}
    assert set(result.profile["measure"]) >= {"self_update_correlation", "forced_self_update", "forced_sink_update"}
    assert set(result.to_frame()["head"]) == {-1, 0, 1, 2}


def test_measures_equal_plain_hooks_and_the_pattern_intervention(self_toy):
    """Self/sink attention, the head's write and the block's update from a plain cache; the forced writes from a
    hook that sets each query's pattern row one-hot on itself (or on position 0)."""
    planted, prompts = self_toy
    model = planted.model
    m = self_updates(model, prompts)
    _, cache = model.run_with_cache(prompts.clean)
    pattern, z = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_z"]
    rows, pos = torch.tensor(m.prompt), torch.tensor(m.position)
    assert (pos >= FIRST_POSITIONS).all()
    torch.testing.assert_close(torch.tensor(m.self_attention[:, 0]), pattern[rows, :, pos, pos])
    torch.testing.assert_close(torch.tensor(m.sink_attention[:, 0]), pattern[rows, :, pos, 0])
    W_O = model.blocks[0].attn.W_O
    writes = torch.einsum("bphd,hdm->bphm", z, W_O).norm(dim=-1)
    torch.testing.assert_close(torch.tensor(m.head_update[:, 0]), writes[rows, pos])
    block = (cache["blocks.0.hook_resid_post"] - cache["blocks.0.hook_resid_pre"]).norm(dim=-1)
    torch.testing.assert_close(torch.tensor(m.block_update[:, 0]), (block / cache["blocks.0.hook_resid_pre"].norm(dim=-1))[rows, pos])
    n_pos = prompts.clean.shape[1]
    for onto, got in (("self", m.forced_self), ("sink", m.forced_sink)):
        forced = torch.zeros(n_pos, n_pos)
        forced[torch.arange(n_pos), torch.arange(n_pos) if onto == "self" else 0] = 1.0

        def hook(p, hook, forced=forced):
            return forced.expand_as(p).clone()

        captured = {}
        model.run_with_hooks(prompts.clean, return_type=None, fwd_hooks=[
            ("blocks.0.attn.hook_pattern", hook),
            ("blocks.0.attn.hook_z", lambda act, hook: captured.setdefault("z", act.clone())),
        ])
        expected = torch.einsum("bphd,hdm->bphm", captured["z"], W_O).norm(dim=-1)[rows, pos]
        torch.testing.assert_close(torch.tensor(got[:, 0]), expected)


def test_self_update_refuses_a_layer_or_head_the_model_lacks(self_toy):
    planted, prompts = self_toy
    for claim, words in [(SelfUpdate(3), "layer 3 does not exist"), (SelfUpdate(0, 7), "head 0.7 does not exist")]:
        with pytest.raises(ProbesError, match=words) as err:
            probes.evaluate(planted.model, prompts, claim)
        assert "\n" not in str(err.value)


# --- B: ResolutionDepth -------------------------------------------------------------------------------------------


def test_the_first_named_label_comes_from_the_role_positions(depth_toys):
    prompts = tasks.pronoun_prompts(depth_toys[True], 8)
    expected = (prompts.role("antecedent") < prompts.role("distractor")).long().numpy()
    assert np.array_equal(first_named(prompts, "pronoun", "antecedent"), expected)
    assert 0 < expected.mean() < 1


@pytest.mark.parametrize("layer, verdict", [(1, "supported"), (0, "refuted"), (2, "refuted")])
def test_a_given_depth_is_supported_only_at_the_planted_one(depth_toys, layer, verdict):
    planted = depth_toys[True]
    result = probes.evaluate(planted.model, tasks.pronoun_prompts(planted, 64), ResolutionDepth(layer=layer))
    assert result.verdict == verdict, result.sentence
    curve = result.profile[result.profile["measure"] == "depth_selectivity"]
    assert list(curve["verdict"]) == ["at chance", "reads", "reads"]


def test_a_model_whose_pronoun_never_knows_refutes_every_depth(depth_toys):
    planted = depth_toys[False]
    prompts = tasks.pronoun_prompts(planted, 64)
    assert probes.evaluate(planted.model, prompts, ResolutionDepth(layer=1)).verdict == "refuted"


@pytest.mark.parametrize("resolves, verdict, said", [(True, "supported", "depth 1 (chosen on the discovery groups)"),
                                                     (False, "refuted", "no depth")])
def test_a_depth_chosen_from_data_is_confirmed_on_held_out_groups(depth_toys, resolves, verdict, said):
    planted = depth_toys[resolves]
    result = probes.evaluate(planted.model, tasks.pronoun_prompts(planted, 320), ResolutionDepth())
    assert result.verdict == verdict, result.sentence
    assert said in result.sentence and result.selected
    assert not set(result.discovery) & set(result.confirmation)


def test_depth_refuses_bad_input_in_one_line(depth_toys):
    planted = depth_toys[True]
    prompts = tasks.pronoun_prompts(planted, 16)
    no_rival = PromptSet.from_tokens(prompts.clean, prompts.corrupt, prompts.answer, prompts.foil,
                                     {"pronoun": prompts.role("pronoun"), "antecedent": prompts.role("antecedent")})
    for claim, data, words in [
        (ResolutionDepth(layer=3), prompts, "layer 3 does not exist"),
        (ResolutionDepth("pronoun", "nobody", 1), prompts, "nobody"),
        (ResolutionDepth(layer=1), no_rival, "needs another candidate role"),
    ]:
        with pytest.raises(ProbesError, match=words) as err:
            probes.evaluate(planted.model, data, claim)
        assert "\n" not in str(err.value)


# --- the run directory and the report -----------------------------------------------------------------------------


def test_essay_claims_round_trip_through_a_run_directory_and_get_a_panel(tmp_path, self_toy, depth_toys):
    planted, prompts = self_toy
    depth = depth_toys[True]
    claims = [probes.evaluate(planted.model, prompts, SelfUpdate(0)),
              probes.evaluate(depth.model, tasks.pronoun_prompts(depth, 32), ResolutionDepth(layer=1), family=2)]
    heads = claims[0].to_frame().iloc[:0][["layer", "head"]]
    run = RunResults(model=ModelInfo("toy", 3, 3), task="toy", n_prompts=48, seed=0, command="test", heads=heads,
                     evidence={}, claims=claims)
    write_run(tmp_path / "run", run)
    back = read_run(tmp_path / "run")
    assert [c.claim for c in back.claims] == [SelfUpdate(0), ResolutionDepth(layer=1)]
    assert [c.verdict for c in back.claims] == [c.verdict for c in claims]
    for got, want in zip(back.claims, claims):
        np.testing.assert_allclose(got.profile["value"].to_numpy(float), want.profile["value"].to_numpy(float))
    html = render_html(back)
    assert "essay: in layer 0, a token that attends to itself changes little" in html
    assert 'id="fig-claim-0"' in html and 'id="fig-claim-1"' in html


def test_essay_measures_have_their_own_shapes_and_are_never_gathered_per_head():
    assert MEASURES["self_update_correlation"].shape == "layer head"
    assert MEASURES["depth_selectivity"].shape == "prompt layer"
    assert all(m.gather is None for m in MEASURES.values() if m.shape != "prompt layer head")
    assert Thresholds().correlation > 0 and Thresholds().selectivity > 0
