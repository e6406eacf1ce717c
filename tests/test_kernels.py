"""oneDNN's linear computes what ``F.linear`` computes, and only where it is asked to and fits.

Ground truth: ``F.linear`` in float64 (or torch's own kernel); whether oneDNN ran is recorded by a spy on the
kit's call into it.
"""

import threading

import pytest
import torch
import torch.nn.functional as F

from probes.models import kernels
from probes.models.kernels import onednn_available, onednn_linear
from probes.evidence.patching import patch_activations
from probes.models.toy import ToyModel
from probes.prompts.tasks import pronoun_prompts

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN float32 linear")


@pytest.fixture
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of every call routed to oneDNN."""
    calls: list[int] = []
    real = kernels.onednn_product

    def spy(x, weight, bias):
        calls.append(threading.get_ident())
        return real(x, weight, bias)

    monkeypatch.setattr(kernels, "onednn_product", spy)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_linear_and_runs_on_onednn(bias: bool, onednn_calls: list[int]) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(4, 7, 576), torch.randn(1536, 576)
    b = torch.randn(1536) if bias else None
    expected = F.linear(x.double(), weight.double(), None if b is None else b.double())
    with onednn_linear():
        got = F.linear(x, weight, b)
        by_keyword = F.linear(input=x, weight=weight, bias=b)
    assert len(onednn_calls) == 2
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(by_keyword, got, atol=0, rtol=0)
    F.linear(x, weight, b)
    assert len(onednn_calls) == 2  # outside the block: torch's default kernel


def test_odd_biases_are_handled_or_left_to_torch(onednn_calls: list[int]) -> None:
    x, weight = torch.randn(3, 8), torch.randn(6, 8)
    biases = {"strided": torch.randn(12)[::2], "expanded": torch.randn(1).expand(6), "scalar": torch.tensor(0.5)}
    with onednn_linear():
        for name, bias in biases.items():
            torch.testing.assert_close(F.linear(x, weight, bias), F.linear(x.double(), weight.double(), bias.double()).float(),
                                       atol=1e-5, rtol=1e-5, msg=name)
    assert len(onednn_calls) == 2  # strided and expanded ones go to oneDNN contiguous; a 0-d bias stays with torch


def test_leaves_gradients_and_other_dtypes_to_torch(onednn_calls: list[int]) -> None:
    x, weight = torch.randn(3, 8, requires_grad=True), torch.randn(5, 8)
    bias = torch.zeros(5, requires_grad=True)
    with onednn_linear():
        F.linear(x, weight).sum().backward()
        F.linear(x.detach(), weight, bias).sum().backward()
        F.linear(x.detach().double(), weight.double())
        with torch.no_grad():
            F.linear(x, weight)  # no gradient wanted: oneDNN's
    assert len(onednn_calls) == 1
    torch.testing.assert_close(x.grad, weight.sum(0).expand(3, 8))
    torch.testing.assert_close(bias.grad, torch.full((5,), 3.0))
    with onednn_linear(enabled=False), torch.no_grad():
        F.linear(x, weight)
    assert len(onednn_calls) == 1


def test_patching_runs_on_onednn_in_its_workers(toy_model: ToyModel, onednn_calls: list[int]) -> None:
    prompts = pronoun_prompts(toy_model, 8, seed=3)
    default = patch_activations(toy_model.model, prompts, "z", progress=False, onednn=False, workers=2)
    assert not onednn_calls
    fast = patch_activations(toy_model.model, prompts, "z", progress=False, workers=2)
    assert set(onednn_calls) - {threading.get_ident()}  # the patched runs, in worker threads
    torch.testing.assert_close(fast.patched, default.patched, atol=1e-5, rtol=0)
