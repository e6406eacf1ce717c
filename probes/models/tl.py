"""Which TransformerLens this is, and the names only 3.x has.

TransformerLens 4.0 removed ``HookedTransformer``, ``HookedTransformerConfig``, ``components`` and
``loading_from_pretrained`` (the weight converters); hooks, ``utilities``, the key/value cache and
``TransformerBridge`` remain. The kit's HookedTransformer features (``load_model``, the exact engine's models, the
toy models) reach the removed names through this module at call time (``tl.HookedTransformer``), so the kit imports
beside 4.x: there those features fail in one line, and the bridge features (:func:`probes.load_bridge`) run.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING

from probes.core.errors import ProbesError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401
    from transformer_lens.components.mlps.gated_mlp import GatedMLP  # noqa: F401
    from transformer_lens.loading_from_pretrained import (  # noqa: F401
        get_official_model_name, get_pretrained_model_config, get_pretrained_state_dict,
    )

VERSION = version("transformer-lens")  # the distribution's metadata: read without importing torch
HAS_HOOKED_TRANSFORMER = int(VERSION.split(".")[0]) < 4

# the names 4.0 removed that the kit uses -> the 3.x module that defines each
TL3_ONLY = {
    "HookedTransformer": "transformer_lens",
    "HookedTransformerConfig": "transformer_lens",
    "GatedMLP": "transformer_lens.components.mlps.gated_mlp",
    "get_official_model_name": "transformer_lens.loading_from_pretrained",
    "get_pretrained_model_config": "transformer_lens.loading_from_pretrained",
    "get_pretrained_state_dict": "transformer_lens.loading_from_pretrained",
}


def require_hooked_transformer(feature: str) -> None:
    """Refuse ``feature`` in one line where TransformerLens has no HookedTransformer (4.x)."""
    if not HAS_HOOKED_TRANSFORMER:
        raise ProbesError(
            f"{feature} needs transformer-lens 3.x (HookedTransformer), and this is transformer-lens {VERSION}; "
            "on 4.x use probes.load_bridge"
        )


def __getattr__(name: str):
    """``tl.HookedTransformer`` and the other :data:`TL3_ONLY` names, imported when first used."""
    if name not in TL3_ONLY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_hooked_transformer(f"transformer_lens.{name}")
    return getattr(importlib.import_module(TL3_ONLY[name]), name)
