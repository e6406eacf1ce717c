"""The run directory round-trips and the report renders it as one safe, self-contained page (no browser here).

Runs are built from small synthetic data with planted heads through ``write_run``: the renderer is under test, so
the expected numbers come from the data we wrote, not from a model.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from probes.claims.measures import MEASURES
from probes.claims.types import Claim, ClaimResult, Thresholds
from probes.claims.verdicts import VERDICTS, rule_lines
from probes.core.errors import ProbesError
from probes.core.stats import Estimate
from probes.report.render import render, script_json
from probes.run.rundir import FORMAT, Example, ModelInfo, RunResults, read_run, write_run

N_LAYERS, N_HEADS, N_PROMPTS = 12, 8, 6
ATTENDS_ONLY, SUPPORTED = (5, 1), (9, 6)  # planted: one head only attends, one attends and matters
TITLE_ATTACK = "document.title='pwned'"
HOSTILE_PROMPTS = [
    f"<script>alert(1)</script><script>{TITLE_ATTACK}</script> and Bob went home. He said hi to",
    f"</script><img src=x onerror=\"{TITLE_ATTACK}\"> & Carol met Dan. She waved to",
]
TOKENS = "<bos>|Alice| and| Bob| went| to| the| park|.| She| gave| the| ball| to".split("|")
ROLES = {"antecedent": 1, "distractor": 3, "pronoun": 9}
THRESHOLDS = Thresholds(attention_margin=0.3, effect=0.1, alpha=0.05)
ATTENTION_P = 0.0004  # the claims' adjusted p-value for attention: shown as "p < 0.001"


def _estimates(value: np.ndarray, se: float) -> dict[str, np.ndarray]:
    return {"": value, "_ci_low": value - 1.96 * se, "_ci_high": value + 1.96 * se}


def _heads_table(rng: np.random.Generator) -> pd.DataFrame:
    layer, head = np.meshgrid(np.arange(N_LAYERS), np.arange(N_HEADS), indexing="ij")
    attention = rng.beta(1, 8, (N_LAYERS, N_HEADS))
    effect = rng.normal(0, 0.03, (N_LAYERS, N_HEADS))
    attention[ATTENDS_ONLY], effect[ATTENDS_ONLY] = 0.87, 0.01
    attention[SUPPORTED], effect[SUPPORTED] = 0.62, 0.45
    columns = {"layer": layer.ravel(), "head": head.ravel()}
    for name, value, se in [("attention", attention, 0.03), ("effect_z", effect, 0.04)]:
        for suffix, v in _estimates(value, se).items():
            columns[name + suffix] = v.ravel()
    columns["effect_z"][0] = math.nan  # a head the run could not estimate: must survive as NaN, shown as a gap
    return pd.DataFrame(columns)


def _probes_table(rng: np.random.Generator) -> pd.DataFrame:
    layer, head = np.meshgrid(np.arange(N_LAYERS), np.arange(N_HEADS), indexing="ij")
    accuracy = rng.uniform(0.5, 0.7, (N_LAYERS, N_HEADS))
    control = rng.uniform(0.45, 0.6, (N_LAYERS, N_HEADS))
    accuracy[SUPPORTED] = 0.95
    columns = {"layer": layer.ravel(), "head": head.ravel(), "target": "antecedent"}
    for name, value in [("accuracy", accuracy), ("control_accuracy", control), ("selectivity", accuracy - control)]:
        for suffix, v in _estimates(value, 0.05).items():
            columns[name + suffix] = v.ravel()
    return pd.DataFrame(columns)


def _claim(heads: pd.DataFrame, head: tuple[int, int], verdict: str, thresholds: Thresholds) -> ClaimResult:
    row = heads[(heads["layer"] == head[0]) & (heads["head"] == head[1])].iloc[0]
    evidence = {
        m: Estimate(row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"], n=N_PROMPTS) for m in ("attention", "effect_z")
    }
    evidence["attention"].p_value = ATTENTION_P
    a, e = evidence["attention"], evidence["effect_z"]
    sentence = (
        f"head {head[0]}.{head[1]} attends from the pronoun to the antecedent with weight {a.value:.2f} "
        f"[{a.ci_low:.2f}, {a.ci_high:.2f}], and patching it changes the answer by {e.value:.2f} logits "
        f"[{e.ci_low:.2f}, {e.ci_high:.2f}]: {verdict}"
    )
    claim = Claim(head, "pronoun", "antecedent", foil="distractor")
    return ClaimResult(claim, verdict, sentence, evidence, thresholds)


def _pattern(rng: np.random.Generator, n: int, focus: dict[int, int]) -> list[list[float]]:
    """A causal attention pattern; query q puts most weight on key focus[q] where given."""
    scores = rng.normal(0, 1, (n, n))
    for q, k in focus.items():
        scores[q, k] += 6
    scores[np.triu_indices(n, 1)] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).tolist()


def synthetic_run(
    out_dir: Path, *, claims: bool = True, probes: bool = True, examples: bool = True, prompts: bool = True,
    legs: tuple[str, ...] = ("attention", "causal"), thresholds: Thresholds = THRESHOLDS,
) -> RunResults:  # fmt: skip
    """Write a small run with planted heads and hostile prompt text into ``out_dir``; returns what was written."""
    rng = np.random.default_rng(0)
    heads = _heads_table(rng)
    # the registry's entries for the two measures in the table, as a run directory stores them (no gather code)
    evidence = {name: replace(MEASURES[name], gather=None) for name in ("attention", "effect_z")}
    evidence = {k: m for k, m in evidence.items() if m.leg in legs}
    pairs = [
        {"clean": "Alice and Bob went to the park. She gave the ball to",
         "corrupt": "Alice and Bob went to the park. He gave the ball to",
         "answer": " Bob", "foil": " Alice", "roles": {"pronoun": "She", "antecedent": "Alice", "distractor": "Bob"}},
        *({"clean": text, "corrupt": text, "answer": " x", "foil": " y", "roles": {"pronoun": "He"}}
          for text in HOSTILE_PROMPTS),
    ]  # fmt: skip
    hostile_tokens = ["<bos>", "</script>", "<script>", TITLE_ATTACK, "</script>", " &amp;"]
    run = RunResults(
        model=ModelInfo("synthetic", N_LAYERS, N_HEADS, weights_sha256="0" * 64),
        task="pronoun_resolution",
        n_prompts=N_PROMPTS,
        seed=0,
        command="probes run analyses/pronoun.toml --n 6",
        heads=heads,
        evidence=evidence,
        baseline={"clean_logit_diff": Estimate(3.1, 2.7, 3.5, n=N_PROMPTS), "accuracy": Estimate(0.83, 0.5, 1.0)},
        claims=[_claim(heads, head, verdict, thresholds)
                for head, verdict in [(ATTENDS_ONLY, "attention_only"), (SUPPORTED, "supported")]] if claims else [],
        verdict_rule=rule_lines(thresholds),  # what the pipeline stores: the rule at this run's thresholds
        examples=[
            # both claimed heads look from the pronoun (9) to the antecedent (1)
            Example(TOKENS, {f"{L}.{H}": _pattern(rng, len(TOKENS), {9: 1}) for L, H in (ATTENDS_ONLY, SUPPORTED)},
                    prompt=0, roles=ROLES),
            Example(hostile_tokens, {"5.1": _pattern(rng, len(hostile_tokens), {})}, 1, {"pronoun": 3}),
        ]
        if examples
        else [],
        probes=_probes_table(rng) if probes else None,
        prompts=pairs if prompts else [],
    )  # fmt: skip
    write_run(out_dir, run)
    return run


class Page(HTMLParser):
    """The parts of the page these tests look at: every <script> and every element's attributes."""

    def __init__(self, html: str):
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self.attrs: list[tuple[str, dict]] = []
        self.rule: list[str] = []  # the items of <ol class="rule">, as text (entities decoded)
        self._in_script: dict | None = None
        self._in_rule = self._in_item = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))
        if tag == "ol" and dict(attrs).get("class") == "rule":
            self._in_rule = True
        if tag == "li" and self._in_rule:
            self._in_item = True
            self.rule.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None
        if tag == "ol":
            self._in_rule = False
        if tag == "li":
            self._in_item = False

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        if self._in_item:
            self.rule[-1] += data

    def figures(self) -> dict[str, dict]:
        (text,) = [text for attrs, text in self.scripts if attrs.get("id") == "figures"]
        return {fig["id"]: fig for fig in json.loads(text)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, RunResults, str]:
    out = tmp_path_factory.mktemp("run")
    run = synthetic_run(out)
    return out, run, render(out).read_text(encoding="utf-8")


