"""Exact edge ablation and circuit runs equal a brute force written with plain TransformerLens hooks, and find the
toy's planted circuit.

Brute force: repeated hooked passes with ``use_split_qkv_input``/``use_hook_mlp_in``; in each, every downstream
input is its residual stream plus, for each sublayer with an ablated edge into it, that sublayer's output
recomputed from the previous pass's ``z`` (or MLP hidden activation) with the ablated nodes' taken from the corrupt
run, through the block's own post-norm, minus the output the pass recorded. After at most ``2 n_layers + 1`` passes
every input has been computed from final values (an MLP reads its own layer's heads, so each layer takes two
passes); the passes stop earlier once one reproduces every activation of the pass before (a fixed point). No code of the kit's engine is used.
"""

import random

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.circuits import CircuitRunResult, circuit_graph, edge_ablation, run_circuit
from probes.models.toy import ToyModel
from probes.prompts.promptset import PromptSet
from test_paths import post_norm_model, random_pairs


def _sublayer_output(model: HookedTransformer, layer: int, kind: str, act: torch.Tensor) -> torch.Tensor:
    """A sublayer's output as added to the residual stream, from its heads' z or its MLP's hidden activation."""
    block = model.blocks[layer]
    if kind == "attn":
        out = torch.einsum("bphe,hed->bpd", act, block.attn.W_O) + block.attn.b_O
        return block.ln1_post(out) if model.cfg.use_normalization_before_and_after else out
    out = act @ block.mlp.W_out + block.mlp.b_out
    return block.ln2_post(out) if model.cfg.use_normalization_before_and_after else out


def _parse_down(node: str, model: HookedTransformer) -> tuple[str, int, int]:
    if node == "logits":
        return "logits", model.cfg.n_layers, 0
    parts = node.split(".")
    layer = int(parts[0][1:])
    if parts[-1] == "in":
        return "mlp_in", layer, 0
    return parts[-1], layer, int(parts[1].removeprefix("kv"))


def brute_force(model: HookedTransformer, prompts: PromptSet, ablated: set[tuple[str, str]]) -> torch.Tensor:
    """The metric with the ``ablated`` edges carrying corrupt-run values, every other edge this run's."""
    names = lambda n: n.endswith(("hook_z", "hook_post", "hook_attn_out", "hook_mlp_out", "hook_resid_pre"))  # noqa: E731
    _, corrupt = model.run_with_cache(prompts.corrupt, names_filter=names)
    _, run = model.run_with_cache(prompts.clean, names_filter=names)
    by_input: dict[str, list[str]] = {}
    for up, down in ablated:
        by_input.setdefault(down, []).append(up)

    def correction(ups: list[str]) -> torch.Tensor:
        total = 0
        if "input" in ups:
            total = total + corrupt[get_act_name("resid_pre", 0)] - run[get_act_name("resid_pre", 0)]
        layers = {int(u[1:].split(".")[0]) for u in ups if u != "input"}
        for layer in layers:
            heads = [int(u.split(".")[1]) for u in ups if u.startswith(f"a{layer}.")]
            if heads:
                z = run[get_act_name("z", layer)].clone()
                z[:, :, heads] = corrupt[get_act_name("z", layer)][:, :, heads]
                total = total + _sublayer_output(model, layer, "attn", z) - run[get_act_name("attn_out", layer)]
            if f"m{layer}" in ups:
                post = corrupt[get_act_name("post", layer)]
                total = total + _sublayer_output(model, layer, "mlp", post) - run[get_act_name("mlp_out", layer)]
        return total

    def hooks():
        out = []
        for down, ups in by_input.items():
            kind, layer, head = _parse_down(down, model)
            delta = correction(ups)

            def add(act, hook, delta=delta, kind=kind, head=head):
                act = act.clone()
                if kind in ("q", "k", "v"):
                    act[:, :, head] += delta
                else:
                    act += delta
                return act

            name = (get_act_name("resid_post", model.cfg.n_layers - 1) if kind == "logits"
                    else get_act_name({"q": "q_input", "k": "k_input", "v": "v_input", "mlp_in": "mlp_in"}[kind], layer))
            out.append((name, add))
        return out

    model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = True
    try:
        for _ in range(2 * model.cfg.n_layers + 1):
            with model.hooks(fwd_hooks=hooks()):
                logits, new_run = model.run_with_cache(prompts.clean, names_filter=names)
            # a pass that reproduces every activation it read from is the fixed point: the next would repeat it
            # (one hooked pass for a single edge, whose upstream values do not depend on it)
            settled = all(torch.equal(new_run[name], run[name]) for name in run.cache_dict)
            run = new_run
            if settled:
                break
    finally:
        model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = False
    rows = torch.arange(len(prompts))
    final = logits[rows, prompts.end]
    return final[rows, prompts.answer] - final[rows, prompts.foil]


