"""Edge interventions test the edge a claim names: knock out one head's attention from src to dst, or patch its
attention row / output at src only.

Ground truth: the planted toy (the antecedent head reads the antecedent from the pronoun; the decoy attends the
same way with a zero OV circuit; with the pronoun said twice, only the head's output at the end can reach the
answer) and an independent implementation: TransformerLens hooks on ``hook_pattern`` / ``hook_z`` that edit one
head at a time in a plain full forward pass, the logit difference read from full logits.
"""

import copy

import pytest
import torch
from transformer_lens.utilities import get_act_name

from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.patching import edge_effects, patch_activations
from probes.models.protocol import HookedModel
from probes.models.toy import ToyModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import src_dst_positions


def plain_edge_effect(
    model: HookedModel, prompts: PromptSet, src: str, dst: str, layer: int, head: int, intervention: str,
    direction: str = "denoising",
) -> torch.Tensor:
    """One head's edge intervention with plain TransformerLens hooks, per prompt: patched minus the run it went into."""
    src_pos, dst_pos = src_dst_positions(prompts, src, dst)
    rows = torch.arange(len(prompts))
    if intervention == "knockout":
        target, source = prompts.clean, None
    else:
        target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    component = "z" if intervention == "z_at" else "pattern"
    name = get_act_name(component, layer)
    cache = model.run_with_cache(source, names_filter=name)[1] if source is not None else None

    def hook(activation, hook):
        if intervention == "knockout":
            row = activation[rows, head, src_pos].clone()
            row[rows, dst_pos] = 0
            activation[rows, head, src_pos] = row / row.sum(-1, keepdim=True)
        elif intervention == "pattern_row":
            activation[rows, head, src_pos] = cache[name][rows, head, src_pos]
        else:  # z_at: [batch, pos, head, d_head]
            activation[rows, src_pos, head] = cache[name][rows, src_pos, head]
        return activation

    def logit_diff(logits):
        final = logits[rows, prompts.end]
        return final[rows, prompts.answer] - final[rows, prompts.foil]

    base = logit_diff(model(target))
    return logit_diff(model.run_with_hooks(target, fwd_hooks=[(name, hook)])) - base


