"""Patched runs as whole forward passes with hooks, for models the engine cannot start mid-way.

A TransformerBridge runs the Hugging Face forward pass, which owns the layer loop: there is no ``start_at_layer``
and no TransformerLens key/value cache entry to attend through (:mod:`probes.models.bridge`). Its patched runs
therefore compute every layer and every position ``0..end`` of the run patched into, with the engine's own patch
hooks on the TransformerLens hook points: the patches act on the positions ``split..end`` the engine computes
(the others hold the same activations in both runs), so the numbers are the engine's, without its savings
(steps 1, 2 and 4 of :mod:`.engine`); batching the variants and reading only the metric remain.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from probes.evidence.patching.engine import Bucket, Rows, patch_hook, patch_values
from probes.evidence.patching.sites import Site
from probes.models.bridge import Hook, final_resid


def _on_suffix(edit, site: Site, split: int, n_suffix: int):
    """``edit`` (a torch forward hook for the positions ``split..end``) as a TransformerLens hook on all positions."""

    def on_all(activation: Tensor, hook) -> Tensor:
        edit(None, None, activation.narrow(site.pos_axis, split, n_suffix))  # edits the view, so the activation
        return activation

    return on_all


@torch.no_grad()
def hooked_run(model, bucket: Bucket, rows: Rows) -> Float[Tensor, " row"]:
    """The metric of each patched run of ``rows``, as one batch of whole forward passes of the run patched into,
    each slot's patch hooked at its rows' layers."""
    n_suffix = bucket.end + 1 - bucket.split
    hooks: list[Hook] = []
    for slot in rows.slots:
        for layer in slot.layer.unique().tolist():
            here = (slot.layer == layer).nonzero()[:, 0]
            hook = patch_hook(slot[here], here, patch_values(bucket, slot[here], rows.member[here], layer))
            hooks.append((slot.site.hook_name(layer), _on_suffix(hook, slot.site, bucket.split, n_suffix)))
    final, _ = final_resid(model, bucket.target_tokens[rows.member], hooks)
    return bucket.metric(model, final[:, -1], bucket.answer[rows.member], bucket.foil[rows.member]).float()
