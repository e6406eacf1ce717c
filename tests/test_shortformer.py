"""Shortformer models (TransformerLens's attention-only induction toys): positions enter each layer's queries and keys,
not the residual stream, and the patching engine hands every block it runs from a cached residual stream the
positions it computes. Exact against plain TransformerLens hooks, and the planted heads are found.

Ground truth: :func:`probes.toy.build_shortformer` (a previous-token head that finds ``i - 1`` by position alone, an
induction head that K-composes with it) and the reference implementations of the engine tests (TransformerLens's
patching functions, plain hooks for edges, two-pass path patching).
"""

import pytest
import torch
from test_edges import plain_edge_effect
from test_patching import TL_SWEEPS, _transformer_lens_sweep
from test_paths import two_pass

from probes import tasks, toy
from probes.evidence.attention import head_scores
from probes.evidence.patching import LOGITS, edge_effects, patch_activations, patch_paths
from probes.prompts.promptset import PromptSet


@pytest.fixture(scope="module")
def shortformer() -> toy.ToyModel:
    return toy.build_shortformer()


@pytest.fixture(scope="module")
def repeats(shortformer: toy.ToyModel) -> PromptSet:
    """``<bos> r r`` against ``<bos> r' r``: the pairs differ from position 1, so patched runs start there and read
    position 0's keys (which carry its position) from the cache."""
    return tasks.repeated_prompts(shortformer, 8, seed=1)


def test_the_planted_heads_are_found_and_do_the_task(shortformer: toy.ToyModel, repeats: PromptSet) -> None:
    model, heads = shortformer.model, shortformer.heads
    assert model.cfg.positional_embedding_type == "shortformer"
    for kind in ("previous_token", "induction"):
        scores = head_scores(model, kind, n=16)
        assert divmod(int(scores.argmax()), model.cfg.n_heads) == getattr(heads, kind)
        assert scores[getattr(heads, kind)] > 0.99
    result = patch_activations(model, repeats, "z", progress=False)
    assert (result.clean > 4).all() and (result.corrupt.abs() < 0.1).all()
    for head in (heads.previous_token, heads.induction):  # each restores the answer; nothing else does
        assert ((result.normalised[:, *head] - 1).abs() < 0.01).all()
    for head in heads.untouched:
        assert result.normalised[:, *head].abs().max() < 0.05


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("component", list(TL_SWEEPS))
def test_patching_equals_transformer_lens(shortformer: toy.ToyModel, repeats: PromptSet, component, direction) -> None:
    model = shortformer.model
    expected = _transformer_lens_sweep(model, repeats, component, direction)
    got = patch_activations(model, repeats, component, direction, progress=False).patched.mean(0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("intervention", ["knockout", "pattern_row", "z_at"])
def test_edges_equal_plain_hooks(shortformer: toy.ToyModel, repeats: PromptSet, intervention: str) -> None:
    """The edge is recomputed from the query position (the second half) on: every earlier key, with its position,
    comes from the cache."""
    model = shortformer.model
    result = edge_effects(model, repeats, "induction_target", "previous", intervention=intervention, progress=False)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            expected = plain_edge_effect(model, repeats, "induction_target", "previous", layer, head, intervention)
            torch.testing.assert_close(result.effect[:, layer, head], expected.float(), atol=1e-5, rtol=0)
    if intervention == "knockout":  # the induction head's key there is what the previous-token head writes
        layer, head = shortformer.heads.previous_token
        assert (result.effect[:, layer, head] < -4).all()


def test_paths_equal_two_passes_and_find_the_k_composition(shortformer: toy.ToyModel, repeats: PromptSet) -> None:
    model, heads = shortformer.model, shortformer.heads
    senders = [heads.previous_token, heads.untouched[0]]
    receivers = [(*heads.induction, c) for c in "qkv"] + [LOGITS]
    result = patch_paths(model, repeats, senders, receivers, progress=False)
    for s, sender in enumerate(senders):
        for r, receiver in enumerate(receivers):
            torch.testing.assert_close(result.patched[:, s, r], two_pass(model, repeats, sender, receiver),
                                       atol=1e-5, rtol=1e-5)
    via = dict(zip("qkv", result.normalised[:, 0, :3].T))
    assert (via["k"] > 0.9).all() and via["q"].abs().max() < 0.05 and via["v"].abs().max() < 0.05