def test_run_round_trips_through_the_directory(full_run):
    out, run, _ = full_run
    back = read_run(out)
    pd.testing.assert_frame_equal(back.heads, run.heads)
    pd.testing.assert_frame_equal(back.probes, run.probes)
    assert back.prompts == run.prompts
    assert back.examples == run.examples
    assert back.claims == run.claims
    assert back.baseline == run.baseline
    assert back.evidence == run.evidence
    for field in ("model", "task", "n_prompts", "seed", "command", "package_versions", "created_utc", "verdict_rule"):
        assert getattr(back, field) == getattr(run, field)
    assert back.per_prompt is None
    assert pd.read_csv(out / "heads.csv").shape == run.heads.shape


def test_rewriting_a_run_directory_drops_the_earlier_runs_optional_files(tmp_path):
    synthetic_run(tmp_path)
    assert (tmp_path / "probes.parquet").exists() and (tmp_path / "prompts.jsonl").exists()
    synthetic_run(tmp_path, probes=False, prompts=False)
    back = read_run(tmp_path)
    assert back.probes is None and back.prompts == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("probes.", "prompts."))]


def test_nan_is_stored_as_strict_json_null_and_read_back_as_nan(tmp_path):
    run = synthetic_run(tmp_path)
    run.claims[0].evidence["effect_z"] = Estimate(math.nan, -math.inf, math.nan)
    write_run(tmp_path, run)

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in results.json")

    stored = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert stored["claims"][0]["evidence"]["effect_z"] == dict.fromkeys(["value", "ci_low", "ci_high", "n", "p_value"])
    back = read_run(tmp_path).claims[0].evidence["effect_z"]
    assert math.isnan(back.value) and math.isnan(back.ci_low)


