"""Edge attribution (EAP, EAP-IG) is the linearisation of exact edge ablation, and ranks the toy's planted edge first.

Ground truths, each independent of the kit's engine:

* where the metric is linear in an edge (an edge into the logits of a norm-free model), EAP equals the exact effect
  (:func:`probes.edge_ablation`, itself checked against plain hooks in test_circuit_runs);
* everywhere else EAP is the derivative at 0 of the metric when the input receives ``eps`` times the edge's
  change: a plain TransformerLens run with split inputs, the change added at the input's hook (through the block's
  own post-norm, ``post(S + eps delta) - post(S)``, on post-norm models), differentiated by torch.autograd with
  respect to ``eps``;
* integrated gradients are complete along the straight path: the input node's EAP-IG scores, summed over every
  input it feeds, tend to ``m(corrupt) - m(clean)`` (two plain forward passes) as the steps grow.
"""

import random

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from probes import tasks, toy
from probes.core.errors import ProbesError
from probes.evidence.circuits import EdgeScores, circuit_graph, edge_ablation, edge_attribution
from probes.models.toy import ToyModel
from probes.prompts.promptset import PromptSet
from test_circuit_runs import _parse_down
from test_paths import post_norm_model, random_pairs


def plain_metric(model: HookedTransformer, prompts: PromptSet, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
    rows = torch.arange(len(prompts))
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[rows, prompts.end]
    return logits[rows, prompts.answer] - logits[rows, prompts.foil]


def reference_derivative(model: HookedTransformer, prompts: PromptSet, edge: tuple[str, str]) -> torch.Tensor:
    """d/d eps at 0 of each prompt's metric when the edge's input gets ``eps`` times the edge's change."""
    up, down = edge
    def names(name: str) -> bool:
        return name.endswith(("hook_z", "hook_post", "hook_resid_pre"))

    _, clean = model.run_with_cache(prompts.clean, names_filter=names)
    _, corrupt = model.run_with_cache(prompts.corrupt, names_filter=names)
    post_norm = model.cfg.use_normalization_before_and_after
    if up == "input":
        name = get_act_name("resid_pre", 0)
        base, delta, norm = None, corrupt[name] - clean[name], None
    elif up.startswith("a"):
        layer, head = (int(x) for x in up[1:].split("."))
        attn, z = model.blocks[layer].attn, get_act_name("z", layer)
        base = torch.einsum("bphe,hed->bpd", clean[z], attn.W_O) + attn.b_O
        delta = (corrupt[z][:, :, head] - clean[z][:, :, head]) @ attn.W_O[head]
        norm = model.blocks[layer].ln1_post if post_norm else None
    else:
        layer, mlp, post = int(up[1:]), model.blocks[int(up[1:])].mlp, get_act_name("post", int(up[1:]))
        base = clean[post] @ mlp.W_out + mlp.b_out
        delta = (corrupt[post] - clean[post]) @ mlp.W_out
        norm = model.blocks[layer].ln2_post if post_norm else None
    kind, layer, head = _parse_down(down, model)
    with torch.enable_grad():
        eps = torch.zeros(len(prompts), 1, 1, requires_grad=True)
        change = eps * delta if norm is None else norm(base + eps * delta) - norm(base)

        def add(act, hook):
            if kind in ("q", "k", "v"):
                act = act.clone()
                act[:, :, head] = act[:, :, head] + change
                return act
            return act + change

        name = (get_act_name("resid_post", model.cfg.n_layers - 1) if kind == "logits"
                else get_act_name({"q": "q_input", "k": "k_input", "v": "v_input", "mlp_in": "mlp_in"}[kind], layer))  # fmt: skip
        model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = True
        try:
            metric = plain_metric(model, prompts, prompts.clean, [(name, add)])
        finally:
            model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = False
        (grad,) = torch.autograd.grad(metric.sum(), eps)
    return grad.reshape(-1)


def check_against_reference(model: HookedTransformer, prompts: PromptSet, edges, atol: float) -> None:
    scores = edge_attribution(model, prompts)
    assert all(param.grad is None for param in model.parameters())  # post_norm_model's parameters require grad
    column = {edge: e for e, edge in enumerate(scores.edges)}
    for edge in edges:
        expected = reference_derivative(model, prompts, edge)
        got = torch.tensor(scores.scores[:, column[edge]], dtype=expected.dtype)
        torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=f"edge {edge}")


