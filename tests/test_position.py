"""Position or content: the counterfactual decomposition and the rotary bands against planted heads whose pathway is
known by construction, the bookkeeping against hand-written token lists, and the band terms against
TransformerLens's own scores and a hooked rerun."""

import dataclasses
import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities import get_act_name

from probes import toy
from probes.core.errors import ProbesError
from probes.evidence.attention import role_attention
from probes.core.notebook import number
from probes.evidence.position import (
    LABEL_THRESHOLDS, MIN_LIFT, SHARE_HIGH, SHARE_LOW, _check_retokenises, counterfactuals, insert_tokens, label, position_content,
    swap_tokens,
)
from probes.evidence.rotary import UNROTATED, band_masks, pair_angles, rotary_bands
from probes.models.architecture import kv_head_of
from probes.prompts.promptset import PromptSet

NAMES = list(range(toy.FEMALE_NAMES.start, toy.MALE_NAMES.stop))
FILLER = [toy.VOCAB.index(" and"), toy.VOCAB.index(" the")]
REPLACEMENTS = [toy.VOCAB.index(w) for w in (" park", " store", " ball")]


def name_prompts(n: int = 16, length: int = 8, seed: int = 0) -> PromptSet:
    """``<bos>`` and filler words with one name at a random place (role ``name``), never last."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(toy.FILLERS.start, toy.D_VOCAB, (n, length), generator=gen)
    clean[:, 0] = toy.BOS
    at = torch.randint(1, length - 1, (n,), generator=gen)
    clean[torch.arange(n), at] = torch.tensor(NAMES)[torch.randint(len(NAMES), (n,), generator=gen)]
    return PromptSet.from_tokens(clean, clean, torch.zeros(n), torch.zeros(n), {"name": at})


@pytest.fixture(scope="module")
def planted():
    return toy.build_position_content()


@pytest.fixture(scope="module")
def rotary():
    return toy.build_rotary()


# --- bookkeeping ---------------------------------------------------------------------------------------------


def test_insert_moves_roles_with_their_tokens_and_the_end_moves():
    clean = torch.tensor([[0, 11, 12, 13, 14, 15], [0, 21, 22, 23, 99, 99]])
    prompts = PromptSet.from_tokens(
        clean, clean + 100, torch.zeros(2), torch.zeros(2),
        {"a": torch.tensor([1, 2]), "b": torch.tensor([4, 3]), "end": torch.tensor([5, 3])},
    )
    moved = insert_tokens(prompts, torch.tensor([2, 1]), torch.tensor([7, 8]))
    assert moved.clean[0].tolist() == [0, 11, 12, 7, 8, 13, 14, 15]
    assert moved.clean[1, :6].tolist() == [0, 21, 7, 8, 22, 23]
    assert moved.corrupt[0].tolist() == [100, 111, 112, 7, 8, 113, 114, 115]
    assert moved.roles["a"].tolist() == [1, 4]  # at the insertion point: stays; after it: moves with its token
    assert moved.roles["b"].tolist() == [6, 5]
    assert moved.end.tolist() == [7, 5]
    for i, name in [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (0, "end"), (1, "end")]:
        assert moved.clean[i, moved.roles[name][i]] == prompts.clean[i, prompts.roles[name][i]]


def test_swap_replaces_one_token_and_moves_nothing():
    clean = torch.tensor([[0, 11, 12, 13], [0, 21, 22, 23]])
    prompts = PromptSet.from_tokens(clean, clean, torch.zeros(2), torch.zeros(2), {"a": torch.tensor([1, 2])})
    swapped = swap_tokens(prompts, torch.tensor([1, 2]), torch.tensor([5, 6]))
    assert swapped.clean.tolist() == [[0, 5, 12, 13], [0, 21, 6, 23]]
    assert swapped.roles["a"].tolist() == [1, 2] and swapped.end.tolist() == prompts.end.tolist()


def test_label_rule():
    assert label(5, 0.95, 0.05) == "positional"
    assert label(5, 0.05, 0.95) == "content"
    assert label(5, 0.6, 0.6) == "mixed"
    assert label(5, 0.1, 0.1) == "neither"
    assert label(1.0, 0.95, 0.05) == "neither"  # no more than uniform attention: nothing to split


EPS = 1e-9  # just past a threshold


def test_label_thresholds_hold_at_their_boundaries_and_flip_just_past_them():
    """Each threshold is inclusive (>= SHARE_HIGH, <= SHARE_LOW, lift >= MIN_LIFT) and a step past it changes the
    label: a changed comparison or a constant mixed up with another fails here."""
    lift = 2 * MIN_LIFT
    assert label(lift, SHARE_HIGH, SHARE_LOW) == "positional"
    assert label(lift, SHARE_HIGH - EPS, SHARE_LOW) == "mixed"
    assert label(lift, SHARE_HIGH, SHARE_LOW + EPS) == "mixed"
    assert label(lift, SHARE_LOW, SHARE_HIGH) == "content"
    assert label(lift, SHARE_LOW, SHARE_HIGH - EPS) == "mixed"
    assert label(lift, SHARE_LOW + EPS, SHARE_HIGH) == "mixed"
    assert label(lift, SHARE_LOW, SHARE_LOW) == "neither"
    assert label(lift, SHARE_LOW + EPS, SHARE_LOW) == "mixed" and label(lift, SHARE_LOW, SHARE_LOW + EPS) == "mixed"
    assert label(MIN_LIFT, SHARE_HIGH, SHARE_LOW) == "positional"
    assert label(MIN_LIFT - EPS, SHARE_HIGH, SHARE_LOW) == "neither"
    assert label(MIN_LIFT - EPS, SHARE_LOW, SHARE_HIGH) == "neither"


def test_the_documented_label_thresholds_are_the_constants():
    """position_content's docstring and docs/position-content.md state the numbers: a constant changed without them fails."""
    from pathlib import Path

    doc = " ".join(position_content.__doc__.split())
    for name, value in (("SHARE_HIGH", SHARE_HIGH), ("SHARE_LOW", SHARE_LOW), ("MIN_LIFT", MIN_LIFT)):
        assert f"``{name}`` = {value:g}" in doc
    assert "mean over all shifts of that shift's share" in doc and "``.moved``" in doc
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "position-content.md").read_text().split())
    assert f"(positional share >= {SHARE_HIGH:g}, content share <= {SHARE_LOW:g})" in page
    assert f"both <= {SHARE_LOW:g}, or attention under {MIN_LIFT:g} times uniform" in page
    assert LABEL_THRESHOLDS == {"share_high": SHARE_HIGH, "share_low": SHARE_LOW, "min_lift": MIN_LIFT}


