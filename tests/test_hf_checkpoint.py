"""Hugging Face checkpoint directories load through TransformerLens's own converters, offline: the logits equal
those of the transformers model the checkpoint came from (an independent forward pass)."""

import json

import pytest
import torch

import probes
from probes.core.errors import ProbesError
from probes.models import loading
from probes.models.hf_checkpoint import is_hf_checkpoint

from conftest import IOI_PROMPTS
from test_models import _hf_model


def _tiny(kind: str):
    """A small random transformers model of a family TransformerLens 3.9 converts from its HF config."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":  # grouped-query attention, rotary, gated MLP, RMSNorm
        config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, n_ctx=64)  # as hub GPT-2 configs have
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tiny_hf_checkpoint_loads_with_equal_logits(kind, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    hf = _tiny(kind)
    hf.save_pretrained(tmp_path / "ckpt")
    assert is_hf_checkpoint(tmp_path / "ckpt")
    model = probes.load_model(tmp_path / "ckpt")
    tokens = torch.randint(96, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
    assert "converting the Hugging Face checkpoint" in capfd.readouterr().err
    probes.load_model(tmp_path / "ckpt")  # the second load reads the converted cache
    assert "converting" not in capfd.readouterr().err


def test_kit_model_directory_is_not_taken_for_an_hf_checkpoint(toy_model, tmp_path):
    loading.save_model_dir(toy_model.model, tmp_path / "toy")
    assert not is_hf_checkpoint(tmp_path / "toy")


def test_unconvertible_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ProbesError, match="is not a loadable Hugging Face checkpoint"):
        probes.load_model(tmp_path / "ckpt")
    assert not (tmp_path / "cache" / "hf").exists() or not any((tmp_path / "cache" / "hf").iterdir())


@pytest.mark.real
def test_packaged_model_written_as_hf_checkpoint_loads_back_equal(smollm2, tmp_path, monkeypatch):
    """SmolLM2 written out as a plain HF checkpoint (config.json + model.safetensors + tokenizer files)."""
    from transformers import AutoTokenizer

    hf = _hf_model("smollm2-135m")
    del hf.config.quantization_config  # the weights are float32 by now: a plain checkpoint
    hf.hf_quantizer = None
    hf.save_pretrained(tmp_path / "ckpt")
    AutoTokenizer.from_pretrained(smollm2.provenance.path).save_pretrained(tmp_path / "ckpt")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    model = probes.load_model(tmp_path / "ckpt")
    tokens = smollm2.to_tokens(IOI_PROMPTS, padding_side="right")
    assert torch.equal(model.to_tokens(IOI_PROMPTS, padding_side="right"), tokens)  # its tokenizer came along
    with torch.no_grad():
        assert (model(tokens) - smollm2(tokens)).abs().max().item() < 1e-4
