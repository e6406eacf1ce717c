"""Activation patching equals TransformerLens's own patching functions and finds the toy's planted heads.

Ground truth: the toy's planted heads (the antecedent head carries the answer through where it attends; the
decoy attends the same way with a zero OV circuit), and ``transformer_lens.patching`` run on the same prompts.
"""

import threading
from functools import partial

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tl_patching
from safetensors import safe_open
from transformer_lens import HookedTransformer

from probes.evidence.patching import activations
from probes import tasks
from probes.core.errors import ProbesError
from probes.evidence.patching import SITES, PatchingResult, patch_activations, patch_heads, patch_resid
from probes.evidence.patching import checkpoint, engine, schedule
from probes.models.architecture import kv_groups
from probes.models.kernels import onednn_linear
from probes.models.toy import FILLERS, ToyModel, build
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks import pronoun_prompts, repeated_prompts

N = 8
# A memory budget below one patched run: every batch is one run and every layer a window of its own, so a sweep
# can stop between layers (and has more (window, bucket) jobs than workers).
TINY_MB = 0.001
TL_SWEEPS = {
    "z": tl_patching.get_act_patch_attn_head_out_all_pos,
    "pattern": tl_patching.get_act_patch_attn_head_pattern_all_pos,
    "q": tl_patching.get_act_patch_attn_head_q_all_pos,
    "k": tl_patching.get_act_patch_attn_head_k_all_pos,
    "v": tl_patching.get_act_patch_attn_head_v_all_pos,
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "attn_out": tl_patching.get_act_patch_attn_out,
}


@pytest.fixture(scope="module")
def pronouns(toy_model: ToyModel) -> PromptSet:
    return pronoun_prompts(toy_model, N, seed=1)


@pytest.fixture(scope="module")
def ragged(toy_model: ToyModel) -> PromptSet:
    """Prompts of two lengths (right-padded), some differing from their corrupt side only at the end and some
    from position 1 on: every path of the sweep (read-off groups, shared prefixes, padding) is exercised."""
    flip = pronoun_prompts(toy_model, 3, seed=2)
    swap = pronoun_prompts(toy_model, 2, seed=3)
    swapped = swap.corrupt.clone()
    swapped[:, [1, 3]] = swap.corrupt[:, [3, 1]]  # names swapped too: the pair differs from position 1
    repeats = repeated_prompts(toy_model, 3, seed=4)
    n_pos = repeats.n_pos

    def pad(tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens, torch.full((len(tokens), n_pos - tokens.shape[1]), FILLERS[0])], dim=1)

    return PromptSet.from_tokens(
        torch.cat([pad(flip.clean), pad(swap.clean), repeats.clean]),
        torch.cat([pad(flip.corrupt), pad(swapped), repeats.corrupt]),
        torch.cat([flip.answer, swap.answer, repeats.answer]),
        torch.cat([flip.foil, swap.foil, repeats.foil]),
        {"end": torch.cat([flip.end, swap.end, repeats.end])},
    )