def check_edges_against_brute_force(model, prompts, edges, atol) -> None:
    result = edge_ablation(model, prompts, edges)
    clean = brute_force(model, prompts, set())
    torch.testing.assert_close(result.clean, clean, atol=atol, rtol=0)
    for e, edge in enumerate(edges):
        expected = brute_force(model, prompts, {edge}) - clean
        torch.testing.assert_close(result.effect[:, e], expected, atol=atol, rtol=0, msg=f"edge {edge}")


def check_circuits_against_brute_force(model, prompts, circuits, atol) -> None:
    all_edges = sorted(circuit_graph(model).edge_ids)
    for circuit in circuits:
        result = run_circuit(model, prompts, circuit)
        expected = brute_force(model, prompts, set(all_edges) - set(circuit))
        torch.testing.assert_close(result.circuit, expected, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def pronouns(toy_model: ToyModel) -> PromptSet:
    return tasks.pronoun_prompts(toy_model, 6, seed=1)


def test_toy_edge_ablation_equals_brute_force_for_every_edge(toy_model: ToyModel, pronouns: PromptSet) -> None:
    edges = sorted(circuit_graph(toy_model.model).edge_ids)
    check_edges_against_brute_force(toy_model.model, pronouns, edges, atol=1e-5)


def test_toy_circuit_runs_equal_brute_force(toy_model: ToyModel, pronouns: PromptSet) -> None:
    edges = sorted(circuit_graph(toy_model.model).edge_ids)
    rng = random.Random(0)
    circuits = [rng.sample(edges, k) for k in (5, 20, 60)]
    check_circuits_against_brute_force(toy_model.model, pronouns, circuits, atol=1e-5)


@pytest.mark.parametrize("ablation", ["corrupt", "mean", "resample"])
def test_all_edges_is_the_model_and_no_edges_the_empty_circuit(toy_model: ToyModel, ablation: str) -> None:
    model = toy_model.model
    prompts = tasks.pronoun_prompts(toy_model, 6, seed=1)
    prompts = prompts.subset(list(range(6)))
    prompts.groups[:] = [0, 0, 1, 1, 2, 2]  # resample within pairs
    edges = sorted(circuit_graph(model).edge_ids)
    everything, nothing = run_circuit(model, prompts, edges, ablation), run_circuit(model, prompts, [], ablation)
    clean = brute_force(model, prompts, set())
    torch.testing.assert_close(everything.circuit, clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(everything.full, clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(nothing.circuit, nothing.empty, atol=1e-6, rtol=0)
    if ablation == "corrupt":  # every input reads the corrupt run: the empty circuit is the corrupt run
        swapped = PromptSet.from_tokens(prompts.corrupt, prompts.clean, prompts.answer, prompts.foil, prompts.roles)
        torch.testing.assert_close(nothing.empty, brute_force(model, swapped, set()), atol=1e-5, rtol=0)


def test_the_planted_circuit_is_faithful_and_the_decoy_does_not_matter(toy_model: ToyModel, pronouns: PromptSet) -> None:
    model, heads = toy_model.model, toy_model.heads
    antecedent = "a{}.{}".format(*heads.antecedent)
    decoy = "a{}.{}".format(*heads.decoy)
    planted = [(antecedent, "logits")] + [("input", f"{antecedent}.{c}") for c in "qkv"]
    result = run_circuit(model, pronouns, planted)
    assert abs(result.faithfulness.value - 1) < 0.01 and result.faithfulness.ci_low > 0.98
    assert run_circuit(model, pronouns, planted[1:]).faithfulness.value < 0.01
    with_decoy = planted + [(decoy, "logits")] + [("input", f"{decoy}.{c}") for c in "qkv"]
    torch.testing.assert_close(run_circuit(model, pronouns, with_decoy).circuit, result.circuit, atol=1e-5, rtol=0)
    effects = edge_ablation(model, pronouns, [(antecedent, "logits"), (decoy, "logits")]).effect
    assert (effects[:, 0] < -9).all() and (effects[:, 1].abs() < 1e-5).all()


def test_post_norm_model_equals_brute_force_where_adding_values_does_not() -> None:
    """Gemma-3's block in small: the mixed sum's post-norm is recomputed per input; adding a head's raw value to the
    residual stream instead (the naive definition) is off by a large share of the effect."""
    model, prompts = post_norm_model(), random_pairs()
    edges = sorted(circuit_graph(model).edge_ids)
    sample = random.Random(1).sample(edges, 30)
    check_edges_against_brute_force(model, prompts, sample, atol=1e-5)
    check_circuits_against_brute_force(model, prompts, [random.Random(2).sample(edges, 40)], atol=1e-5)
    _, clean = model.run_with_cache(prompts.clean)
    _, corrupt = model.run_with_cache(prompts.corrupt)
    name, rows = get_act_name("z", 0), torch.arange(len(prompts))
    raw = (corrupt[name][:, :, 1] - clean[name][:, :, 1]) @ model.blocks[0].attn.W_O[1]
    final = clean[get_act_name("resid_post", model.cfg.n_layers - 1)] + raw
    logits = model.unembed(model.ln_final(final))[rows, prompts.end]
    naive = logits[rows, prompts.answer] - logits[rows, prompts.foil] - brute_force(model, prompts, set())
    exact = edge_ablation(model, prompts, [("a0.1", "logits")]).effect[:, 0]
    assert (naive - exact).abs().max() > 0.25 * exact.abs().max()


def test_bad_input_is_one_line(toy_model: ToyModel, pronouns: PromptSet) -> None:
    model = toy_model.model
    for call, match in [
        (lambda: edge_ablation(model, pronouns, [("a9.0", "logits")]), "layer 9 is out of range"),
        (lambda: edge_ablation(model, pronouns, [("a1.4", "logits")]), "head 4 is out of range"),
        (lambda: edge_ablation(model, pronouns, [("a1.x", "logits")]), "unknown node id"),
        (lambda: edge_ablation(model, pronouns, [("a1.0", "a0.1.q")]), "no edge"),
        (lambda: edge_ablation(model, pronouns, []), "at least one edge"),
        (lambda: run_circuit(model, pronouns, "a1.1"), "list of"),
        (lambda: run_circuit(model, pronouns, [], ablation="zero"), "unknown ablation"),
        (lambda: run_circuit(model, pronouns.subset([0]), [], ablation="mean"), "at least 2 prompts"),
        (lambda: run_circuit(model, pronouns, [], ablation="resample"), "at least 2 prompts per group"),
        (lambda: CircuitRunResult((), "corrupt", torch.zeros(4), torch.tensor([1.0, -1, 2, -2]), torch.zeros(4),
                                  [0, 1, 2, 3]).faithfulness, "includes 0"),  # fmt: skip
    ]:
        with pytest.raises(ProbesError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert model.cfg.use_split_qkv_input is False and model.cfg.use_hook_mlp_in is False


@pytest.mark.real
def test_gemma_edges_and_a_circuit_equal_brute_force(gemma) -> None:
    prompts = tasks.pronoun_resolution(gemma, 16, seed=0).subset([0, 1])
    edges = sorted(circuit_graph(gemma).edge_ids)
    rng = random.Random(0)
    check_edges_against_brute_force(gemma, prompts, rng.sample(edges, 12), atol=1e-4)
    check_circuits_against_brute_force(gemma, prompts, [rng.sample(edges, 2000)], atol=1e-4)


@pytest.mark.real
def test_smollm2_edges_equal_brute_force(smollm2) -> None:
    prompts = tasks.ioi(smollm2, 14, seed=0).subset([0, 1])
    edges = sorted(circuit_graph(smollm2).edge_ids)
    check_edges_against_brute_force(smollm2, prompts, random.Random(0).sample(edges, 20), atol=1e-4)
