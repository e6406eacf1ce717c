"""Hook points on every downstream input separately: each head's q input, each key/value head's k and v input,
each MLP's input.

TransformerLens reads all of a layer's queries, keys and values from one residual stream unless
``cfg.use_split_qkv_input`` is set (then ``hook_q_input`` is ``[batch, pos, head, d_model]``, one copy per query
head, and ``hook_k_input``/``hook_v_input`` one per key/value head), and hooks the MLP's input only with
``cfg.use_hook_mlp_in``. :func:`split_inputs` sets both for the duration of a run and restores them, so a user's
model is never left changed. The hooked copies are the residual stream BEFORE the block's ``ln1``/``ln2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from probes.models.hooks import get_act_name
from probes.models.protocol import HookedModel

FLAGS = ("use_split_qkv_input", "use_hook_mlp_in")


@contextmanager
def split_inputs(model: HookedModel) -> Iterator[None]:
    """Within the block, every q/k/v input and MLP input has its own hook point (see the module docstring)."""
    before = {flag: getattr(model.cfg, flag) for flag in FLAGS}
    try:
        for flag in FLAGS:
            setattr(model.cfg, flag, True)
        yield
    finally:
        for flag, value in before.items():
            setattr(model.cfg, flag, value)


def input_hook(kind: str, layer: int) -> str:
    """The hook name of a downstream input kind (``q``, ``k``, ``v``, ``mlp_in``) of ``layer``, under
    :func:`split_inputs`."""
    return get_act_name({"q": "q_input", "k": "k_input", "v": "v_input", "mlp_in": "mlp_in"}[kind], layer)
