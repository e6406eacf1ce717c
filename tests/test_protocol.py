"""The model protocol (probes.models.protocol) is what the kit uses from a model, all of it.

Ground truth: the same functions on the same TransformerLens model, called directly. An object that offers only the
protocol's members (delegated to that model, nested ones too) must give the same numbers; were any stage to read
a member the protocol does not name, it would raise AttributeError here.
"""

import ast
import inspect

import pytest
import torch
from typing_extensions import get_protocol_members

import probes
from probes import tasks, toy
from probes.claims.evaluation import evaluate
from probes.claims.types import Claim, Composition
from probes.core.stats import Estimate
from probes.evidence.attention import head_scores, norm_weighted_attention
from probes.evidence.attribution import attribute_heads
from probes.evidence.behaviour import behaviour
from probes.evidence.patching import edge_effects, patch_activations, patch_paths
from probes.evidence.position import position_content
from probes.evidence.rotary import rotary_bands
from probes.models.protocol import Attention, Block, HookedModel, ModelConfig, Unembed
from test_position import FILLER, REPLACEMENTS, name_prompts

# members a stage reads only where the model has them (getattr with a default)
OPTIONAL = ("ln_final", "provenance")


class Offered:
    """``target`` seen through ``protocol``: its members (and ``optional`` ones the target has) are delegated, every
    other attribute raises AttributeError. Nested protocol members (the config, blocks, attention, unembedding)
    are wrapped the same way."""

    def __init__(self, target, protocol, optional=()):
        self._target, self._protocol = target, protocol
        self._allowed = set(get_protocol_members(protocol)) | {name for name in optional if hasattr(target, name)}

    def __getattr__(self, name: str):
        if name not in self._allowed:
            raise AttributeError(f"{self._protocol.__name__} does not offer {name!r}")
        value = getattr(self._target, name)
        if name == "blocks":
            return [Offered(block, Block) for block in value]
        nested = {"cfg": ModelConfig, "attn": Attention, "unembed": Unembed}.get(name)
        return value if nested is None else Offered(value, nested)

    def __call__(self, *args, **kwargs):
        if "__call__" not in self._allowed:
            raise TypeError(f"{self._protocol.__name__} is not callable")
        return self._target(*args, **kwargs)


def offered(model) -> Offered:
    return Offered(model, HookedModel, OPTIONAL)


def test_a_hooked_transformer_offers_the_protocol_and_a_partial_object_does_not(toy_model) -> None:
    assert isinstance(toy_model.model, HookedModel)
    assert isinstance(offered(toy_model.model), HookedModel)
    partial = Offered(toy_model.model, HookedModel)
    partial._allowed.discard("run_with_cache")
    assert not isinstance(partial, HookedModel)


def _numbers(result) -> torch.Tensor:
    """The numbers of a result, flattened: a tensor, or the tensors / estimates / table of a result object."""
    if isinstance(result, torch.Tensor):
        return result.double().flatten()
    if hasattr(result, "table"):
        table = result.table.select_dtypes("number")
        return torch.tensor(table.to_numpy(dtype=float)).flatten()
    fields = result.evidence if hasattr(result, "evidence") else vars(result)
    return torch.cat([
        torch.tensor([v.value, v.ci_low, v.ci_high], dtype=torch.float64) if isinstance(v, Estimate) else v.double().flatten()
        for v in fields.values() if isinstance(v, (Estimate, torch.Tensor))
    ])  # fmt: skip


# each takes (model, pronoun prompts, the toy's planted heads)
PRONOUN_CALLS = {
    "evaluate": lambda m, p, h: evaluate(m, p, Claim(h.antecedent, src="pronoun", dst="antecedent", foil="distractor")),
    "composition": lambda m, p, h: evaluate(m, p, Composition(sender=h.previous_token, receiver=h.induction, via="k")),
    "patch_k": lambda m, p, h: patch_activations(m, p, "k", progress=False).patched,
    "patch_resid": lambda m, p, h: patch_activations(m, p, "resid_pre", progress=False).patched,
    "edge_pattern_row": lambda m, p, h: edge_effects(m, p, "pronoun", "antecedent", intervention="pattern_row",
                                                     progress=False).patched,  # fmt: skip
    "paths": lambda m, p, h: patch_paths(m, p, [h.previous_token, (0, 0)], [(*h.antecedent, "q"), (*h.induction, "k"),
                                         "logits"], progress=False).patched,  # fmt: skip
    "attribution": lambda m, p, h: attribute_heads(m, p),
    "norm_attention": lambda m, p, h: norm_weighted_attention(m, p, "pronoun", "antecedent"),
    "head_scores": lambda m, p, h: head_scores(m, "previous_token", n=4),
    "behaviour": lambda m, p, h: behaviour(m, p),
    "task": lambda m, p, h: tasks.previous_token(m, 4, seed=2).clean,
}


@pytest.mark.parametrize("name", list(PRONOUN_CALLS))
def test_the_kit_runs_on_an_object_offering_only_the_protocol(toy_model, name: str) -> None:
    prompts = tasks.pronoun_prompts(toy_model, 6, seed=1)
    call = PRONOUN_CALLS[name]
    expected = _numbers(call(toy_model.model, prompts, toy_model.heads))
    got = _numbers(call(offered(toy_model.model), prompts, toy_model.heads))
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_position_and_rotary_evidence_run_on_the_protocol_too() -> None:
    model = toy.build_rotary().model
    prompts = name_prompts(n=4, length=toy.ROTARY_MAX_LEN)
    for call in (
        lambda m: position_content(m, prompts, "end", "previous", filler=FILLER, replacements=REPLACEMENTS, shifts=(1,)),
        lambda m: rotary_bands(m, prompts, "end", "previous"),
    ):
        torch.testing.assert_close(_numbers(call(offered(model))), _numbers(call(model)), rtol=0, atol=0, equal_nan=True)


def test_every_lazy_export_is_imported_for_type_checkers() -> None:
    """``probes/__init__.py``'s ``if TYPE_CHECKING:`` block imports exactly the lazily exported names, the same
    objects."""
    tree = ast.parse(inspect.getsource(probes))
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    namespace: dict = {}
    exec(compile(ast.Module(body=block.body, type_ignores=[]), "probes/__init__.py", "exec"), namespace)
    imported = {name for name in namespace if name != "__builtins__"}
    assert imported == set(probes.__all__) - {"ProbesError"}
    assert all(namespace[name] is getattr(probes, name) for name in imported)
