"""Hugging Face checkpoints -> the kit's model directory, with TransformerLens's own converters, offline.

A researcher's model is usually a Hugging Face checkpoint directory (``config.json`` in HF format, ``*.safetensors``,
tokenizer files), not a TransformerLens config. :func:`is_hf_checkpoint` tells the two apart by the config's keys;
:func:`converted_dir` converts an HF checkpoint once (``transformers`` loads it, TransformerLens 3.9 builds the
config and converts the weights) into a model directory under the cache, keyed by the checkpoint's path, file
sizes and modification times, so editing the checkpoint converts it again. :func:`write_converted` is the one
HF -> TransformerLens step, shared with the packaged GGUF models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.core.provenance import file_sha256
from probes.models import tl
from probes.models.cache import CACHE_FORMAT, CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, cache_root, file_hashes, read_manifest
from probes.models.support import HF_KEYS

# Weights are kept exactly as converted: folding norms or centring weights would change logits and hooks.
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


def config_to_json(cfg: tl.HookedTransformerConfig) -> dict:
    """The init fields of a HookedTransformerConfig as JSON-safe values (dtypes as strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif isinstance(value, torch.device):
            value = str(value)
        try:
            json.dumps(value)
        except TypeError:
            continue  # e.g. callables: not part of a portable config
        out[f.name] = value
    return out


def _tl_config(hf_model, scratch: Path, tl_name: str | None) -> tuple[str, tl.HookedTransformerConfig]:
    """TransformerLens's config for ``hf_model``: from its HF config, or (architectures TL 3.9 only knows by
    official name, e.g. the Gemma family) from the official name the checkpoint was fine-tuned from."""
    if tl_name is None:
        # a neutral directory name: TL reads architecture hints from the name ("llama", "gemma-3" in a path)
        hf_config_dir = scratch / "hf_config"
        hf_model.config.architectures = [type(hf_model).__name__]
        hf_model.config.save_pretrained(hf_config_dir)
        try:
            return str(hf_config_dir), tl.get_pretrained_model_config(str(hf_config_dir), dtype=torch.float32)
        except NotImplementedError:
            origin = getattr(hf_model.config, "_name_or_path", "") or ""
            try:
                tl_name = tl.get_official_model_name(origin)
            except ValueError:
                raise ProbesError(
                    f"TransformerLens 3.9 cannot convert a {type(hf_model).__name__} from its HF config, and the "
                    f"checkpoint's _name_or_path ({origin!r}) is not an official TransformerLens name it could take "
                    "the architecture from; set _name_or_path in config.json to the model it was trained from"
                ) from None
    return tl_name, tl.get_pretrained_model_config(tl_name, dtype=torch.float32)


def write_converted(hf_model, tokenizer, out_dir: Path, scratch: Path, tl_name: str | None = None) -> None:
    """Convert a float32 ``transformers`` model with TransformerLens's converters and write a model directory
    (``model.safetensors`` + ``config.json`` + tokenizer) into ``out_dir``."""
    from safetensors.torch import save_file

    tl_name, cfg = _tl_config(hf_model, scratch, tl_name)
    if tokenizer is None:
        cfg.tokenizer_name = None  # else TransformerLens looks for one where the config came from
    state_dict = tl.get_pretrained_state_dict(tl_name, cfg, hf_model=hf_model)
    # Let TransformerLens complete the state dict (zero biases etc.), then keep exactly its parameters: the
    # cache loads with one strict assign, no per-key processing. Tied embeddings become separate copies,
    # since safetensors refuses tensors that share memory.
    model = tl.HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **NO_PROCESSING)
    params = {k: v.detach().contiguous().clone() for k, v in model.named_parameters()}
    save_file(params, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config_to_json(cfg), indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def is_hf_checkpoint(path: str | Path) -> bool:
    """A directory whose ``config.json`` is in Hugging Face format (has ``model_type`` or ``architectures``)."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(key in config for key in HF_KEYS)


def _fingerprint(path: Path) -> str:
    """The checkpoint's identity for the cache: its resolved path and every file's name, size and mtime."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_dir(path: str | Path) -> Path:
    """The kit's model directory for the HF checkpoint at ``path``, converted on first use (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(path)
    final = cache_root() / "hf" / f"{source.resolve().name}-{_fingerprint(source)}"
    if read_manifest(final) is not None:
        return final
    print(f"probes: converting the Hugging Face checkpoint {source} for TransformerLens into {final} (once)...",
          file=sys.stderr)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProbesError(f"{source} is not a loadable Hugging Face checkpoint: {reason[:200]}") from None
    has_tokenizer = any((source / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True) if has_tokenizer else None
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        scratch = tmp / "scratch"
        scratch.mkdir()
        write_converted(hf_model, tokenizer, tmp, scratch)
        shutil.rmtree(scratch)
        manifest = {"format": CACHE_FORMAT, "name": str(source), "source": str(source.resolve()),
                    "sha256": file_sha256(tmp / WEIGHTS_FILE), "files": file_hashes(tmp)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return final
