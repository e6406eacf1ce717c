"""A TransformerBridge in compatibility mode (no weight processing) gives the numbers the HookedTransformer path
gives, for every attention, patching, edge and claim function: the same checkpoint loaded both ways.

The bridge runs the Hugging Face forward pass and its patched runs are whole forward passes with hooks
(:mod:`probes.evidence.patching.hooked`); the HookedTransformer path runs TransformerLens's converted weights
through the exact engine (itself checked against plain TransformerLens hooks in test_patching / test_edges).
"""

import pytest
import torch

import probes
from probes.core.errors import ProbesError
from probes.models import loading, tl
from probes.models.bridge import load_bridge
from probes.prompts.promptset import PromptSet

from test_edges import plain_edge_effect
from test_hf_checkpoint import _tiny

VOCAB = 96
# On TransformerLens 4.x (make test-tl4) the bridge tests run without the HookedTransformer path; their ground
# truth there is plain hooks on the bridge itself.
needs_hooked_transformer = pytest.mark.skipif(
    not tl.HAS_HOOKED_TRANSFORMER, reason=f"compares with the HookedTransformer path: transformer-lens 3.x only ({tl.VERSION} here)"
)


def _save_tiny(kind: str, path):
    """A tiny random HF checkpoint with a word-level tokenizer (a bridge needs one), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = _tiny(kind)
    with torch.no_grad():  # sharper attention than the default init's 0.02: every measure below then moves
        for weight in model.parameters():
            if weight.ndim == 2:
                weight.mul_(8)
    model.save_pretrained(path)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="w1", eos_token="w2", unk_token="w0").save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_checkpoint(request, tmp_path_factory):
    """A tiny checkpoint and a cache folder for its conversion. (The folder is not named after the architecture:
    TransformerLens 3.9 reads architecture hints from a config's path.)"""
    root = tmp_path_factory.mktemp("tiny")
    return _save_tiny(request.param, root / "ckpt"), root / "cache"


@pytest.fixture(scope="module")
def tiny_bridge(tiny_checkpoint):
    return load_bridge(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def tiny_pair(tiny_checkpoint, tiny_bridge):
    """The same tiny checkpoint as a HookedTransformer (converted) and as a bridge."""
    path, cache = tiny_checkpoint
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROBES_CACHE", str(cache))
        return probes.load_model(path), tiny_bridge


def _prompts(n: int = 4, n_pos: int = 12) -> PromptSet:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(3, VOCAB, (n, n_pos), generator=g)
    corrupt = clean.clone()
    corrupt[:, 5] = (clean[:, 5] + 1 + torch.randint(VOCAB - 4, (n,), generator=g)) % (VOCAB - 3) + 3
    answer, foil = torch.randint(3, VOCAB, (2, n), generator=g)
    roles = {"S2": torch.full((n,), 2), "IO": torch.full((n,), 5), "end": torch.full((n,), n_pos - 1)}
    return PromptSet.from_tokens(clean, corrupt, answer, foil, roles)


MEASURES = {
    "role_attention": lambda m, p: probes.role_attention(m, p, "end", "IO"),
    "head_scores": lambda m, p: probes.head_scores(m, "previous_token", n=4),
    **{f"patch_heads:{c}": (lambda c: lambda m, p: probes.patch_heads(m, p, c, progress=False))(c)
       for c in ("z", "pattern", "q", "k", "v")},
    **{f"edge_effects:{i}": (lambda i: lambda m, p: probes.edge_effects(
        m, p, "end", "IO", intervention=i, progress=False).effect)(i) for i in ("knockout", "pattern_row", "z_at")},
}  # fmt: skip


@needs_hooked_transformer
@pytest.mark.parametrize("measure", list(MEASURES))
def test_bridge_equals_hooked_transformer(tiny_pair, measure):
    hooked, bridge = tiny_pair
    prompts = _prompts()
    ours, theirs = MEASURES[measure](hooked, prompts), MEASURES[measure](bridge, prompts)
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 1e-4  # the measure moves: the comparison is not of two zeros
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("intervention", ["knockout", "pattern_row", "z_at"])
def test_bridge_edges_equal_plain_hooks_on_the_bridge(tiny_bridge, intervention):
    """Ground truth without a HookedTransformer (as on TransformerLens 4): one head at a time, plain hooks on the
    bridge itself in a full forward pass, the logit difference read from full logits."""
    bridge, prompts = tiny_bridge, _prompts()
    ours = probes.edge_effects(bridge, prompts, "end", "IO", intervention=intervention, progress=False).effect
    for layer, head in [(0, 1), (1, 3)]:
        theirs = plain_edge_effect(bridge, prompts, "end", "IO", layer, head, intervention)
        assert theirs.abs().max() > 1e-4
        assert (ours[:, layer, head] - theirs).abs().max().item() < 1e-5


def _evidence_gap(a, b) -> float:
    """Largest difference between two ClaimResults' evidence values and interval bounds."""
    gaps = [0.0]
    for key, x in a.evidence.items():
        y = b.evidence[key]
        for field in ("value", "low", "high"):
            u, v = getattr(x, field, None), getattr(y, field, None)
            if u is not None and not (u != u and v != v):  # NaN on both sides counts as equal
                gaps.append(abs(u - v))
    return max(gaps)


@needs_hooked_transformer
def test_bridge_claim_equals_hooked_transformer(tiny_pair):
    hooked, bridge = tiny_pair
    prompts = _prompts()
    claim = probes.Claim(head=(1, 0), src="end", dst="IO", foil="S2")
    ours, theirs = probes.evaluate(hooked, prompts, claim), probes.evaluate(bridge, prompts, claim)
    assert ours.verdict == theirs.verdict
    assert set(ours.evidence) == set(theirs.evidence)
    assert _evidence_gap(ours, theirs) < 1e-4


def test_bridge_outside_compatibility_mode_is_refused(tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    path = _save_tiny("llama", tmp_path / "ckpt")
    raw = TransformerBridge.boot_transformers(str(path), device="cpu")
    with pytest.raises(ProbesError, match="not in compatibility mode"):
        probes.patch_heads(raw, _prompts(), progress=False)


def test_hooked_transformer_features_refuse_transformer_lens_4(tiny_checkpoint, monkeypatch):
    """On 4.x (or pretending to be, on 3.x) each HookedTransformer feature refuses in one line, naming the bridge."""
    monkeypatch.setattr(tl, "HAS_HOOKED_TRANSFORMER", False)
    monkeypatch.setattr(tl, "VERSION", tl.VERSION if tl.VERSION.startswith("4.") else "4.3.0")
    for feature, run in [("probes.load_model", lambda: probes.load_model(tiny_checkpoint[0])),
                         ("load_model_dir", lambda: loading.load_model_dir(tiny_checkpoint[0])),
                         ("probes.toy", probes.toy.build), ("probes.toy", probes.toy.build_random),
                         ("transformer_lens.HookedTransformer", lambda: tl.HookedTransformer)]:  # fmt: skip
        with pytest.raises(ProbesError, match=r"^" + feature.replace(".", r"\.") + r" needs transformer-lens 3\.x "
                           r"\(HookedTransformer\), and this is transformer-lens 4\.[^;]*; on 4\.x use probes\.load_bridge$"):
            run()


@needs_hooked_transformer
def test_load_bridge_refuses_a_kit_model_directory(toy_model, tmp_path):
    loading.save_model_dir(toy_model.model, tmp_path / "toy")
    with pytest.raises(ProbesError, match="neither"):
        load_bridge(tmp_path / "toy")


# ---------------------------------------------------------------------------------------------------------------
# The packaged models, written once as HF checkpoints (load_bridge), against their HookedTransformer loads


def _gap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest difference where both ran (NaN where a restricted sweep did not run, in both)."""
    assert torch.equal(ours.isnan(), theirs.isnan())
    return (ours - theirs).nan_to_num().abs().max().item()


@needs_hooked_transformer
@pytest.mark.real
@pytest.mark.parametrize(("name", "fixture", "head"), [("smollm2-135m", "smollm2", (9, 1)), ("gemma-3-270m", "gemma", (6, 1))])
def test_packaged_bridge_equals_hooked_transformer(name, fixture, head, request):
    """Two IOI pairs, three layers' heads (a bridge's patched runs are whole forward passes: slow)."""
    hooked, bridge = request.getfixturevalue(fixture), load_bridge(name)
    prompts = probes.tasks.ioi(hooked, 2, seed=0, templates=[0, 1])
    assert torch.equal(probes.tasks.ioi(bridge, 2, seed=0, templates=[0, 1]).clean, prompts.clean)
    n_layers = hooked.cfg.n_layers
    layers = [0, n_layers // 2, n_layers - 1]
    heads = [(layer, h) for layer in layers for h in range(2)]
    measures = {
        "role_attention": lambda m: probes.role_attention(m, prompts, "end", "IO"),
        "patch_heads": lambda m: probes.patch_heads(m, prompts, "z", layers=layers, progress=False),
        "edge_effects": lambda m: probes.edge_effects(m, prompts, "end", "IO", heads=heads, progress=False).effect,
    }
    gaps = {measure: _gap(run(hooked), run(bridge)) for measure, run in measures.items()}
    claim = probes.Claim(head=head, src="end", dst="IO", foil="S2")
    ours, theirs = probes.evaluate(hooked, prompts, claim), probes.evaluate(bridge, prompts, claim)
    gaps["evaluate"] = _evidence_gap(ours, theirs)
    print(f"{name}: max |bridge - HookedTransformer|", {k: f"{v:.1e}" for k, v in gaps.items()})  # docs/bridge.md
    assert ours.verdict == theirs.verdict
    assert max(gaps.values()) < 1e-4, gaps
