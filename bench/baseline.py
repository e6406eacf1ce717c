"""What the benchmarks compare against: TransformerLens as shipped.

The kit's models have their weights re-laid out (probes.layout), which TransformerLens's own functions also
profit from. A fair baseline is the same model and weights in TransformerLens's own layout, as a TransformerLens
user has them.
"""

from __future__ import annotations

import copy

from transformer_lens import HookedTransformer


def transformerlens_as_shipped(model: HookedTransformer) -> HookedTransformer:
    """A copy of ``model`` with every parameter made contiguous again: TransformerLens's own layout."""
    plain = copy.deepcopy(model)
    for param in plain.parameters():
        param.data = param.data.contiguous()
    return plain