@pytest.fixture(scope="module")
def pronouns(toy_model: ToyModel) -> PromptSet:
    return tasks.pronoun_prompts(toy_model, 6, seed=1)


def test_eap_equals_the_exact_effect_where_the_metric_is_linear_in_the_edge(toy_model: ToyModel, pronouns) -> None:
    """The toy has no final norm: the logit difference is linear in every edge into the logits."""
    scores = edge_attribution(toy_model.model, pronouns)
    into_logits = [e for e, (_, down) in enumerate(scores.edges) if down == "logits"]
    exact = edge_ablation(toy_model.model, pronouns, [scores.edges[e] for e in into_logits]).effect.double().numpy()
    np.testing.assert_allclose(scores.scores[:, into_logits], exact, atol=1e-5, rtol=0)
    assert np.abs(exact).max() > 9  # the planted head's edge: a large effect, not a trivial agreement


@pytest.mark.parametrize("model", ["post_norm", "ln", "rms"])
def test_eap_is_the_derivative_of_the_edge_change(model: str) -> None:
    """Every kind of edge, on Gemma-3's block in small (post-norms, grouped keys/values), a GPT-2-like model (LN,
    learned positions) and a Llama-like one (RMS, rotary, gated MLP)."""
    net = {"post_norm": post_norm_model, "ln": lambda: toy.build_random("LN"), "rms": lambda: toy.build_random("RMS")}[model]()
    prompts = random_pairs()
    if model != "post_norm":
        prompts = PromptSet.from_tokens(prompts.clean % net.cfg.d_vocab, prompts.corrupt % net.cfg.d_vocab,
                                        prompts.answer % net.cfg.d_vocab, prompts.foil % net.cfg.d_vocab, prompts.roles)  # fmt: skip
    graph = circuit_graph(net).edges
    rng = random.Random(0)
    edges = [tuple(row) for kind in ("q", "k", "v", "mlp_in", "logits")
             for row in rng.sample(graph.loc[graph["kind"] == kind, ["upstream", "downstream"]].values.tolist(), 4)]  # fmt: skip
    edges += [("m1", "logits"), ("a0.1", "m0.in"), ("input", "logits")]
    check_against_reference(net, prompts, edges, atol=1e-5)


def test_post_norm_gradient_is_not_the_plain_one() -> None:
    """On a post-norm model the gradient at the input would be wrong for a head's raw change: the reference that
    adds ``eps delta`` unnormalised differs from EAP by a large share (the test above could not pass by accident)."""
    model, prompts = post_norm_model(), random_pairs()
    scores = edge_attribution(model, prompts)
    e = scores.edges.index(("a0.1", "logits"))
    model.cfg.use_normalization_before_and_after = False  # the reference then adds the raw change...
    try:
        raw = reference_derivative(model, prompts, ("a0.1", "logits"))
    finally:
        model.cfg.use_normalization_before_and_after = True
    assert np.abs(raw.numpy() - scores.scores[:, e]).max() > 0.25 * np.abs(scores.scores[:, e]).max()


