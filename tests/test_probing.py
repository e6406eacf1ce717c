"""Linear probes and control tasks, checked against the toy model's planted heads and synthetic data."""

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import probes
from probes import tasks, toy
from probes.core.errors import ProbesError
from probes.evidence.activations import ALL_POSITIONS, FORMAT, MANIFEST, NO_PREVIOUS, Activations, ProbePoint, harvest
from probes.evidence.probing import (
    COLUMNS,
    MIN_TYPES,
    NO_HEAD,
    TYPE_DETERMINED,
    ProbeResult,
    Target,
    antecedent_gender,
    antecedent_identity,
    control_labels,
    grouped_folds,
    make_target,
    out_of_fold_correct,
    previous_token_identity,
    probe,
    probe_activations,
    prompt_label_target,
    refusal,
    save_table,
    score_probe,
    type_purity,
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


def _synthetic_store(tmp_path: Path, labels: dict, tokens: np.ndarray) -> Activations:
    """A harvested directory with one row per prompt and the given labels and tokens (no model needed)."""
    n = len(tokens)
    manifest = {
        "format": FORMAT, "model": "synthetic", "task": "synthetic", "at": "pronoun", "side": "clean",
        "n_prompts": n, "n_rows": n, "hooks": {}, "shards": [{"file": "shard-00000.safetensors", "rows": n}],
        "labels": labels,
    }  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(
        {"prompt": torch.arange(n), "position": torch.zeros(n, dtype=torch.long),
         "token": torch.as_tensor(tokens), "previous_token": torch.full((n,), NO_PREVIOUS)},
        str(tmp_path / "shard-00000.safetensors"),
    )  # fmt: skip
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    return Activations(tmp_path)


def _pronoun_labels(n_templates: int, per_template: int, n_names: int, seed: int = 0) -> dict:
    """Pronoun-task labels as the generators draw them: names recur across templates."""
    rng = np.random.default_rng(seed)
    n = n_templates * per_template
    female, male = rng.integers(0, n_names, n), rng.integers(0, n_names, n)
    is_female = np.arange(n) % 2 == 0
    antecedent = np.where(is_female, [f"F{i}" for i in female], [f"M{i}" for i in male])
    distractor = np.where(is_female, [f"M{i}" for i in male], [f"F{i}" for i in female])
    return {
        "template": (np.arange(n) // per_template).tolist(),
        "antecedent": antecedent.tolist(),
        "distractor": distractor.tolist(),
        "antecedent_gender": np.where(is_female, "female", "male").tolist(),
    }


def test_previous_token_head_decodes_the_previous_token(toy_model: toy.ToyModel, tmp_path: Path) -> None:
    non_special = torch.tensor(toy.NON_SPECIAL)
    prompts = tasks.previous_token(toy_model.model, 60, seed=0, length=12, vocab=non_special)
    store = harvest(toy_model.model, prompts, tmp_path / "acts", ["z"], layers=[0], at=ALL_POSITIONS)
    planted, untouched = toy_model.heads.previous_token, toy_model.heads.untouched[0]
    points = [ProbePoint("blocks.0.attn.hook_z", "z", 0, head) for _, head in (planted, untouched)]
    table = probe_activations(store, [previous_token_identity], points, n_boot=300).table
    good, other = (_row(table, 0, head, "previous_token") for _, head in (planted, untouched))
    # a row per position that has a previous token (1..end); the previous token also takes <bos> (at position 1)
    n_rows = int(prompts.end.sum())  # positions 1..end of each prompt
    token_types = prompts.clean[:, 1:].unique()  # the word type of a row is its own token
    previous_tokens = prompts.clean[:, :-1].unique()  # each is the previous token of >= 10 rows here
    assert len(token_types) == len(toy.NON_SPECIAL) and len(previous_tokens) == len(toy.NON_SPECIAL) + 1
    assert good.n == n_rows and good.n_types == len(token_types) and good.n_classes == len(previous_tokens)
    # the previous token is not a function of the current one, and 21 types make a real control task
    assert good.attachable and good.reason == "" and good.type_purity < 0.2
    # the planted head writes the previous token's one-hot and nothing of the current token
    assert good.accuracy > 0.95 and good.control_accuracy < 0.3 and good.selectivity_ci_low > 0.6
    # an untouched head averages its context: some of the previous token leaks, no more than of the current one
    assert other.selectivity_ci_high < 0.15 and good.selectivity_ci_low - other.selectivity_ci_high > 0.5


def test_previous_token_classes_are_the_tokens_that_recur(toy_model: toy.ToyModel, tmp_path: Path) -> None:
    prompts = tasks.previous_token(toy_model.model, 6, seed=0, length=12, vocab=torch.tensor(toy.NON_SPECIAL))
    store = harvest(toy_model.model, prompts, tmp_path / "acts", ["z"], layers=[0], at=ALL_POSITIONS)
    previous = store.rows["previous_token"]
    tokens, counts = np.unique(previous[previous != NO_PREVIOUS], return_counts=True)
    target = previous_token_identity(store, min_rows=4)
    assert set(target.classes) == set(tokens[counts >= 4]) and 2 <= len(target.classes) < len(tokens)
    assert np.array_equal(target.rows, np.flatnonzero(np.isin(previous, tokens[counts >= 4])))
    assert np.array_equal(target.classes[target.labels], previous[target.rows])
    with pytest.raises(ProbesError, match="draw the sequences from a small token pool"):
        previous_token_identity(store, min_rows=int(counts.max()) + 1)


def test_a_label_the_probed_token_determines_is_refused(toy_model: toy.ToyModel, tmp_path: Path) -> None:
    # at the antecedent the token is the name, and the name fixes the gender: a probe reads the word's gender
    # (the toy's name-gender dim generalises to unseen names), so the selectivity looks real and means nothing
    prompts = tasks.pronoun_prompts(toy_model, 96, seed=0)
    store = harvest(toy_model.model, prompts, tmp_path / "acts", ["resid_post"], layers=[0], at="antecedent")
    by_name = functools.partial(antecedent_gender, group_by="antecedent")  # 12 names: too few for name+template
    resid = probe_activations(store, [by_name], n_boot=300).table.iloc[0]
    assert resid.n_types == len(toy.FEMALE_NAMES) + len(toy.MALE_NAMES) >= MIN_TYPES  # refused for the function
    assert resid.type_purity == 1.0 and resid.selectivity_ci_low > 0
    assert not resid.attachable and "function of the probed token" in resid.reason
    with pytest.raises(ProbesError, match="refused as evidence for a head: 'antecedent_gender' is a function"):
        probe_activations(store, [by_name], strict=True)


def test_a_name_fixes_its_gender_even_when_names_seldom_recur(tmp_path: Path) -> None:
    # probed at the antecedent, the token is the name: most names occur once, so no type is seen with both labels
    labels = _pronoun_labels(n_templates=12, per_template=4, n_names=60)
    names = np.unique(labels["antecedent"], return_inverse=True)[1]
    at_name = antecedent_gender(_synthetic_store(tmp_path / "name", labels, names))
    assert len(np.unique(at_name.word_types)) > 0.8 * len(names) and type_purity(at_name) == 1.0
    assert "function of the probed token" in refusal(at_name)
    # a token that recurs with both genders (the verb after the pronoun, say) does not give the label away
    verbs = np.arange(48) // 2 % 12  # each verb after a she- and a he-prompt
    at_verb = antecedent_gender(_synthetic_store(tmp_path / "verb", labels, verbs))
    assert type_purity(at_verb) < TYPE_DETERMINED and refusal(at_verb) == ""


def test_few_token_types_are_refused_and_one_type_has_no_control(pronoun_store: Activations) -> None:
    target = antecedent_identity(pronoun_store)  # at the pronoun: she/he, which do not fix the name
    assert type_purity(target) < TYPE_DETERMINED and "only 2 token type(s)" in refusal(target)
    one_type = replace(target, word_types=np.zeros_like(target.word_types))
    assert "only 1 token type(s)" in refusal(one_type)
    with pytest.raises(ProbesError, match="no control task"):
        control_labels(one_type)
    features = pronoun_store.load("blocks.1.attn.hook_z", head=1).numpy()
    score = score_probe(features, one_type, None, grouped_folds(one_type.groups), n_boot=100)
    assert score.accuracy > 0.9 and np.isnan([score.control_accuracy, score.selectivity_ci_low]).all()
    assert not score.attachable


def test_antecedent_identity_is_in_the_antecedent_head_not_the_decoy(
    toy_model: toy.ToyModel, pronoun_store: Activations
) -> None:
    by_name = functools.partial(antecedent_gender, group_by="antecedent")
    table = probe_activations(pronoun_store, [antecedent_identity, by_name], n_boot=300).table
    (layer, head), (_, decoy) = toy_model.heads.antecedent, toy_model.heads.decoy
    copied = _row(table, layer, head, "antecedent_identity")
    n_names = len(toy.FEMALE_NAMES) + len(toy.MALE_NAMES)  # the pronoun prompts use every name
    assert copied.accuracy > 0.9 and copied.n_classes == n_names and copied.group_by == "template"
    assert _row(table, layer, decoy, "antecedent_identity").accuracy_ci_high < 0.3  # zero OV: its output is 0
    # gender, grouped by name, needs a feature shared across names: the residual stream has the pronoun's gender
    # dim, the antecedent head's output only the name's one-hot, which says nothing about an unseen name
    assert _row(table, 0, NO_HEAD, "antecedent_gender").accuracy == 1.0
    assert _row(table, layer, head, "antecedent_gender").accuracy_ci_high < 0.75
    # two word types at the pronoun: the control is a function of she/he, which a linear probe memorises; and the
    # gender is she/he itself: neither target may be attached to a head's verdict here
    resid = _row(table, 0, NO_HEAD, "antecedent_identity")
    assert resid.n_types == 2 and resid.control_accuracy == 1.0
    assert not table.attachable.any() and table.reason.str.len().gt(0).all()


def test_table_is_tidy_and_saves(toy_model: toy.ToyModel, pronoun_store: Activations, tmp_path: Path) -> None:
    result = probe_activations(pronoun_store, [antecedent_identity], n_boot=100)
    table = result.to_frame()
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
    result.save(tmp_path / "kept" / "probes")
    pd.testing.assert_frame_equal(ProbeResult.load(tmp_path / "kept" / "probes").table, table)


def test_probe_in_one_call_matches_harvest_then_probe(
    toy_model: toy.ToyModel, pronoun_store: Activations, tmp_path: Path
) -> None:
    prompts = tasks.pronoun_prompts(toy_model, 96, seed=0)
    direct = probe(
        toy_model.model, prompts, [antecedent_identity], ["resid_post"], layers=[1], at="pronoun", n_boot=100
    )
    points = [p for p in pronoun_store.points() if p.hook == "blocks.1.hook_resid_post"]
    stored = probe_activations(pronoun_store, [antecedent_identity], points, n_boot=100)
    pd.testing.assert_frame_equal(direct.table, stored.table)
    kept = probe(
        toy_model.model, prompts, [antecedent_identity], ["resid_post"], [1], "pronoun", out_dir=tmp_path / "a",
        n_boot=100,
    )
    pd.testing.assert_frame_equal(kept.table, stored.table)
    assert Activations(tmp_path / "a").hooks == ["blocks.1.hook_resid_post"]


def test_control_task_is_a_seeded_balanced_function_of_word_type(pronoun_store: Activations) -> None:
    target = antecedent_identity(pronoun_store)
    control = control_labels(target, seed=1)
    for word in np.unique(target.word_types):
        assert len(set(control[target.word_types == word])) == 1
    assert set(control) <= set(target.labels)
    assert np.array_equal(control, control_labels(target, seed=1))
    # she/he with a balanced gender: every seed splits the two types between the two classes (a draw per type,
    # as before, gave both types one class in half the seeds)
    gender = prompt_label_target(pronoun_store, "antecedent_gender")
    for seed in range(20):
        per_type = {int(c) for c in control_labels(gender, seed)}
        assert per_type == {0, 1}
    # 40 types, 3% of rows in the minority class: still two classes, and types in proportion to the labels
    labels = np.where(np.arange(len(target.labels)) % 32 == 0, 1, 0)
    skewed = replace(target, labels=labels, classes=np.array(["a", "b"]), word_types=np.arange(len(labels)) % 40)
    draws = [control_labels(skewed, seed) for seed in range(3)]
    for draw in draws:
        types_per_class = np.bincount([draw[skewed.word_types == t][0] for t in range(40)], minlength=2)
        assert types_per_class[1] >= 1 and abs(types_per_class[0] - 40 * np.mean(labels == 0)) <= 1
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])


