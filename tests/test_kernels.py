"""oneDNN's linear computes what ``F.linear`` computes, only where it is asked to and fits; which kernel runs is
decided by measurement (a rule tested on synthetic timings), cached per machine, and overridable.

Ground truth: ``F.linear`` in float64 (or torch's own kernel); whether oneDNN ran is recorded by a spy on the
kit's call into it; the shapes a forward pass runs are recorded from its ``F.linear`` calls.
"""

import json
import math
import random
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformer_lens import HookedTransformer, HookedTransformerConfig

from probes.models import kernels
from probes.models.kernels import (
    KernelChoice, choice_path, choose_kernel, decide, linear_shapes, machine_key, onednn_available, onednn_linear,
    time_kernels, use_onednn,
)
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
    fast = patch_activations(toy_model.model, prompts, "z", progress=False, onednn=True, workers=2)
    assert set(onednn_calls) - {threading.get_ident()}  # the patched runs, in worker threads
    torch.testing.assert_close(fast.patched, default.patched, atol=1e-5, rtol=0)


def rounds(speedup: float, n: int = 10, jitter: float = 0.0, drift: float = 0.0, seed: int = 0) -> dict[str, list[float]]:
    """Synthetic paired timings: oneDNN ``speedup`` times faster than torch's default, each round's speed scaled by
    a slow drift shared by both (up to ``drift``) and each timing by its own log-normal ``jitter``."""
    rng = random.Random(seed)
    phase = rng.uniform(0, 2 * math.pi)
    times: dict[str, list[float]] = {"torch": [], "onednn": []}
    for i in range(n):
        speed = 1 + drift * math.sin(phase + i / 3)
        times["torch"].append(speed * math.exp(rng.gauss(0, jitter)))
        times["onednn"].append(speed / speedup * math.exp(rng.gauss(0, jitter)))
    return times


def test_a_small_win_keeps_the_default_and_a_clear_one_switches() -> None:
    assert decide(rounds(1.05)) == "torch"
    assert decide(rounds(1.20)) == "onednn"
    assert decide(rounds(0.80)) == "torch"
    mixed = rounds(1.20)
    mixed["onednn"][:3] = [3.0] * 3  # faster in the median, slower in 3 of 10 rounds: not a consistent win
    assert decide(mixed) == "torch"


def test_noise_and_drift_do_not_flip_the_choice() -> None:
    """Under 15% drift, equal kernels with 5% jitter per timing and a 5% win with 3% jitter never switch; a 20%
    win with 2% jitter always does (with 5% jitter it switches in ~90% of measurements: hence the cache)."""
    assert {decide(rounds(1.0, jitter=0.05, drift=0.15, seed=s)) for s in range(300)} == {"torch"}
    assert {decide(rounds(1.05, jitter=0.03, drift=0.15, seed=s)) for s in range(300)} == {"torch"}
    assert {decide(rounds(1.20, jitter=0.02, drift=0.15, seed=s)) for s in range(300)} == {"onednn"}


def test_time_kernels_interleaves_paired_rounds() -> None:
    order: list[str] = []

    def kernel(name):
        def run(x, weight, bias):
            order.append(name)
            return F.linear(x, weight, bias)
        return run

    times = time_kernels([(8, 4)], {"torch": kernel("torch"), "onednn": kernel("onednn")}, budget_s=0)
    assert len(times["torch"]) == len(times["onednn"]) == kernels.MIN_ROUNDS
    assert all(t > 0 for t in times["torch"] + times["onednn"])
    assert order[2:6] == ["torch", "onednn", "onednn", "torch"]  # after the warm-up: the order reverses each round


def test_linear_shapes_are_those_a_forward_pass_runs() -> None:
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=24,
                                  d_vocab=11, n_ctx=8, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                  positional_embedding_type="rotary")
    model = HookedTransformer(cfg)
    seen: list[tuple[int, int]] = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.linear:
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                seen.append((weight.shape[1], weight.shape[0]))
            return func(*args, **(kwargs or {}))

    with Record(), torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))
    assert sorted(seen) == sorted([*linear_shapes(cfg), (16, 11)])  # the unembedding: never full in a sweep
    assert linear_shapes(cfg.to_dict()) == linear_shapes(cfg)


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[int]:
    """An empty kit cache, and timings that give oneDNN a clear win (one entry per measurement)."""
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path))
    calls: list[int] = []

    def fake(shapes, candidates, budget_s=kernels.BUDGET_S):
        calls.append(len(shapes))
        return {"torch": [1.0] * 8, "onednn": [0.8] * 8}

    monkeypatch.setattr(kernels, "time_kernels", fake)
    return calls


SHAPES = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]


def test_the_choice_is_measured_once_and_cached_per_machine_and_shapes(measured: list[int]) -> None:
    choice = choose_kernel(SHAPES)
    assert choice.kernel == "onednn" and choice.gflops["onednn"] == pytest.approx(choice.gflops["torch"] / 0.8)
    key = machine_key(SHAPES)
    assert (key["cpu"], key["torch"], key["threads"]) == (
        kernels.cpu_model(), torch.__version__, torch.get_num_threads())
    record = json.loads(choice_path(key).read_text())
    assert record["key"] == key and record["kernel"] == "onednn"
    kernels._measured.cache_clear()  # a new process: read back from the file, not measured again
    assert choose_kernel(SHAPES) == choice and measured == [7]
    assert choice_path({**key, "torch": "2.99.0"}) != choice_path(key)
    assert choice_path({**key, "cpu": "another CPU"}) != choice_path(key)
    choose_kernel(SHAPES[4:])  # other shapes (the MLP's): measured for themselves
    assert measured == [7, 3]
    choice_path(key).write_text("{not json")  # a damaged record is measured again, not trusted
    kernels._measured.cache_clear()
    assert choose_kernel(SHAPES).kernel == "onednn" and measured == [7, 3, 7]


def test_an_unwritable_cache_still_gives_the_measured_choice(measured: list[int], monkeypatch) -> None:
    def refuse(path):
        raise OSError("read-only file system")

    monkeypatch.setattr(kernels, "atomic_path", refuse)
    assert choose_kernel(SHAPES).kernel == "onednn" and measured == [7]
    assert not choice_path(machine_key(SHAPES)).exists()


def test_small_shapes_keep_the_default_unmeasured(measured: list[int]) -> None:
    choice = choose_kernel([(32, 32), (32, 128)])
    assert choice.kernel == "torch" and not choice.gflops and not measured


def test_onednn_overrides_the_measured_choice(toy_model: ToyModel, onednn_calls: list[int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = pronoun_prompts(toy_model, 4, seed=3)
    for measured_kernel in ("torch", "onednn"):
        monkeypatch.setattr(kernels, "choose_kernel", lambda shapes: KernelChoice(measured_kernel, "test"))
        assert use_onednn(toy_model.model) == (measured_kernel == "onednn")
        assert use_onednn(toy_model.model, True) and not use_onednn(toy_model.model, False)
        for override in (None, True, False):
            before = len(onednn_calls)
            patch_activations(toy_model.model, prompts, "z", progress=False, onednn=override, workers=1)
            ran_onednn = len(onednn_calls) > before
            assert ran_onednn == (measured_kernel == "onednn" if override is None else override)
