"""Path patching equals a direct two-pass implementation with plain TransformerLens hooks, and finds the toy's
planted composition.

Two passes (Wang et al. 2022): (1) the base run with the sender's output taken from the other run and every
other head's output and every MLP's output frozen at the base run, recording the receiver's input; (2) the base
run with only the receiver's input replaced by that recording; the metric read from full logits. Ground truth
from construction: the toy's induction head (1.2) reads the previous-token head's (0.2) output through its keys.
On models that normalise each block's attention sum again (Gemma: ``ln1_post``), pass (1) recomputes that norm
over the sender's patched ``z`` and the other heads' frozen ones: the path is defined by the mixed sum.
"""

import copy
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities import get_act_name

from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.metric import logit_diff_from_resid, resid_at
from probes.evidence.patching import LOGITS, patch_paths
from probes.models.architecture import kv_head_of
from probes.models.writes import attention_sum, residual_change
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


# --- models that normalise each block's outputs again (Gemma: ln1_post, ln2_post) ------------------------------


def post_norm_model(architecture: str | None = None, both: bool = True) -> HookedTransformer:
    """Random weights, Gemma-3's block in small: RMS norms before and after attention and MLP (``both``), grouped
    keys/values, query/key norms, a gated MLP; or OLMo 2's after-only norms (``architecture``), or neither.
    At random init each layer's sum of heads is small and its post-norm rescales it to unit size, so a head's
    ``Δz @ W_O`` is far from what reaches the residual stream."""
    cfg = HookedTransformerConfig(
        n_layers=3, n_heads=4, n_key_value_heads=2, d_model=32, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32,
        act_fn="gelu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        use_qk_norm=architecture is None, use_normalization_before_and_after=both, original_architecture=architecture,
        seed=0, device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg).eval()


def random_pairs(n: int = 4, length: int = 10) -> PromptSet:
    generator = torch.Generator().manual_seed(1)
    clean, corrupt = (torch.randint(1, 50, (n, length), generator=generator) for _ in range(2))
    answer, foil = (torch.randint(0, 50, (n,), generator=generator) for _ in range(2))
    return PromptSet.from_tokens(clean, corrupt, answer, foil, {"end": torch.full((n,), length - 1)})


@pytest.mark.parametrize(
    ("architecture", "both"), [(None, True), ("Olmo2ForCausalLM", False), (None, False)],
    ids=["before-and-after", "after-only", "before-only"],
)
def test_residual_change_is_what_the_block_adds(architecture: str | None, both: bool) -> None:
    """A change to one head's ``z`` (one run) or to the MLP's output (another) reaches the residual stream as
    ``residual_change`` says, read at ``hook_attn_out`` / ``hook_mlp_out`` of a hooked run; two changes batched."""
    model = post_norm_model(architecture, both)
    tokens = random_pairs().clean
    generator = torch.Generator().manual_seed(2)
    z_change = torch.randn(2, *tokens.shape, model.cfg.d_head, generator=generator)
    mlp_change = torch.randn(2, *tokens.shape, model.cfg.d_model, generator=generator)
    mlp_outputs = []
    hooked = model.blocks[1].mlp.register_forward_hook(lambda module, args, output: mlp_outputs.append(output))
    _, base = model.run_with_cache(tokens)
    hooked.remove()
    expected_attn, expected_mlp = [], []
    for v in range(2):
        def add_z(activation, hook):
            activation[:, :, 3] += z_change[v]
            return activation

        with model.hooks(fwd_hooks=[(get_act_name("z", 1), add_z)]):
            _, cache = model.run_with_cache(tokens)
        expected_attn.append(cache[get_act_name("attn_out", 1)] - base[get_act_name("attn_out", 1)])
        hooked = model.blocks[1].mlp.register_forward_hook(lambda module, args, output: output + mlp_change[v])
        try:
            _, cache = model.run_with_cache(tokens)
        finally:
            hooked.remove()
        expected_mlp.append(cache[get_act_name("mlp_out", 1)] - base[get_act_name("mlp_out", 1)])
    attn_sum = attention_sum(model, 1, base[get_act_name("z", 1)])
    attn = residual_change(model, 1, "attn", attn_sum, z_change @ model.blocks[1].attn.W_O[3])
    mlp = residual_change(model, 1, "mlp", mlp_outputs[0], mlp_change)
    torch.testing.assert_close(attn, torch.stack(expected_attn), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlp, torch.stack(expected_mlp), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_post_norm_paths_equal_two_passes(direction: str) -> None:
    """On a model with post-norms, every receiver kind equals the hooked two passes, where adding ``Δz @ W_O`` to
    the residual stream (the definition before post-norms were handled) is off by a large share of the effect."""
    model, prompts = post_norm_model(), random_pairs()
    senders, receivers = [(0, 1), (1, 2)], [(2, 1, "q"), (2, 1, "k"), (2, 3, "v"), LOGITS]
    result = patch_paths(model, prompts, senders, receivers, direction, progress=False)
    for s, sender in enumerate(senders):
        for r, receiver in enumerate(receivers):
            expected = two_pass(model, prompts, sender, receiver, direction)
            torch.testing.assert_close(result.patched[:, s, r], expected, atol=1e-5, rtol=1e-5)
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    final, base = model.run_with_cache(target, stop_at_layer=model.cfg.n_layers)
    _, other = model.run_with_cache(source)
    name = get_act_name("z", 0)
    unnormalised = final + (other[name][:, :, 1] - base[name][:, :, 1]) @ model.blocks[0].attn.W_O[1]
    naive = logit_diff_from_resid(model, resid_at(unnormalised, prompts.end), prompts.answer, prompts.foil)
    error = (naive - result.patched[:, 0, -1]).abs().max()
    assert error > 0.25 * (result.patched[:, 0, -1] - result.baseline).abs().max() and error > 0.05


@pytest.mark.real
def test_gemma_paths_equal_two_passes(gemma: HookedTransformer) -> None:
    """Gemma-3 normalises each block's attention sum again: every receiver kind equals the hooked two passes."""
    prompts = tasks.ioi(gemma, 3, templates=[0, 1, 2])
    senders = [(2, 3), (9, 1)]
    receivers = [(12, 0, "q"), (12, 2, "k"), (13, 1, "v"), LOGITS]
    result = patch_paths(gemma, prompts, senders, receivers, progress=False)
    for s, sender in enumerate(senders):
        for r, receiver in enumerate(receivers):
            expected = two_pass(gemma, prompts, sender, receiver)
            torch.testing.assert_close(result.patched[:, s, r], expected, atol=1e-4, rtol=0)