def test_folds_keep_every_name_and_template_on_one_side(tmp_path: Path) -> None:
    labels = _pronoun_labels(n_templates=12, per_template=8, n_names=60)  # the tasks have ~60 names a gender
    store = _synthetic_store(tmp_path, labels, np.arange(96) % 20)
    target = antecedent_gender(store)
    assert target.group_by == "template+antecedent+distractor"
    folds = grouped_folds(target.groups)
    tested = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(tested), np.arange(96))  # every row is tested once
    for train, test in folds:
        for key in ("template", "antecedent", "distractor"):
            assert not set(np.asarray(labels[key])[test]) & set(np.asarray(labels[key])[train])
        names = lambda rows: {labels[k][i] for i in rows for k in ("antecedent", "distractor")}  # noqa: E731
        assert not names(test) & names(train)  # also across roles: a test antecedent is no training distractor
        assert len(train) > 0.3 * (96 - len(test))  # only the leaking rows were dropped


def test_grouping_by_every_name_stops_the_distractor_leak(tmp_path: Path) -> None:
    # the features are the distractor's name (one-hot) and nothing of the antecedent: the distractor has the other
    # gender, so a probe that saw the distractor in training reads the answer off a memorised name
    labels = _pronoun_labels(n_templates=16, per_template=10, n_names=40, seed=1)
    store = _synthetic_store(tmp_path, labels, np.arange(160) % 20)
    names, which = np.unique(labels["distractor"], return_inverse=True)
    features = np.eye(len(names))[which] + 0.01 * np.random.default_rng(0).normal(size=(160, len(names)))
    leaky, clean = (
        out_of_fold_correct(features, t.labels, grouped_folds(t.groups)).mean()
        for t in (antecedent_gender(store, ("template", "antecedent")), antecedent_gender(store))
    )
    assert leaky > 0.75 and abs(clean - 0.5) < 0.15


