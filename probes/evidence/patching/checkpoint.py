"""Checkpoints of a patching sweep: each finished layer written atomically, keyed by everything it depends on.

A rerun with the same model, prompts and sweep settings finds its finished layers and skips them; a layer that is
missing, truncated or from other inputs is simply recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes.core.errors import ProbesError
from probes.core.io import atomic_path
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

CHECKPOINT_FORMAT = 1


class Checkpoint:
    """Per-layer results of one sweep, in a directory named by a fingerprint of everything they depend on."""

    def __init__(
        self,
        root: Path,
        model: HookedModel,
        prompts: PromptSet,
        component: str,
        direction: str,
        todo: dict[int, list[int]],
        where: tuple[Tensor, ...] = (),
    ) -> None:
        self.fingerprint = fingerprint(model, prompts, component, direction, todo, where)
        self.dir = root / f"{component}-{direction}-{self.fingerprint[:16]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ProbesError(f"cannot create checkpoint directory {self.dir}: {err.strerror or err}") from None

    def path(self, layer: int) -> Path:
        return self.dir / f"layer{layer:03d}.safetensors"

    def load(self, layer: int, shape: tuple[int, int]) -> Float[Tensor, "prompt index"] | None:
        """A finished layer, or None if it is missing, unreadable or from other inputs."""
        try:
            with safe_open(str(self.path(layer)), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") != self.fingerprint:
                    return None
                values = f.get_tensor("patched")
        except (OSError, SafetensorError):  # missing or truncated: the layer is simply recomputed
            return None
        return values if tuple(values.shape) == shape else None

    def save(self, layer: int, values: Float[Tensor, "prompt index"]) -> None:
        """Atomic: a kill mid-write never leaves a half-written layer."""
        with atomic_path(self.path(layer)) as tmp:
            save_file({"patched": values.contiguous()}, str(tmp), metadata={"fingerprint": self.fingerprint})


def fingerprint(
    model: HookedModel,
    prompts: PromptSet,
    component: str,
    direction: str,
    todo: dict[int, list[int]],
    where: tuple[Tensor, ...] = (),
) -> str:
    """sha256 of the sweep settings, the prompts (and ``where``: an edge's positions) and a digest of every weight (name, shape, sum, norm and 16
    values spread over it): under a second for a 270M-parameter model, and changed by any edit of the weights
    in practice. Sum and norm are rounded, so another thread count (another reduction order) gives the same digest."""
    digest = hashlib.sha256()
    settings = {"format": CHECKPOINT_FORMAT, "component": component, "direction": direction, "cells": todo}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for tensor in (prompts.clean, prompts.corrupt, prompts.answer, prompts.foil, prompts.end, *where):
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    with torch.no_grad():
        for name, param in model.named_parameters():
            spread = torch.arange(16) * (param.numel() - 1) // 15
            # sum and norm to 5 significant digits: their last bits depend on the thread count that reduced them
            reductions = f"{float(param.sum()):.5g} {float(torch.linalg.vector_norm(param)):.5g}"
            summary = (reductions, torch.take(param, spread).tolist())
            digest.update(f"{name}{tuple(param.shape)}{summary!r}".encode())
    return digest.hexdigest()
