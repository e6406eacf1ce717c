"""Every exported function that takes a model accepts one whose parameters require grad, in train or eval mode,
gives the same numbers as on the frozen model, and hands the model back as it was (grad flags, modes, weights).

Ground truth: the same function on a grads-off, eval-mode copy of the same planted model. The list of functions is
``probes._EXPORTS``: an export that takes a model (a ``model`` parameter, or a method of an exported class that
has one) and has no case below fails :func:`test_every_export_that_takes_a_model_has_a_case`.
"""

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probes
from probes import tasks, toy
from probes.claims.types import Claim, Composition
from probes.evidence.activations import Activations
from probes.evidence.probing import antecedent_identity
from probes.prompts.promptset import PromptSet

N = 12
NAMES = list(range(toy.FEMALE_NAMES.start, toy.MALE_NAMES.stop))


def _pronouns(planted: toy.ToyModel) -> PromptSet:
    return tasks.pronoun_prompts(planted, N, seed=1)


def _rotary_prompts(n: int = 6) -> PromptSet:
    """``<bos>``, fillers and one name; the rotary toy's planted head attends to the previous token."""
    clean = torch.full((n, toy.ROTARY_MAX_LEN), toy.FILLERS.start)
    clean[:, 0] = toy.BOS
    at = torch.arange(n) % (toy.ROTARY_MAX_LEN - 2) + 1
    clean[torch.arange(n), at] = NAMES[0]
    return PromptSet.from_tokens(clean, clean, torch.zeros(n), torch.zeros(n), {"name": at})


def _name_prompts(n: int = 8) -> PromptSet:
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(toy.FILLERS.start, toy.D_VOCAB, (n, 8), generator=gen)
    clean[:, 0] = toy.BOS
    at = torch.randint(1, 7, (n,), generator=gen)
    clean[torch.arange(n), at] = torch.tensor(NAMES)[torch.randint(len(NAMES), (n,), generator=gen)]
    return PromptSet.from_tokens(clean, clean, torch.zeros(n), torch.zeros(n), {"name": at})


def _checked(planted: toy.ToyModel, model, tmp: Path) -> PromptSet:
    prompts = _pronouns(planted)
    prompts.check_model(model)
    return prompts


def _harvested(planted: toy.ToyModel, model, tmp: Path) -> dict[str, torch.Tensor]:
    store = probes.harvest(model, _pronouns(planted), tmp / "acts", ["z", "resid_post"], at="pronoun")
    return {hook: store.load(hook) for hook in Activations(tmp / "acts").hooks}


FILLER = [toy.VOCAB.index(" and"), toy.VOCAB.index(" the")]
REPLACEMENTS = [toy.VOCAB.index(w) for w in (" park", " store", " ball")]
CLAIM = Claim((1, 1), src="pronoun", dst="antecedent", foil="distractor")

# export -> (builder of the planted model it runs on, call(planted, model, tmp_path) -> result)
Case = tuple[Callable[[], toy.ToyModel], Callable[[toy.ToyModel, object, Path], object]]
CIRCUIT = [("a1.1", "logits"), ("input", "a1.1.q"), ("a0.2", "a1.1.k")]  # a few edges of the planted toy
CASES: dict[str, Case] = {
    "PromptSet": (toy.build, _checked),
    "role_attention": (toy.build, lambda t, m, _: probes.role_attention(m, _pronouns(t), "pronoun", "antecedent")),
    "norm_weighted_attention": (
        toy.build, lambda t, m, _: probes.norm_weighted_attention(m, _pronouns(t), "pronoun", "antecedent")
    ),
    "head_scores": (toy.build, lambda t, m, _: probes.head_scores(m, "induction", n=N)),
    "head_score_samples": (toy.build, lambda t, m, _: probes.head_score_samples(m, "previous_token", n=N)),
    "behaviour": (toy.build, lambda t, m, _: probes.behaviour(m, _pronouns(t))),
    "patch_heads": (toy.build, lambda t, m, _: probes.patch_heads(m, _pronouns(t), "pattern", progress=False)),
    "patch_resid": (toy.build, lambda t, m, _: probes.patch_resid(m, _pronouns(t), progress=False)),
    "patch_activations": (
        toy.build, lambda t, m, _: probes.patch_activations(m, _pronouns(t), "v", "noising", progress=False)
    ),
    "edge_effects": (
        toy.build, lambda t, m, _: probes.edge_effects(m, _pronouns(t), "pronoun", "antecedent", progress=False)
    ),
    "patch_paths": (
        toy.build,
        lambda t, m, _: probes.patch_paths(m, _pronouns(t), [(0, 2), (0, 1)], [(1, 1, "k"), "logits"], progress=False),
    ),
    "kv_groups": (toy.build, lambda t, m, _: probes.kv_groups(m)),
    "circuit_graph": (toy.build, lambda t, m, _: probes.circuit_graph(m)),
    "edge_ablation": (toy.build, lambda t, m, _: probes.edge_ablation(m, _pronouns(t), CIRCUIT)),
    "run_circuit": (toy.build, lambda t, m, _: probes.run_circuit(m, _pronouns(t), CIRCUIT).circuit),
    "edge_attribution": (toy.build, lambda t, m, _: probes.edge_attribution(m, _pronouns(t), "eap-ig", steps=2)),
    "find_circuit": (
        toy.build_two_hop, lambda t, m, _: probes.find_circuit(m, tasks.repeated_prompts(t, 8), method="exact", sizes=[4])
    ),
    "position_content": (
        toy.build_position_content,
        lambda t, m, _: probes.position_content(m, _name_prompts(), "end", "name", filler=FILLER,
                                                replacements=REPLACEMENTS),
    ),
    "rotary_bands": (toy.build_rotary, lambda t, m, _: probes.rotary_bands(m, _rotary_prompts(), "end", "previous")),
    "attribute_heads": (toy.build, lambda t, m, _: probes.attribute_heads(m, _pronouns(t))),
    "screen_then_verify": (
        toy.build, lambda t, m, _: probes.screen_then_verify(m, _pronouns(t), top_k=3, progress=False)
    ),
    "harvest": (toy.build, _harvested),
    "probe": (
        toy.build,
        lambda t, m, _: probes.probe(m, tasks.pronoun_prompts(t, 48), [antecedent_identity], ["z"], [1], "pronoun",
                                     n_boot=50),
    ),
    "evaluate": (toy.build, lambda t, m, _: probes.evaluate(m, _pronouns(t), CLAIM)),
    "query_key": (
        toy.build_query_key,
        lambda t, m, _: probes.query_key(m, tasks.pronoun_prompts(t, 48), (0, 0), pools=tasks.toy.TOY_NAME_POOLS),
    ),
    "local_global": (
        toy.build_local_global, lambda t, m, _: probes.local_global(m, tasks.distant_pronoun_prompts(t, N))
    ),
    "layer_types": (toy.build_local_global, lambda t, m, _: probes.layer_types(m)),
}
# evaluate settles compositions (path patching) and the essay's claims through other paths: a case for each
OTHER_PATHS: dict[str, Case] = {
    "evaluate:composition": (toy.build, lambda t, m, _: probes.evaluate(
        m, tasks.repeated_prompts(t, N, seed=2), Composition((0, 2), (1, 2), "k"), direction="noising"
    )),
    "evaluate:self_update": (toy.build_self_update, lambda t, m, _: probes.evaluate(
        m, tasks.token_sequences(t, N), probes.SelfUpdate(0)
    )),
    "evaluate:depth": (toy.build_depth, lambda t, m, _: probes.evaluate(
        m, tasks.pronoun_prompts(t, N), probes.ResolutionDepth(layer=1)
    )),
}


