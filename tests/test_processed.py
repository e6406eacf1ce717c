"""Models as ``from_pretrained`` gives them by default (norms folded into ``LNPre`` / ``RMSPre``, writing weights and
unembedding centred, value biases folded): the engine is exact against plain hooks on them, and processing changes
exactly the measures docs/models.md says it does.

Ground truth: the reference implementations of the engine tests (TransformerLens's patching functions, plain hooks
for edges, two-pass path patching), run on the same processed model; and the unprocessed model, whose logit
differences processing must not change.
"""

import pytest
import torch
from test_edges import plain_edge_effect
from test_patching import _transformer_lens_sweep
from test_paths import two_pass

from probes import tasks, toy
from probes.evidence.attention import norm_weighted_attention, role_attention
from probes.evidence.attribution import attribute_heads
from probes.evidence.patching import LOGITS, edge_effects, patch_activations, patch_paths
from probes.prompts.promptset import PromptSet

NORMS = ["LN", "RMS"]
EDGE = ("end", "induction_target")


@pytest.fixture(scope="module", params=NORMS)
def pair(request):
    """(unprocessed, processed) copies of one random model."""
    model = toy.build_random(request.param)
    return model, toy.processed(model)


def _prompts(model) -> PromptSet:
    return tasks.induction(model, 6, seed=1, length=8, vocab=torch.arange(1, model.cfg.d_vocab))


def test_processing_rewrites_the_weights(pair) -> None:
    """Otherwise the tests below would compare a model with itself."""
    model, folded = pair
    assert folded.cfg.normalization_type == f"{model.cfg.normalization_type}Pre"
    assert type(folded.blocks[0].ln1).__name__ in ("LayerNormPre", "RMSNormPre")
    assert model.blocks[1].attn.b_V.abs().min() > 0 and (folded.blocks[1].attn.b_V == 0).all()
    torch.testing.assert_close(folded.unembed.W_U.mean(-1), torch.zeros(model.cfg.d_model), atol=1e-6, rtol=0)
    if model.cfg.normalization_type == "LN":  # centring writes only where a LayerNorm removes the mean after
        torch.testing.assert_close(folded.blocks[0].attn.W_O.mean(-1), torch.zeros(4, 8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("which", [0, 1], ids=["unprocessed", "processed"])
def test_z_patching_equals_transformer_lens(pair, which: int) -> None:
    model = pair[which]
    prompts = _prompts(model)
    expected = _transformer_lens_sweep(model, prompts, "z", "denoising")
    got = patch_activations(model, prompts, "z", progress=False).patched.mean(0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", [0, 1], ids=["unprocessed", "processed"])
def test_edge_knockout_equals_plain_hooks(pair, which: int) -> None:
    model = pair[which]
    prompts = _prompts(model)
    result = edge_effects(model, prompts, *EDGE, progress=False)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            expected = plain_edge_effect(model, prompts, *EDGE, layer, head, "knockout")
            torch.testing.assert_close(result.effect[:, layer, head], expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", [0, 1], ids=["unprocessed", "processed"])
def test_paths_equal_two_passes(pair, which: int) -> None:
    model = pair[which]
    prompts = _prompts(model)
    senders, receivers = [(0, 1), (1, 2)], [(2, 0, "k"), (2, 3, "q"), (2, 1, "v"), LOGITS]
    result = patch_paths(model, prompts, senders, receivers, progress=False)
    for s, sender in enumerate(senders):
        for r, receiver in enumerate(receivers):
            torch.testing.assert_close(result.patched[:, s, r], two_pass(model, prompts, sender, receiver),
                                       atol=1e-5, rtol=1e-5)


def test_processing_changes_norm_weighted_attention_and_nothing_causal(pair) -> None:
    """Logit differences, patching and edge effects, attribution and attention weights are the same on both loads;
    ``alpha * ||v W_O||`` is not (the value bias leaves ``v``, and for LN centring changes ``W_O``)."""
    model, folded = pair
    prompts = _prompts(model)
    same = {
        "z": lambda m: patch_activations(m, prompts, "z", progress=False).patched,
        "knockout": lambda m: edge_effects(m, prompts, *EDGE, progress=False).patched,
        "attribution": lambda m: attribute_heads(m, prompts),
        "attention": lambda m: role_attention(m, prompts, *EDGE),
    }
    for name, measure in same.items():
        torch.testing.assert_close(measure(folded), measure(model), atol=1e-5, rtol=1e-5, msg=name)
    before, after = (norm_weighted_attention(m, prompts, *EDGE) for m in pair)
    assert (after - before).abs().max() > 0.05 * before.abs().max()
