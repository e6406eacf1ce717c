"""Render a run directory as one self-contained HTML page: claims and verdicts first, then the evidence behind them.

The page must open offline and from an e-mail attachment, so plotly.js is inlined once and nothing is fetched (a
Content-Security-Policy forbids it). Prompt text is untrusted: jinja2 autoescapes everything in the markup, and the
figure JSON inside ``<script>`` has ``<``, ``>`` and ``&`` escaped so text such as ``</script>`` cannot end it.
The report reads only the run directory (see ``probes.results``) and imports no evidence code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from jaxtyping import Float
from markupsafe import Markup
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from probes.results import KINDS, VERDICTS, ClaimRecord, Example, RunResults, ci_columns, read_run, write_text

INDEX = "index.html"
FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# shared colour semantics of every evidence heatmap: white is zero, blue positive, red negative
DIVERGING = [
    [0.0, "rgb(178,24,43)"], [0.25, "rgb(244,165,130)"], [0.5, "rgb(247,247,247)"],
    [0.75, "rgb(146,197,222)"], [1.0, "rgb(33,102,172)"],
]  # fmt: skip
VERDICT_COLOURS = {
    "supported": "#1a7f37",
    "attention_only": "#b35900",
    "effect_only": "#6f42c1",
    "refuted": "#cf222e",
    "inconclusive": "#6e7781",
}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def fmt(x: float | None) -> str:
    """A number as people read it: two decimals, more significant digits when small, 'n/a' when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 0.01 or x == 0:
        return f"{x:.2f}"
    return f"{x:.2g}"


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


def plot_text(s: str) -> str:
    """Text for plotly labels, which parse a subset of HTML: escape it so tokens like '<b>' show literally."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "\\n")


def figure_spec(div_id: str, fig: go.Figure) -> dict:
    """A figure as the plain data the page's loader hands to ``Plotly.newPlot``."""
    fig.update_layout(font_family=FONT, template="plotly_white")
    spec = json.loads(pio.to_json(fig, validate=False))
    return {"id": div_id, "data": spec["data"], "layout": spec["layout"]}


@dataclass
class Panel:
    """One layer x head grid of a measure, with its interval and extra hover lines."""

    title: str
    kind: str
    description: str
    value: Float[np.ndarray, "layer head"]
    ci_low: Float[np.ndarray, "layer head"]
    ci_high: Float[np.ndarray, "layer head"]
    extra: dict[str, Float[np.ndarray, "layer head"]]


def _grid(df: pd.DataFrame, column: str, n_layers: int, n_heads: int) -> Float[np.ndarray, "layer head"]:
    """Scatter a per-head column into a [layer, head] array; heads the run skipped stay NaN."""
    grid = np.full((n_layers, n_heads), np.nan)
    grid[df["layer"].to_numpy(int), df["head"].to_numpy(int)] = df[column].to_numpy(float)
    return grid


def evidence_panels(run: RunResults) -> list[Panel]:
    """Every per-head measure, then probe selectivity per target, ordered attention -> causal -> representational."""
    shape = (run.model.n_layers, run.model.n_heads)
    panels = [
        Panel(name, m.kind, m.description, *(_grid(run.heads, c, *shape) for c in ci_columns([name])), {})
        for name, m in run.evidence.items()
    ]
    if run.probes is not None:
        for target, df in run.probes.groupby("target", sort=False):
            panels.append(
                Panel(
                    f"probe selectivity: {target}",
                    "representational",
                    f"linear-probe accuracy for '{target}' from the head's output, minus a control task's accuracy",
                    *(_grid(df, c, *shape) for c in ci_columns(["selectivity"])),
                    {"accuracy": _grid(df, "accuracy", *shape), "control": _grid(df, "control_accuracy", *shape)},
                )
            )
    return sorted(panels, key=lambda p: KINDS.index(p.kind))


def claimed_heads(claims: list[ClaimRecord]) -> dict[str, list[tuple[int, int]]]:
    """Claimed heads grouped by verdict (a head claimed twice counts under its first claim's verdict)."""
    seen: dict[tuple[int, int], str] = {}
    for claim in claims:
        if claim.head is not None:
            seen.setdefault(claim.head, claim.verdict)
    return {v: [h for h, verdict in seen.items() if verdict == v] for v in VERDICTS if v in seen.values()}


