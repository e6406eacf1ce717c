"""Harvested activations equal TransformerLens's own cache at the gathered rows, and the store behaves on disk."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from probes import tasks, toy
from probes.evidence import activations
from probes.evidence.activations import ALL_POSITIONS, Activations, ProbePoint, harvest
from probes.core.errors import ProbesError
from probes.prompts.promptset import PromptSet

N = 20


@pytest.fixture(scope="module")
def pronouns(toy_model: toy.ToyModel) -> PromptSet:
    return tasks.pronoun_prompts(toy_model, N, seed=4)


@pytest.fixture(scope="module")
def store(toy_model: toy.ToyModel, pronouns: PromptSet, tmp_path_factory: pytest.TempPathFactory) -> Activations:
    out = tmp_path_factory.mktemp("acts") / "pronoun"
    kinds = ["resid_pre", "resid_post", "z", "result"]
    return harvest(toy_model.model, pronouns, out, kinds, at="pronoun", batch_size=6)


def test_rows_equal_the_full_cache_at_the_role(
    toy_model: toy.ToyModel, pronouns: PromptSet, store: Activations
) -> None:
    with torch.no_grad():
        _, cache = toy_model.model.run_with_cache(pronouns.clean)
    idx, pos = torch.arange(N), pronouns.role("pronoun")
    for layer in range(toy_model.model.cfg.n_layers):
        for kind in ("resid_pre", "resid_post", "z"):
            name = f"blocks.{layer}.{'attn.' if kind == 'z' else ''}hook_{kind}"
            assert torch.equal(store.load(name), cache[kind, layer][idx, pos])
        assert torch.equal(store.load(f"blocks.{layer}.attn.hook_z", head=2), cache["z", layer][idx, pos, 2])
    assert store.n_rows == N and store.n_prompts == N and store.at == "pronoun"
    assert store.labels == {k: list(v) for k, v in pronouns.labels.items()}
    assert np.array_equal(store.rows["prompt"], np.arange(N))
    assert np.array_equal(store.rows["token"], pronouns.clean[idx, pos].numpy())


def test_result_equals_transformer_lens_hook_result(pronouns: PromptSet, store: Activations) -> None:
    reference = toy.build().model  # a fresh copy: use_attn_result changes the model's config
    reference.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = reference.run_with_cache(pronouns.clean)
    idx, pos = torch.arange(N), pronouns.role("pronoun")
    for layer in range(reference.cfg.n_layers):
        torch.testing.assert_close(store.load(f"blocks.{layer}.attn.hook_result"), cache["result", layer][idx, pos])


def test_points_cover_every_head_and_residual_hook(toy_model: toy.ToyModel, store: Activations) -> None:
    cfg = toy_model.model.cfg
    points = store.points()
    assert ProbePoint("blocks.1.hook_resid_post", "resid_post", 1, None) in points
    assert ProbePoint("blocks.0.attn.hook_result", "result", 0, 3) in points
    assert len(points) == cfg.n_layers * (2 + 2 * cfg.n_heads)


def test_all_positions_with_uneven_batches(toy_model: toy.ToyModel, tmp_path: Path) -> None:
    prompts = tasks.previous_token(toy_model.model, 9, seed=1, length=5)
    # a shorter prompt (right-padded) checks that rows stop at each prompt's own end
    prompts.roles["end"][3] = 3
    whole = harvest(toy_model.model, prompts, tmp_path / "whole", ["z"], layers=[0], at=ALL_POSITIONS, batch_size=100)
    split = harvest(toy_model.model, prompts, tmp_path / "split", ["z"], layers=[0], at=ALL_POSITIONS, batch_size=4)
    assert len(list((tmp_path / "split").glob("*.safetensors"))) == 3
    lengths = (prompts.end + 1).tolist()
    assert split.n_rows == sum(lengths) == 9 * 6 - 2
    rows = split.rows
    for field in rows:
        assert np.array_equal(rows[field], whole.rows[field])
    # batch size changes only the floating-point summation order
    torch.testing.assert_close(split.load("blocks.0.attn.hook_z"), whole.load("blocks.0.attn.hook_z"))
    expected_prompt = np.repeat(np.arange(9), lengths)
    expected_pos = np.concatenate([np.arange(n) for n in lengths])
    assert np.array_equal(rows["prompt"], expected_prompt) and np.array_equal(rows["position"], expected_pos)
    clean = prompts.clean.numpy()
    assert np.array_equal(rows["token"], clean[expected_prompt, expected_pos])
    has_previous = expected_pos > 0
    assert np.array_equal(rows["previous_token"][has_previous], clean[expected_prompt, expected_pos - 1][has_previous])
    assert (rows["previous_token"][~has_previous] == activations.NO_PREVIOUS).all()


def test_corrupt_side(toy_model: toy.ToyModel, pronouns: PromptSet, tmp_path: Path) -> None:
    store = harvest(toy_model.model, pronouns, tmp_path / "c", ["resid_pre"], layers=[0], at="pronoun", side="corrupt")
    assert np.array_equal(store.rows["token"], pronouns.corrupt[torch.arange(N), pronouns.role("pronoun")].numpy())


def test_only_needed_layers_run(tmp_path: Path, pronouns: PromptSet) -> None:
    model = toy.build().model
    calls = []
    model.add_hook("blocks.1.hook_resid_pre", lambda act, hook: calls.append(hook.name))
    harvest(model, pronouns, tmp_path / "l0", ["z"], layers=[0], at="pronoun")
    assert calls == []  # stopped after layer 0
    harvest(model, pronouns, tmp_path / "l1", ["z"], layers=[1], at="pronoun")
    assert calls == ["blocks.1.hook_resid_pre"]


def test_shards_hold_only_gathered_rows(store: Activations) -> None:
    sizes = []
    for shard in store.manifest["shards"]:
        with safe_open(str(store.directory / shard["file"]), framework="pt") as f:
            sizes.append({f.get_slice(k).get_shape()[0] for k in f.keys()})  # noqa: SIM118 (safe_open is not iterable)
    assert sizes == [{6}, {6}, {6}, {2}]


def test_a_failed_harvest_leaves_nothing(
    toy_model: toy.ToyModel, pronouns: PromptSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save, written = activations.save_file, []

    def failing_save(tensors, path):
        if written:
            raise OSError("disk full")
        written.append(path)
        real_save(tensors, path)

    monkeypatch.setattr(activations, "save_file", failing_save)
    with pytest.raises(OSError):
        harvest(toy_model.model, pronouns, tmp_path / "acts", ["z"], at="pronoun", batch_size=4)
    assert written and list(tmp_path.iterdir()) == []


def test_overwrite_rules(toy_model: toy.ToyModel, pronouns: PromptSet, tmp_path: Path) -> None:
    model, out = toy_model.model, tmp_path / "acts"
    harvest(model, pronouns, out, ["z"], layers=[0], at="pronoun")
    with pytest.raises(ProbesError, match="overwrite=True"):
        harvest(model, pronouns, out, ["z"], layers=[0], at="pronoun")
    again = harvest(model, pronouns, out, ["resid_post"], layers=[1], at="end", overwrite=True)
    assert again.hooks == ["blocks.1.hook_resid_post"] and Activations(out).at == "end"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ProbesError, match="not an activations directory"):
        harvest(model, pronouns, other, ["z"], layers=[0], at="pronoun", overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kinds=["attn"]), "unknown hook kind 'attn'"),
        (dict(kinds=[]), "no hook kinds"),
        (dict(layers=[2]), "within 0..1"),
        (dict(at="subject"), "unknown role 'subject'"),
        (dict(side="both"), "side must be"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_requests(toy_model: toy.ToyModel, pronouns: PromptSet, tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(kinds=["z"], layers=[0], at="pronoun") | kwargs
    with pytest.raises(ProbesError, match=message):
        harvest(toy_model.model, pronouns, tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_reader_errors(store: Activations, tmp_path: Path) -> None:
    with pytest.raises(ProbesError, match="no hook 'blocks.5.attn.hook_z'"):
        store.load("blocks.5.attn.hook_z")
    with pytest.raises(ProbesError, match="no heads"):
        store.load("blocks.0.hook_resid_post", head=0)
    with pytest.raises(ProbesError, match="heads 0..3"):
        store.load("blocks.0.attn.hook_z", head=4)
    with pytest.raises(ProbesError, match="not an activations directory"):
        Activations(tmp_path)
