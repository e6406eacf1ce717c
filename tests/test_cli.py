"""The scripted path end to end: analysis TOML -> run directory -> report; bad input is one line and exit 2."""

import json

import numpy as np
import pytest

from markupsafe import escape
from plotly.offline import get_plotlyjs

from probes import cli
from probes.claims.types import Composition, Thresholds
from probes.claims.verdicts import rule_lines
from probes.models.loading import save_model_dir
from probes.run.rundir import read_run

from conftest import IOI_PROMPTS


@pytest.fixture(scope="module")
def toy_dir(toy_model, tmp_path_factory):
    return save_model_dir(toy_model.model, tmp_path_factory.mktemp("models") / "toy")


def _spec(path, thresholds=None, **fields):
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    if thresholds:
        lines += ["[thresholds]", *(f"{k} = {json.dumps(v)}" for k, v in thresholds.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_writes_results_tables_and_report(toy_dir, toy_model, tmp_path, capsys):
    thresholds = Thresholds(effect=0.25, min_prompts=12)  # not the defaults: the run must carry these
    spec = _spec(
        tmp_path / "prev.toml", model=str(toy_dir), task="induction", n=24, src="induction_target", dst="previous",
        direction="noising", claims=[list(toy_model.heads.previous_token), "top_effect:2"],
        thresholds={"effect": thresholds.effect, "min_prompts": thresholds.min_prompts},
    )
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "supported" in out
    run = read_run(tmp_path / "run")
    assert run.n_prompts == 24 and len(run.heads) == 8
    verdicts = {c.claim.head: c.verdict for c in run.claims}
    assert verdicts[toy_model.heads.previous_token] == "supported"
    only_selected = _spec(tmp_path / "sel.toml", model=str(toy_dir), task="induction", n=24, src="induction_target",
                          dst="previous", direction="noising", claims=["top_attention:1"])
    assert cli.main(["run", str(only_selected), "--out", str(tmp_path / "sel")]) == 0
    assert [c.selected for c in read_run(tmp_path / "sel").claims] == [True]
    # the named head is judged on every prompt; the top two by effect are it (already named) and one more, judged
    # on the 12 held-out groups only
    named, *selected = run.claims
    assert not named.selected and len(selected) == 1 and all(c.selected for c in selected)
    for c in selected:
        assert len(c.discovery) == len(c.confirmation) == 12 and not set(c.discovery) & set(c.confirmation)
        assert c.family == 2 and "selected on 12 discovery prompts, tested on 12 held-out prompts" in c.sentence
    assert all(c.thresholds == thresholds for c in run.claims)
    # the rule stored with the run, and shown in its report, is the code's rule at the spec's thresholds
    assert run.verdict_rule == rule_lines(thresholds) != rule_lines(Thresholds())
    html = (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    assert all(str(escape(line)) in html for line in run.verdict_rule)
    assert len(html.encode()) > len(get_plotlyjs())  # the page inlines plotly
    for name in ("heads.csv", "heads.parquet", "per_prompt.parquet", "prompts.jsonl"):
        assert (tmp_path / "run" / name).is_file()
    assert cli.main(["report", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "x", "src": "end", "dst": "previous", "task": "induction", "colour": 1}, "unknown key(s) colour"),
        ({"model": "x", "src": "end", "task": "induction"}, "missing required key(s) dst"),
        ({"model": "x", "src": "end", "dst": "previous", "task": "poetry"}, "unknown task 'poetry'"),
        ({"model": "x", "src": "end", "dst": "previous", "task": "induction", "claims": ["top:3"]}, "claim 'top:3'"),
        ({"model": "x", "src": "end", "dst": "previous", "task": "induction", "thresholds": {"effect": "0.1"}},
         "threshold effect must be a number"),
    ],
)
def test_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, fields, message):
    spec = _spec(tmp_path / "bad.toml", **fields)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(spec) in err
    assert not (tmp_path / "run").exists()