def heatmap_figure(panel: Panel, claimed: dict[str, list[tuple[int, int]]]) -> go.Figure:
    n_layers, n_heads = panel.value.shape
    scale = np.nanmax(np.abs(panel.value)) if np.isfinite(panel.value).any() else 1.0
    scale = scale if scale > 0 else 1.0
    custom = np.stack([panel.ci_low, panel.ci_high, *panel.extra.values()], axis=-1)
    extra_hover = "".join(f"<br>{n} %{{customdata[{i + 2}]:.3f}}" for i, n in enumerate(panel.extra))
    fig = go.Figure(
        go.Heatmap(
            z=panel.value,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            customdata=custom,
            colorscale=DIVERGING,
            zmin=-scale,
            zmax=scale,
            colorbar={"thickness": 12, "len": 0.9},
            hovertemplate="head %{y}.%{x}<br>"
            + plot_text(panel.title)
            + " %{z:.3f}<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            + extra_hover
            + "<extra></extra>",
            hoverongaps=False,
        )
    )
    for verdict, heads in claimed.items():
        colour = VERDICT_COLOURS[verdict]
        fig.add_trace(
            go.Scatter(
                x=[head for _, head in heads],
                y=[layer for layer, _ in heads],
                mode="markers",
                marker={"symbol": "square-open", "size": 14, "color": colour, "line": {"width": 2.5, "color": colour}},
                hovertemplate=f"claimed head %{{y}}.%{{x}}: {verdict}<extra></extra>",
                showlegend=False,
            )
        )
    fig.update_xaxes(title="head", dtick=1, showgrid=False, zeroline=False, range=[-0.5, n_heads - 0.5])
    fig.update_yaxes(
        title="layer", autorange="reversed", dtick=1 if n_layers <= 12 else 2, showgrid=False, zeroline=False
    )
    fig.update_layout(height=140 + 18 * max(n_layers, 8), margin={"l": 50, "r": 10, "t": 30, "b": 45})
    return fig


def scatter_figure(
    run: RunResults, attention: str, effect: str, claimed: dict[str, list[tuple[int, int]]]
) -> go.Figure:
    """Attention against effect, one point per head: heads where the two kinds of evidence disagree stand out."""
    df = run.heads.dropna(subset=[attention, effect]).set_index(["layer", "head"], drop=False)
    fig = go.Figure()
    is_claimed = df.index.isin([h for heads in claimed.values() for h in heads])
    groups = [("other heads", df[~is_claimed], "rgba(90,100,115,0.45)", False)]
    for verdict, heads in claimed.items():
        groups.append((verdict, df[df.index.isin(heads)], VERDICT_COLOURS[verdict], True))
    for name, subset, colour, highlight in groups:
        if subset.empty:
            continue
        labels = [f"{layer}.{head}" for layer, head in zip(subset["layer"], subset["head"])]
        fig.add_trace(
            go.Scatter(
                x=subset[attention],
                y=subset[effect],
                error_x=_error_bars(subset, attention, colour, highlight),
                error_y=_error_bars(subset, effect, colour, highlight),
                mode="markers+text" if highlight else "markers",
                text=labels if highlight else None,
                textposition="top right",
                textfont={"color": colour},
                marker={"size": 12 if highlight else 7, "color": colour, "line": {"width": 1, "color": "white"}},
                name=name.replace("_", " "),
                customdata=subset[ci_columns([attention])[1:] + ci_columns([effect])[1:]],
                hovertext=labels,
                hovertemplate="head %{hovertext}<br>"
                + f"{plot_text(attention)} %{{x:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]<br>"
                + f"{plot_text(effect)} %{{y:.3f}} [%{{customdata[2]:.3f}}, %{{customdata[3]:.3f}}]<extra></extra>",
            )
        )
    fig.update_xaxes(title=plot_text(attention), zeroline=True)
    fig.update_yaxes(title=plot_text(effect), zeroline=True)
    fig.update_layout(height=460, margin={"l": 60, "r": 20, "t": 20, "b": 50}, legend={"orientation": "h", "y": 1.08})
    return fig


