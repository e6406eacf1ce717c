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
from probes.evidence import probing
from probes.evidence.activations import ALL_POSITIONS, harvest
from probes.report.figures import claimed_heads, evidence_panels, scatter_figure
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
    # intervals are printed at their own level: each claim's simultaneous over the 2 claims (1 - 0.05/2), the
    # heatmaps' over the 8 heads screened (1 - 0.05/8), the task gate's at 95%; never a blanket "95% CI"
    assert "95% CI" not in html
    assert '<td class="num">97.5%</td>' in html and '<td class="num">95%</td>' in html
    assert f"{100 * (1 - 0.05 / 8):.2f}% interval [" in html and "(97.5% each; the task gate's at 95%)" in html
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
        ({"model": "x", "src": "end", "dst": "previous", "task": "induction", "claims": ["7: end -> previous"]},
         "LAYER.HEAD: SOURCE -> TARGET [vs FOIL]"),
        ({"model": "x", "src": "end", "dst": "previous", "task": "induction", "claims": ["*: end -> previous"]},
         "names no head"),
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
                 claims=[[20, 1]],  # a named head: four prompts are too few to choose one and confirm it
                 probe_targets=["antecedent_gender"])
    assert cli.main(["run", str(spec), "--prompts", str(jsonl), "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    assert run.n_prompts == 4 and run.probes is None  # the pairs carry no antecedent_gender label: skipped
    assert run.notes and "antecedent_gender skipped" in run.notes[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**pairs[0], "corrupt": pairs[0]["clean"] + " and"}) + "\n")
    assert cli.main(["run", str(spec), "--prompts", str(bad), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0]


def test_claim_selectors_rank_attention_by_sign_and_effect_by_size():
    from probes.claims.evaluation import rank_heads
    from probes.claims.gathering import Gathered
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
    assert "path patching ~" in capsys.readouterr().out  # its memory is estimated before the run, like each stage
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


def test_written_claims_and_missing_labels(toy_dir, toy_model, tmp_path, capsys):
    """A claim written as people say it (about the spec's roles, or its own) is judged; a probe target whose
    labels the prompts lack is skipped with one note line in the summary, results.json and the report."""
    layer, head = toy_model.heads.previous_token
    induction = toy_model.heads.induction
    spec = _spec(
        tmp_path / "written.toml", model=str(toy_dir), task="induction", n=12, src="induction_target",
        dst="previous", direction="noising", probe_targets=["antecedent_gender"],
        claims=[f"{layer}.{head}: induction_target -> previous", f"{induction[0]}.{induction[1]}: end -> induction_target"],
        title="Written claims",
    )
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    run = read_run(tmp_path / "run")
    assert [(c.claim.head, c.claim.src, c.claim.dst) for c in run.claims] == [
        ((layer, head), "induction_target", "previous"), (induction, "end", "induction_target")]
    assert run.claims[0].verdict == "supported"  # the planted previous-token head
    (note,) = run.notes
    assert note.startswith("probe target antecedent_gender skipped: the prompts have no label antecedent_gender")
    assert f"note: {note}" in out and run.probes is None
    assert set(run.stage_times) >= {"load model", "prompts", "evidence, every head"}
    assert "time: load model" in out
    html = (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    assert "<h1>Written claims</h1>" in html and str(escape(note)) in html


def test_labels_from_the_prompts_make_a_probe_target_usable(toy_model):
    import torch

    from probes.prompts.promptset import PromptSet
    from probes.run.pipeline import probe_targets
    from probes.run.spec import AnalysisSpec

    spec = AnalysisSpec(model="m", src="a", dst="b", task="ioi", probe_targets=["antecedent_gender", "previous_token"])
    tokens = torch.ones(2, 4, dtype=torch.long)
    bare = PromptSet.from_tokens(tokens, tokens, tokens[:, 0], tokens[:, 0], {"a": torch.tensor([1, 2])})
    assert probe_targets(spec, bare)[0] == ["previous_token"]
    labelled = PromptSet.from_tokens(tokens, tokens, tokens[:, 0], tokens[:, 0], {"a": torch.tensor([1, 2])},
                                     labels={"antecedent_gender": ["f", "m"], "antecedent": ["Ann", "Bob"]})
    assert probe_targets(spec, labelled) == (["antecedent_gender", "previous_token"], [])


def test_doctor_says_what_is_installed_cached_and_available(tmp_path, capsys, monkeypatch):
    import shutil
    from importlib import metadata

    import torch

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path))  # an empty cache: nothing converted yet
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"transformer-lens {metadata.version('transformer-lens')}" in out
    assert out.count("not cached") == 2 and "Apache-2.0" in out and "Gemma Terms of Use" in out
    assert "converted Hugging Face checkpoints: none" in out
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert f"chromium (report browser test): {browser or 'not found'}" in out
    assert ("GPU: none" in out) == (not torch.cuda.is_available())
    assert "float32 linear kernel on" in out and "chosen per model on first use" in out


