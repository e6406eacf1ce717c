"""The report's figures: per-head evidence heatmaps, attention-vs-effect scatter, attention patterns (plotly)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from jaxtyping import Float
from plotly.subplots import make_subplots

from probes.claims.essay import ResolutionDepth, SelfUpdate
from probes.claims.measures import LEGS, interval_level
from probes.claims.types import Claim, ClaimResult
from probes.claims.verdicts import VERDICTS
from probes.core.stats import Estimate, level_text
from probes.run.rundir import Example, RunResults, ci_columns

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
    "not applicable": "#afb8c1",
}
def plot_text(s: str) -> str:
    """Text for plotly labels, which parse a subset of HTML: escape it so tokens like '<b>' show literally."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "\\n")


def figure_spec(div_id: str, fig: go.Figure) -> dict:
    """A figure as the plain data the page's loader hands to ``Plotly.newPlot``."""
    fig.update_layout(font_family=FONT, template="plotly_white")
    spec = json.loads(pio.to_json(fig, validate=False))  # pyright: ignore[reportArgumentType]  # a str, as plotly documents; its inferred type admits None
    return {"id": div_id, "data": spec["data"], "layout": spec["layout"]}


@dataclass
class Panel:
    """One layer x head grid of a measure, with its interval and extra hover lines."""

    title: str
    leg: str
    description: str
    value: Float[np.ndarray, "layer head"]
    ci_low: Float[np.ndarray, "layer head"]
    ci_high: Float[np.ndarray, "layer head"]
    extra: dict[str, Float[np.ndarray, "layer head"]]
    level: str  # the intervals' confidence, e.g. "99.98%" (simultaneous over every head screened)


