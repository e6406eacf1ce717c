"""Where converted packaged models live, and whether a cached copy is intact (its weights match their sha256)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from platformdirs import user_cache_dir

from probes.core.provenance import file_sha256

CACHE_ENV = "PROBES_CACHE"
CACHE_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


def cache_root() -> Path:
    """Where converted weights live: ``$PROBES_CACHE`` if set, else the user cache dir (``~/.cache/probes``)."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("probes", appauthor=False))


def cached_model_dir(name: str) -> Path:
    return cache_root() / name


def cache_status(name: str) -> str:
    """``cached``, ``not cached`` or ``corrupt`` (weights do not match the recorded sha256)."""
    model_dir = cached_model_dir(name)
    manifest = read_manifest(model_dir)
    if manifest is None:
        return "not cached"
    return "cached" if file_sha256(model_dir / WEIGHTS_FILE) == manifest["sha256"] else "corrupt"


def read_manifest(model_dir: Path) -> dict | None:
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or not (model_dir / WEIGHTS_FILE).exists():
        return None
    return manifest
