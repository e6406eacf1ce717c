"""TransformerLens's ``TransformerBridge`` (TransformerLens 4's only model class, already in 3.9) as a kit model.

A bridge wraps the Hugging Face model itself: no weight conversion, the HF forward pass with TransformerLens hook
points around it. In compatibility mode (``enable_compatibility_mode(no_processing=True)``) it offers the hook
names, shapes, ``cfg`` fields and ``blocks[L].attn.W_O`` / ``unembed.W_U`` the kit reads, with the weights as the
checkpoint has them (the default mode folds norms and centres weights, which the kit's own loader never does).

What it lacks, and what the kit does instead (see docs/bridge.md):

- no ``start_at_layer`` and no TransformerLens key/value cache (HF owns the layer loop), so the patching engine's
  mid-model starts cannot run on it: patched runs are whole forward passes with hooks
  (:mod:`probes.evidence.patching.hooked`), the same patches and numbers, slower;
- ``stop_at_layer=n_layers`` returns logits there, not the final residual stream: :func:`final_resid` stops the
  forward pass after the last block itself;
- the forward pass sets per-block state and hooks are per module, not per thread: one worker.

:func:`load_bridge` boots one offline from an HF checkpoint directory, or from a packaged model written once as
an HF checkpoint (the GGUF dequantised by ``transformers``: the way the packaged models load where TransformerLens
has no weight converters, as in 4.x).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.core.provenance import Provenance, file_sha256
from probes.models.cache import CACHE_FORMAT, MANIFEST_FILE, WEIGHTS_FILE, cache_root, file_hashes, read_manifest
from probes.models.hf_checkpoint import is_hf_checkpoint
from probes.models.registry import PACKAGED, model_source

HF_CHECKPOINTS = "hf-checkpoints"  # under the cache root: packaged models written as HF checkpoint directories

Hook = tuple[str, Callable]


def is_bridge(model) -> bool:
    """Whether ``model`` is a TransformerBridge (patched runs then go through plain hooks)."""
    return isinstance(model, TransformerBridge)


def check_bridge(model) -> None:
    """Refuse a bridge outside compatibility mode: its hooks have other names and shapes there."""
    if is_bridge(model) and not model.compatibility_mode:
        raise ProbesError(
            "this TransformerBridge is not in compatibility mode, so it lacks the hook names the kit reads; call "
            "model.enable_compatibility_mode(no_processing=True) first (or load it with probes.load_bridge)"
        )


def final_resid(
    model, tokens: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = (), names: AbstractSet[str] = frozenset()
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """The residual stream after the last block (before the final norm), with ``hooks`` applied and the
    activations ``names`` kept. A HookedTransformer stops there with ``stop_at_layer=n_layers``; a bridge's
    forward pass returns logits for that, so it is stopped by a hook on the last block's output (the bridge's own
    stop mechanism: the exception carries the tensor out of the HF forward pass), which also skips the unembedding
    (a 262k vocabulary for Gemma)."""
    n_layers = model.cfg.n_layers
    if not is_bridge(model):
        with model.hooks(fwd_hooks=list(hooks)):
            final, cache = model.run_with_cache(tokens, stop_at_layer=n_layers, names_filter=lambda n: n in names)
        return final, dict(cache.cache_dict)

    def stop(activation: Tensor, hook) -> None:
        raise StopAtLayerException(activation)

    last = f"blocks.{n_layers - 1}.hook_resid_post"
    with model.hooks(fwd_hooks=[*hooks, (last, stop)]):
        final, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return final, {name: cache[name] for name in names}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def packaged_hf_checkpoint(name: str) -> Path:
    """The packaged model ``name`` as an HF checkpoint directory (``config.json``, ``model.safetensors``, tokenizer
    files), written once under the cache root: the GGUF dequantised by ``transformers`` and saved as it is."""
    from probes.models.loading import gguf_hf_model

    final = cache_root() / HF_CHECKPOINTS / name
    if read_manifest(final) is not None:
        return final
    print(f"probes: writing packaged {name} as a Hugging Face checkpoint in {final} (once)...", file=sys.stderr)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        scratch = tmp / "scratch"
        scratch.mkdir()
        hf_model, tokenizer = gguf_hf_model(PACKAGED[name], scratch)
        shutil.rmtree(scratch)
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"format": CACHE_FORMAT, "name": name, "source": PACKAGED[name].source, "sha256": file_sha256(tmp / WEIGHTS_FILE),
                    "files": file_hashes(tmp)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return final


def load_bridge(name_or_path: str | Path, device: str = "cpu") -> TransformerBridge:
    """A TransformerBridge in compatibility mode, unprocessed weights, offline, for a packaged model name or an HF
    checkpoint directory; gradients off, eval mode, ``model.provenance`` set as :func:`load_model` does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = str(name_or_path)
    source = model_source(key)
    if source == "packaged":
        path = packaged_hf_checkpoint(key)
    elif source == "directory" and is_hf_checkpoint(key):
        path = Path(key)
    else:
        raise ProbesError(
            f"load_bridge reads a packaged model ({', '.join(PACKAGED)}) or a Hugging Face checkpoint directory "
            f"(config.json with model_type); '{key}' is neither: for a kit model directory use probes.load_model"
        )
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProbesError(f"{path} is not a loadable Hugging Face checkpoint: {reason[:200]}") from None
    model = TransformerBridge.boot_transformers(str(path), hf_model=hf_model, tokenizer=tokenizer, device=device)
    model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    model.eval()
    model.requires_grad_(False)
    manifest = read_manifest(path)
    weights = path / WEIGHTS_FILE
    sha = manifest["sha256"] if manifest else (file_sha256(weights) if weights.is_file() else None)
    model.provenance = Provenance(name=manifest["name"] if manifest else key, weights_sha256=sha, path=str(path))
    return model
