"""Bad input is refused up front, in one line naming what is wrong, before any model loads or any file is written.

Models the kit cannot measure (encoders, encoder-decoders, multi-head latent attention, no causal mask) are refused
from their config alone: the configs below come with no weights at all, so a refusal cannot come from loading them.
"""

import json
from pathlib import Path

import pytest
from transformer_lens import HookedEncoder, HookedTransformerConfig

import probes
from probes import cli, toy
from probes.core.errors import ProbesError
from probes.models import loading, support
from probes.models.loading import load_model
from probes.prompts.catalogue import TASK_ROLES
from probes.prompts.roles import PREVIOUS
from probes.prompts.tasks import pronoun_prompts
from probes.run import pipeline
from probes.run.spec import AnalysisSpec

from test_fuzz import toml_text_of
from test_safety import RECORD

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
         "num_hidden_layers": 2, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
REFUSED_CONFIGS = {
    "bert": ({"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64}, "is an encoder"),
    "roberta-bare": ({"model_type": "roberta", "hidden_size": 64}, "is an encoder"),
    "t5": ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True},
           "is an encoder-decoder"),
    "deepseek-v2": (LLAMA | {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"],
                             "kv_lora_rank": 512, "q_lora_rank": 1536}, "multi-head latent attention"),
    "tl-bidirectional": ({"n_layers": 1, "d_model": 8, "n_ctx": 8, "d_head": 4, "act_fn": "gelu", "d_vocab": 10,
                          "attention_dir": "bidirectional"}, "has no causal mask"),
}


def write_config(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("kind", sorted(REFUSED_CONFIGS))
def test_an_unmeasurable_model_directory_is_refused_from_its_config(kind, tmp_path, monkeypatch):
    config, lacks = REFUSED_CONFIGS[kind]
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    model_dir = write_config(tmp_path / kind, config)
    with pytest.raises(ProbesError, match=lacks) as err:
        load_model(model_dir)
    assert "\n" not in str(err.value) and "decoder-only causal LM" in str(err.value)
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing cached


def test_decoder_configs_pass_the_config_check(tmp_path):
    """The refusals are not blanket: causal decoders' configs (HF Llama and GPT-2, a TransformerLens config) pass."""
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64}
    tl = REFUSED_CONFIGS["tl-bidirectional"][0] | {"attention_dir": "causal"}
    assert [support.config_refusal(c) for c in (LLAMA, gpt2, tl)] == [None, None, None]
    assert support.check_model_name(str(write_config(tmp_path / "llama", LLAMA))) == "directory"


def test_a_hub_name_is_refused_from_its_config_before_the_weights(monkeypatch):
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformer_lens import HookedTransformer

    bert = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, act_fn="gelu", d_vocab=10,
                                   attention_dir="bidirectional", original_architecture="BertForMaskedLM")
    monkeypatch.setattr("probes.models.loading.require_hub", lambda name: None)
    monkeypatch.setattr(tl_loading, "get_pretrained_model_config", lambda name, **kw: bert)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights fetched for a model the config already rules out")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", no_weights)
    with pytest.raises(ProbesError, match="model 'google-bert/bert-base-cased' has no causal mask"):
        load_model("bert-base-cased")


def test_official_names_are_transformer_lenss_own():
    """The torch-free reading of TransformerLens's name list gives what its own lookup gives, aliases included."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    assert support.official_names() == make_model_alias_map() and "gpt2-small" in support.official_names()


def test_an_unknown_name_is_refused_without_the_hub(monkeypatch):
    def no_hub(name):
        raise AssertionError("the hub was asked about a name that is no model")

    monkeypatch.setattr("probes.models.loading.require_hub", no_hub)
    with pytest.raises(ProbesError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


@pytest.fixture(scope="module")
def encoder_toy():
    """The planted toy with its causal mask turned off: what a user's own bidirectional model looks like."""
    planted = toy.build()
    prompts = pronoun_prompts(planted, 8)
    planted.model.cfg.attention_dir = "bidirectional"
    return planted.model, prompts


CALLS = {
    "role_attention": lambda m, p: probes.role_attention(m, p, "pronoun", "antecedent"),
    "norm_weighted_attention": lambda m, p: probes.norm_weighted_attention(m, p, "pronoun", "antecedent"),
    "head_scores": lambda m, p: probes.head_scores(m, "previous_token"),
    "behaviour": lambda m, p: probes.behaviour(m, p),
    "patch_heads": lambda m, p: probes.patch_heads(m, p),
    "patch_resid": lambda m, p: probes.patch_resid(m, p),
    "edge_effects": lambda m, p: probes.edge_effects(m, p, "pronoun", "antecedent"),
    "patch_paths": lambda m, p: probes.patch_paths(m, p, [(0, 0)], [(1, 0, "q")]),
    "position_content": lambda m, p: probes.position_content(m, p, "pronoun", "antecedent"),
    "rotary_bands": lambda m, p: probes.rotary_bands(m, p, "pronoun", "antecedent"),
    "attribute_heads": lambda m, p: probes.attribute_heads(m, p),
    "screen_then_verify": lambda m, p: probes.screen_then_verify(m, p, top_k=2),
    "harvest": lambda m, p: probes.harvest(m, p, "unused-activations-dir"),
    "evaluate": lambda m, p: probes.evaluate(m, p, probes.Claim((1, 0), "pronoun", "antecedent")),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_model_object_without_a_causal_mask_is_refused_at_the_first_call(encoder_toy, name, monkeypatch):
    model, prompts = encoder_toy

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran on a model the kit cannot measure")

    monkeypatch.setattr(type(model), "forward", no_forward)
    with pytest.raises(ProbesError, match="has no causal mask") as err:
        CALLS[name](model, prompts)
    assert "\n" not in str(err.value)


def test_a_transformer_lens_encoder_is_refused_as_its_prompts_are_made(tmp_path):
    from transformers import PreTrainedTokenizerFast

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=16, d_head=4, act_fn="gelu", d_vocab=50,
                                  attention_dir="bidirectional", original_architecture="BertForMaskedLM")
    encoder = HookedEncoder(cfg, tokenizer=None)
    encoder.tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer())
    (tmp_path / "p.jsonl").write_text(json.dumps(RECORD) + "\n")
    with pytest.raises(ProbesError, match=r"has no causal mask \(attention_dir='bidirectional', BertForMaskedLM\)"):
        probes.PromptSet.from_jsonl(tmp_path / "p.jsonl", encoder)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