class MergingTokenizer:
    """Greedy longest match over a tiny vocabulary where " cat" then "s" read back as the one token " cats": the
    way a real tokenizer merges a filler into its neighbour (Gemma: "s" after " cat")."""

    vocab = ["<bos>", " cat", "s", " cats", " sat", " the"]
    bos_token_id = 0

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

    def __call__(self, text, add_special_tokens=False):
        ids = []
        while text:
            word = max((w for w in self.vocab[1:] if text.startswith(w)), key=len)
            ids.append(self.vocab.index(word))
            text = text[len(word):]
        return {"input_ids": ids}


def test_a_filler_that_merges_with_its_neighbour_is_refused():
    model = SimpleNamespace(tokenizer=MergingTokenizer(), cfg=SimpleNamespace(default_prepend_bos=True))
    vocab = MergingTokenizer.vocab
    clean = torch.tensor([[vocab.index(w) for w in ("<bos>", " the", " cat", " sat")]])
    base = PromptSet.from_tokens(clean, clean, torch.zeros(1), torch.zeros(1), {"cat": torch.tensor([2])})
    after_cat = torch.tensor([2])
    merged = insert_tokens(base, after_cat, torch.tensor([vocab.index("s")]))  # " the cats sat": 3 tokens, not 4
    with pytest.raises(ProbesError, match="prompt 0: the filler changes the tokenisation length"):
        _check_retokenises(model, base, merged, "filler")
    _check_retokenises(model, base, insert_tokens(base, after_cat, torch.tensor([vocab.index(" the")])), "filler")