def _error_bars(df: pd.DataFrame, measure: str, colour: str, visible: bool) -> dict:
    """Asymmetric error bars spanning the measure's interval (drawn for claimed heads only, to keep it legible)."""
    return {
        "visible": visible,
        "type": "data",
        "symmetric": False,
        "array": df[f"{measure}_ci_high"] - df[measure],
        "arrayminus": df[measure] - df[f"{measure}_ci_low"],
        "thickness": 1,
        "width": 0,
        "color": colour,
    }


def token_labels(example: Example) -> list[str]:
    """Axis labels 'position token', with the role a position plays where it plays one."""
    roles = {pos: name for name, pos in example.roles.items()}
    return [
        plot_text(f"{i} {tok}" + (f"  ‹{roles[i]}›" if i in roles else "")) for i, tok in enumerate(example.tokens)
    ]


def pattern_figure(example: Example, per_row: int = 2) -> go.Figure:
    """Each head's attention pattern on one prompt: rows are queries, columns the keys they attend to."""
    heads = list(example.patterns)
    n = len(example.tokens)
    labels = token_labels(example)
    n_rows, n_cols = -(-len(heads) // per_row), min(len(heads), per_row)
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=[plot_text(f"head {h}") for h in heads], horizontal_spacing=0.12,
        vertical_spacing=0.3 / n_rows,
    )  # fmt: skip
    axis = {"tickmode": "array", "tickvals": list(range(n)), "ticktext": labels, "showgrid": False}
    axis["tickfont"] = {"size": 10}
    hover = [[[labels[q], labels[k]] for k in range(n)] for q in range(n)]
    for i, head in enumerate(heads):
        row, col = divmod(i, n_cols)
        fig.add_trace(
            go.Heatmap(
                z=example.patterns[head],
                x=list(range(n)),
                y=list(range(n)),
                customdata=hover,
                colorscale="Blues",
                zmin=0,
                zmax=1,
                showscale=i == 0,
                colorbar={"thickness": 12, "len": 0.9 / n_rows, "y": 1, "yanchor": "top"},
                hovertemplate=f"head {plot_text(head)}<br>from %{{customdata[0]}}<br>to %{{customdata[1]}}"
                "<br>weight %{z:.3f}<extra></extra>",
            ),
            row=row + 1,
            col=col + 1,
        )
        # square cells: a pattern is a query x key matrix, not a chart
        cell = {"row": row + 1, "col": col + 1, "constrain": "domain"}
        fig.update_xaxes(**axis, **cell, tickangle=-60)
        fig.update_yaxes(**axis, **cell, autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}")
    fig.update_yaxes(title="attending token (query)", col=1)
    fig.update_xaxes(title="attended-to token (key)", row=n_rows)
    fig.update_layout(height=n_rows * (170 + 18 * n), margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


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


def _headline(run: RunResults, kind: str) -> str | None:
    """The first measure of a kind is its headline measure (see probes.results)."""
    return next((name for name, m in run.evidence.items() if m.kind == kind), None)


def render_html(run: RunResults) -> str:
    """The report page for ``run`` as a string."""
    claimed = claimed_heads(run.claims)
    panels = evidence_panels(run)
    figures = [figure_spec(f"fig-heatmap-{i}", heatmap_figure(p, claimed)) for i, p in enumerate(panels)]
    attention, effect = _headline(run, "attention"), _headline(run, "causal")
    scatter = attention is not None and effect is not None
    if scatter:
        figures.append(figure_spec("fig-scatter", scatter_figure(run, attention, effect, claimed)))
    examples = [e for e in run.examples if e.patterns]
    figures += [figure_spec(f"fig-example-{i}", pattern_figure(e)) for i, e in enumerate(examples)]
    columns, rows = prompt_table(run.prompts)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("probes", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(fmt=fmt, fmt_p=fmt_p)
    return env.get_template("report.html.j2").render(
        run=run,
        verdicts=VERDICTS,
        verdict_colours=VERDICT_COLOURS,
        panels=panels,
        scatter={"attention": attention, "effect": effect} if scatter else None,
        examples=[(f"fig-example-{i}", example_caption(run, e)) for i, e in enumerate(examples)],
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
    write_text(path, render_html(run))
    return path