@pytest.mark.parametrize("intervention", ["knockout", "pattern_row", "z_at"])
@pytest.mark.parametrize("echo", [False, True])
def test_toy_edges_equal_plain_hooks(toy_model: ToyModel, intervention: str, echo: bool) -> None:
    prompts = tasks.pronoun_prompts(toy_model, 8, seed=2, echo=echo)
    result = edge_effects(toy_model.model, prompts, "pronoun", "antecedent", intervention=intervention, progress=False)
    assert result.patched.shape == (8, 2, 4) and not result.patched.isnan().any()
    for layer in range(2):
        for head in range(4):
            expected = plain_edge_effect(toy_model.model, prompts, "pronoun", "antecedent", layer, head, intervention)
            torch.testing.assert_close(result.effect[:, layer, head], expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("intervention", ["knockout", "pattern_row", "z_at"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_edges_on_prompts_that_differ_before_the_query_equal_plain_hooks(
    toy_model: ToyModel, intervention: str, direction: str
) -> None:
    """``BOS r' r`` vs ``BOS r r`` differ from position 1; the edge at the induction target (second half) is
    recomputed from its query position only, the earlier positions read from the run patched into."""
    prompts = tasks.repeated_prompts(toy_model, 8, seed=1)
    assert (prompts.clean[:, 1] != prompts.corrupt[:, 1]).all()
    result = edge_effects(toy_model.model, prompts, "induction_target", "previous", intervention=intervention,
                          direction=direction, progress=False)
    for layer in range(2):
        for head in range(4):
            expected = plain_edge_effect(toy_model.model, prompts, "induction_target", "previous", layer, head,
                                         intervention, direction)
            torch.testing.assert_close(result.effect[:, layer, head], expected.float(), atol=1e-5, rtol=0)


def test_knockout_finds_the_edge_the_antecedent_head_reads(toy_model: ToyModel) -> None:
    heads = toy_model.heads
    prompts = tasks.pronoun_prompts(toy_model, 8, seed=1)
    result = edge_effects(toy_model.model, prompts, "pronoun", "antecedent", progress=False)
    gap = (result.clean - result.corrupt).mean()
    assert result.direction == "noising" and (result.baseline == result.clean).all()  # knockout edits the clean run
    assert (result.effect[:, heads.antecedent[0], heads.antecedent[1]] < -0.4 * gap).all()
    assert result.effect[:, heads.decoy[0], heads.decoy[1]].abs().max() < 1e-6  # attends the same, writes nothing
    # the previous-token head puts no weight on the antecedent from the pronoun: removing that edge changes nothing
    assert result.effect[:, heads.previous_token[0], heads.previous_token[1]].abs().max() < 1e-6


def test_an_edge_whose_output_cannot_reach_the_answer_does_nothing(toy_model: ToyModel) -> None:
    """Pronoun said twice: the antecedent head attends from both, but only its output at the end matters."""
    layer, head = toy_model.heads.antecedent
    prompts = tasks.pronoun_prompts(toy_model, 8, seed=1, echo=True)
    first = edge_effects(toy_model.model, prompts, "pronoun", "antecedent", heads=[(layer, head)], progress=False)
    last = edge_effects(toy_model.model, prompts, "end", "antecedent", heads=[(layer, head)], progress=False)
    whole = patch_activations(toy_model.model, prompts, "z", "noising", cells=[(layer, head)], progress=False)
    gap = (whole.clean - whole.corrupt).mean()
    assert first.effect[:, layer, head].abs().max() < 1e-6
    assert (last.effect[:, layer, head] < -0.4 * gap).all()
    assert (whole.effect[:, layer, head] < -0.4 * gap).all()


def test_bad_edges(toy_model: ToyModel) -> None:
    prompts = tasks.pronoun_prompts(toy_model, 4)
    with pytest.raises(ProbesError, match="not at or before source"):
        edge_effects(toy_model.model, prompts, "antecedent", "pronoun")
    with pytest.raises(ProbesError, match="unknown intervention"):
        edge_effects(toy_model.model, prompts, "pronoun", "antecedent", intervention="cut")
    with pytest.raises(ProbesError, match="layer 5"):
        edge_effects(toy_model.model, prompts, "pronoun", "antecedent", heads=[(5, 0)])


@pytest.mark.real
@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_knockout_equals_plain_hooks_on_real_models(name: str, request) -> None:
    # in float64, so that the two implementations' different summation orders stay far below the tolerance
    model = copy.deepcopy(request.getfixturevalue(name)).to(torch.float64)
    prompts = tasks.pronoun_resolution(model, 4, templates=[0, 1, 2, 3])
    heads = [(0, 0), (model.cfg.n_layers // 2, 1), (model.cfg.n_layers - 1, model.cfg.n_heads - 1)]
    for intervention in ("knockout", "z_at"):
        result = edge_effects(model, prompts, "pronoun", "antecedent", heads=heads, intervention=intervention,
                              progress=False)
        for layer, head in heads:
            expected = plain_edge_effect(model, prompts, "pronoun", "antecedent", layer, head, intervention)
            torch.testing.assert_close(result.effect[:, layer, head], expected.float(), atol=1e-5, rtol=0)


def test_knocking_out_the_only_visible_key_leaves_the_head_reading_nothing(toy_model: ToyModel) -> None:
    """At position 0 a head can only look at itself: with that weight knocked out there is nothing left to
    renormalise, and the head's output there is zero. Reference: plain TransformerLens hooks zeroing each head's
    ``hook_z`` at position 0, a change that moves the answer for the first layer's heads (so a knockout that left
    the output as it was, or a NaN, cannot match it)."""
    model, prompts = toy_model.model, tasks.pronoun_prompts(toy_model, 4)
    first = torch.zeros(len(prompts), dtype=torch.long)
    result = edge_effects(model, prompts, first, first, progress=False)
    assert torch.isfinite(result.patched).all()
    rows = torch.arange(len(prompts))

    def logit_diff(logits):
        return logits[rows, prompts.end, prompts.answer] - logits[rows, prompts.end, prompts.foil]

    base = logit_diff(model(prompts.clean))
    moved = 0.0
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            def zero_first(z, hook, head=head):  # reference: the head's output at position 0 set to zero
                z[:, 0, head] = 0
                return z

            silenced = logit_diff(model.run_with_hooks(prompts.clean, fwd_hooks=[(get_act_name("z", layer), zero_first)]))
            torch.testing.assert_close(result.effect[:, layer, head], (silenced - base).float(), atol=1e-5, rtol=0)
            moved = max(moved, (silenced - base).abs().max().item())
    assert moved > 1e-2  # the reference is not zero everywhere: matching it is not matching "no change"