# --- ground truth: planted heads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "which", "high", "low"),
    [("previous", "positional", "positional_share", "content_share"),
     ("name", "content", "content_share", "positional_share")],
)
def test_planted_heads_get_their_pathway(planted, dst, which, high, low):
    """Acceptance: the planted positional head keeps >= 0.9 of its attention under a content swap and <= 0.1
    follows a move; the planted content head the reverse (whole intervals, not only the estimates)."""
    prompts = name_prompts()
    result = position_content(planted.model, prompts, "end", dst, filler=FILLER, replacements=REPLACEMENTS)
    row = result.table.set_index(["layer", "head"]).loc[getattr(planted.heads, which)]
    assert row["attention"] > 0.99
    assert row[f"{high}_ci_low"] >= 0.9 and row[f"{low}_ci_high"] <= 0.1
    assert row["label"] == which
    if which == "positional":
        assert row["offset_share"] >= 0.9  # it stays at distance 1 (now a filler)
    assert result.moved.shape == (len(prompts), 3, 1, 4) and result.swapped.shape == (len(prompts), 1, 4)


def test_clean_attention_and_masses_match_role_attention(planted):
    prompts = name_prompts()
    result = position_content(planted.model, prompts, "end", "name", filler=FILLER, replacements=REPLACEMENTS)
    torch.testing.assert_close(result.attention, role_attention(planted.model, prompts, "end", "name"))
    torch.testing.assert_close(result.sink, role_attention(planted.model, prompts, "end", torch.zeros(16)))
    torch.testing.assert_close(result.self_mass, role_attention(planted.model, prompts, "end", "end"))


def test_heads_subset_hooks_only_those(planted):
    prompts = name_prompts(n=4)
    result = position_content(
        planted.model, prompts, "end", "name", heads=[(0, 1)], filler=FILLER, replacements=REPLACEMENTS
    )
    assert result.table[["layer", "head"]].values.tolist() == [[0, 1]]
    assert torch.isnan(result.attention[:, 0, 0]).all() and not torch.isnan(result.attention[:, 0, 1]).any()


def test_position_content_runs_no_layer_after_the_last_it_needs_and_no_logits():
    """Only layer 0 is asked for: the next block and the unembedding must never run (a control run shows the
    same hooks do fire on a full forward pass)."""
    model = toy.build().model
    fired = []
    model.blocks[1].hook_resid_pre.add_hook(lambda act, hook: fired.append(hook.name), is_permanent=True)
    handle = model.unembed.register_forward_hook(lambda *args: fired.append("unembed"))
    prompts = name_prompts(n=4)
    try:
        model(prompts.clean)
        assert fired == ["blocks.1.hook_resid_pre", "unembed"]
        fired.clear()
        result = position_content(model, prompts, "end", "previous", heads=[(0, 2)], filler=FILLER,
                                  replacements=REPLACEMENTS)
    finally:
        model.reset_hooks(including_permanent=True)
        handle.remove()
    assert fired == []
    assert not torch.isnan(result.attention[:, 0, 2]).any()


