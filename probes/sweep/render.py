"""The sweep's page: every cell linked, and per claim a strip of verdicts across cells above its effect with intervals.

Built like a run's report (:mod:`probes.report.render`): the same jinja2 environment, styles, inlined plotly and
figure loader, so it opens offline too.
"""

from __future__ import annotations

import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from probes.report.figures import VERDICT_COLOURS, figure_spec, plot_text
from probes.report.render import PLOTLY_CONFIG, environment, script_json
from probes.sweep.stability import NOT_SELECTED, ClaimStability

NOT_SELECTED_COLOUR = "#d1d9e0"
LABEL_COLOURS = {"stable": VERDICT_COLOURS["supported"], "unstable": VERDICT_COLOURS["attention_only"]}


def claim_figure(entry: ClaimStability) -> go.Figure:
    """Top: one square per cell in its verdict's colour. Bottom: the effect the verdict reads, with its interval,
    the claim's threshold (dotted) and the pooled interval (band)."""
    names = [plot_text(c.cell) for c in entry.cells]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.22, 0.78], vertical_spacing=0.04)
    colours = [VERDICT_COLOURS.get(c.verdict, NOT_SELECTED_COLOUR) for c in entry.cells]
    fig.add_trace(go.Scatter(
        x=names, y=[0] * len(names), mode="markers", marker={"symbol": "square", "size": 18, "color": colours},
        text=[c.verdict.replace("_", " ") for c in entry.cells], hovertemplate="%{x}: %{text}<extra></extra>",
        showlegend=False,
    ), row=1, col=1)
    shown = [(c, c.effect) for c in entry.cells if c.effect is not None]
    fig.add_trace(go.Scatter(
        x=[plot_text(c.cell) for c, _ in shown], y=[e.value for _, e in shown], mode="markers",
        marker={"size": 9, "color": [VERDICT_COLOURS.get(c.verdict, NOT_SELECTED_COLOUR) for c, _ in shown]},
        error_y={"type": "data", "symmetric": False, "array": [e.ci_high - e.value for _, e in shown],
                 "arrayminus": [e.value - e.ci_low for _, e in shown], "thickness": 1.2, "width": 4},
        hovertemplate="%{x}: %{y:.3f}<extra></extra>", showlegend=False,
    ), row=2, col=1)
    pooled = entry.pooled.get(entry.effect_measure)
    if pooled is not None:
        fig.add_hrect(y0=pooled.ci_low, y1=pooled.ci_high, fillcolor="rgba(9,105,218,0.12)", line_width=0,
                      row=2, col=1)  # pyright: ignore[reportArgumentType]  # plotly takes an int; "all" (its default) makes it infer str
        fig.add_hline(y=pooled.value, line_color="rgba(9,105,218,0.8)", row=2, col=1)  # pyright: ignore[reportArgumentType]
    bound = entry.claim.thresholds.effect
    for y in (-bound, bound):
        fig.add_hline(y=y, line_dash="dot", line_color="rgba(90,100,115,0.6)", row=2, col=1)  # pyright: ignore[reportArgumentType]
    fig.update_yaxes(visible=False, row=1, col=1)
    fig.update_yaxes(title=plot_text(entry.effect_measure), zeroline=True, row=2, col=1)
    fig.update_layout(height=320, margin={"l": 60, "r": 20, "t": 10, "b": 80})
    return fig


def render_sweep_html(summary: dict, entries: list[ClaimStability]) -> str:
    """The page for a finished sweep: ``summary`` is what ``sweep.json`` holds, ``entries`` its claims."""
    figures = [figure_spec(f"fig-claim-{i}", claim_figure(e)) for i, e in enumerate(entries)]
    return environment("probes.sweep").get_template("sweep.html.j2").render(
        summary=summary,
        entries=entries,
        verdict_colours=VERDICT_COLOURS | {NOT_SELECTED: NOT_SELECTED_COLOUR},
        label_colours=LABEL_COLOURS,
        plotly_js=Markup(get_plotlyjs()),
        figures=script_json(figures),
        plotly_config=script_json(PLOTLY_CONFIG),
    )
