"""Local/global claims on planted toys: a long link through the global layer is supported, a local relay refutes it.

Ground truth is construction (probes.models.toy.build_local_global: layers local, local, global, window 4): the
direct model's antecedent head sits in the global layer; the relay model carries the antecedent forward in two
local hops and its global layer holds only small random heads. The mask check is against plain TransformerLens
attention patterns; the model directory round trip checks the window is read from config.json.
"""

import pytest
import torch

import probes
from probes.claims.localglobal import LocalGlobal, decide_local_global
from probes.core.errors import ProbesError
from probes.evidence.localglobal import layer_types, local_global
from probes.models import loading, toy
from probes.prompts.promptset import PromptSet
from probes.prompts.tasks.toy import distant_pronoun_prompts

N = 48


@pytest.fixture(scope="module")
def direct():
    return toy.build_local_global(relay=False)


@pytest.fixture(scope="module")
def relay():
    return toy.build_local_global(relay=True)


@pytest.fixture(scope="module")
def prompts(direct):
    return distant_pronoun_prompts(direct, N, fillers=(0, 3))


def test_prompts_put_the_antecedent_on_both_sides_of_the_window(prompts):
    distance = prompts.role("pronoun") - prompts.role("antecedent")
    assert (distance >= toy.LOCAL_WINDOW).sum() == N // 2 and (distance < toy.LOCAL_WINDOW).sum() == N // 2


def test_a_long_link_through_the_global_layer_is_supported(direct, prompts):
    result = local_global(direct.model, prompts)
    assert result.window == toy.LOCAL_WINDOW and result.types == ("local", "local", "global")
    assert result.estimate("beyond", "global_cut_share").ci_low > 0.95  # the antecedent head falls back on <bos>
    assert abs(result.estimate("beyond", "local_cut_share").value) < 0.05
    assert result.estimate("beyond", "attention_global").value > 0.99
    verdict = decide_local_global(result)
    assert verdict.verdict == "supported", verdict.sentence


def test_a_local_relay_refutes_it(relay, prompts):
    result = local_global(relay.model, prompts)
    assert result.estimate("beyond", "clean_accuracy").value == 1.0  # the relay answers beyond the window
    assert result.estimate("beyond", "local_cut_share").ci_low > 0.95
    assert abs(result.estimate("beyond", "global_cut_share").value) < 0.05
    verdict = decide_local_global(result)
    assert verdict.verdict == "refuted", verdict.sentence
    assert "relayed by local layers" in verdict.sentence


def test_local_layers_cannot_attend_beyond_the_window(relay, prompts):
    """The kit's number against plain TransformerLens patterns: 0 in local layers beyond the window, and the
    collector head does attend to names within it (so the check can fail)."""
    result = local_global(relay.model, prompts)
    assert result.local_beyond_max == 0.0
    _, cache = relay.model.run_with_cache(prompts.clean)
    rows, src, dst = torch.arange(N), prompts.role("pronoun"), prompts.role("antecedent")
    beyond = (src - dst) >= toy.LOCAL_WINDOW
    for layer in (0, 1):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][rows, :, src, dst]
        assert pattern[beyond].max().item() == 0.0
        assert torch.allclose(pattern, result.attention[:, layer])
    assert cache["blocks.0.attn.hook_pattern"][rows, 0, src, dst][~beyond].max() > 0.3


def test_no_prompt_beyond_the_window_is_inconclusive(direct):
    near = distant_pronoun_prompts(direct, 12, fillers=(0,))
    verdict = decide_local_global(local_global(direct.model, near))
    assert verdict.verdict == "inconclusive" and "add longer fillers" in verdict.sentence


def test_window_is_read_from_a_model_directory(direct, tmp_path):
    loaded = probes.load_model(loading.save_model_dir(direct.model, tmp_path / "local"))
    types = layer_types(loaded)
    assert types.types == ("local", "local", "global") and types.window == toy.LOCAL_WINDOW


def test_bad_input_is_one_line(direct, prompts, toy_model):
    with pytest.raises(ProbesError, match="no sliding-window.*not applicable"):
        local_global(toy_model.model, probes.tasks.pronoun_prompts(toy_model, 8))
    backwards = PromptSet.from_tokens(prompts.clean, prompts.corrupt, prompts.answer, prompts.foil,
                                      prompts.roles | {"later": prompts.role("pronoun")})
    with pytest.raises(ProbesError, match="prompt 0: 'later'.*is not before 'antecedent'"):
        local_global(direct.model, backwards, src="antecedent", dst="later")
    with pytest.raises(ProbesError, match="no role 'nobody'|role 'nobody'"):
        local_global(direct.model, prompts, dst="nobody")
    assert str(LocalGlobal()) == "the link from the pronoun back to the antecedent runs through the global layers"