# --- specs and sweeps: an unknown model or role is refused in one line, before any model loads, nothing written ---


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: a refusal must come from the spec alone."""

    def refuse_to_load(*args, **kwargs):
        raise AssertionError("a model was loaded for a spec that should have been refused")

    for module, name in ((pipeline, "load_model"), (loading, "load_model"), (loading, "load_model_dir")):
        monkeypatch.setattr(module, name, refuse_to_load)


def refused(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probes: error: "), err
    return err[0]


SPEC = {"model": "gemma-3-270m", "task": "pronoun_resolution", "n": 12, "src": "pronoun", "dst": "antecedent",
        "foil": "distractor", "claims": ["top_attention:1"]}
BAD_SPECS = {  # what the spec gets wrong -> the words of its refusal
    "claim role": ({"claims": ["7.0: pronoun -> nowhere"]}, "unknown role 'nowhere' in claim '7.0: pronoun -> nowhere'"),
    "claim foil": ({"claims": ["7.0: pronoun -> antecedent vs IO"]}, "unknown role 'IO' in claim"),
    "src": ({"src": "she"}, "unknown role 'she' in src; the prompts of task pronoun_resolution have the roles "
                            "antecedent, distractor, end, pronoun"),
    "foil previous": ({"foil": "previous"}, "unknown role 'previous' in foil"),
    "position_content": ({"position_content": {"dst": "S1"}}, "unknown role 'S1' in position_content.dst"),
    "model": ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_spec_naming_what_does_not_exist_is_refused_before_any_model(case, tmp_path, capsys, no_model_loads):
    change, words = BAD_SPECS[case]
    (tmp_path / "a.toml").write_text(toml_text_of(SPEC | change))
    assert words in refused(capsys, "run", str(tmp_path / "a.toml"), "--out", str(tmp_path / "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]  # no run directory, no scratch beside it


def test_roles_of_a_prompt_file_are_its_records_roles(tmp_path, capsys, no_model_loads):
    (tmp_path / "p.jsonl").write_text(json.dumps(RECORD) + "\n")
    spec = {k: v for k, v in SPEC.items() if k != "task"} | {"prompts": str(tmp_path / "p.jsonl"), "dst": "IO"}
    (tmp_path / "a.toml").write_text(toml_text_of(spec))
    line = refused(capsys, "run", str(tmp_path / "a.toml"), "--out", str(tmp_path / "run"))
    assert f"unknown role 'IO' in dst; the prompts of prompt file {tmp_path / 'p.jsonl'} have the roles" in line
    assert "(and 'previous' as a target" in line and not (tmp_path / "run").exists()


def test_a_model_the_kit_cannot_measure_is_refused_by_the_cli(tmp_path, capsys, no_model_loads):
    bert = write_config(tmp_path / "bert", REFUSED_CONFIGS["bert"][0])
    (tmp_path / "a.toml").write_text(toml_text_of(SPEC))
    line = refused(capsys, "run", str(tmp_path / "a.toml"), "--model", str(bert), "--out", str(tmp_path / "run"))
    assert f"model '{bert}' is an encoder (BertForMaskedLM): it has no causal mask" in line
    assert not (tmp_path / "run").exists()


def test_roles_the_prompts_have_pass(tmp_path):
    """The check refuses only what is missing: every task's declared roles, and 'previous' as a target, pass."""
    for task, roles in TASK_ROLES.items():
        spec = AnalysisSpec(model="smollm2-135m", task=task, src=roles[0], dst=PREVIOUS, foil="end",
                            claims=[f"0.0: {roles[-1]} -> {roles[0]} vs end"], position_content={"src": roles[-1]})
        spec.check_sources("spec")


@pytest.mark.parametrize(("grid", "words"), [
    ({"model": ["gemma-3-270m", "no-such-model"]}, "cell modelno_such_model: unknown model 'no-such-model'"),
    ({"claims": [["7.0: pronoun -> nowhere"]]}, "unknown role 'nowhere' in claim"),
])
def test_a_sweep_naming_what_does_not_exist_is_refused_before_any_cell(grid, words, tmp_path, capsys, no_model_loads):
    pytest.importorskip("ray")
    (tmp_path / "base.toml").write_text(toml_text_of(SPEC))
    (tmp_path / "sweep.toml").write_text(toml_text_of({"base": "base.toml", "grid": grid}))
    assert words in refused(capsys, "sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.toml", "sweep.toml"]