def test_page_is_one_file_with_plotly_inlined_once(full_run):
    _, _, html = full_run
    page = Page(html)
    assert not [a for tag, a in page.attrs if tag == "script" and "src" in a], "no external script"
    assert not [a for tag, a in page.attrs if tag == "link"], "no stylesheets or fonts to fetch"
    assert not [a for _, a in page.attrs for key in ("src", "href") if re.match(r"\s*(https?:)?//", a.get(key) or "")]
    assert html.count(get_plotlyjs()) == 1
    csp = [a["content"] for tag, a in page.attrs if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_hostile_prompt_text_is_escaped_in_markup_and_cannot_leave_the_json(full_run):
    _, run, html = full_run
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    page = Page(html)
    # the page has exactly its own three scripts: plotly, the figure data, the loader
    assert [a.get("id") for a, _ in page.scripts] == [None, "figures", None]
    # and the figure JSON still carries the hostile tokens verbatim, so escaping lost nothing
    ticktext = page.figures()["fig-example-1"]["layout"]["xaxis"]["ticktext"]
    assert ticktext[1] == "1 &lt;/script&gt;" and TITLE_ATTACK in ticktext[3]
    assert run.examples[1].tokens[1] == "</script>"


def array(data) -> np.ndarray:
    """A plotly array as numpy: plotly.py ships numpy data as base64 typed arrays, lists stay lists."""
    if isinstance(data, dict):
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
        return flat.reshape([int(n) for n in str(data.get("shape", len(flat))).split(",")])
    return np.asarray(data, dtype=float)


def test_script_json_survives_any_text_and_never_closes_its_tag():
    hostile = {"token": "</script><!-- <script>&amp; \u2028", "nested": ["</SCRIPT >"]}
    text = str(script_json(hostile))
    assert not re.search(r"[<>&\u2028]", text)
    assert json.loads(text) == hostile


def test_heatmaps_place_each_head_at_its_layer_and_index(full_run):
    _, run, html = full_run
    figures = Page(html).figures()
    heatmap, *claimed = figures["fig-heatmap-0"]["data"]  # attention comes first; one overlay per verdict
    z, custom = array(heatmap["z"]), array(heatmap["customdata"])
    for _, row in run.heads.sample(5, random_state=0).iterrows():
        layer, head = int(row["layer"]), int(row["head"])
        assert z[layer, head] == pytest.approx(row["attention"])
        assert custom[layer, head, :2] == pytest.approx([row["attention_ci_low"], row["attention_ci_high"]])
    overlaid = [(layer, head) for trace in claimed for layer, head in zip(array(trace["y"]), array(trace["x"]))]
    assert sorted(overlaid) == sorted([ATTENDS_ONLY, SUPPORTED])
    assert np.isnan(array(figures["fig-heatmap-1"]["data"][0]["z"])[0, 0])  # the NaN head is a gap, not a zero
    probe = array(figures["fig-heatmap-2"]["data"][0]["z"])
    selectivity = run.probes.set_index(["layer", "head"])["selectivity"]
    assert probe[SUPPORTED] == pytest.approx(selectivity[SUPPORTED])


def test_claims_lead_the_page_with_sentence_verdict_and_numbers(full_run):
    _, run, html = full_run
    claims_at = html.index('id="claims"')
    assert claims_at < html.index('id="heads"') < html.index('id="scatter"') < html.index('id="examples"')
    assert claims_at < html.index('id="prompts"') < html.index('id="provenance"')
    for claim in run.claims:
        assert claim.sentence in html
        for est in claim.evidence.values():  # each estimate and its interval, to two decimals
            assert f'<td class="num">{est.value:.2f}</td>' in html
            assert f'<td class="ci">[{est.ci_low:.2f}, {est.ci_high:.2f}]</td>' in html
    # per claim: one in the answer table and one on its card; one per verdict in the legend
    assert html.count('class="badge"') == 2 * len(run.claims) + len(VERDICTS)
    assert ATTENTION_P < 0.001 and html.count("p &lt; 0.001") == len(run.claims)
    assert Page(html).rule == run.verdict_rule
    assert run.model.weights_sha256 in html and run.command in html


def test_missing_data_omits_its_section(tmp_path):
    synthetic_run(tmp_path, claims=False, probes=False, examples=False, prompts=False, legs=("attention",))
    html = render(tmp_path).read_text()
    for section in ("claims", "scatter", "examples", "prompts"):
        assert f'id="{section}"' not in html and f'href="#{section}"' not in html
    figures = Page(html).figures()
    assert list(figures) == ["fig-heatmap-0"]
    assert len(figures["fig-heatmap-0"]["data"]) == 1  # no claimed-head overlay without claims
    assert 'id="heads"' in html and 'id="provenance"' in html


def test_failed_write_keeps_the_previous_results_and_leaves_no_temp_files(tmp_path):
    run = synthetic_run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    run.command = object()  # not JSON: fails after the data is assembled
    with pytest.raises(TypeError):
        write_run(tmp_path, run)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_render_that_fails_midway_leaves_the_previous_page_or_none(tmp_path, monkeypatch):
    """index.html is the last complete page or absent, never half a page, and no temp file is left behind."""
    import probes.report.render as render_module

    synthetic_run(tmp_path)

    def broken_fmt_p(p):  # the claims table formats p-values: fails after the page has begun rendering
        raise RuntimeError("render failed midway")

    def attempt() -> dict[str, bytes]:
        with monkeypatch.context() as m:
            m.setattr(render_module, "fmt_p", broken_fmt_p)
            with pytest.raises(RuntimeError, match="midway"):
                render(tmp_path)
        return {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    data = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert attempt() == data  # no page yet: still none
    page = render(tmp_path).read_bytes()
    assert page.rstrip().endswith(b"</html>")
    assert attempt() == data | {"index.html": page}  # the earlier complete page, untouched


def test_bad_runs_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ProbesError, match="no results.json"):
        render(tmp_path)
    run = synthetic_run(tmp_path)
    run.claims[0] = dataclasses.replace(run.claims[0], verdict="plausible")
    with pytest.raises(ProbesError, match="verdict 'plausible'"):
        write_run(tmp_path, run)
    run.claims[0] = dataclasses.replace(run.claims[0], verdict="supported")
    run.heads = run.heads.drop(columns="effect_z_ci_low")
    with pytest.raises(ProbesError, match="lacks columns effect_z_ci_low"):
        write_run(tmp_path, run)
    run.heads = synthetic_run(tmp_path).heads.assign(layer=lambda df: df["layer"] + 1)
    with pytest.raises(ProbesError, match=f"layer {N_LAYERS} but synthetic has {N_LAYERS} layers"):
        write_run(tmp_path, run)
    (tmp_path / "probes.parquet").unlink()
    with pytest.raises(ProbesError, match="lacks probes.parquet named in results.json"):
        read_run(tmp_path)
    results = tmp_path / "results.json"
    stored = json.loads(results.read_text())
    assert stored["format"] == FORMAT
    results.write_text(json.dumps(stored | {"format": 99}))
    with pytest.raises(ProbesError, match="format 99"):
        read_run(tmp_path)


def test_the_verdict_rule_shown_is_the_codes_rule_at_the_runs_thresholds(tmp_path):
    """The report lists probes.claims.verdicts.rule_lines at the run's thresholds, and follows them when they change."""
    stricter = replace(THRESHOLDS, effect=0.35)
    shown = {}
    for name, thresholds in [("base", THRESHOLDS), ("stricter", stricter)]:
        synthetic_run(tmp_path / name, thresholds=thresholds)
        shown[name] = Page(render(tmp_path / name).read_text(encoding="utf-8")).rule
        assert shown[name] == rule_lines(thresholds)
    changed = [(a, b) for a, b in zip(shown["base"], shown["stricter"]) if a != b]
    assert changed, "changing the effect threshold must change the rule shown"
    for base_line, stricter_line in changed:
        assert str(THRESHOLDS.effect) in base_line and str(stricter.effect) in stricter_line


def _answer_table(html: str) -> list[list[str]]:
    """The answer table's rows as cell texts (tags stripped, whitespace collapsed)."""
    table = html[html.index('<table class="answer">'):]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
    cell = lambda c: " ".join(re.sub(r"<[^>]+>", "", c).split())  # noqa: E731
    return [[cell(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)] for row in rows]


def test_the_answer_table_leads_with_one_row_per_claim_and_its_legs(full_run):
    """Head, verdict and the three legs' estimates with intervals, before any detail card; cards are collapsed."""
    _, run, html = full_run
    header, *rows = _answer_table(html)
    assert header == ["claim", "verdict", "attends", "the edge matters", "the head matters / the path matters",
                      "head chosen"]
    assert len(rows) == len(run.claims)
    for row, result in zip(rows, run.claims):
        layer, head = result.claim.head
        attention, effect = result.evidence["attention"], result.evidence["effect_z"]
        assert row == [
            f"{layer}.{head}: pronoun → antecedent", result.verdict.replace("_", " "),
            f"{attention.value:.2f} [{attention.ci_low:.2f}, {attention.ci_high:.2f}]",
            "—",  # the synthetic claims have no edge knockout
            f"{effect.value:.2f} [{effect.ci_low:.2f}, {effect.ci_high:.2f}]",
            "named",  # named in the spec, not chosen from data
        ]
    assert html.index('<table class="answer">') < html.index('<details class="claim"')
    assert len(re.findall(r'<details class="claim" id="claim-\d+"', html)) == len(run.claims)
    assert "<details open" not in html


def test_selection_column_shows_how_each_head_was_chosen(tmp_path):
    run = synthetic_run(tmp_path)
    run.claims[0] = dataclasses.replace(run.claims[0], selected=True, confirmation=[3, 4, 5])
    run.claims[1] = dataclasses.replace(run.claims[1], selected=False, confirmation=None)
    from probes.report.render import render_html

    header, *rows = _answer_table(render_html(run))
    assert header[-1] == "head chosen"
    assert [row[-1] for row in rows] == ["selected, confirmed on 3 held-out prompts", "named"]


@pytest.mark.parametrize("direction, words", [("denoising", "patched in from the clean run"),
                                              ("noising", "patched in from the corrupted prompt")])
def test_title_direction_times_and_notes_come_from_the_run(tmp_path, direction, words):
    run = synthetic_run(tmp_path)
    run.title, run.direction = "Coreference <in> a toy", direction
    run.stage_times = {"load model": 1.5, "evidence": 30.0}
    run.notes = ["probe target antecedent_gender skipped: the prompts have no label 'antecedent_gender'"]
    write_run(tmp_path, run)
    back = read_run(tmp_path)
    assert (back.title, back.direction, back.stage_times, back.notes) == (
        run.title, run.direction, run.stage_times, run.notes)
    html = render(tmp_path).read_text(encoding="utf-8")
    assert "<title>Coreference &lt;in&gt; a toy: probe report</title>" in html
    assert "<h1>Coreference &lt;in&gt; a toy</h1>" in html
    assert words in html and PATCHED_ELSE[direction] not in html
    assert "load model 1.5 s · evidence 30.0 s (total 32 s)" in html
    assert '<p class="note">probe target antecedent_gender skipped: the prompts have no label' in html


PATCHED_ELSE = {"denoising": "from the corrupted prompt", "noising": "from the clean run"}