def test_rotary_head_is_positional_and_uses_only_the_fastest_band(rotary):
    prompts = name_prompts(length=toy.ROTARY_MAX_LEN)
    head = rotary.heads.fastest_band
    shares = position_content(rotary.model, prompts, "end", "previous", filler=FILLER, replacements=REPLACEMENTS,
                              shifts=(1, 2))
    assert shares.table.set_index(["layer", "head"]).loc[head, "label"] == "positional"
    bands = rotary_bands(rotary.model, prompts, "end", "previous")
    rows = bands.table[(bands.table["layer"] == head[0]) & (bands.table["head"] == head[1])].set_index("band")
    assert rows.loc["band 0", "wins"] and rows.loc["band 0", "margin"] > 10
    assert rows.loc["band 0", "attention_change"] < -0.5  # ablating it loses the previous token
    others = rows.drop(index="band 0")
    assert np.allclose(others[["dst_logit", "foil_logit", "margin", "attention_change"]], 0, atol=1e-6)
    assert rows.loc["band 0", "wavelength_min"] == pytest.approx(2 * np.pi)  # 1 radian a token
    # the result contract: to_frame is the table, and a notebook shows what the assertions above read
    pd.testing.assert_frame_equal(shares.to_frame(), shares.table)
    pd.testing.assert_frame_equal(bands.to_frame(), bands.table)
    assert f"head {head[0]}.{head[1]} (positional" in shares._repr_html_()
    assert f"head {head[0]}.{head[1]} band 0 margin" in bands._repr_html_()


def rotary_prompts(name_at: list[int]) -> PromptSet:
    """``<bos>`` and fillers, ``ROTARY_MAX_LEN`` tokens, one name at ``name_at[i]`` in prompt ``i``."""
    n = len(name_at)
    clean = torch.full((n, toy.ROTARY_MAX_LEN), toy.FILLERS.start)
    clean[:, 0] = toy.BOS
    clean[torch.arange(n), torch.tensor(name_at)] = NAMES[0]
    return PromptSet.from_tokens(clean, clean, torch.zeros(n), torch.zeros(n), {"name": torch.tensor(name_at)})


def test_rotary_bands_with_a_foil_match_the_planted_cosine(rotary):
    """The planted head scores key ``j`` from query ``i`` as ``2 SCORE cos(1 - (i - j))``, all in band 0: with the
    name as the foil, band 0's foil term and margin are that cosine at the name's distance."""
    head = rotary.heads.fastest_band
    prompts = rotary_prompts([1, 2, 3, 4, 5, 2, 3, 1])
    bands = rotary_bands(rotary.model, prompts, "end", "previous", foil="name", heads=[head])
    distance = (prompts.end - prompts.roles["name"]).float()
    expected_foil = 2 * toy.SCORE * torch.cos(1 - distance)
    torch.testing.assert_close(bands.foil_logit[:, 0, 0, 0], expected_foil, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bands.dst_logit[:, 0, 0, 0], torch.full_like(expected_foil, 2 * toy.SCORE),
                               rtol=1e-4, atol=1e-4)
    rows = bands.table.set_index("band")
    assert rows.loc["band 0", "margin"] == pytest.approx(float((2 * toy.SCORE - expected_foil).mean()), rel=1e-4)
    assert np.allclose(rows.drop(index="band 0")[["foil_logit", "margin"]], 0, atol=1e-6)


def test_wins_reads_the_interval_simultaneous_over_heads_and_bands(rotary):
    """Band 0's margin is positive in 4 of 16 prompts (the name 4 back), 0 elsewhere (the name is the previous
    token): a positive mean whose 95% interval clears 0 (a resample misses all four about 1% of the time) but whose
    interval simultaneous over 4 bands (each at 1 - 0.05/4) does not. Alone (one band) it wins; among 4 it does not."""
    head = rotary.heads.fastest_band
    prompts = rotary_prompts([2] * 4 + [toy.ROTARY_MAX_LEN - 2] * 12)
    alone = rotary_bands(rotary.model, prompts, "end", "previous", foil="name", heads=[head], n_bands=1).table
    among = rotary_bands(rotary.model, prompts, "end", "previous", foil="name", heads=[head]).table.set_index("band")
    assert alone.loc[0, "margin"] > 0 and alone.loc[0, "margin_ci_low"] > 0
    assert alone.loc[0, "wins"]  # a family of one: the 95% interval
    band0 = among.loc["band 0"]
    assert band0["margin"] == pytest.approx(alone.loc[0, "margin"]) and band0["margin_ci_low"] > 0
    assert band0["margin_family_ci_low"] <= 0 and not band0["wins"]


# --- rotary bands against TransformerLens ---------------------------------------------------------------------


