"""Attribution patching ranks the toy's planted head first and is exact where the metric is linear in z.

Ground truth: in the toy (attention only, no normalisation) layer 1 is the last layer, so the logit difference is
an affine function of every layer-1 head's output and the first-order estimate must equal exact patching; the
decoy's OV circuit is zero, so the gradient through its output is exactly zero.
"""

import pytest
import torch

from probes.evidence.attribution import attribute_heads, screen_then_verify
from probes.core.errors import ProbesError
from probes.evidence.patching import patch_activations
from probes.prompts.promptset import PromptSet
from probes.models.toy import ToyModel
from probes.prompts.tasks import pronoun_prompts

N = 8


@pytest.fixture(scope="module")
def pronouns(toy_model: ToyModel) -> PromptSet:
    return pronoun_prompts(toy_model, N, seed=1)


@pytest.fixture(scope="module")
def exact(toy_model: ToyModel, pronouns: PromptSet) -> torch.Tensor:
    return patch_activations(toy_model.model, pronouns, "z", progress=False).effect


def test_ranks_the_antecedent_head_first_and_gives_the_decoy_nothing(toy_model: ToyModel, pronouns: PromptSet) -> None:
    attribution = attribute_heads(toy_model.model, pronouns)
    assert attribution.shape == (N, 2, 4)
    strongest = divmod(int(attribution.mean(0).abs().argmax()), 4)
    assert strongest == toy_model.heads.antecedent
    assert (attribution[:, *toy_model.heads.antecedent] > 4).all()
    assert (attribution[:, *toy_model.heads.decoy].abs() < 1e-6).all()


def test_equals_exact_patching_where_the_metric_is_linear(
    toy_model: ToyModel, pronouns: PromptSet, exact: torch.Tensor
) -> None:
    attribution = attribute_heads(toy_model.model, pronouns)
    torch.testing.assert_close(attribution[:, 1], exact[:, 1], atol=1e-4, rtol=0)


def test_batches_do_not_change_the_numbers(toy_model: ToyModel, pronouns: PromptSet) -> None:
    torch.testing.assert_close(
        attribute_heads(toy_model.model, pronouns, batch_size=3), attribute_heads(toy_model.model, pronouns), atol=1e-6, rtol=0
    )


def test_screen_then_verify_patches_only_the_top_heads(toy_model: ToyModel, pronouns: PromptSet, exact: torch.Tensor) -> None:
    screening = screen_then_verify(toy_model.model, pronouns, top_k=3, progress=False)
    assert len(screening.heads) == 3 and screening.heads[0] == toy_model.heads.antecedent
    expected = torch.stack([exact[:, layer, head] for layer, head in screening.heads], dim=1)
    torch.testing.assert_close(screening.exact, expected, atol=1e-5, rtol=0)
    assert (~screening.patching.patched.isnan()).sum() == 3 * N  # nothing else was patched
    frame = screening.to_frame()
    assert len(frame) == 3 * N and set(frame["rank"]) == {0, 1, 2}
    top = frame[frame["rank"] == 0]
    assert (top["normalised"] - 1).abs().max() < 0.05


def test_bad_input(toy_model: ToyModel, pronouns: PromptSet) -> None:
    with pytest.raises(ProbesError, match="top_k"):
        screen_then_verify(toy_model.model, pronouns, top_k=0)
    with pytest.raises(ProbesError, match="top_k"):
        screen_then_verify(toy_model.model, pronouns, top_k=9)
    with pytest.raises(ProbesError, match="batch_size"):
        attribute_heads(toy_model.model, pronouns, batch_size=0)
