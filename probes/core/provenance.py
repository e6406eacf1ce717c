"""Where numbers came from: the file digest behind every cache and run record, and the software that made them."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from datetime import datetime, UTC
from functools import cache
from importlib import metadata
from pathlib import Path

# the packages whose behaviour the numbers depend on
PACKAGES = ("torch", "transformer-lens", "transformers", "numpy", "scipy", "scikit-learn", "pandas", "plotly")


@dataclass(frozen=True)
class Provenance:
    """Where a loaded model's weights came from, for reports: attached to the model as ``model.provenance``."""

    name: str
    weights_sha256: str | None  # None for hub models (weights live in the HF cache, not hashed by us)
    path: str | None = None


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks: the one digest for caches and run records."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour the numbers depend on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``): what a kernel's speed
    depends on, so measured rates and kernel choices are recorded with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def kit_version() -> str:
    try:
        return metadata.version("probes")
    except metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
