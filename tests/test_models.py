"""Loading real models: logits equal the plain HF model's, the cache is checked and rebuilt, bad input is clear."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probes
from probes.core.provenance import file_sha256
from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.models import loading as models
from probes.models.layout import relayout_for_speed
from probes.models.toy import N_CTX, NON_SPECIAL

from conftest import IOI_PROMPTS


def _hf_model(name):
    """The plain transformers model read straight from the packaged GGUF: the independent reference."""
    from transformers import AutoModelForCausalLM

    spec = models.PACKAGED[name]
    with atomic_dir(Path(os.environ.get("TMPDIR", "/tmp")) / f"probes-hf-{name}") as scratch:
        gguf = spec.locate_gguf(spec.package_dir(), scratch)
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


@pytest.mark.real
@pytest.mark.parametrize(("name", "fixture"), [("smollm2-135m", "smollm2"), ("gemma-3-270m", "gemma")])
def test_logits_match_plain_hf_model(name, fixture, request):
    model = request.getfixturevalue(fixture)
    lengths = [model.to_tokens(p).shape[1] for p in IOI_PROMPTS]
    tokens = model.to_tokens(IOI_PROMPTS, padding_side="right")  # compare at real positions only
    mask = torch.arange(tokens.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        ours = model(tokens)
        theirs = _hf_model(name)(tokens, attention_mask=mask.long()).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs)[mask].abs().max().item() < 1e-3


@pytest.mark.real
def test_gemma_logits_match_plain_hf_model_beyond_the_sliding_window(gemma):
    """One prompt of ~620 tokens whose antecedent lies beyond Gemma-3's 512-token window: the local layers' masks
    (and all else) must agree with transformers' on the last positions, whose window no longer holds the names. The
    HF model is the packaged checkpoint (``packaged_hf_checkpoint``)."""
    from transformers import AutoModelForCausalLM

    from probes.models.bridge import packaged_hf_checkpoint

    prompts = probes.tasks.distant_pronoun_resolution(gemma, 8, filler_tokens=(600,))
    tokens = prompts.clean[:1, : int(prompts.end[0]) + 1]
    assert int(prompts.role("pronoun")[0] - prompts.role("antecedent")[0]) > gemma.cfg.window_size
    keep = 100
    hf = AutoModelForCausalLM.from_pretrained(packaged_hf_checkpoint("gemma-3-270m"), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(tokens, logits_to_keep=keep).logits[0]
        resid = gemma(tokens, stop_at_layer=gemma.cfg.n_layers)[:, -keep:]
        ours = gemma.unembed(gemma.ln_final(resid))[0]
    assert (ours - theirs).abs().max().item() < 1e-3


@pytest.mark.real
@pytest.mark.parametrize("fixture", ["smollm2", "gemma"])
def test_ioi_answer_is_top1(fixture, request):
    model = request.getfixturevalue(fixture)
    logits = model(model.to_tokens("When Mary and John went to the store, John gave a drink to"))
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Mary"


def _toy_tokens(n: int, seed: int) -> torch.Tensor:
    """A batch of full-context rows of the toy's ordinary tokens (names and fillers)."""
    pool = torch.tensor(NON_SPECIAL)
    return pool[torch.randint(len(pool), (n, N_CTX), generator=torch.Generator().manual_seed(seed))]


def test_relayout_keeps_values_and_makes_forward_views(toy_model):
    """The re-laid-out weights hold the same numbers; the layout each forward call wants is now contiguous."""
    model = toy_model.model
    tokens = _toy_tokens(4, seed=0)
    before = model(tokens)
    w_q = model.blocks[0].attn.W_Q.detach().clone()
    relayout_for_speed(model)
    assert torch.equal(model.blocks[0].attn.W_Q, w_q)
    assert model.blocks[0].attn.W_Q.permute(0, 2, 1).is_contiguous()
    assert model.blocks[0].attn.W_O.permute(2, 0, 1).is_contiguous()
    assert model.unembed.W_U.T.is_contiguous()
    assert torch.allclose(model(tokens), before, atol=1e-6)


def test_local_directory_round_trip(toy_model, tmp_path):
    out = models.save_model_dir(toy_model.model, tmp_path / "toy")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = probes.load_model(out)
    tokens = _toy_tokens(3, seed=1)
    assert torch.equal(loaded(tokens), toy_model.model(tokens))
    assert loaded.provenance.weights_sha256 == file_sha256(out / "model.safetensors")


def test_local_directory_errors(toy_model, tmp_path):
    out = models.save_model_dir(toy_model.model, tmp_path / "toy")
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ProbesError, match="not a readable safetensors"):
        probes.load_model(out)
    (out / "config.json").write_text("{")
    with pytest.raises(ProbesError, match="not valid JSON"):
        probes.load_model(out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbesError, match="config.json is missing"):
        probes.load_model(tmp_path / "empty")


def test_unknown_name_is_one_clear_error():
    with pytest.raises(ProbesError, match="unknown model 'no-such-model'.*smollm2-135m, gemma-3-270m"):
        probes.load_model("no-such-model")


def test_no_disk_space_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    free = shutil.disk_usage(tmp_path).free
    needs_more = dataclasses.replace(models.PACKAGED["smollm2-135m"], disk_bytes=free * 10 + 1)
    monkeypatch.setitem(models.PACKAGED, "smollm2-135m", needs_more)  # the registry says what a build needs
    with pytest.raises(ProbesError, match="not enough disk space"):
        models.build_cache("smollm2-135m")
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))

    def disk_full(spec, scratch, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "convert_gguf", disk_full)
    with pytest.raises(ProbesError, match="No space left on device"):
        models.build_cache("smollm2-135m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, capfd):
    source = models.ensure_cached("smollm2-135m")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    shutil.copytree(source, tmp_path / "smollm2-135m")
    weights = tmp_path / "smollm2-135m" / "model.safetensors"
    with weights.open("r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    assert models.cache_status("smollm2-135m") == "corrupt"
    model = probes.load_model("smollm2-135m")
    assert "is corrupt (model.safetensors do not match their sha256); rebuilding" in capfd.readouterr().err
    assert models.cache_status("smollm2-135m") == "cached"
    manifest = json.loads((tmp_path / "smollm2-135m" / "manifest.json").read_text())
    assert model.provenance.weights_sha256 == manifest["files"]["model.safetensors"]


def _cli(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "probes.cli", *args], capture_output=True, text=True, env={**os.environ, **env}
    )


def test_cli_models_lists_packaged_models_with_licence(tmp_path):
    out = _cli("models", PROBES_CACHE=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m" in out.stdout and "gemma-3-270m" in out.stdout
    assert "Gemma Terms of Use" in out.stdout and "not cached" in out.stdout


def test_hub_name_offline_is_one_clear_line():
    out = subprocess.run(
        [sys.executable, "-c", "import probes; probes.load_model('gpt2')"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "could not fetch 'gpt2'" in last and "smollm2-135m, gemma-3-270m" in last
