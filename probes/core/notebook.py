"""How results show themselves in Jupyter (``_repr_html_``): a headline sentence, key numbers with intervals, and
a small heatmap where a result is a layer x head grid.

Every stage's result objects share this one helper (it lives in core, below every stage), so a claim, a patching
sweep and a position/content table look alike in a notebook. Plain HTML with inline styles: no JavaScript, so it
renders in JupyterLab, VS Code and a static nbconvert page alike. All text is escaped (prompt text is untrusted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape

import numpy as np
from jaxtyping import Float

from probes.core.stats import Estimate

MAX_GRID_CELLS = 1200  # larger grids are summarised by their numbers only


def number(x: float | None) -> str:
    """Two decimals, more significant digits when small, 'n/a' when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"


def estimate_text(est: Estimate) -> str:
    """'0.42 [0.30, 0.55]' (and the p-value when tested)."""
    text = f"{number(est.value)} [{number(est.ci_low)}, {number(est.ci_high)}]"
    if est.p_value is not None and not math.isnan(est.p_value):
        text += " p < 0.001" if est.p_value < 0.001 else f" p = {est.p_value:.3f}"
    return text


def _colour(x: float, scale: float) -> str:
    """The report's diverging scale: white at zero, blue positive, red negative."""
    if not math.isfinite(x):
        return "#eeeeee"
    t = max(-1.0, min(1.0, x / scale))
    end = (33, 102, 172) if t > 0 else (178, 24, 43)
    rgb = [round(247 + (e - 247) * abs(t)) for e in end]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def grid_html(values: Float[np.ndarray, "layer head"], title: str, row: str = "layer", column: str = "head") -> str:
    """A small heatmap as an HTML table (hover a cell for its value); '' when the grid is too large to help."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.size > MAX_GRID_CELLS or not np.isfinite(values).any():
        return ""
    scale = float(np.nanmax(np.abs(values))) or 1.0
    cell = "width:12px;height:12px;padding:0;border:1px solid #fff"
    rows = "".join(
        f"<tr><th style='font-size:9px;padding:0 4px;text-align:right'>{i}</th>"
        + "".join(
            f"<td style='{cell};background:{_colour(v, scale)}' title='{row} {i}, {column} {j}: {number(v)}'></td>"
            for j, v in enumerate(line)
        )
        + "</tr>"
        for i, line in enumerate(values)
    )
    return (
        f"<div style='margin-top:6px'><div style='font-size:12px;color:#59636e'>{escape(title)} "
        f"({row} down, {column} across; blue positive, red negative, max |x| = {number(scale)})</div>"
        f"<table style='border-collapse:collapse'>{rows}</table></div>"
    )


def result_html(title: str, sentence: str, numbers: Mapping[str, Estimate | str], extra: str = "") -> str:
    """A result card: bold title, its sentence, a two-column table of key numbers, then ``extra`` HTML."""
    cells = "".join(
        f"<tr><td style='padding:1px 12px 1px 0;color:#59636e'>{escape(name)}</td>"
        f"<td style='font-variant-numeric:tabular-nums'>{escape(v if isinstance(v, str) else estimate_text(v))}</td></tr>"
        for name, v in numbers.items()
    )
    return (
        f"<div style='border:1px solid #d1d9e0;border-radius:6px;padding:8px 12px;max-width:900px'>"
        f"<b>{escape(title)}</b><p style='margin:4px 0'>{escape(sentence)}</p>"
        f"<table style='font-size:13px'>{cells}</table>{extra}</div>"
    )
