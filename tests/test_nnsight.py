"""nnsight, the peer ``bench/patching.py`` times against the kit, computes the same per-head z patching effects
as :func:`probes.patch_heads` (so the bench compares like with like). Ground truth on the other side: nnsight's
own interventions on the plain Hugging Face model the kit's SmolLM2 is converted from."""

import sys
from pathlib import Path

import pytest
import torch

import probes
from probes import tasks

pytest.importorskip("nnsight", reason="nnsight is an optional bench dependency: pip install -e '.[bench]'")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from baseline import hf_checkpoint  # noqa: E402
from peer_nnsight import load, patch_heads_nnsight  # noqa: E402


@pytest.mark.real
def test_nnsight_per_head_effects_equal_patch_heads(smollm2) -> None:
    prompts = tasks.ioi(smollm2, 2, corruption="flip_s2", templates=[0, 1])
    heads = [(0, 0), (9, 4), (20, 7), (29, 8)]
    ours = probes.patch_heads(smollm2, prompts, "z", cells=heads, progress=False)
    theirs = patch_heads_nnsight(load(hf_checkpoint("smollm2-135m")), prompts, heads)
    layer, head = map(list, zip(*heads))
    assert theirs.effect[:, layer, head].abs().max() > 0.05  # heads that move the answer: a real comparison
    torch.testing.assert_close(theirs.effect[:, layer, head], ours[:, layer, head], atol=1e-4, rtol=0)
    unpatched = torch.ones_like(theirs.patched, dtype=torch.bool)
    unpatched[:, layer, head] = False
    assert theirs.patched[unpatched].isnan().all()