def _interval_grids(df: pd.DataFrame, measure: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A measure's estimate, interval low and interval high (the columns :func:`ci_columns` names) as grids."""
    value, low, high = (_grid(df, column, *shape) for column in ci_columns([measure]))
    return value, low, high


def _grid(df: pd.DataFrame, column: str, n_layers: int, n_heads: int) -> Float[np.ndarray, "layer head"]:
    """Scatter a per-head column into a [layer, head] array; heads the run skipped stay NaN."""
    grid = np.full((n_layers, n_heads), np.nan)
    grid[df["layer"].to_numpy(int), df["head"].to_numpy(int)] = df[column].to_numpy(float)
    return grid


def evidence_panels(run: RunResults, alpha: float) -> list[Panel]:
    """Every per-head measure, then probe selectivity per target, ordered attention -> causal -> representational;
    the screening of every head is one family (``alpha`` over all of them)."""
    shape = (run.model.n_layers, run.model.n_heads)

    def level(name: str) -> str:
        return level_text(interval_level(name, alpha, len(run.heads)))

    panels = [
        Panel(name, m.leg, m.description, *_interval_grids(run.heads, name, shape), {}, level(name))
        for name, m in run.evidence.items()
        if m.panel
    ]
    if run.probes is not None:
        for target, df in run.probes.groupby("target", sort=False):
            refused = list(df.loc[~df["attachable"].astype(bool), "reason"]) if "attachable" in df else []
            panels.append(
                Panel(
                    f"probe selectivity: {target}",
                    "representational",
                    f"linear-probe accuracy for '{target}' from the head's output, minus a control task's accuracy"
                    + (f"; not attached to head verdicts: {refused[0]}" if refused else ""),
                    *_interval_grids(df, "selectivity", shape),
                    {"accuracy": _grid(df, "accuracy", *shape), "control": _grid(df, "control_accuracy", *shape)},
                    level("probe_selectivity"),
                )
            )
    return sorted(panels, key=lambda p: LEGS.index(p.leg))


def claimed_heads(claims: list[ClaimResult]) -> dict[str, list[tuple[int, int]]]:
    """Claimed heads grouped by verdict (a head claimed twice counts under its first claim's verdict)."""
    seen: dict[tuple[int, int], str] = {}
    for result in claims:
        head = result.claim.head if isinstance(result.claim, Claim) else None
        if head is not None:
            seen.setdefault(head, result.verdict)
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
            + f" %{{z:.3f}}<br>{panel.level} interval [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
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
    """Attention against effect, one point per head: heads where the two kinds of evidence disagree stand out.

    A claimed head is drawn from its claim's evidence (for a head chosen from data: its confirmation prompts, at the
    claims' family), not from the screening table of every head on every prompt."""
    df = run.heads.dropna(subset=[attention, effect]).set_index(["layer", "head"], drop=False)
    fig = go.Figure()
    is_claimed = df.index.isin([h for heads in claimed.values() for h in heads])
    groups = [("other heads", df.loc[~is_claimed], "rgba(90,100,115,0.45)", False)]
    evidence = _claimed_evidence(run.claims, [attention, effect])
    for verdict, heads in claimed.items():
        groups.append((verdict, evidence.loc[evidence.index.isin(heads)], VERDICT_COLOURS[verdict], True))
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


def _claimed_evidence(claims: list[ClaimResult], measures: list[str]) -> pd.DataFrame:
    """Each claimed head's ``measures`` with their intervals from its first claim's evidence, indexed by head."""
    first: dict[tuple[int, int], ClaimResult] = {}
    for result in claims:
        head = getattr(result.claim, "head", None)
        if head is not None and all(m in result.evidence for m in measures):
            first.setdefault(head, result)
    rows = [{"layer": layer, "head": head} | {
        column: number for m in measures for column, number in zip(ci_columns([m]), _interval(result.evidence[m]))
    } for (layer, head), result in first.items()]
    frame = pd.DataFrame(rows, columns=["layer", "head", *ci_columns(measures)])
    return frame.dropna(subset=measures).set_index(["layer", "head"], drop=False)


def _interval(est: Estimate) -> tuple[float, float, float]:
    return est.value, est.ci_low, est.ci_high


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


def composition_figure(compositions: list[ClaimResult]) -> go.Figure:
    """Each composition claim's path-patching effect with its interval, coloured by verdict, beside the threshold."""
    fig = go.Figure()
    names = [result.claim.head_name.replace("head ", "") for result in compositions]
    for verdict in VERDICTS:
        mine = [i for i, result in enumerate(compositions) if result.verdict == verdict]
        if not mine:
            continue
        est = [compositions[i].evidence["path_effect"] for i in mine]
        fig.add_trace(go.Scatter(
            x=[e.value for e in est], y=[names[i] for i in mine], mode="markers", name=verdict.replace("_", " "),
            marker=dict(color=VERDICT_COLOURS[verdict], size=11),
            error_x=dict(type="data", symmetric=False, array=[e.ci_high - e.value for e in est],
                         arrayminus=[e.value - e.ci_low for e in est]),
            hovertemplate="%{y}: %{x:.2f} of the gap<extra></extra>",
        ))
    bound = compositions[0].thresholds.effect
    for x in (-bound, bound):
        fig.add_vline(x=x, line_dash="dot", line_color="rgba(90,100,115,0.6)")
    fig.add_vline(x=0, line_color="rgba(90,100,115,0.9)")
    fig.update_layout(
        height=140 + 40 * len(compositions), margin=dict(l=10, r=10, t=30, b=40),
        xaxis_title="path-patching effect (fraction of the clean-corrupt gap)", yaxis=dict(autorange="reversed"),
    )
    return fig


LABEL_SYMBOLS = {"positional": "square", "content": "diamond", "mixed": "circle", "neither": "circle-open"}


def position_content_heads(run: RunResults) -> tuple[pd.DataFrame, int]:
    """The heads the position/content map can place, each with its verdict on the run's claim, and how many it
    leaves out: a head whose shares are undefined (no clean ``src -> dst`` attention to divide by)."""
    verdicts = run.heads.set_index(["layer", "head"])["verdict"] if "verdict" in run.heads else None
    table = run.position_content
    assert table is not None, "for runs with a position/content table"
    df = table.dropna(subset=["positional_share", "content_share"]).copy()
    df["verdict"] = [
        verdicts.get((layer, head), "inconclusive") if verdicts is not None else "inconclusive"
        for layer, head in zip(df["layer"], df["head"])
    ]
    return df, len(table) - len(df)


def position_content_figure(heads: pd.DataFrame) -> go.Figure:
    """Every head of :func:`position_content_heads` on a positional-share vs content-share map, coloured by its
    verdict, shaped by its label: where the "positional pathway / content pathway" story puts a head, next to what
    the claim's evidence says of it."""
    fig = go.Figure()
    for verdict in VERDICTS:
        subset = heads[heads["verdict"] == verdict]
        if subset.empty:
            continue
        labels = [f"{layer}.{head}" for layer, head in zip(subset["layer"], subset["head"])]
        fig.add_trace(
            go.Scatter(
                x=subset["positional_share"],
                y=subset["content_share"],
                mode="markers",
                marker={"size": 6 + 24 * subset["attention"].clip(0, 1), "color": VERDICT_COLOURS[verdict],
                        "symbol": [LABEL_SYMBOLS.get(label, "circle") for label in subset["label"]],
                        "line": {"width": 1, "color": VERDICT_COLOURS[verdict]}, "opacity": 0.8},
                name=verdict.replace("_", " "),
                hovertext=labels,
                customdata=subset[["attention", "positional_share_ci_low", "positional_share_ci_high",
                                   "content_share_ci_low", "content_share_ci_high", "sink", "self", "label"]],
                hovertemplate="head %{hovertext}: %{customdata[7]}<br>attention %{customdata[0]:.3f}<br>"
                "positional share %{x:.2f} [%{customdata[1]:.2f}, %{customdata[2]:.2f}]<br>"
                "content share %{y:.2f} [%{customdata[3]:.2f}, %{customdata[4]:.2f}]<br>"
                "sink %{customdata[5]:.2f}, self %{customdata[6]:.2f}<extra>" + verdict + "</extra>",
            )
        )
    fig.update_xaxes(title="positional share (survives a content swap)", zeroline=True)
    fig.update_yaxes(title="content share (follows the token when moved)", zeroline=True)
    fig.update_layout(height=460, margin={"l": 60, "r": 20, "t": 20, "b": 50}, legend={"orientation": "h", "y": 1.08})
    return fig


# The essay's claims (probes.claims.essay): one small panel per claim, drawn from its profile


def _profile_rows(result: ClaimResult, measure: str) -> pd.DataFrame:
    profile = result.profile if result.profile is not None else pd.DataFrame(columns=["measure"])
    return profile[profile["measure"] == measure]


def _unit_name(layer: int, head: int) -> str:
    return f"{layer} (layer)" if head < 0 else f"{layer}.{head}"


def self_update_figure(result: ClaimResult) -> go.Figure:
    """Per head (and per layer): the partial rank correlation of self-attention with the update, with its interval,
    coloured by verdict, beside ``-threshold``; and each head's write forced onto itself and onto the sink."""
    rho = _profile_rows(result, "self_update_correlation")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "partial rank correlation: self-attention vs update, given position",
        "write forced onto the token itself / onto the sink"))
    names = [_unit_name(layer, head) for layer, head in zip(rho["layer"], rho["head"])]
    for verdict in VERDICTS:
        mine = (rho["verdict"] == verdict).to_numpy()
        if mine.any():
            part = rho[mine]
            fig.add_trace(go.Scatter(
                x=part["value"], y=[n for n, m in zip(names, mine) if m], mode="markers", name=verdict,
                marker=dict(color=VERDICT_COLOURS[verdict], size=9),
                error_x=dict(type="data", symmetric=False, array=part["ci_high"] - part["value"],
                             arrayminus=part["value"] - part["ci_low"]),
                hovertemplate="%{y}: %{x:+.2f}<extra></extra>",
            ), row=1, col=1)
    fig.add_vline(x=-result.thresholds.correlation, line_dash="dot", line_color="rgba(90,100,115,0.6)", row=1, col=1)
    fig.add_vline(x=0, line_color="rgba(90,100,115,0.9)", row=1, col=1)
    for measure, colour, label in (("forced_self_update", "#0969da", "onto itself"),
                                   ("forced_sink_update", "#8250df", "onto the sink")):
        part = _profile_rows(result, measure)
        fig.add_trace(go.Scatter(
            x=part["value"], y=[_unit_name(layer, head) for layer, head in zip(part["layer"], part["head"])],
            mode="markers", name=label, marker=dict(color=colour, size=8, symbol="diamond"),
            error_x=dict(type="data", symmetric=False, array=part["ci_high"] - part["value"],
                         arrayminus=part["value"] - part["ci_low"]),
            hovertemplate="%{y} " + label + ": %{x:.3g}<extra></extra>",
        ), row=1, col=2)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="rank correlation", row=1, col=1)
    fig.update_xaxes(title="norm of the head's write", row=1, col=2)
    fig.update_layout(height=160 + 22 * len(names), margin=dict(l=10, r=10, t=40, b=40))
    return fig


