"""Render a run directory as one self-contained HTML page: claims and verdicts first, then the evidence behind them.

The page must open offline and from an e-mail attachment, so plotly.js is inlined once and nothing is fetched (a
Content-Security-Policy forbids it). Prompt text is untrusted: jinja2 autoescapes everything in the markup, and the
figure JSON inside ``<script>`` has ``<``, ``>`` and ``&`` escaped so text such as ``</script>`` cannot end it.
The report reads only the run directory (see :mod:`probes.run.rundir`) and imports no evidence code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from probes.claims.measures import MEASURES, interval_level, thresholds_by_measure
from probes.claims.types import Claim, ClaimResult, Composition, Thresholds
from probes.claims.verdicts import LEGS, PATH, VERDICTS
from probes.core.errors import ProbesError
from probes.core.io import write_text
from probes.core.notebook import number as fmt
from probes.core.stats import Estimate, level_text, simultaneous_confidence
from probes.report.figures import (
    ESSAY_PANELS,
    VERDICT_COLOURS,
    claimed_heads,
    composition_figure,
    evidence_panels,
    figure_spec,
    heatmap_figure,
    pattern_figure,
    position_content_figure,
    position_content_heads,
    scatter_figure,
)
from probes.run.rundir import INDEX, Example, RunResults, read_run

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def script_json(obj) -> Markup:
    """JSON safe inside ``<script>``: no ``<``/``>``/``&`` survives, so prompt text cannot close the tag."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return Markup(text)


def _cell(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


@dataclass
class Column:
    name: str
    short: bool  # every cell is a few characters (answer, foil): never wrap, so leading spaces stay visible


def prompt_table(prompts: list[dict]) -> tuple[list[Column], list[list[str]]]:
    """Columns in first-seen order and one row of display strings per prompt."""
    names = list(dict.fromkeys(k for p in prompts for k in p))
    rows = [[_cell(p.get(c)) for c in names] for p in prompts]
    columns = [Column(name, all(len(row[i]) <= 16 for row in rows)) for i, name in enumerate(names)]
    return columns, rows


def example_caption(run: RunResults, example: Example) -> str:
    if example.prompt is not None and example.prompt < len(run.prompts):
        prompt = run.prompts[example.prompt]
        return f"prompt {example.prompt}: {prompt.get('clean', ''.join(example.tokens))}"
    return "".join(example.tokens)


def _headline(run: RunResults, leg: str) -> str | None:
    """The first panel measure of a leg is its headline measure (see probes.run.rundir)."""
    return next((name for name, m in run.evidence.items() if m.leg == leg and m.panel), None)


def _thresholds_shown(result: ClaimResult) -> dict[str, float]:
    """The claim's thresholds keyed by the measures it reports (beside those numbers), then the ones that belong
    to no measure (alpha, min_prompts): not those of measures this kind of claim does not have."""
    return {
        name: value for name, value in thresholds_by_measure(result.thresholds).items()
        if name in result.evidence or name not in MEASURES
    }


def interval_levels(result: ClaimResult) -> dict[str, str]:
    """The confidence of each of a claim's intervals, as printed beside it (simultaneous over its family)."""
    return {name: level_text(interval_level(name, result.thresholds.alpha, result.family)) for name in result.evidence}


def screening_alpha(run: RunResults) -> float:
    """The alpha the screening of every head used: the run's thresholds travel with its claims (a run without
    claims used the default thresholds)."""
    return run.claims[0].thresholds.alpha if run.claims else Thresholds().alpha


@dataclass
class Row:
    """One claim in the answer table: who, the verdict, each leg's estimate (None where the claim has no such
    leg), and whether the head was chosen from the data."""

    anchor: str
    name: str
    verdict: str
    legs: list[Estimate | None]
    selection: str


def leg_columns() -> list[tuple[str, list[str]]]:
    """The answer table's leg columns, from the verdict rule's legs: (heading, measures read in that column). A
    composition's one leg (the path) sits in the head's column: both say whether patching moves the answer."""
    names = [leg.name for leg in LEGS]
    names[-1] += f" / {PATH.name}"
    measures = [[leg.measure] for leg in LEGS]
    measures[-1].append(PATH.measure)
    return list(zip(names, measures))


def selection(result: ClaimResult) -> str:
    """How the head came to be judged: named in the spec (all prompts), or chosen from the data (and then judged
    on held-out prompts only)."""
    if not result.selected:
        return "named"
    assert result.confirmation is not None, "a selected head is judged on held-out prompts"
    return f"selected, confirmed on {len(result.confirmation)} held-out prompts"


def claim_label(result: ClaimResult) -> str:
    """A claim's name in the answer table (and, for an essay claim, above its sentence)."""
    claim = result.claim
    if isinstance(claim, Composition):
        return claim.head_name
    if isinstance(claim, Claim):
        return f"{claim.head_name.removeprefix('head ')}: {claim.src} → {claim.dst}"
    return f"essay: {claim}"


def answer_rows(claims: list[ClaimResult]) -> list[Row]:
    columns = leg_columns()
    return [
        Row(
            f"claim-{i}",
            claim_label(result),
            result.verdict,
            [next((result.evidence[m] for m in measures if m in result.evidence), None) for _, measures in columns],
            selection(result),
        )
        for i, result in enumerate(claims)
    ]


PATCHED_IN = {
    "denoising": "patched in from the clean run; denoising asks: can it restore the answer?",
    "noising": "patched in from the corrupted prompt; noising asks: is it necessary?",
}
def environment(*packages: str) -> jinja2.Environment:
    """The report's jinja2 environment (autoescaped, strict, number filters); ``packages`` add their own
    ``templates`` folders in front, which may include the report's partials (``_style``, ``_figures``)."""
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(p, "templates") for p in (*packages, "probes.report")])
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, fmt_p=fmt_p)
    return env


