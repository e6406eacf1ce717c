"""Path patching equals a direct two-pass implementation with plain TransformerLens hooks, and finds the toy's
planted composition.

Two passes (Wang et al. 2022): (1) the base run with the sender's output taken from the other run and every
other head's output and every MLP's output frozen at the base run, recording the receiver's input; (2) the base
run with only the receiver's input replaced by that recording; the metric read from full logits. Ground truth
from construction: the toy's induction head (1.2) reads the previous-token head's (0.2) output through its keys.
"""

import copy

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.patching import LOGITS, patch_paths
from probes.models.architecture import kv_head_of
from probes.models.toy import ToyModel
from probes.prompts.promptset import PromptSet


def two_pass(model: HookedTransformer, prompts: PromptSet, sender, receiver, direction="denoising") -> torch.Tensor:
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    _, base = model.run_with_cache(target)
    _, other = model.run_with_cache(source)
    s_layer, s_head = sender

    def freeze(activation, hook):
        activation[:] = base[hook.name]  # every head and MLP output at the base run ...
        if hook.name == get_act_name("z", s_layer):
            activation[:, :, s_head] = other[hook.name][:, :, s_head]  # ... but the sender's
        return activation

    frozen = [(lambda name: name.endswith("hook_z") or name.endswith("hook_mlp_out"), freeze)]
    rows = torch.arange(len(prompts))

    def logit_diff(logits):
        final = logits[rows, prompts.end]
        return final[rows, prompts.answer] - final[rows, prompts.foil]

    if receiver == LOGITS:
        return logit_diff(model.run_with_hooks(target, fwd_hooks=frozen))
    layer, head, component = receiver
    name = get_act_name(component, layer)
    variant = int(kv_head_of(model)[head]) if component in ("k", "v") else head
    recorded = {}

    def record(activation, hook):
        recorded["x"] = activation[:, :, variant].clone()

    model.run_with_hooks(target, fwd_hooks=frozen + [(name, record)])

    def replace(activation, hook):
        activation[:, :, variant] = recorded["x"]
        return activation

    return logit_diff(model.run_with_hooks(target, fwd_hooks=[(name, replace)]))


SENDERS = [(0, 0), (0, 2), (0, 3)]
RECEIVERS = [(1, 2, "k"), (1, 2, "q"), (1, 2, "v"), (1, 1, "q"), LOGITS]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_toy_paths_equal_two_passes(toy_model: ToyModel, direction: str) -> None:
    prompts = tasks.repeated_prompts(toy_model, 6, seed=1)
    result = patch_paths(toy_model.model, prompts, SENDERS, RECEIVERS, direction, progress=False)
    assert result.patched.shape == (6, len(SENDERS), len(RECEIVERS))
    for s, sender in enumerate(SENDERS):
        for r, receiver in enumerate(RECEIVERS):
            expected = two_pass(toy_model.model, prompts, sender, receiver, direction)
            torch.testing.assert_close(result.patched[:, s, r], expected, atol=1e-5, rtol=1e-5)


def test_previous_token_head_k_composes_with_the_induction_head(toy_model: ToyModel) -> None:
    """The planted induction head's key reads "my previous token" from the previous-token head: via k the path
    carries the answer; via q and v it carries (almost) nothing."""
    prompts = tasks.repeated_prompts(toy_model, 8, seed=2)
    sender, receiver = toy_model.heads.previous_token, toy_model.heads.induction
    result = patch_paths(toy_model.model, prompts, [sender], [(*receiver, c) for c in "kqv"], progress=False)
    fraction = result.normalised[:, 0]  # 0 = corrupt, 1 = clean
    assert (fraction[:, 0] > 0.5).all()  # via k
    assert fraction[:, 1].abs().max() < 0.05 and fraction[:, 2].abs().max() < 0.05  # via q, via v
    frame = result.to_frame()
    assert set(frame["receiver"]) == {f"{receiver[0]}.{receiver[1]}.{c}" for c in "kqv"}


def test_bad_paths(toy_model: ToyModel) -> None:
    prompts = tasks.repeated_prompts(toy_model, 2)
    with pytest.raises(ProbesError, match="not after sender 1.1"):
        patch_paths(toy_model.model, prompts, [(1, 1)], [(1, 2, "k")])
    with pytest.raises(ProbesError, match="neither"):
        patch_paths(toy_model.model, prompts, [(0, 1)], [(1, 2, "o")])
    with pytest.raises(ProbesError, match="does not exist"):
        patch_paths(toy_model.model, prompts, [(0, 9)], [LOGITS])


@pytest.mark.real
def test_smollm2_paths_equal_two_passes(smollm2: HookedTransformer) -> None:
    smollm2 = copy.deepcopy(smollm2).to(torch.float64)  # both implementations' summation orders far below 1e-5
    prompts = tasks.induction(smollm2, 3, length=8)
    senders = [(1, 0), (2, 4)]
    receivers = [(5, 3, "k"), (5, 3, "v"), (4, 0, "q"), LOGITS]
    result = patch_paths(smollm2, prompts, senders, receivers, "noising", progress=False)
    for s, sender in enumerate(senders):
        for r, receiver in enumerate(receivers):
            expected = two_pass(smollm2, prompts, sender, receiver, "noising")
            torch.testing.assert_close(result.patched[:, s, r], expected.float(), atol=1e-5, rtol=0)


def test_malformed_senders_and_receivers_are_one_line_errors(toy_model: ToyModel) -> None:
    prompts = tasks.repeated_prompts(toy_model, 2)
    with pytest.raises(ProbesError, match="neither"):
        patch_paths(toy_model.model, prompts, [(0, 1)], ["logit"])
    with pytest.raises(ProbesError, match="neither"):
        patch_paths(toy_model.model, prompts, [(0, 1)], [(1, 2)])
    with pytest.raises(ProbesError, match="not a head"):
        patch_paths(toy_model.model, prompts, [(0,)], [LOGITS])