def _takes_a_model(obj: object) -> bool:
    def has_model(fn: object) -> bool:
        try:
            return "model" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return False

    if inspect.isclass(obj):  # its methods (a dataclass field's default, e.g. SweepOptions.metric, is not one)
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        return any(has_model(getattr(obj, name)) for name in vars(obj) if not name.startswith("_") and name not in fields)
    return has_model(obj)


def test_every_export_that_takes_a_model_has_a_case():
    takes = {name for name in probes._EXPORTS if _takes_a_model(getattr(probes, name))}
    assert "evaluate" in takes and "PromptSet" in takes and "load_model" not in takes  # the detection works
    assert takes - set(CASES) == set(), "exports that take a model but have no case here"
    assert set(CASES) - takes == set(), "cases for names that are not exports taking a model"


def _leaves(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every number, string and tensor in a result, by path (tensors as they are, arrays as tensors)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, np.ndarray):
        yield path, torch.tensor(value) if value.dtype.kind in "biuf" else value.tolist()
    elif isinstance(value, pd.DataFrame):
        for column in value.columns:
            yield from _leaves(value[column].to_numpy(), f"{path}[{column}]")
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}[{key}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        yield path, value
    else:
        raise TypeError(f"{path}: no comparison for {type(value).__name__}")


def _state(model: torch.nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor]]:
    return (
        [module.training for module in model.modules()],
        [param.requires_grad for param in model.parameters()],
        {name: param.detach().clone() for name, param in model.named_parameters()},
    )


_REFERENCE: dict[str, dict[str, object]] = {}


def _run(case: Case, tmp_path: Path, mode: str | None) -> dict[str, object]:
    """The case's result on a fresh planted model: frozen (``mode`` None), or requiring grad in ``mode``."""
    build, call = case
    planted = build()
    model = planted.model
    if mode is not None:
        model.requires_grad_(True)
        model.train(mode == "train")
        # one submodule in the other mode: the model's state is every module's flag, not only the top one's
        model.blocks[0].attn.train(mode != "train")
    before = _state(model)
    result = dict(_leaves(call(planted, model, tmp_path)))
    after = _state(model)
    assert after[0] == before[0], "a module's train/eval mode changed"
    assert after[1] == before[1], "a parameter's requires_grad changed"
    assert all(torch.equal(after[2][k], before[2][k]) for k in before[2]), "a weight changed"
    assert all(param.grad is None for param in model.parameters()), "a gradient was accumulated into the model"
    return result


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", [*CASES, *OTHER_PATHS])
def test_grads_on_gives_the_frozen_result_and_leaves_the_model_as_it_was(name, mode, tmp_path):
    case = OTHER_PATHS.get(name) or CASES[name]
    if name not in _REFERENCE:
        _REFERENCE[name] = _run(case, tmp_path / "frozen", None)
    expected = _REFERENCE[name]
    got = _run(case, tmp_path / mode, mode)
    assert got.keys() == expected.keys()
    for path, value in got.items():
        if isinstance(value, torch.Tensor):
            assert not value.requires_grad, f"{path} carries an autograd graph"
            torch.testing.assert_close(value, expected[path], rtol=1e-6, atol=1e-6, equal_nan=True, msg=path)
        else:
            assert value == expected[path] or (value != value and expected[path] != expected[path]), path
