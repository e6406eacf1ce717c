"""Linear probes and control tasks, checked against the toy model's planted heads and synthetic data."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probes
from probes import tasks, toy
from probes.evidence.activations import ALL_POSITIONS, Activations, ProbePoint, harvest
from probes.core.errors import ProbesError
from probes.evidence.probing import (
    COLUMNS,
    NO_HEAD,
    antecedent_gender,
    antecedent_identity,
    control_labels,
    make_target,
    out_of_fold_correct,
    previous_token_identity,
    probe,
    probe_activations,
    prompt_label_target,
    save_table,
)
from probes.run.rundir import PROBE_MEASURES


def _row(table: pd.DataFrame, layer: int, head: int, target: str) -> pd.Series:
    (index,) = np.flatnonzero((table.layer == layer) & (table["head"] == head) & (table.target == target))
    return table.iloc[index]


@pytest.fixture(scope="module")
def pronoun_store(toy_model: toy.ToyModel, tmp_path_factory: pytest.TempPathFactory) -> Activations:
    # 96 prompts: every name appears in both templates, so a template-grouped fold has seen every class
    prompts = tasks.pronoun_prompts(toy_model, 96, seed=0)
    out = tmp_path_factory.mktemp("probe") / "pronoun"
    return harvest(toy_model.model, prompts, out, ["resid_post", "z"], at="pronoun")


def test_previous_token_head_decodes_the_previous_token(toy_model: toy.ToyModel, tmp_path: Path) -> None:
    non_special = torch.tensor(toy.NON_SPECIAL)
    prompts = tasks.previous_token(toy_model.model, 60, seed=0, length=12, vocab=non_special)
    store = harvest(toy_model.model, prompts, tmp_path / "acts", ["z"], layers=[0], at=ALL_POSITIONS)
    planted, untouched = toy_model.heads.previous_token, toy_model.heads.untouched[0]
    points = [ProbePoint("blocks.0.attn.hook_z", "z", 0, head) for _, head in (planted, untouched)]
    table = probe_activations(store, [previous_token_identity], points, n_boot=300)
    good, other = (_row(table, 0, head, "previous_token") for _, head in (planted, untouched))
    # a row per position that has a previous token (1..end); the previous token also takes <bos> (at position 1)
    n_rows = int(prompts.end.sum())  # positions 1..end of each prompt
    token_types = prompts.clean[:, 1:].unique()  # the word type of a row is its own token
    previous_tokens = prompts.clean[:, :-1].unique()
    assert len(token_types) == len(toy.NON_SPECIAL) and len(previous_tokens) == len(toy.NON_SPECIAL) + 1
    assert good.n == n_rows and good.n_types == len(token_types) and good.n_classes == len(previous_tokens)
    # the planted head writes the previous token's one-hot and nothing of the current token
    assert good.accuracy > 0.95 and good.control_accuracy < 0.3 and good.selectivity_ci_low > 0.6
    # an untouched head averages its context: some of the previous token leaks, no more than of the current one
    assert other.selectivity_ci_high < 0.15 and good.selectivity_ci_low - other.selectivity_ci_high > 0.5


def test_antecedent_identity_is_in_the_antecedent_head_not_the_decoy(
    toy_model: toy.ToyModel, pronoun_store: Activations
) -> None:
    table = probe_activations(pronoun_store, [antecedent_identity, antecedent_gender], n_boot=300)
    (layer, head), (_, decoy) = toy_model.heads.antecedent, toy_model.heads.decoy
    copied = _row(table, layer, head, "antecedent_identity")
    n_names = len(toy.FEMALE_NAMES) + len(toy.MALE_NAMES)  # the pronoun prompts use every name
    assert copied.accuracy > 0.9 and copied.n_classes == n_names and copied.group_by == "template"
    assert _row(table, layer, decoy, "antecedent_identity").accuracy_ci_high < 0.3  # zero OV: its output is 0
    # gender, grouped by name, needs a feature shared across names: the residual stream has the pronoun's gender
    # dim, the antecedent head's output only the name's one-hot, which says nothing about an unseen name
    assert _row(table, 0, NO_HEAD, "antecedent_gender").accuracy == 1.0
    assert _row(table, layer, head, "antecedent_gender").accuracy_ci_high < 0.75
    # two word types at the pronoun: the control is a function of she/he, which a linear probe memorises
    resid = _row(table, 0, NO_HEAD, "antecedent_identity")
    assert resid.n_types == 2 and resid.control_accuracy == 1.0


def test_table_is_tidy_and_saves(toy_model: toy.ToyModel, pronoun_store: Activations, tmp_path: Path) -> None:
    table = probe_activations(pronoun_store, [antecedent_gender], n_boot=100)
    assert list(table.columns) == COLUMNS
    with_ci = {f"{m}{s}" for m in PROBE_MEASURES for s in ("", "_ci_low", "_ci_high")}
    assert {"layer", "head", "target"} | with_ci <= set(table.columns)  # what probes.run.rundir expects
    cfg = toy_model.model.cfg  # the residual stream and every head, at each layer
    assert len(table) == cfg.n_layers * (1 + cfg.n_heads) and (table.position == "pronoun").all()
    assert set(table[table.hook == "resid_post"]["head"]) == {NO_HEAD}
    assert np.allclose(table.selectivity, table.accuracy - table.control_accuracy)
    for measure in PROBE_MEASURES:
        assert (table[f"{measure}_ci_low"] <= table[measure] + 1e-12).all()
        assert (table[measure] <= table[f"{measure}_ci_high"] + 1e-12).all()
    csv, parquet = save_table(table, tmp_path / "out" / "probes")
    assert (csv.name, parquet.name) == ("probes.csv", "probes.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), table)
    pd.testing.assert_frame_equal(pd.read_csv(csv), table, check_dtype=False)
    assert sorted(p.name for p in csv.parent.iterdir()) == ["probes.csv", "probes.parquet"]


def test_probe_in_one_call_matches_harvest_then_probe(
    toy_model: toy.ToyModel, pronoun_store: Activations, tmp_path: Path
) -> None:
    prompts = tasks.pronoun_prompts(toy_model, 96, seed=0)
    direct = probe(toy_model.model, prompts, [antecedent_gender], ["resid_post"], layers=[1], at="pronoun", n_boot=100)
    points = [p for p in pronoun_store.points() if p.hook == "blocks.1.hook_resid_post"]
    stored = probe_activations(pronoun_store, [antecedent_gender], points, n_boot=100)
    pd.testing.assert_frame_equal(direct, stored)
    kept = probe(
        toy_model.model, prompts, [antecedent_gender], ["resid_post"], [1], "pronoun", out_dir=tmp_path / "a",
        n_boot=100,
    )
    pd.testing.assert_frame_equal(kept, stored)
    assert Activations(tmp_path / "a").hooks == ["blocks.1.hook_resid_post"]


def test_control_task_is_a_seeded_function_of_word_type(pronoun_store: Activations) -> None:
    target = antecedent_identity(pronoun_store)
    control = control_labels(target, seed=1)
    for word in np.unique(target.word_types):
        assert len(set(control[target.word_types == word])) == 1
    assert set(control) <= set(target.labels)
    assert np.array_equal(control, control_labels(target, seed=1))
    many_types = make_target(pronoun_store, "name", np.asarray(pronoun_store.labels["antecedent"]))
    many_types = replace(many_types, word_types=np.arange(len(many_types.labels)) % 40)
    draws = [control_labels(many_types, seed) for seed in range(3)]
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])


def test_grouped_folds_keep_groups_apart() -> None:
    # each group has its own random label and its own feature: only a probe that saw the group can get it right
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    labels = rng.integers(0, 2, 40)[groups]
    features = np.eye(40)[groups] + 0.01 * rng.normal(size=(400, 40))
    assert out_of_fold_correct(features, labels, groups).mean() < 0.75
    assert out_of_fold_correct(features, labels, np.arange(400)).mean() > 0.95  # rows alone: groups leak


def test_bad_targets(pronoun_store: Activations) -> None:
    with pytest.raises(ProbesError, match="no label 'colour'"):
        prompt_label_target(pronoun_store, "colour")
    with pytest.raises(ProbesError, match="no label 'speaker'"):
        antecedent_gender(pronoun_store, group_by="speaker")
    with pytest.raises(ProbesError, match="single class"):
        make_target(pronoun_store, "same", np.zeros(pronoun_store.n_rows))
    with pytest.raises(ProbesError, match="at least 2 groups"):
        out_of_fold_correct(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros(4))
    with pytest.raises(ProbesError, match="n_buckets"):
        previous_token_identity(pronoun_store, n_buckets=1)


@pytest.mark.real
@pytest.mark.parametrize("role", ["pronoun", "end"])
def test_smollm2_carries_antecedent_gender(smollm2, role: str) -> None:
    """At the pronoun the gender is the pronoun's own; at the last token (" to") the model must have carried it."""
    prompts = tasks.pronoun_resolution(smollm2, 48, seed=0)
    table = probes.probe(smollm2, prompts, [antecedent_gender], ["resid_post"], layers=[0, 2], at=role, n_boot=300)
    assert (table.accuracy_ci_low > table.chance).any()