def gemma_like(seed: int = 0) -> HookedTransformer:
    """Random weights, Gemma-3's layout in small: grouped-query attention, a sliding-window layer with its own
    rotary base, then a global layer, query/key norms, GPT-J-style pairs in neither (NeoX)."""
    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=4, n_key_value_heads=2, d_model=32, d_head=8, d_vocab=50, n_ctx=32, act_fn="gelu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, rotary_base=10000,
        rotary_base_local=10, use_local_attn=True, attn_types=["local", "global"], window_size=5,
        use_qk_norm=True, seed=seed, device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    return model.eval()


def random_prompts(n: int = 6, length: int = 10) -> PromptSet:
    clean = torch.randint(1, 50, (n, length), generator=torch.Generator().manual_seed(1))
    return PromptSet.from_tokens(clean, clean, torch.zeros(n), torch.zeros(n), {"mid": torch.full((n,), 6)})


def test_local_and_global_layers_use_their_own_rotary_base():
    model = gemma_like()
    j = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(pair_angles(model, 0), 10.0 ** (-2 * j / 8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair_angles(model, 1), 10000.0 ** (-2 * j / 8), rtol=1e-5, atol=1e-6)
    assert band_masks(model, 0, 2)[1][0][0] == pytest.approx(2 * np.pi, rel=1e-5)


@pytest.mark.parametrize("ablated_in", [("rot_q",), ("rot_k",), ("rot_q", "rot_k")])
def test_band_terms_sum_to_scores_and_ablation_matches_a_hooked_rerun(ablated_in):
    """The closed-form ablation equals a rerun that zeroes the band in the head's query, in its key head (shared
    with another query head under grouped-query attention: only this head's pattern is read), or in both."""
    model = gemma_like()
    prompts = random_prompts()
    result = rotary_bands(model, prompts, "end", "mid", n_bands=2)
    _, cache = model.run_with_cache(prompts.clean)
    for layer in range(2):
        scores = cache[get_act_name("attn_scores", layer)][:, :, -1, 6]
        torch.testing.assert_close(result.dst_logit[:, layer].sum(-1).float(), scores, rtol=1e-4, atol=1e-5)
    layer, head, band = 1, 3, 0
    dims = band_masks(model, layer, 2)[0][band].bool()
    index = {"rot_q": head, "rot_k": int(kv_head_of(model)[head])}  # rot_k: [batch, pos, kv_head, d_head]

    def zero_band(at: int):
        def hook(x, hook):
            x[:, :, at, dims] = 0.0
            return x

        return hook

    kept = {}

    def keep(pattern, hook):
        kept["p"] = pattern[:, head, -1, 6]

    model.run_with_hooks(
        prompts.clean,
        fwd_hooks=[(get_act_name(kind, layer), zero_band(index[kind])) for kind in ablated_in]
        + [(get_act_name("pattern", layer), keep)],
        stop_at_layer=layer + 1,
    )
    torch.testing.assert_close(result.ablated[:, layer, head, band].float(), kept["p"], rtol=1e-4, atol=1e-5)
    unablated = cache[get_act_name("pattern", layer)][:, head, -1, 6]
    assert (kept["p"] - unablated).abs().max() > 1e-3  # the ablation did change something


def test_unrotated_dims_form_their_own_band():
    model = gemma_like()
    model.cfg.rotary_dim = 4  # half the head rotated; the tables below are rebuilt for it
    for block in model.blocks:
        sin, cos = block.attn.calculate_sin_cos_rotary(4, 32, base=block.attn._rotary_base())
        block.attn.rotary_sin, block.attn.rotary_cos = sin, cos
    result = rotary_bands(model, random_prompts(), "end", "mid", n_bands=2)
    assert result.bands == ["band 0", "band 1", UNROTATED]
    assert result.wavelengths[0][-1] == (float("inf"), float("inf"))


# --- bad input --------------------------------------------------------------------------------------------------


def test_token_id_prompts_need_filler_and_replacements(planted):
    with pytest.raises(ProbesError, match="filler=.*replacements="):
        position_content(planted.model, name_prompts(n=2), "end", "name")


def test_shift_past_context_is_refused(planted):
    with pytest.raises(ProbesError, match="past the model's context"):
        position_content(planted.model, name_prompts(n=2), "end", "name", filler=FILLER,
                         replacements=REPLACEMENTS, shifts=(toy.N_CTX,))


def test_text_filler_needs_a_tokenizer_and_ids_in_range(planted):
    with pytest.raises(ProbesError, match="no tokenizer"):
        position_content(planted.model, name_prompts(n=2), "end", "name", filler=[" and"], replacements=REPLACEMENTS)
    with pytest.raises(ProbesError, match="token id"):
        position_content(planted.model, name_prompts(n=2), "end", "name", filler=[10_000], replacements=REPLACEMENTS)


def test_rotary_bands_refuses_learned_positions(planted):
    with pytest.raises(ProbesError, match="rotary model"):
        rotary_bands(planted.model, name_prompts(n=2), "end", "previous")


# --- packaged models ----------------------------------------------------------------------------------------------


@pytest.mark.real
def test_gemma_text_defaults_and_tokenisation_check(gemma):
    from probes.prompts import tasks

    prompts = tasks.pronoun_resolution(gemma, 12)
    heads, layers, head_ids = [(0, 0), (5, 1)], [0, 5], [0, 1]
    result = position_content(gemma, prompts, "pronoun", "antecedent", heads=heads, shifts=(1, 2))
    # the default filler and replacements make counterfactuals that keep Gemma's tokenisation, and every
    # attention the table is built from equals role_attention on those counterfactual prompts
    plan = counterfactuals(gemma, prompts, "pronoun", "antecedent", shifts=(1, 2))
    rows = torch.arange(len(prompts))
    antecedent = prompts.role("antecedent")
    assert (plan.swapped.clean[rows, antecedent] != prompts.clean[rows, antecedent]).all()
    for shift, variant in zip((1, 2), plan.moved):
        assert (variant.role("antecedent") == antecedent).all() and (variant.end == prompts.end + shift).all()
        assert (variant.clean[rows, antecedent] == prompts.clean[rows, antecedent]).all()
    variants = [prompts, plan.swapped, *plan.moved]
    measured = [result.attention, result.swapped, result.moved[:, 0], result.moved[:, 1]]
    for variant, attention in zip(variants, measured):
        expected = role_attention(gemma, variant, "pronoun", "antecedent")
        torch.testing.assert_close(attention[:, layers, head_ids], expected[:, layers, head_ids])
    clean = result.attention[:, layers, head_ids].double()
    assert result.table["positional_share"].to_numpy() == pytest.approx(
        (result.swapped[:, layers, head_ids].double().mean(0) / clean.mean(0)).numpy())
    assert result.table["content_share"].to_numpy() == pytest.approx(
        (result.moved[:, :, layers, head_ids].double().mean(0) / clean.mean(0)).mean(0).numpy())
    assert list(result.table["label"]) == [
        label(lift, p, c) for lift, p, c in result.table[["lift", "positional_share", "content_share"]].to_numpy()]
    with pytest.raises(ProbesError, match="tokens for this tokenizer"):
        position_content(gemma, prompts, "pronoun", "antecedent", filler=[" xqzvw frobnicate"])
    bands = rotary_bands(gemma, prompts, "pronoun", "antecedent", foil="distractor", heads=[(5, 1)])
    assert len(bands.table) == 4


# --- the scripted path: spec -> run directory -> report ------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    from probes.models.loading import save_model_dir

    return save_model_dir(toy.build().model, tmp_path_factory.mktemp("models") / "toy")


def _spec(path, toy_dir, section: str):
    path.write_text(
        f'model = "{toy_dir}"\ntask = "induction"\nn = 8\nsrc = "induction_target"\ndst = "previous"\n'
        f'direction = "noising"\nclaims = [[0, 2]]\n[position_content]\n{section}\n'
    )
    return path


def test_a_run_writes_the_table_and_the_report_maps_every_head(toy_dir, tmp_path, capsys):
    from probes import cli
    from probes.run.rundir import read_run

    spec = _spec(tmp_path / "pc.toml", toy_dir, "filler = [15, 16]\nreplacements = [17, 18, 19]\nshifts = [1]")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    table = run.position_content.set_index(["layer", "head"])
    assert len(table) == 8 and (tmp_path / "run" / "position_content.csv").is_file()
    assert table.loc[toy.PlantedHeads().previous_token, "label"] == "positional"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["position_content_thresholds"] == LABEL_THRESHOLDS
    assert run.position_content_thresholds == LABEL_THRESHOLDS
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    html = " ".join((tmp_path / "run" / "index.html").read_text().split())
    assert 'id="fig-position-content"' in html and "Position or content" in html
    assert (f"positional share is at least {number(SHARE_HIGH)} and the content share at most {number(SHARE_LOW)}"
            in html and f"under {number(MIN_LIFT)} times uniform attention" in html)


@pytest.fixture(scope="module")
def toy_text_dir(tmp_path_factory):
    from test_safety import toy_with_tokenizer

    return toy_with_tokenizer(tmp_path_factory.mktemp("models") / "toy-text")


@pytest.mark.parametrize(
    ("section", "message", "text"),
    [
        ("shifts = [1]", "pass filler=[token ids] and replacements=[token ids]", False),
        ("filler = [15]\nreplacements = [17]\nshifts = [40]", "past the model's context", False),
        ("filler = [15]\nreplacements = [1000]", "replacement 1000 is neither a word nor a token id", False),
        ("filler = [\" and\"]\nreplacements = [17]", "filler ' and' is text but this model has no tokenizer", False),
        ("filler = [\" and the\"]\nreplacements = [\" park\"]", "filler ' and the' is 2 tokens for this tokenizer", True),
        ("shifts = [0]", "position_content.shifts must be a list of positive whole numbers", False),
        ("colour = 1", "unknown key(s) colour in [position_content]", False),
    ],
)
def test_bad_position_content_input_is_one_line_and_exit_2_before_any_evidence(
    toy_dir, toy_text_dir, tmp_path, capsys, monkeypatch, section, message, text
):
    """Refused right after the prompts are built: no evidence stage runs, nothing is printed or written."""
    from probes import cli
    from probes.run import pipeline

    def no_evidence(*args, **kwargs):
        raise AssertionError("the every-head evidence stage ran before the bad [position_content] was refused")

    monkeypatch.setattr(pipeline, "gather", no_evidence)
    spec = _spec(tmp_path / "bad.toml", toy_text_dir if text else toy_dir, section)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert captured.out == "" and not (tmp_path / "run").exists()


def test_intervals_resample_groups_so_duplicates_add_no_precision():
    """Each prompt twice, in one group: the same intervals as once; twice as independent prompts: narrower."""
    model = gemma_like()
    once = random_prompts(n=8)
    index = torch.arange(8).repeat_interleave(2)

    def shares(prompts):
        return position_content(model, prompts, "end", "mid", filler=[3], replacements=[0], shifts=(1,)).table

    grouped = shares(dataclasses.replace(once.subset(index), groups=index.tolist()))
    independent = shares(dataclasses.replace(once.subset(index), groups=list(range(16))))
    base = shares(once)
    columns = ["positional_share_ci_low", "positional_share_ci_high", "content_share_ci_low", "content_share_ci_high"]
    np.testing.assert_allclose(grouped[columns], base[columns], rtol=1e-6, atol=1e-9)
    width = lambda t: (t["content_share_ci_high"] - t["content_share_ci_low"]).mean()  # noqa: E731
    assert width(independent) < 0.9 * width(grouped)


# --- the report's map ------------------------------------------------------------------------------------------------


def map_run(left_out: list[tuple[int, int]]):
    """A run of 3 x 4 heads with random shares, each head's verdict and label drawn independently, and
    ``left_out`` heads with undefined shares (no clean attention)."""
    from probes.claims.verdicts import VERDICTS
    from probes.evidence.position import LABELS
    from probes.run.rundir import ModelInfo, RunResults

    rng = np.random.default_rng(0)
    layer, head = (a.ravel() for a in np.meshgrid(np.arange(3), np.arange(4), indexing="ij"))
    heads = {"layer": layer, "head": head, "verdict": rng.choice(list(VERDICTS), len(layer))}
    table = {"layer": layer, "head": head, "attention": rng.uniform(0, 1, len(layer))}
    for name in ("positional_share", "content_share"):
        value = rng.uniform(0, 1.2, len(layer))
        table |= {name: value, f"{name}_ci_low": value - rng.uniform(0, 0.2, len(layer)),
                  f"{name}_ci_high": value + rng.uniform(0, 0.2, len(layer))}
    table |= {"sink": rng.uniform(0, 1, len(layer)), "self": rng.uniform(0, 1, len(layer)),
              "label": rng.choice(LABELS, len(layer))}
    table = pd.DataFrame(table)
    for missing in left_out:
        row = (table["layer"] == missing[0]) & (table["head"] == missing[1])
        table.loc[row, [c for c in table.columns if "share" in c]] = np.nan
    return RunResults(ModelInfo("synthetic", 3, 4), "induction", 8, 0, "probes run", pd.DataFrame(heads), {},
                      position_content=table, position_content_thresholds=dict(LABEL_THRESHOLDS))


def hover(template: str, point: dict) -> str:
    """A plotly hovertemplate filled in as plotly does for ``%{x:.2f}``, ``%{customdata[i]}``, ``%{hovertext}``."""
    def fill(match):
        value = point[match[1]] if match[2] is None else point[match[1]][int(match[2])]
        return format(value, match[3] or "")

    return re.sub(r"%\{(\w+)(?:\[(\d+)\])?(?::([^}]*))?\}", fill, template)


def test_the_map_has_one_point_per_head_coloured_by_verdict_with_intervals_in_the_hover():
    from probes.report.figures import LABEL_SYMBOLS, VERDICT_COLOURS, position_content_figure, position_content_heads

    run = map_run(left_out=[(1, 2), (2, 0)])
    mapped, left_out = position_content_heads(run)
    assert left_out == 2 and len(mapped) == 10
    table = run.position_content.set_index(["layer", "head"])
    verdicts = run.heads.set_index(["layer", "head"])["verdict"]
    seen = []
    for trace in position_content_figure(mapped).data:
        for i, name in enumerate(trace.hovertext):
            layer, head = map(int, name.split("."))
            seen.append((layer, head))
            row = table.loc[(layer, head)]
            assert (trace.x[i], trace.y[i]) == (row["positional_share"], row["content_share"])
            assert trace.marker.color == VERDICT_COLOURS[verdicts[(layer, head)]]
            assert trace.marker.symbol[i] == LABEL_SYMBOLS[row["label"]]
            text = hover(trace.hovertemplate, {"x": trace.x[i], "y": trace.y[i], "hovertext": name,
                                               "customdata": list(trace.customdata[i])})
            for share in ("positional_share", "content_share"):
                assert f"{row[share]:.2f} [{row[share + '_ci_low']:.2f}, {row[share + '_ci_high']:.2f}]" in text
            assert f"sink {row['sink']:.2f}, self {row['self']:.2f}" in text
            assert text.startswith(f"head {name}: {row['label']}<br>")
    assert sorted(seen) == sorted(h for h in table.index if h not in [(1, 2), (2, 0)])


def test_the_report_says_how_many_heads_the_map_left_out_and_why():
    from probes.report.render import render_html

    html = " ".join(render_html(map_run(left_out=[(0, 1)])).split())
    assert "11 heads mapped; 1 left out: no attention from the source to the target" in html
    assert "colour is the head's verdict on this run's claim" in html and "shape is its position/content label" in html
    html = " ".join(render_html(map_run(left_out=[])).split())
    assert "12 heads mapped." in html and "left out" not in html
