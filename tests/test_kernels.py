"""oneDNN's linear computes what ``F.linear`` computes, and only where it is asked to.

Ground truth: ``F.linear`` in float64; whether the oneDNN kernel ran is read off torch's profiler.
"""

import pytest
import torch
import torch.nn.functional as F

from probes.kernels import onednn_available, onednn_linear
from probes.patching import patch_activations
from probes.prompts import PromptSet
from probes.toy import ToyModel, pronoun_prompts

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN float32 linear")


def _ran_onednn(fn) -> bool:
    with torch.profiler.profile() as prof:
        fn()
    return any(event.key == "mkldnn::_linear_pointwise" for event in prof.key_averages())


@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_linear_and_runs_on_onednn(bias: bool) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(4, 7, 576), torch.randn(1536, 576)
    b = torch.randn(1536) if bias else None
    expected = F.linear(x.double(), weight.double(), None if b is None else b.double())
    with onednn_linear():
        got = F.linear(x, weight, b)
        assert _ran_onednn(lambda: F.linear(x, weight, b))
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=1e-5)
    assert not _ran_onednn(lambda: F.linear(x, weight, b))  # outside the block: torch's default kernel


def test_leaves_gradients_and_other_dtypes_to_torch() -> None:
    x, weight = torch.randn(3, 8, requires_grad=True), torch.randn(5, 8)
    with onednn_linear():
        assert not _ran_onednn(lambda: F.linear(x, weight))
        F.linear(x, weight).sum().backward()
        assert not _ran_onednn(lambda: F.linear(x.detach().double(), weight.double()))
    torch.testing.assert_close(x.grad, weight.sum(0).expand(3, 8))
    with onednn_linear(enabled=False):
        assert not _ran_onednn(lambda: F.linear(x.detach(), weight))


def test_patching_agrees_with_and_without_onednn(toy_model: ToyModel) -> None:
    prompts: PromptSet = pronoun_prompts(toy_model, 8, seed=3)
    fast = patch_activations(toy_model.model, prompts, "z", progress=False)
    default = patch_activations(toy_model.model, prompts, "z", progress=False, onednn=False)
    assert _ran_onednn(lambda: patch_activations(toy_model.model, prompts, "z", layers=[1], progress=False))
    assert not _ran_onednn(lambda: patch_activations(toy_model.model, prompts, "z", layers=[1], progress=False, onednn=False))
    torch.testing.assert_close(fast.patched, default.patched, atol=1e-5, rtol=0)