def _mean_logit_diff(logits: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
    """TransformerLens-style metric on full logits: the batch mean of the logit difference at each end."""
    idx = torch.arange(len(prompts))
    at_end = logits[idx, prompts.end]
    return (at_end[idx, prompts.answer] - at_end[idx, prompts.foil]).mean()


def _transformer_lens_sweep(model: HookedTransformer, prompts: PromptSet, component: str, direction: str):
    target, source = (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source)
    return TL_SWEEPS[component](model, target, source_cache, partial(_mean_logit_diff, prompts=prompts))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("component", list(TL_SWEEPS))
@pytest.mark.parametrize("layers", [None, [0]], ids=["all-layers", "first-layer"])
def test_equals_transformer_lens_on_the_toy(
    toy_model: ToyModel, ragged: PromptSet, component: str, direction: str, layers: list[int] | None
) -> None:
    """All layers: some runs join at the last block, which then runs in full. Only the first layer: every run
    reaches the last block already patched, which then computes the read-off position alone."""
    model = toy_model.model
    expected = _transformer_lens_sweep(model, ragged, component, direction)
    result = patch_activations(model, ragged, component, direction, layers=layers, progress=False)
    got = result.patched.mean(0)
    assert got.shape == expected.shape  # [layer, head] or [layer, pos]
    swept = slice(None) if layers is None else layers
    torch.testing.assert_close(got[swept], expected[swept], atol=1e-4, rtol=0)
    baseline = ragged.corrupt if direction == "denoising" else ragged.clean
    with torch.no_grad():
        torch.testing.assert_close(result.baseline.mean(), _mean_logit_diff(model(baseline), ragged), atol=1e-4, rtol=0)


def test_small_memory_budget_gives_the_same_numbers(toy_model: ToyModel, ragged: PromptSet) -> None:
    roomy = patch_activations(toy_model.model, ragged, "z", progress=False)
    tight = patch_activations(toy_model.model, ragged, "z", memory_mb=0.001, progress=False)  # one run per batch
    torch.testing.assert_close(tight.patched, roomy.patched, atol=1e-5, rtol=0)


def test_antecedent_head_restores_the_answer_and_the_decoy_changes_nothing(toy_model: ToyModel, pronouns: PromptSet) -> None:
    heads = toy_model.heads
    result = patch_activations(toy_model.model, pronouns, "z", progress=False)
    strongest = divmod(int(result.effect.mean(0).abs().argmax()), toy_model.model.cfg.n_heads)
    assert strongest == heads.antecedent
    assert (result.effect[:, *heads.antecedent] > 0).all()
    assert ((result.normalised[:, *heads.antecedent] - 1).abs() < 0.05).all()
    assert (result.effect[:, *heads.decoy].abs() < 1e-6).all()
    assert (result.clean > 0).all() and (result.corrupt < 0).all()
    torch.testing.assert_close(patch_heads(toy_model.model, pronouns, progress=False), result.effect)


def test_the_antecedent_head_matters_by_where_it_looks(toy_model: ToyModel, pronouns: PromptSet) -> None:
    """The corrupt pronoun moves the antecedent head's attention; the names it reads are the same on both sides."""
    heads = toy_model.heads
    pattern = patch_activations(toy_model.model, pronouns, "pattern", progress=False)
    value = patch_activations(toy_model.model, pronouns, "v", progress=False)
    assert ((pattern.normalised[:, *heads.antecedent] - 1).abs() < 0.05).all()
    assert (value.normalised[:, *heads.antecedent].abs() < 0.05).all()
    assert (value.effect[:, *heads.decoy].abs() < 1e-6).all()  # zero OV: no value of it can matter


def test_noising_breaks_the_answer_where_denoising_restores_it(toy_model: ToyModel, pronouns: PromptSet) -> None:
    heads = toy_model.heads
    noising = patch_activations(toy_model.model, pronouns, "z", "noising", progress=False)
    assert (noising.effect[:, *heads.antecedent] < 0).all()
    assert (noising.normalised[:, *heads.antecedent].abs() < 0.05).all()  # down to the corrupt metric
    assert (noising.effect[:, *heads.decoy].abs() < 1e-6).all()
    torch.testing.assert_close(noising.baseline, noising.clean)


def test_residual_patching_by_position(toy_model: ToyModel, pronouns: PromptSet) -> None:
    """Only the pronoun differs between the pair, so only its position can carry the answer, at every layer."""
    result = patch_activations(toy_model.model, pronouns, "resid_pre", progress=False)
    assert result.index == "pos" and result.patched.shape == (N, 2, pronouns.n_pos)
    end = int(pronouns.end[0])
    assert ((result.normalised[:, :, end] - 1).abs() < 0.05).all()
    assert (result.effect[:, :, :end].abs() < 1e-6).all()
    torch.testing.assert_close(patch_resid(toy_model.model, pronouns, progress=False), result.effect)


def test_layers_and_cells_restrict_the_sweep(toy_model: ToyModel, pronouns: PromptSet) -> None:
    full = patch_activations(toy_model.model, pronouns, "z", progress=False)
    one_layer = patch_activations(toy_model.model, pronouns, "z", layers=[1], progress=False)
    torch.testing.assert_close(one_layer.patched[:, 1], full.patched[:, 1], atol=1e-5, rtol=0)
    assert one_layer.patched[:, 0].isnan().all()
    cells = patch_activations(toy_model.model, pronouns, "z", cells=[(1, 1), (0, 2)], progress=False)
    assert (~cells.patched.isnan()).sum() == 2 * N
    torch.testing.assert_close(cells.patched[:, 1, 1], full.patched[:, 1, 1], atol=1e-5, rtol=0)
    frame = one_layer.to_frame()
    assert len(frame) == N * 4 and set(frame["layer"]) == {1}
    assert list(frame.columns[:3]) == ["prompt", "layer", "head"]
    row = frame[(frame["prompt"] == 2) & (frame["head"] == 1)].iloc[0]
    assert row["effect"] == pytest.approx(float(full.effect[2, 1, 1]), abs=1e-5)


def test_kv_groups_without_grouped_query_attention(toy_model: ToyModel, pronouns: PromptSet) -> None:
    assert torch.equal(kv_groups(toy_model.model), torch.arange(4)[:, None])
    result = patch_activations(toy_model.model, pronouns, "k", layers=[1], progress=False)
    assert result.index == "head" and torch.equal(result.kv_groups, kv_groups(toy_model.model))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"component": "mlp"}, "unknown component"),
        ({"direction": "sideways"}, "unknown direction"),
        ({"layers": [2]}, "layer 2 does not exist"),
        ({"cells": [(0, 4)]}, "index 4"),
        ({"layers": [0], "cells": [(0, 0)]}, "either layers or cells"),
        ({"layers": []}, "nothing to patch"),
        ({"component": "mlp_out"}, "attention-only"),
        ({"memory_mb": 0}, "memory_mb"),
    ],
)
def test_bad_input_raises_one_clear_error(toy_model: ToyModel, pronouns: PromptSet, kwargs: dict, message: str) -> None:
    with pytest.raises(ProbesError, match=message):
        patch_activations(toy_model.model, pronouns, progress=False, **kwargs)


