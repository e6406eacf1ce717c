"""Sweeps of one analysis share their clean and corrupt runs (probes.evidence.patching.shared_runs): the same
numbers as sweeps made separately, from fewer forward passes."""

import pytest
import torch

from probes import tasks
from probes.evidence.patching import edge_effects, patch_activations, shared_runs


def _sweeps(model, prompts):
    """What a coreference run measures: head outputs and patterns (denoising) and the edge knockout (noising)."""
    return [
        patch_activations(model, prompts, "z", progress=False),
        patch_activations(model, prompts, "pattern", progress=False),
        edge_effects(model, prompts, "pronoun", "antecedent", progress=False),
    ]


def test_sweeps_in_one_scope_share_reference_runs_and_give_the_same_numbers(toy_model, monkeypatch):
    model = toy_model.model
    prompts = tasks.pronoun_prompts(toy_model, 12, seed=3, echo=True)  # echo: read-off positions differ
    calls = []
    run_with_cache = model.run_with_cache

    def counted(*args, **kwargs):
        calls.append(kwargs.get("stop_at_layer"))
        return run_with_cache(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_cache", counted)
    alone = _sweeps(model, prompts)
    n_alone = len(calls)
    calls.clear()
    with shared_runs():
        shared = _sweeps(model, prompts)
    groups = len(prompts.end.unique())
    # per read-off group: both sides once (z); the clean side again for patterns, and again for the residual
    # stream the knockout starts from; the corrupt side's metric is known already
    assert len(calls) == 4 * groups < n_alone
    for a, b in zip(alone, shared):
        torch.testing.assert_close(b.patched, a.patched, rtol=0, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(b.clean, a.clean, rtol=0, atol=1e-5)
        torch.testing.assert_close(b.corrupt, a.corrupt, rtol=0, atol=1e-5)
    # outside the scope nothing is kept: a model edited between sweeps is read afresh
    with torch.no_grad():
        model.blocks[toy_model.heads.antecedent[0]].attn.W_O.mul_(0.5)
    try:
        halved = patch_activations(model, prompts, "z", progress=False)
        assert not torch.allclose(halved.clean, alone[0].clean)
    finally:
        with torch.no_grad():
            model.blocks[toy_model.heads.antecedent[0]].attn.W_O.mul_(2.0)


def test_attention_measures_in_one_scope_read_one_pass(toy_model, monkeypatch):
    from probes.evidence.attention import norm_weighted_attention, role_attention

    model = toy_model.model
    prompts = tasks.pronoun_prompts(toy_model, 12, seed=4, echo=True)

    def measures():
        return [f(model, prompts, "pronoun", role, batch_size=5)
                for f in (role_attention, norm_weighted_attention) for role in ("antecedent", "distractor")]

    alone = measures()
    calls = []
    run_with_cache = model.run_with_cache
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **k: calls.append(1) or run_with_cache(*a, **k))
    with shared_runs():
        shared = measures()
    assert len(calls) == 3  # one kept pass per batch of 5, for all four measures
    for a, b in zip(alone, shared):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.real
def test_shared_runs_give_the_same_numbers_on_a_real_grouped_query_model(smollm2):
    """SmolLM2 (grouped-query attention, rotary): a few patched heads, an edge and attention, in and out of a
    scope."""
    from probes.evidence.attention import norm_weighted_attention, role_attention

    prompts = tasks.ioi(smollm2, 14)
    cells = [(0, 0), (9, 4), (29, 8)]

    def measures():
        return [
            patch_activations(smollm2, prompts, "z", cells=cells, progress=False).patched,
            patch_activations(smollm2, prompts, "pattern", cells=cells, progress=False).patched,
            edge_effects(smollm2, prompts, "end", "IO", heads=cells, progress=False).patched,
            role_attention(smollm2, prompts, "end", "IO"),
            norm_weighted_attention(smollm2, prompts, "end", "S2"),
        ]

    alone = measures()
    with shared_runs():
        shared = measures()
    for a, b in zip(alone, shared):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, equal_nan=True)
