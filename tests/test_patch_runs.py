"""Runs that patch several sites at once equal a plain TransformerLens implementation of the same patches.

The independent computation: ``run_with_cache`` on the source prompts, then ``run_with_hooks`` on the target
prompts with one hook per (component, layer) that overwrites the patched heads, and the answer-minus-foil logit
difference read from full logits. Ground truth from construction: on the toy, patching the antecedent head's
output restores the answer whatever else is patched with it, and the decoy adds nothing.
"""

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from probes.core.errors import ProbesError
from probes.evidence.patching import SITES, patch_activations, patch_runs
from probes.models.toy import ToyModel
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks import pronoun_prompts, repeated_prompts


def plain_patched_logit_diff(
    model: HookedTransformer, prompts: PromptSet, run: list[tuple[str, int, int]], direction: str
) -> torch.Tensor:
    """All of ``run``'s patches in one forward pass with TransformerLens hooks; full logits, per prompt."""
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    _, cache = model.run_with_cache(source)
    hooks = []
    for component, layer, head in run:
        axis = SITES[component].variant_axis
        name = get_act_name(component, layer)

        def hook(activation, hook, name=name, axis=axis, head=head):
            index = [slice(None)] * activation.ndim
            index[axis] = head
            activation[tuple(index)] = cache[name][tuple(index)]
            return activation

        hooks.append((name, hook))
    logits = model.run_with_hooks(target, fwd_hooks=hooks)
    rows = torch.arange(len(prompts))
    final = logits[rows, prompts.end]
    return final[rows, prompts.answer] - final[rows, prompts.foil]


RUNS = [
    [("z", 0, 2), ("z", 1, 1)],  # previous-token head and antecedent head together
    [("z", 1, 1), ("z", 1, 3)],  # two heads of one layer: two patches at one hook
    [("pattern", 1, 1), ("v", 1, 1)],  # two components of one head
    [("k", 1, 2), ("q", 1, 2), ("z", 0, 0)],  # joins at layer 0, patches again at layer 1
    [("z", 1, 3)],  # the decoy alone
]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("make", [pronoun_prompts, repeated_prompts])
def test_runs_equal_plain_hooks(toy_model: ToyModel, make, direction: str) -> None:
    prompts = make(toy_model, 6, seed=3)
    result = patch_runs(toy_model.model, prompts, RUNS, direction)
    expected = torch.stack([plain_patched_logit_diff(toy_model.model, prompts, run, direction) for run in RUNS], 1)
    assert result.patched.shape == (len(prompts), len(RUNS))
    torch.testing.assert_close(result.patched, expected, atol=1e-4, rtol=1e-4)
    frame = result.to_frame()
    assert len(frame) == len(prompts) * len(RUNS) and set(frame.columns) >= {"prompt", "run", "effect"}


def test_one_patch_runs_equal_the_sweep(toy_model: ToyModel) -> None:
    prompts = pronoun_prompts(toy_model, 6, seed=5)
    cells = [(0, 2), (1, 1), (1, 3)]
    sweep = patch_activations(toy_model.model, prompts, "z", cells=cells, progress=False)
    runs = patch_runs(toy_model.model, prompts, [[("z", layer, head)] for layer, head in cells])
    for r, (layer, head) in enumerate(cells):
        torch.testing.assert_close(runs.effect[:, r], sweep.effect[:, layer, head], atol=1e-5, rtol=0)


def test_antecedent_head_restores_the_answer_whatever_joins_it(toy_model: ToyModel) -> None:
    prompts = pronoun_prompts(toy_model, 8, seed=6)
    heads = toy_model.heads
    runs = [[("z", *heads.antecedent)], [("z", *heads.antecedent), ("z", *heads.decoy)], [("z", *heads.decoy)]]
    result = patch_runs(toy_model.model, prompts, runs)
    assert (result.normalised[:, 0] > 0.9).all()
    torch.testing.assert_close(result.patched[:, 1], result.patched[:, 0], atol=1e-5, rtol=0)  # decoy adds nothing
    assert result.effect[:, 2].abs().max() < 1e-5


def test_bad_runs(toy_model: ToyModel) -> None:
    prompts = pronoun_prompts(toy_model, 2)
    with pytest.raises(ProbesError, match="non-empty"):
        patch_runs(toy_model.model, prompts, [[]])
    with pytest.raises(ProbesError, match="patch_resid"):
        patch_runs(toy_model.model, prompts, [[("resid_pre", 0, 1)]])
    with pytest.raises(ProbesError, match="layer 7"):
        patch_runs(toy_model.model, prompts, [[("z", 7, 0)]])
    with pytest.raises(ProbesError, match="unknown component"):
        patch_runs(toy_model.model, prompts, [[("zz", 0, 0)]])