def test_doctor_says_which_linear_kernel_runs_and_its_measured_rates(tmp_path, capsys, monkeypatch):
    from probes.models import kernels

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m").mkdir()
    config = dict(d_model=576, n_heads=9, d_head=64, n_key_value_heads=3, d_mlp=1536, gated_mlp=True)
    (tmp_path / "smollm2-135m" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(kernels, "time_kernels", lambda shapes, candidates: {"torch": [2.0] * 6, "onednn": [1.0] * 6})
    assert cli.main(["doctor"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("smollm2-135m:"))
    flop = 2 * kernels.ROWS * sum(a * b for a, b in kernels.linear_shapes(config))
    assert line.strip().startswith("smollm2-135m: oneDNN (measured ")
    assert f"6 interleaved rounds: torch's default {flop / 2e9:.0f} GFLOP/s, oneDNN {flop / 1e9:.0f} GFLOP/s" in line


def test_a_spec_that_only_selects_heads_runs(toy_dir, toy_model, tmp_path):
    """No head named outright, as in the shipped analyses: the selected heads are judged on held-out prompts."""
    spec = _spec(tmp_path / "select.toml", model=str(toy_dir), task="induction", n=24, src="induction_target",
                 dst="previous", direction="noising", claims=["top_attention:1"])
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    (result,) = read_run(tmp_path / "run").claims
    assert result.selected and result.claim.head == toy_model.heads.previous_token


def test_a_run_without_pattern_patching_skips_only_that_sweep(toy_dir, toy_model, tmp_path):
    """``pattern_patching = false`` (a quick run) leaves out the one measure no verdict reads; all else is equal."""
    fields = dict(model=str(toy_dir), task="induction", n=24, src="induction_target", dst="previous",
                  direction="noising", claims=[list(toy_model.heads.previous_token), "top_effect:2"])
    full, quick = tmp_path / "full", tmp_path / "quick"
    assert cli.main(["run", str(_spec(tmp_path / "full.toml", **fields)), "--out", str(full)]) == 0
    assert cli.main(["run", str(_spec(tmp_path / "quick.toml", pattern_patching=False, **fields)), "--out", str(quick)]) == 0
    a, b = read_run(full), read_run(quick)
    assert "effect_pattern" in a.heads.columns and "effect_pattern" not in b.heads.columns
    assert list(b.heads.columns) == [c for c in a.heads.columns if not c.startswith("effect_pattern")]
    numbers = b.heads.select_dtypes("number").columns
    np.testing.assert_allclose(b.heads[numbers].to_numpy(float), a.heads[numbers].to_numpy(float), rtol=1e-9)
    assert (b.heads["verdict"] == a.heads["verdict"]).all()
    assert [(c.claim.head, c.verdict, c.sentence) for c in a.claims] == [(c.claim.head, c.verdict, c.sentence) for c in b.claims]
    assert "effect_pattern" not in (quick / "index.html").read_text(encoding="utf-8")
    assert cli.main(["run", str(_spec(tmp_path / "bad.toml", pattern_patching="no", **fields)), "--out", str(tmp_path / "x")]) == 2


def test_only_measures_no_verdict_reads_can_be_skipped(toy_model):
    from probes.claims.gathering import EvidenceContext, gather
    from probes.core.errors import ProbesError
    from probes.prompts.tasks.toy import pronoun_prompts

    ctx = EvidenceContext(toy_model.model, pronoun_prompts(toy_model, 4), "pronoun", "antecedent", None, None)
    with pytest.raises(ProbesError, match="cannot skip edge_knockout"):
        gather(ctx, [(0, 0)], skip=("edge_knockout",))


@pytest.mark.parametrize("group", [1.5, [1], True])
def test_a_group_of_the_wrong_type_is_one_line_and_exit_2(toy_dir, tmp_path, capsys, group):
    """A prompt file whose group is neither a string nor an integer: refused before any model work, naming the
    file and line, and no run directory is left behind."""
    good = {"clean": "a b c", "corrupt": "a b d", "answer": " x", "foil": " y", "roles": {"src": "b"}}
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({**good, "group": group}) + "\n")
    spec = _spec(tmp_path / "g.toml", model=str(toy_dir), prompts=str(jsonl), src="src", dst="previous", claims=[[0, 0]])
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{jsonl} line 2" in err
    assert "'group' must be a string or an integer" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("fields", "sides"), [
    ({"n": 12, "claims": ["top_effect:1"]}, "give 6 and 6"),  # half of 12 groups: 6 a side, 10 needed
    ({"n": 24, "claims": ["top_attention:1"], "thresholds": {"confirm_fraction": 0.2}}, "give 19 and 5"),
])
def test_a_discovery_split_too_small_is_one_line_and_exit_2(toy_dir, tmp_path, capsys, fields, sides):
    spec = _spec(tmp_path / "split.toml", model=str(toy_dir), task="induction", src="induction_target",
                 dst="previous", direction="noising", **fields)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at least 10 groups of prompts on each side" in err and sides in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _random_model_dir(path, d_vocab: int, n_ctx: int):
    """An untrained one-layer model without a tokenizer: random tokens are then drawn from all ``d_vocab - 1`` ids."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=8, n_heads=2, n_ctx=n_ctx, d_vocab=d_vocab,
                                  attn_only=True, seed=0)
    return save_model_dir(HookedTransformer(cfg), path)


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    """Heads chosen from data on an untrained model (its heads' numbers vary from prompt to prompt, unlike the
    planted toy's), with previous-token probes over a 2,999-token vocabulary."""
    folder = tmp_path_factory.mktemp("selected")
    model = _random_model_dir(folder / "wide", d_vocab=3000, n_ctx=34)
    spec = _spec(folder / "select.toml", model=str(model), task="previous_token", n=24, src="end", dst="previous",
                 claims=["top_attention:1", "top_effect:1"], probe_targets=["previous_token"], pattern_patching=False)
    assert cli.main(["run", str(spec), "--out", str(folder / "run")]) == 0
    return spec, read_run(folder / "run")


def test_the_scatter_draws_a_selected_head_from_its_claims_evidence(selected_run):
    """A head chosen from data is plotted with its claim's numbers (confirmation prompts, the claims' family), not
    with the screening table's (every prompt, a family of every head)."""
    _, run = selected_run
    selected = [c for c in run.claims if c.selected]
    assert selected
    fig = scatter_figure(run, "attention", "effect_z", claimed_heads(run.claims))
    screening = run.heads.set_index(["layer", "head"])
    for result in selected:
        name = f"{result.claim.head[0]}.{result.claim.head[1]}"
        (trace,) = [t for t in fig.data if t.text is not None and name in t.text]
        i = list(trace.text).index(name)
        for axis, measure in (("x", "attention"), ("y", "effect_z")):
            value, bars = getattr(trace, axis)[i], getattr(trace, f"error_{axis}")
            shown = [value, value - bars.arrayminus[i], value + bars.array[i]]
            est = result.evidence[measure]
            np.testing.assert_allclose(shown, [est.value, est.ci_low, est.ci_high], rtol=1e-9, atol=1e-12)
            table = screening.loc[result.claim.head, [measure, f"{measure}_ci_low", f"{measure}_ci_high"]]
            assert not np.allclose(shown, table.to_numpy(float)), (name, measure)


def test_a_selected_heads_probe_evidence_comes_from_its_confirmation_prompts(selected_run, tmp_path):
    """The probe selectivity attached to a head chosen from data is a probe fitted and scored on its held-out
    prompts alone (recomputed here on them), not the run's probe table over every prompt."""
    from probes.models.loading import load_model
    from probes.run.pipeline import build_prompts
    from probes.run.spec import AnalysisSpec

    spec_path, run = selected_run
    result = next(c for c in run.claims if c.selected)
    spec = AnalysisSpec.from_toml(spec_path)
    model = load_model(spec.model)
    held_out = build_prompts(model, spec).subset(result.confirmation)
    store = harvest(model, held_out, tmp_path / "acts", kinds=("z",), at=ALL_POSITIONS)
    table = probing.probe_activations(store, [probing.previous_token_identity], seed=0).table
    layer, head = result.claim.head
    mine = table[(table["layer"] == layer) & (table["head"] == head) & table["attachable"]]
    best = mine.sort_values("selectivity", ascending=False).iloc[0]
    est = result.evidence["probe_selectivity"]
    assert [est.value, est.ci_low, est.ci_high, est.n] == [
        best["selectivity"], best["selectivity_ci_low"], best["selectivity_ci_high"], best["n"]]
    every = run.probes[(run.probes["layer"] == layer) & (run.probes["head"] == head)]
    assert est.n < every["n"].min()  # fewer rows than the probe on every prompt had


def test_a_refused_probe_target_is_a_note_and_named_in_the_probe_section(tmp_path, capsys):
    """Eight token types (a nine-token vocabulary) are too few for a control task: the run says so in one note
    line, the report's probe panel gives the reason, and no claim carries the probe."""
    model = _random_model_dir(tmp_path / "tiny", d_vocab=9, n_ctx=8)
    spec = _spec(tmp_path / "tiny.toml", model=str(model), task="previous_token", n=24, src="end", dst="previous",
                 claims=[[0, 0]], probe_targets=["previous_token"], pattern_patching=False)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    run = read_run(tmp_path / "run")
    (reason,) = set(run.probes["reason"])
    assert not run.probes["attachable"].any() and "only 8 token type(s)" in reason
    note = f"probe target previous_token not attached to head verdicts: {reason}"
    assert run.notes == [note] and out.count(note) == 1
    (panel,) = [p for p in evidence_panels(run, run.claims[0].thresholds.alpha) if p.title == "probe selectivity: previous_token"]
    assert panel.description.endswith(f"not attached to head verdicts: {reason}")
    assert str(escape(panel.description)) in (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    assert all("probe_selectivity" not in c.evidence for c in run.claims)


def test_a_previous_token_probe_on_a_large_vocabulary_draws_from_a_bounded_pool(selected_run):
    """From 2,999 token ids, 24 random sequences repeat almost no token 10 times: the run draws them from a pool
    sized so each token is the previous token of about 20 rows, and the probe has classes to learn."""
    _, run = selected_run
    assert run.probes["attachable"].all() and (run.probes["n_classes"] >= 10).all()
    tokens = {t for p in run.prompts for t in json.loads(p["clean"])[1:]}
    assert len(tokens) <= 24 * 32 // 20