@pytest.mark.parametrize("build, steps, atol", [(lambda: toy.build().model, 64, 0.05), (lambda: toy.build_random("RMS"), 64, 1e-3)])
def test_eap_ig_is_complete_on_the_input_node(build, steps: int, atol: float) -> None:
    """Integrated gradients along the straight line from the corrupt input to the clean one: the input node's
    scores summed over every input it feeds tend to m(corrupt) - m(clean). On the toy EAP (the clean-run
    gradient) misses it almost whole: the planted head's softmax is saturated at the clean input."""
    model = build()
    if model.cfg.d_vocab == toy.D_VOCAB:
        prompts = tasks.pronoun_prompts(toy.build(), 6, seed=1)
    else:
        pairs = random_pairs()
        prompts = PromptSet.from_tokens(pairs.clean % model.cfg.d_vocab, pairs.corrupt % model.cfg.d_vocab,
                                        pairs.answer % model.cfg.d_vocab, pairs.foil % model.cfg.d_vocab, pairs.roles)  # fmt: skip
    total = (plain_metric(model, prompts, prompts.corrupt) - plain_metric(model, prompts, prompts.clean)).double().numpy()
    ig = edge_attribution(model, prompts, "eap-ig", steps=steps)
    from_input = [e for e, (up, _) in enumerate(ig.edges) if up == "input"]
    np.testing.assert_allclose(ig.scores[:, from_input].sum(1), total, atol=atol, rtol=0)
    coarse = edge_attribution(model, prompts, "eap-ig", steps=2).scores[:, from_input].sum(1)
    assert np.abs(coarse - total).max() > np.abs(ig.scores[:, from_input].sum(1) - total).max()
    if model.cfg.d_vocab == toy.D_VOCAB:
        eap = edge_attribution(model, prompts).scores[:, from_input].sum(1)
        assert (np.abs(eap - total) > 5).all()


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_scores_rank_the_planted_edge_first_and_never_the_decoy(toy_model: ToyModel, pronouns, method) -> None:
    heads = toy_model.heads
    scores = edge_attribution(toy_model.model, pronouns, method)
    antecedent, decoy = ("a{}.{}".format(*heads.antecedent), "logits"), ("a{}.{}".format(*heads.decoy), "logits")
    top = scores.top(3)
    assert tuple(top.loc[0, ["upstream", "downstream"]]) == antecedent and top.loc[0, "score"] < -9
    assert abs(scores.mean[scores.edges.index(decoy)]) < 1e-6


def test_the_result_lists_every_edge_in_graph_order(toy_model: ToyModel, pronouns) -> None:
    scores = edge_attribution(toy_model.model, pronouns, "eap-ig", steps=3)
    graph = circuit_graph(toy_model.model).edges
    assert list(scores.edges) == list(zip(graph["upstream"], graph["downstream"]))
    assert scores.scores.shape == (len(pronouns), len(graph)) and (scores.method, scores.steps) == ("eap-ig", 3)
    frame = scores.to_frame()
    assert list(frame.columns) == ["upstream", "downstream", "score", "rank"]
    assert sorted(frame["rank"]) == list(range(1, len(graph) + 1))
    assert np.all(np.diff(np.abs(frame.sort_values("rank")["score"].to_numpy())) <= 0)
    long = scores.per_prompt_frame()
    assert len(long) == scores.scores.size
    np.testing.assert_allclose(long.groupby(["upstream", "downstream"], sort=False)["score"].mean().to_numpy(), scores.mean)
    assert len(scores.top(4)) == 4 and "EdgeScores" in scores._repr_html_() and "3 steps" in scores._repr_html_()
    assert isinstance(scores, EdgeScores)


def test_bad_input_is_one_line(toy_model: ToyModel, pronouns) -> None:
    for call, match in [
        (lambda: edge_attribution(toy_model.model, pronouns, "acdc"), "unknown method 'acdc'"),
        (lambda: edge_attribution(toy_model.model, pronouns, "eap-ig", steps=0), "steps >= 1"),
        (lambda: edge_attribution(toy_model.model, pronouns).top(0), "k >= 1"),
    ]:
        with pytest.raises(ProbesError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert toy_model.model.cfg.use_split_qkv_input is False


@pytest.mark.real
def test_gemma_post_norm_gradient_equals_autograd_on_plain_hooks(gemma) -> None:
    prompts = tasks.pronoun_resolution(gemma, 16, seed=0).subset([0, 1])
    edges = [("a3.1", "a9.kv0.k"), ("a10.3", "logits"), ("m5", "a12.2.q"), ("a7.0", "m7.in"), ("input", "m0.in")]
    check_against_reference(gemma, prompts, edges, atol=1e-4)
