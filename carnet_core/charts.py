"""Plotly figures shared by the pages (built here so tests can check them without a browser)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go


def topk_bar_figure(class_names: Sequence[str], probabilities: Sequence[float], title: str | None = None,
                    height_px: int | None = None) -> go.Figure:
    """Horizontal bar chart of top-k classes, most probable on top, labelled with percentages.

    Args:
        class_names: k class names, most probable first.
        probabilities: their probabilities in [0, 1].
        title: optional chart title.
        height_px: figure height in px (default: 40 px per bar + margins).
    """
    names = list(class_names)[::-1]
    pct = [p * 100 for p in probabilities][::-1]
    fig = go.Figure(go.Bar(x=pct, y=names, orientation="h", text=[f"{p:.1f}%" for p in pct],
                           textposition="auto", marker_color="#2f7ed8",
                           hovertemplate="%{y}: %{x:.2f}%<extra></extra>"))
    fig.update_layout(title=title, height=height_px or 40 * len(names) + 60, margin=dict(l=0, r=10, t=30 if title else 10, b=0),
                      xaxis=dict(range=[0, 100], title="probability (%)"), yaxis=dict(automargin=True))
    return fig


def accuracy_bar_figure(accuracy: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars of top-1 and top-5 accuracy (%) per row (members and ensemble rules)."""
    rows = list(accuracy)
    fig = go.Figure([go.Bar(name=k, x=rows, y=[accuracy[r][k.lower().replace("-", "")] * 100 for r in rows],
                            text=[f"{accuracy[r][k.lower().replace('-', '')] * 100:.1f}%" for r in rows])
                     for k in ("Top-1", "Top-5")])
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 100], title="accuracy (%)"), height=360,
                      margin=dict(l=0, r=0, t=10, b=0))
    return fig
