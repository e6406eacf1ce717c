"""Where converted packaged models live, and whether a cached copy is intact: every file (weights, config,
tokenizer) matches the sha256 its manifest recorded when it was built."""

from __future__ import annotations

import json
import os
from pathlib import Path

from platformdirs import user_cache_dir

from probes.core.provenance import file_sha256

CACHE_ENV = "PROBES_CACHE"
# Still 1: the manifest gained "files" (every file's sha256) beside "sha256" (the weights'), which kits older than
# "files" read, so old and new kits can share one cache without rebuilding it back and forth.
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
    """``cached``, ``not cached``, ``outdated`` (its manifest predates per-file hashes: rebuilt once) or ``corrupt``
    (a file is missing or differs from its recorded sha256, or the manifest is unreadable)."""
    model_dir = cached_model_dir(name)
    if not model_dir.is_dir():
        return "not cached"
    manifest = read_manifest(model_dir)
    if manifest is None:
        return "outdated" if _old_manifest(model_dir) else "corrupt"
    return "corrupt" if corrupt_files(model_dir, manifest) else "cached"


def _old_manifest(model_dir: Path) -> bool:
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == CACHE_FORMAT and "files" not in manifest


def file_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of a model directory but the manifest: what a manifest records."""
    return {p.name: file_sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


def corrupt_files(model_dir: Path, manifest: dict) -> list[str]:
    """The files the manifest names that are missing or no longer match their sha256."""
    return [
        name for name, sha in manifest["files"].items()
        if not (model_dir / name).is_file() or file_sha256(model_dir / name) != sha
    ]


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest of a cached model directory, or None if it has none this kit version can use (no "files":
    written by an older kit, whose files are rebuilt once)."""
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != CACHE_FORMAT or not isinstance(files, dict) or WEIGHTS_FILE not in files:
        return None
    return manifest