DEPTH_CURVES = (
    ("depth_selectivity", "#1a7f37", "probe selectivity (first-named)"),
    ("depth_patch_src", "#0969da", "patching resid_pre at the source"),
    ("depth_patch_end", "#8250df", "patching resid_pre at the end"),
)


def depth_figure(result: ClaimResult) -> go.Figure:
    """The three curves over layers with their intervals: the probe's selectivity (what the verdict reads) and
    the two patching curves (fractions of the clean-corrupt gap) beside it; the claimed depth as a line."""
    fig = go.Figure()
    for measure, colour, label in DEPTH_CURVES:
        part = _profile_rows(result, measure)
        fig.add_trace(go.Scatter(
            x=part["layer"], y=part["value"], mode="lines+markers", name=label, line=dict(color=colour),
            error_y=dict(type="data", symmetric=False, array=part["ci_high"] - part["value"],
                         arrayminus=part["value"] - part["ci_low"]),
            hovertemplate="layer %{x}: %{y:+.2f}<extra>" + label + "</extra>",
        ))
    fig.add_hline(y=0, line_color="rgba(90,100,115,0.9)")
    fig.add_hline(y=result.thresholds.selectivity, line_dash="dot", line_color="rgba(90,100,115,0.6)")
    depth = getattr(result.claim, "layer", None)
    if depth is not None:
        fig.add_vline(x=depth - 0.5, line_dash="dash", line_color=VERDICT_COLOURS[result.verdict])
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=40), xaxis_title="layer",
                      yaxis_title="selectivity / fraction of the gap")
    return fig


ESSAY_PANELS = {SelfUpdate: self_update_figure, ResolutionDepth: depth_figure}  # C and D add theirs here