def test_intervals_resample_templates(pronoun_store: Activations) -> None:
    # copies of every prompt inside its template add no information: the template bootstrap's interval keeps its
    # width, a bootstrap over prompts would narrow by ~1/sqrt(3)
    rng = np.random.default_rng(0)
    n, per = 120, 6
    template = np.arange(n) // per
    labels = rng.integers(0, 2, n)
    signal = rng.normal(size=n // per)[template]  # how readable a template is: correctness clusters by template
    features = np.column_stack([(2 * labels - 1) * (1 + signal), rng.normal(size=n)])

    def width(copies: int, clusters_of: str) -> float:
        rows = np.repeat(np.arange(n), copies)
        groups = template[rows][:, None].astype(object)
        clusters = template[rows] if clusters_of == "template" else np.arange(len(rows))
        target = Target(
            name="t", rows=rows, labels=labels[rows], classes=np.array([0, 1]), word_types=rows % 20, groups=groups,
            clusters=clusters, prompts=rows, group_by="template",
        )  # fmt: skip
        score = score_probe(features[rows], target, None, grouped_folds(groups), n_boot=1000)
        return score.accuracy_ci_high - score.accuracy_ci_low

    assert abs(width(3, "template") / width(1, "template") - 1) < 0.15
    assert width(3, "row") / width(1, "row") < 0.75


def test_bad_targets(pronoun_store: Activations) -> None:
    with pytest.raises(ProbesError, match="no label 'colour'"):
        prompt_label_target(pronoun_store, "colour")
    with pytest.raises(ProbesError, match="no label 'speaker'"):
        antecedent_gender(pronoun_store, group_by="speaker")
    with pytest.raises(ProbesError, match="at least one group_by label"):
        antecedent_gender(pronoun_store, group_by=())
    with pytest.raises(ProbesError, match="single class"):
        make_target(pronoun_store, "same", np.zeros(pronoun_store.n_rows))
    with pytest.raises(ProbesError, match="at least 2 groups"):
        grouped_folds(np.zeros(4))
    with pytest.raises(ProbesError, match="no training rows left"):
        grouped_folds(np.array([[0, "Ann"], [1, "Ann"]], dtype=object))
    with pytest.raises(ProbesError, match="min_rows"):
        previous_token_identity(pronoun_store, min_rows=0)


@pytest.mark.real
@pytest.mark.parametrize("role", ["pronoun", "end", "antecedent"])
def test_smollm2_carries_antecedent_gender(smollm2, role: str) -> None:
    """At the pronoun the gender is the pronoun's own; at the last token (" to") the model must have carried it.
    None is evidence for a head: She/He or the name give the label away, at " to" there is one token type."""
    prompts = tasks.pronoun_resolution(smollm2, 48, seed=0)
    table = probes.probe(smollm2, prompts, [antecedent_gender], ["resid_post"], layers=[0, 2], at=role, n_boot=300).table
    assert (table.accuracy_ci_low > table.chance).any()
    why = "only 1 token type" if role == "end" else "function of the probed token"
    assert not table.attachable.any() and table.reason.str.contains(why).all()
    assert (table.train_kept > 0.3).all()  # unseen names and templates left most of the training rows
