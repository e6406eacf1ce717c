"""Hook names and hook points, TransformerLens's: the names the kit's hooks go by (:class:`~probes.models.protocol.HookedModel`).

Both exist unchanged in TransformerLens 3.x and 4.x. The stages import them from here, so that every import of
TransformerLens stays inside :mod:`probes.models`.
"""

from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.components_utils import get_act_name  # re-exported by utilities, not in its __all__

__all__ = ["HookPoint", "get_act_name"]