def render_html(run: RunResults) -> str:
    """The report page for ``run`` as a string."""
    claimed = claimed_heads(run.claims)
    alpha = screening_alpha(run)
    panels = evidence_panels(run, alpha)
    figures = [figure_spec(f"fig-heatmap-{i}", heatmap_figure(p, claimed)) for i, p in enumerate(panels)]
    attention, effect = _headline(run, "attention"), _headline(run, "causal")
    scatter = attention is not None and effect is not None
    if attention is not None and effect is not None:
        figures.append(figure_spec("fig-scatter", scatter_figure(run, attention, effect, claimed)))
    examples = [e for e in run.examples if e.patterns]
    figures += [figure_spec(f"fig-example-{i}", pattern_figure(e)) for i, e in enumerate(examples)]
    compositions = [result for result in run.claims if isinstance(result.claim, Composition)]
    if compositions:
        figures.append(figure_spec("fig-compositions", composition_figure(compositions)))
    position_content = None
    if run.position_content is not None:
        mapped, left_out = position_content_heads(run)
        figures.append(figure_spec("fig-position-content", position_content_figure(mapped)))
        position_content = {"mapped": len(mapped), "left_out": left_out,
                            "thresholds": run.position_content_thresholds}
    essay = [ESSAY_PANELS.get(type(result.claim)) for result in run.claims]
    figures += [figure_spec(f"fig-claim-{i}", panel(result)) for i, (panel, result) in enumerate(zip(essay, run.claims))
                if panel is not None]
    columns, rows = prompt_table(run.prompts)
    return environment().get_template("report.html.j2").render(
        run=run,
        verdicts=VERDICTS,
        verdict_colours=VERDICT_COLOURS,
        claim_thresholds=[_thresholds_shown(result) for result in run.claims],
        claim_levels=[interval_levels(result) for result in run.claims],
        claims_level=level_text(simultaneous_confidence(alpha, run.claims[0].family)) if run.claims else None,
        gate_level=level_text(interval_level("gap_logits", alpha, len(run.heads))),
        screening_level=level_text(interval_level("attention", alpha, len(run.heads))),
        answer=answer_rows(run.claims),
        claim_labels=[claim_label(result) for result in run.claims],
        essay_panels=[panel is not None for panel in essay],
        leg_names=[name for name, _ in leg_columns()],
        patched_in=PATCHED_IN[run.direction],
        panels=panels,
        scatter={"attention": attention, "effect": effect} if scatter else None,
        examples=[(f"fig-example-{i}", example_caption(run, e)) for i, e in enumerate(examples)],
        compositions=bool(compositions),
        position_content=position_content,
        prompt_columns=columns,
        prompt_rows=rows,
        plotly_js=Markup(get_plotlyjs()),
        figures=script_json(figures),
        plotly_config=script_json(PLOTLY_CONFIG),
    )


def render(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/index.html`` from the run's results; returns its path."""
    run = read_run(run_dir)
    path = Path(run_dir) / INDEX
    page = render_html(run)
    try:
        write_text(path, page)
    except OSError as err:
        raise ProbesError(f"cannot write {path}: {err.strerror or err}; copy the run directory somewhere writable") from None
    return path
