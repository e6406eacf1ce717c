"""Which models the kit can take, decided from a name or a config before any weight loads.

Every measure of the kit reads a causal decoder: each token attends only backwards, through heads that each have
their own query, key and value, all writing to one residual stream. Refused, in one line naming what is missing:

- no causal mask: encoders (BERT, RoBERTa, ...) and configs with ``attention_dir`` other than ``causal``;
- encoder-decoders (T5, BART, ...): the decoder reads a second stream through cross-attention;
- multi-head latent attention (DeepSeek-V2/V3, MiniCPM3, Kimi-K2): keys and values come from one shared latent,
  so a head has none of its own (and TransformerLens has no converter for it).

Light on purpose (no torch, no TransformerLens import): ``probes run`` and ``probes sweep`` check a spec's model
here before anything heavy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from probes.core.errors import ProbesError
from probes.models.cache import CONFIG_FILE, WEIGHTS_FILE
from probes.models.registry import PACKAGED, model_source

HF_KEYS = ("model_type", "architectures")  # an HF config has these; a HookedTransformerConfig has neither
# Hugging Face model types that are encoders (no causal mask) unless their config says ``is_decoder``.
ENCODER_TYPES = frozenset({
    "albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "esm", "flaubert", "funnel", "hubert", "ibert", "layoutlm", "longformer",
    "megatron-bert", "mobilebert", "modernbert", "mpnet", "nystromformer", "rembert", "roberta",
    "roberta-prelayernorm", "roc_bert", "roformer", "squeezebert", "wav2vec2", "xlm", "xlm-roberta", "xlm-roberta-xl",
    "xmod",
})  # fmt: skip
# Heads that only an encoder wears (the class names of a checkpoint's ``architectures``).
ENCODER_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                 "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction", "ForCTC")
# TransformerLens architectures that are encoder-decoders (its encoders only say attention_dir="bidirectional").
TL_ENCODER_DECODERS = frozenset({"T5ForConditionalGeneration"})
NEEDS = "the kit needs a decoder-only causal LM (e.g. " + ", ".join(PACKAGED) + ")"


def hf_refusal(config: dict) -> str | None:
    """What a Hugging Face ``config.json`` lacks for the kit, or None if nothing visible there rules it out."""
    arch = ", ".join(config.get("architectures") or []) or config.get("model_type") or "unknown architecture"
    if config.get("is_encoder_decoder"):
        return f"is an encoder-decoder ({arch}), not a decoder-only model"
    if config.get("kv_lora_rank") is not None:
        return (f"uses multi-head latent attention ({arch}, kv_lora_rank={config['kv_lora_rank']}): its heads have no "
                "keys and values of their own")
    encoder_head = any(str(name).endswith(ENCODER_HEADS) for name in config.get("architectures") or [])
    if not config.get("is_decoder") and (config.get("model_type") in ENCODER_TYPES or encoder_head):
        return f"is an encoder ({arch}): it has no causal mask"
    return None


def tl_refusal(cfg) -> str | None:
    """What a TransformerLens config (a HookedTransformerConfig, or its fields as a dict) lacks for the kit."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    direction, arch = get("attention_dir", "causal"), get("original_architecture") or "its architecture"
    if direction == "causal":
        return None
    if arch in TL_ENCODER_DECODERS:
        return f"is an encoder-decoder ({arch}), not a decoder-only model"
    return f"has no causal mask (attention_dir={direction!r}, {arch}): an encoder"


def config_refusal(config: object) -> str | None:
    """What a model directory's ``config.json`` (Hugging Face or TransformerLens format) lacks for the kit."""
    if not isinstance(config, dict):
        return f"has a {CONFIG_FILE} that is not a JSON object"
    return hf_refusal(config) if any(key in config for key in HF_KEYS) else tl_refusal(config)


def refuse(name: str, refusal: str | None) -> None:
    if refusal is not None:
        raise ProbesError(f"model '{name}' {refusal}; {NEEDS}")


def require_supported(model) -> None:
    """Refuse a model object the kit cannot measure (an encoder, an encoder-decoder) at the first call it gets."""
    cfg = getattr(model, "cfg", None)
    refuse(getattr(cfg, "model_name", None) or type(model).__name__, tl_refusal(cfg))


@functools.cache
def official_names() -> dict[str, str]:
    """Every TransformerLens official model name and alias, lower-cased, -> its official name (what
    ``get_official_model_name`` looks up), read from TransformerLens's data-only ``supported_models.py`` without
    importing TransformerLens, which imports torch: a spec's model is checked in well under a second."""
    package = importlib.util.find_spec("transformer_lens")  # a top-level spec: found, not imported
    if package is None or not package.submodule_search_locations:
        raise ProbesError("TransformerLens is not installed here; install the kit with its dependencies (make setup)")
    path = Path(list(package.submodule_search_locations)[0]) / "supported_models.py"
    spec = importlib.util.spec_from_file_location("probes_tl_supported_models", path)
    assert spec is not None and spec.loader is not None, "a .py file path always has a spec with a loader"
    names = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names)
    return {alias.lower(): official for official in names.OFFICIAL_MODEL_NAMES
            for alias in [official, *names.MODEL_ALIASES.get(official, [])]}


def official_name(name: str) -> str:
    """The TransformerLens official name for ``name`` (an alias or the name itself), from TransformerLens's own list
    without the hub; anything else is an unknown model."""
    try:
        return official_names()[name.lower()]
    except KeyError:
        raise ProbesError(
            f"unknown model '{name}': not a packaged model ({', '.join(PACKAGED)}), not a TransformerLens official "
            f"name, and not a directory holding {CONFIG_FILE} + {WEIGHTS_FILE} (or a Hugging Face checkpoint)"
        ) from None


def model_config(model_dir: Path) -> dict:
    """A model directory's ``config.json``, checked: there, JSON, a model the kit can measure, and in the kit's own
    format (not a Hugging Face checkpoint, whose weights ``transformers`` finds) with ``model.safetensors`` beside it."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ProbesError(f"{model_dir} is not a model directory: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ProbesError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    except ValueError as err:
        raise ProbesError(f"{path} is not valid JSON: {err}") from None
    refuse(str(model_dir), config_refusal(config))
    hf = isinstance(config, dict) and any(key in config for key in HF_KEYS)
    if not hf and not (model_dir / WEIGHTS_FILE).is_file():
        raise ProbesError(f"{model_dir} is not a model directory: {WEIGHTS_FILE} is missing")
    return config


def check_model_name(name: str) -> str:
    """Where ``load_model(name)`` will look (``packaged``, ``directory``, ``hub``), once the name is known to be a
    model the kit can take: a packaged name, a model directory whose config it can handle, or a TransformerLens
    official name (whose config only the hub has: it is checked when it is fetched, before the weights)."""
    source = model_source(name)
    if source == "directory":
        model_config(Path(name))
    elif source == "hub":
        official_name(name)
    return source