def test_wrong_component_or_no_prompts(toy_model: ToyModel, pronouns: PromptSet) -> None:
    with pytest.raises(ProbesError, match="patch_heads"):
        patch_heads(toy_model.model, pronouns, "resid_pre")
    with pytest.raises(ProbesError, match="patch_resid"):
        patch_resid(toy_model.model, pronouns, "z")
    with pytest.raises(ProbesError, match="empty"):
        patch_heads(toy_model.model, pronouns.subset([]))
    with pytest.raises(ProbesError, match="workers"):
        patch_heads(toy_model.model, pronouns, workers=0)


def test_interrupted_sweep_resumes_where_it_stopped(
    toy_model: ToyModel, pronouns: PromptSet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker, so that which layers ran before the kill is deterministic."""
    model = toy_model.model
    uninterrupted = patch_activations(model, pronouns, "z", progress=False)

    def sweep(model: HookedTransformer, prompts: PromptSet) -> PatchingResult:
        return patch_activations(
            model, prompts, "z", checkpoint_dir=tmp_path, progress=False, workers=1, memory_mb=TINY_MB
        )

    # The one seam: patch_activations calls engine.patch_window through the name it imported into the package, so
    # that is the name replaced.
    real_window = engine.patch_window
    computed: list[int] = []

    def killed_at_layer_1(model, bucket, site, window, *args):
        if window == [1]:
            raise KeyboardInterrupt
        computed.extend(window)
        return real_window(model, bucket, site, window, *args)

    monkeypatch.setattr(activations, "patch_window", killed_at_layer_1)
    with pytest.raises(KeyboardInterrupt):
        sweep(model, pronouns)
    (sweep_dir,) = tmp_path.iterdir()
    assert [p.name for p in sweep_dir.iterdir()] == ["layer000.safetensors"]  # no half-written file
    with safe_open(str(sweep_dir / "layer000.safetensors"), framework="pt") as f:
        assert f.get_tensor("patched").shape == (N, 4)

    def counting(model, bucket, site, window, *args):
        computed.extend(window)
        return real_window(model, bucket, site, window, *args)

    monkeypatch.setattr(activations, "patch_window", counting)
    computed.clear()
    resumed = sweep(model, pronouns)
    assert computed == [1]  # layer 0 came from the checkpoint
    torch.testing.assert_close(resumed.patched, uninterrupted.patched, atol=1e-6, rtol=0)

    computed.clear()
    sweep(model, pronouns.subset(slice(0, 4)))
    assert computed == [0, 1]  # other prompts, other fingerprint: nothing reused
    computed.clear()
    sweep(build(seed=5).model, pronouns)
    assert computed == [0, 1]  # other weights: nothing reused
    (sweep_dir / "layer001.safetensors").write_bytes(b"truncated")
    computed.clear()
    again = sweep(model, pronouns)
    assert computed == [1]  # an unreadable layer is recomputed
    torch.testing.assert_close(again.patched, uninterrupted.patched, atol=1e-6, rtol=0)


@pytest.mark.parametrize("memory_mb", [1024.0, TINY_MB], ids=["one-window", "window-per-layer"])
def test_parallel_workers_give_the_same_numbers(toy_model: ToyModel, ragged: PromptSet, memory_mb: float) -> None:
    """The ragged set has more buckets than the two workers, and a tiny budget gives a window per layer too:
    more (window, bucket) jobs than workers either way."""
    workers = 2
    assert len(engine.bucket_keys(ragged)) > workers
    for component in ("z", "pattern", "resid_pre"):
        sweep = partial(patch_activations, toy_model.model, ragged, component, progress=False, memory_mb=memory_mb)
        torch.testing.assert_close(sweep(workers=workers).patched, sweep(workers=1).patched, atol=1e-6, rtol=0)


def test_a_patch_hook_acts_only_in_the_thread_that_made_it() -> None:
    """Workers run the same hook point at once: each must see only its own patch."""
    slot = engine.Slot(SITES["z"], layer=torch.tensor([0]), at=torch.tensor([1]))
    hook = engine.patch_hook(slot, torch.tensor([0]), torch.ones(1, 3, 4))
    elsewhere = torch.zeros(1, 3, 2, 4)  # [row, pos, head, d_head]
    worker = threading.Thread(target=hook, args=(None, (), elsewhere))
    worker.start()
    worker.join()
    assert not elsewhere.any()
    here = hook(None, (), torch.zeros(1, 3, 2, 4))
    assert (here[:, :, 1] == 1).all() and not here[:, :, 0].any()


def test_default_workers_follow_torch_threads_except_where_thread_state_would_be_lost(toy_model: ToyModel) -> None:
    model = toy_model.model
    assert schedule.n_workers(model, None) == min(torch.get_num_threads(), schedule.MAX_AUTO_WORKERS)
    assert schedule.n_workers(model, 3) == 3
    with torch.autocast("cpu"):
        assert schedule.n_workers(model, None) == 1  # autocast would not reach worker threads
    with onednn_linear():
        assert schedule.n_workers(model, None) == 1  # nor would a torch function mode


def test_an_error_of_the_caller_stops_the_workers(
    toy_model: ToyModel, pronouns: PromptSet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()

    def disk_full(self, layer, values):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.Checkpoint, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        patch_activations(
            toy_model.model, pronouns, "z", checkpoint_dir=tmp_path, progress=False, workers=2, memory_mb=TINY_MB
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("probes-patching")]
    assert torch.get_num_threads() == threads


def test_a_failing_worker_stops_the_sweep_and_keeps_finished_layers(
    toy_model: ToyModel, pronouns: PromptSet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = toy_model.model
    uninterrupted = patch_activations(model, pronouns, "z", progress=False)
    real_window = engine.patch_window

    def failing_at_layer_1(model, bucket, site, window, *args):
        if window == [1]:
            raise MemoryError("out of memory in a worker")
        return real_window(model, bucket, site, window, *args)

    monkeypatch.setattr(activations, "patch_window", failing_at_layer_1)
    # Jobs start in submission order, so layer 0's jobs are running or done when layer 1's fails; the toy has
    # no layer 2 whose job could slip in before the cancel.
    with pytest.raises(MemoryError, match="in a worker"):
        patch_activations(model, pronouns, "z", checkpoint_dir=tmp_path, progress=False, workers=2, memory_mb=TINY_MB)
    (sweep_dir,) = tmp_path.iterdir()
    assert [p.name for p in sweep_dir.iterdir()] == ["layer000.safetensors"]  # finished by the other worker
    monkeypatch.setattr(activations, "patch_window", real_window)
    resumed = patch_activations(model, pronouns, "z", checkpoint_dir=tmp_path, progress=False, workers=2)
    torch.testing.assert_close(resumed.patched, uninterrupted.patched, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Real models: the same numbers as TransformerLens on IOI (three prompts and a few heads, to stay quick)


def _transformer_lens_cells(model, prompts, component, cells) -> torch.Tensor:
    """TransformerLens's generic patching loop, restricted to ``cells`` [(layer, head), ...]."""
    setter = tl_patching.layer_head_vector_patch_setter
    index = pd.DataFrame(cells, columns=["layer", "head"])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(prompts.clean)
    metric = partial(_mean_logit_diff, prompts=prompts)
    return tl_patching.generic_activation_patch(model, prompts.corrupt, clean_cache, metric, setter, component, index_df=index)


@pytest.mark.real
@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_head_outputs_equal_transformer_lens_on_real_models(name: str, request: pytest.FixtureRequest) -> None:
    model: HookedTransformer = request.getfixturevalue(name)
    prompts = tasks.ioi(model, 3, templates=[0, 1, 2])
    last_layer, last_head = model.cfg.n_layers - 1, model.cfg.n_heads - 1
    upstream = [(0, 0), (0, last_head), (last_layer // 2, 1)]  # the last block runs at the read-off position only
    last = [(last_layer, 0), (last_layer, last_head)]  # runs joining at the last block run it in full
    expected = _transformer_lens_cells(model, prompts, "z", upstream + last)
    got = []
    for cells in (upstream, last):
        patched = patch_activations(model, prompts, "z", cells=cells, progress=False).patched
        got += [patched[:, layer, head].mean() for layer, head in cells]
    torch.testing.assert_close(torch.stack(got), expected, atol=1e-4, rtol=0)


@pytest.mark.real
def test_grouped_keys_equal_transformer_lens_on_smollm2(smollm2: HookedTransformer) -> None:
    prompts = tasks.ioi(smollm2, 3, templates=[0, 1, 2])
    n_kv = smollm2.cfg.n_key_value_heads
    expected = _transformer_lens_cells(smollm2, prompts, "k", [(2, h) for h in range(n_kv)])
    got = patch_activations(smollm2, prompts, "k", layers=[2], progress=False)
    assert got.index == "kv_head" and got.patched.shape == (3, smollm2.cfg.n_layers, n_kv)
    torch.testing.assert_close(got.patched[:, 2].mean(0), expected, atol=1e-4, rtol=0)
    assert got.kv_groups.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