def test_missing_files_are_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert cli.main(["report", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "not found" in errors[0] and "no results.json" in errors[1]


def test_unknown_role_is_one_line(toy_dir, tmp_path, capsys):
    spec = _spec(tmp_path / "r.toml", model=str(toy_dir), task="induction", n=12, src="end", dst="antecedent")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "unknown role 'antecedent'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.real
def test_own_prompts_jsonl(tmp_path, capsys, smollm2):
    pairs = []
    for text in IOI_PROMPTS[:4]:
        words = text.replace(",", "").split()
        a, b = words[1], words[3]
        pairs.append({"clean": text, "corrupt": text.replace(f", {b} ", f", {a} "), "answer": f" {a}", "foil": f" {b}",
                      "roles": {"S2": {"text": b, "occurrence": 2}, "IO": a}})
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    spec = _spec(tmp_path / "own.toml", model="smollm2-135m", task="ioi", src="end", dst="IO", foil="S2",
                 claims=[[20, 1]])  # a named head: four prompts are too few to choose one and confirm it
    assert cli.main(["run", str(spec), "--prompts", str(jsonl), "--out", str(tmp_path / "run")]) == 0
    assert read_run(tmp_path / "run").n_prompts == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**pairs[0], "corrupt": pairs[0]["clean"] + " and"}) + "\n")
    assert cli.main(["run", str(spec), "--prompts", str(bad), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0]


def test_claim_selectors_rank_attention_by_sign_and_effect_by_size():
    from probes.claims.evaluation import Gathered, rank_heads
    from probes.run.pipeline import AnalysisSpec, _named_heads, _selectors

    heads = [(0, 0), (0, 1), (1, 0), (1, 1)]
    attention = np.array([[0.5, -0.9, 0.1, 0.0], [0.5, -0.9, 0.1, 0.0], [9.0, 9.0, 9.0, 9.0]])
    effect = np.array([[0.1, 0.2, -0.8, 0.3], [0.1, 0.2, -0.8, 0.3], [9.0, 9.0, 9.0, 9.0]])
    g = Gathered(heads, {"attention": attention, "effect_z": effect}, np.ones(3), np.ones(3), np.arange(3))
    rows = np.array([0, 1])  # the discovery rows: the third row (which would tie everything) is held out
    assert rank_heads(g, rows, "top_attention")[:1] == [(0, 0)]
    assert rank_heads(g, rows, "top_effect")[:2] == [(1, 0), (1, 1)]
    spec = AnalysisSpec(model="m", src="a", dst="b", task="ioi", claims=["top_attention:1", "top_effect:2", [0, 1]])
    assert _named_heads(spec, n_layers=2, n_heads=2) == [(0, 1)]
    assert _selectors(spec) == [("top_attention", 1), ("top_effect", 2)]


def test_a_composition_claim_runs_into_the_report(toy_dir, toy_model, tmp_path, capsys):
    sender, receiver = toy_model.heads.previous_token, toy_model.heads.induction
    spec = _spec(
        tmp_path / "comp.toml", model=str(toy_dir), task="induction", n=12, src="induction_target", dst="previous",
        direction="noising", claims=[list(sender)], compositions=[[list(sender), list(receiver), "k"]],
    )
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    composition = run.claims[-1]
    assert composition.claim == Composition(sender, receiver, "k") and composition.verdict == "supported"
    html = (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    assert 'id="fig-compositions"' in html and "reads head" in html
    bad = _spec(tmp_path / "bad.toml", model=str(toy_dir), task="induction", src="end", dst="previous",
                compositions=[[list(sender), list(receiver), "o"]])
    assert cli.main(["run", str(bad)]) == 2
    assert "composition" in capsys.readouterr().err
    early = _spec(tmp_path / "early.toml", model=str(toy_dir), task="induction", n=12, src="end", dst="previous",
                  claims=[list(sender)], compositions=[[list(receiver), list(sender), "k"]])
    assert cli.main(["run", str(early), "--out", str(tmp_path / "early")]) == 2
    assert "not after sender" in capsys.readouterr().err


def test_spec_with_only_selectors_runs(toy_dir, tmp_path):
    """No head named, heads only chosen from data (as in analyses/coreference_gemma.toml): judged on confirmation."""
    spec = _spec(tmp_path / "sel.toml", model=str(toy_dir), task="induction", n=20, src="induction_target",
                 dst="previous", direction="noising", claims=["top_effect:1"])
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    assert [c.selected for c in read_run(tmp_path / "run").claims] == [True]
