"""Plotly figures shared by the pages (built here so tests can check them without a browser)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go


def topk_bar_figure(class_names: Sequence[str], probabilities: Sequence[float], title: str | None = None,
                    height_px: int | None = None, font_px: int | None = None) -> go.Figure:
    """Horizontal bar chart of top-k classes, most probable on top, labelled with percentages.

    Args:
        class_names: k class names, most probable first.
        probabilities: their probabilities in [0, 1].
        title: optional chart title.
        height_px: figure height in px (default: 40 px per bar + margins).
        font_px: text size in px (default Plotly's 12; presentation mode: large, with bars to match).
    """
    names = list(class_names)[::-1]
    pct = [p * 100 for p in probabilities][::-1]
    fig = go.Figure(go.Bar(x=pct, y=names, orientation="h", text=[f"{p:.1f}%" for p in pct],
                           # inside long bars, beside short ones: same size and never turned sideways
                           textposition=["inside" if p >= 20 else "outside" for p in pct], textangle=0,
                           insidetextanchor="end", cliponaxis=False, marker_color="#2f7ed8",
                           hovertemplate="%{y}: %{x:.2f}%<extra></extra>"))
    fig.update_layout(title=title, height=height_px or max(40 * len(names) + 90, 170),  # one bar: room for its axis
                      margin=dict(l=0, r=10, t=30 if title else 10, b=0),
                      xaxis=dict(range=[0, 100], title="probability (%)"), yaxis=dict(automargin=True))
    if font_px:
        dark = dict(color="#111", size=font_px)
        fig.update_layout(font=dark, title_font_size=round(font_px * 1.2), xaxis_tickfont=dark,
                          yaxis_tickfont=dark, xaxis_title_font=dark, xaxis_tickvals=[0, 50, 100],
                          margin=dict(l=0, r=2 * font_px, t=round(2.2 * font_px), b=0),
                          height=height_px or max(round(3.4 * font_px) * len(names) + 110, 200))
    return fig


def accuracy_bar_figure(accuracy: dict[str, dict[str, float]], top5: bool = True) -> go.Figure:
    """Grouped horizontal bars of top-1 and top-5 accuracy (%) per row (members, then ensemble rules), first row on
    top: a member's name (a fine-tune's name and run: 60 characters) is read whole beside its bars. ``top5=False``: top-1 only (5 classes or fewer, where top-5 is 100 % by construction)."""
    rows = list(accuracy)[::-1]
    kinds = (("Top-5", "top5"), ("Top-1", "top1")) if top5 else (("Top-1", "top1"),)
    # labels inside long bars, beside short ones, as topk_bar_figure's: a 100 % bar's label placed "outside" by
    # Plotly's "auto" (too thin a bar for it inside) fell beyond the axis's end, past the figure's edge, unseen
    fig = go.Figure([go.Bar(name=name, y=rows, x=[accuracy[r][key] * 100 for r in rows], orientation="h",
                            text=[f"{accuracy[r][key] * 100:.1f}%" for r in rows], textangle=0, cliponaxis=False,
                            textposition=["inside" if accuracy[r][key] >= 0.2 else "outside" for r in rows],
                            insidetextanchor="end",
                            hovertemplate="%{y}: %{x:.1f}%<extra>" + name + "</extra>")
                     for name, key in kinds])  # Top-1 drawn above Top-5 in a row
    fig.update_layout(uniformtext=dict(minsize=10, mode="show"), barmode="group", xaxis=dict(range=[0, 100], title="accuracy (%)"), yaxis=dict(automargin=True),
                      height=44 * len(rows) + 90, margin=dict(l=0, r=10, t=10, b=0),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", traceorder="reversed"))
    return fig


def training_curves_figure(history: Sequence[dict[str, float]], title: str | None = None,
                           probe_top1: float | None = None) -> go.Figure:
    """Live fine-tune curves: train / val loss, val top-1 / top-5 (%) and learning rate, per epoch.

    Args:
        history: per-epoch rows with ``epoch``, ``train_loss``, ``val_loss``, ``top1``, ``top5``, ``lr``
            (:class:`carnet_core.training.trainer.EpochMetrics` as dicts, as in ``metrics.jsonl``).
        probe_top1: the run's linear-probe val top-1 (0–1), drawn as a dotted line on the accuracy panel: where
            fine-tuning started, and what it should end above (its first epoch often dips below it).
    """
    from plotly.subplots import make_subplots  # lazy: only the curve figures use subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "val accuracy (%)", "learning rate"))
    epochs = [r["epoch"] for r in history]
    for key, name, col in (("train_loss", "train loss", 1), ("val_loss", "val loss", 1),
                           ("top1", "top-1", 2), ("top5", "top-5", 2), ("lr", "learning rate", 3)):
        scale = 100 if key in ("top1", "top5") else 1
        fig.add_trace(go.Scatter(x=epochs, y=[r[key] * scale for r in history], name=name, mode="lines+markers"),
                      row=1, col=col)
    if probe_top1 is not None:
        fig.add_hline(y=probe_top1 * 100, line_dash="dot", line_color="grey", row=1, col=2,
                      annotation_text=f"linear probe {probe_top1:.1%}", annotation_position="bottom right")
    fig.update_xaxes(title_text="epoch", dtick=1 if len(epochs) <= 15 else None)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_layout(title=title, height=320, margin=dict(l=0, r=0, t=50 if title else 30, b=0),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def runs_overlay_figure(runs: dict[str, Sequence[dict[str, float]]], metric: str = "top1",
                        probes: dict[str, float | None] | None = None) -> go.Figure:
    """One line per run of ``metric`` (``top1``, ``top5``, ``val_loss``, ``train_loss``) against epoch, to compare
    fine-tunes. Accuracies are shown in %.

    Args:
        runs: per-epoch rows (as in ``metrics.jsonl``) by run label.
        metric: the row key drawn.
        probes: each run's linear-probe val top-1 (0–1; None: no probe), by run label. For ``top1`` a run with a
            probe starts at epoch 0 from it, an open diamond in the run's colour: what its epochs should end above
            (the single run's chart draws the same value as a dotted line).
    """
    scale = 100 if metric in ("top1", "top5") else 1
    probes = (probes or {}) if metric == "top1" else {}
    value = "%{y:.1f}%" if scale == 100 else "%{y:.3f}"
    fig = go.Figure()
    for label, rows in runs.items():
        epochs, values = [r["epoch"] for r in rows], [r[metric] * scale for r in rows]
        points = [f"epoch {e}" for e in epochs]
        if probes.get(label) is not None:
            epochs, values, points = [0, *epochs], [probes[label] * scale, *values], ["linear probe", *points]
        fig.add_trace(go.Scatter(x=epochs, y=values, name=label, mode="lines+markers", text=points,
                                 marker=dict(symbol=["diamond-open" if p == "linear probe" else "circle"
                                                     for p in points],
                                             size=[11 if p == "linear probe" else 6 for p in points]),
                                 hovertemplate="%{text}: " + value + "<extra>%{fullData.name}</extra>"))
    titles = {"top1": "val top-1 (%)", "top5": "val top-5 (%)", "val_loss": "val loss", "train_loss": "train loss"}
    longest = max((len(rows) for rows in runs.values()), default=0)
    fig.update_xaxes(dtick=1 if longest <= 15 else None)  # whole epochs, as on the live curves (not 1.2, 1.4, …)
    with_probe = any(probes.get(run) is not None for run in runs)
    fig.update_layout(xaxis_title="epoch (0: linear probe)" if with_probe else "epoch",
                      yaxis_title=titles.get(metric, metric), height=340,
                      margin=dict(l=0, r=0, t=10, b=0), legend=dict(orientation="h", y=-0.2))
    return fig


def confusion_heatmap_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                             order: Sequence[int] | None = None, normalize: bool = True) -> go.Figure:
    """Confusion matrix heatmap (rows = true class, columns = predicted), classes in ``order`` (e.g.
    :func:`carnet_core.evaluation.evaluate.confusion_order`, which puts confused classes together). With ``normalize`` each
    row is shown as % of that class's images. Tick labels are hidden beyond 60 classes (hover shows the names), so
    a 196-class matrix stays readable.

    Each non-empty cell also carries an invisible square marker (trace 1, ``customdata`` = [true, predicted, images]):
    plotly.js fires no click on a heatmap cell when the chart is in select mode (plotly/plotly.js#7685), and a marker
    it does, so a page can open the cell's photos (Streamlit's ``on_select``)."""
    order = list(order) if order is not None else list(range(len(class_names)))
    c = np.asarray(confusion, dtype=float)[np.ix_(order, order)]
    names = [class_names[i] for i in order]
    z = c / np.maximum(c.sum(1, keepdims=True), 1) * 100 if normalize else c
    unit = "%" if normalize else ""
    rows, cols = np.nonzero(c)
    fig = go.Figure([
        go.Heatmap(z=z, x=names, y=names, colorscale="Blues", hoverinfo="skip",
                   colorbar=dict(title="% of row" if normalize else "images")),
        go.Scatter(x=[names[j] for j in cols], y=[names[i] for i in rows], mode="markers", showlegend=False,
                   marker=dict(symbol="square", size=max(6, min(48, 640 // max(len(names), 1))),
                               color="rgba(0,0,0,0)"),
                   customdata=[[names[i], names[j], int(c[i, j]), float(z[i, j]),
                                "1 image — click to see it" if c[i, j] == 1 else f"{int(c[i, j])} images — click to "
                                                                                  "see them"]
                               for i, j in zip(rows, cols)],
                   hovertemplate="true: %{customdata[0]}<br>predicted: %{customdata[1]}<br>%{customdata[3]:.1f}" + unit
                                 + " (%{customdata[4]})<extra></extra>"),
    ])
    many = len(names) > 60
    size = min(900, max(360, 14 * len(names) + 160))
    fig.update_layout(height=size, margin=dict(l=0, r=0, t=10, b=0), clickmode="event+select",
                      xaxis=dict(title="predicted", showticklabels=not many, tickangle=-45, categoryorder="array",
                                 categoryarray=names),
                      yaxis=dict(title="true", autorange="reversed", showticklabels=not many, categoryorder="array",
                                 categoryarray=names))
    return fig


def pr_curve_figure(curves: dict[str, dict], classes: Sequence[str]) -> go.Figure:
    """Precision against recall (%) of each of ``classes`` (one line each, average precision in the legend), from
    :attr:`carnet_core.evaluation.evaluate.EvalReport.pr_curves`; a class without a curve is left out."""
    fig = go.Figure([go.Scatter(x=[r * 100 for r in curves[name]["recall"]],
                                y=[p * 100 for p in curves[name]["precision"]], mode="lines", line_shape="hv",
                                name=f"{name} (AP {curves[name]['average_precision'] * 100:.1f}%)",
                                hovertemplate=name + ": recall %{x:.1f}%, precision %{y:.1f}%<extra></extra>")
                     for name in classes if name in curves])
    fig.update_layout(height=380, xaxis=dict(title="recall (%)", range=[0, 101]),
                      yaxis=dict(title="precision (%)", range=[0, 101]), margin=dict(l=0, r=0, t=10, b=0),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def road_curves_figure(removed_pct: Sequence[int], morf: Sequence[float], lerf: Sequence[float],
                       probability: float) -> go.Figure:
    """ROAD's two curves (Rong et al. 2022): the class probability (%) against the share of pixels removed (%), most
    relevant first (should fall fast) and least relevant first (should hold), from the photo's own probability at 0 %.
    """
    x = [0, *removed_pct]
    fig = go.Figure([
        go.Scatter(x=x, y=[probability * 100, *(v * 100 for v in morf)], mode="lines+markers",
                   name="most relevant removed first (should fall)", line=dict(color="#d62728")),
        go.Scatter(x=x, y=[probability * 100, *(v * 100 for v in lerf)], mode="lines+markers",
                   name="least relevant removed first (should hold)", line=dict(color="#2ca02c")),
    ])
    fig.update_layout(height=300, xaxis=dict(title="pixels removed (%)", range=[0, 100]),
                      yaxis=dict(title="class probability (%)", range=[0, 101]), margin=dict(l=0, r=0, t=10, b=0),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def faithfulness_bar_figure(names: Sequence[str], means: Sequence[float], stds: Sequence[float],
                            floor: str) -> go.Figure:
    """Mean ROAD combined per CAM method (horizontal bars with ± one standard deviation as error bars, the numbers on
    hover; most faithful on top), the floor method's bar in grey."""
    fig = go.Figure(go.Bar(x=list(means)[::-1], y=list(names)[::-1], orientation="h",
                           error_x=dict(type="data", array=list(stds)[::-1]),
                           marker_color=["#999" if n == floor else "#2f7ed8" for n in list(names)[::-1]],
                           customdata=list(stds)[::-1],
                           hovertemplate="%{y}: %{x:+.3f} ± %{customdata:.3f}<extra></extra>"))
    fig.update_layout(height=40 * len(names) + 70, xaxis=dict(title="ROAD combined (higher is more faithful)"),
                      yaxis=dict(automargin=True), margin=dict(l=0, r=40, t=10, b=0))
    return fig


def embedding_figure(coordinates: np.ndarray, labels: Sequence[str], hover: Sequence[str],
                     right: Sequence[bool | None] | None = None, legend_max: int = 20) -> go.Figure:
    """The embedding map: one dot per photo at its 2-D coordinates (N, 2), coloured by class (a legend up to
    ``legend_max`` classes, one trace each; beyond that one trace, colours cycling) or, given ``right``, by whether
    the model got it right (green), wrong (red) or not scored (grey). ``hover``: each dot's text. Every dot's
    ``customdata`` is its row, for a page's click (Streamlit's ``on_select``)."""
    import plotly.express as px  # lazy: the qualitative palettes

    xy = np.asarray(coordinates, dtype=float)
    rows = np.arange(len(xy))
    if right is not None:
        groups = [("right", "#2ca02c", [r is True for r in right]), ("wrong", "#d62728", [r is False for r in right]),
                  ("not scored", "#999999", [r is None for r in right])]
    else:
        names = list(dict.fromkeys(labels))
        palette = px.colors.qualitative.Dark24
        groups = [(n, palette[i % len(palette)], [lab == n for lab in labels]) for i, n in enumerate(names)]
    if right is None and len(groups) > legend_max:  # 196 legend entries help no one: one trace, colours per class
        index = {n: i for i, (n, _, _) in enumerate(groups)}
        traces = [go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=rows, text=list(hover),
                               marker=dict(size=7, color=[groups[index[lab]][1] for lab in labels]),
                               hovertemplate="%{text}<extra></extra>", showlegend=False)]
    else:
        traces = [go.Scattergl(x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=name, customdata=rows[mask],
                               text=[h for h, m in zip(hover, mask) if m], marker=dict(size=7, color=colour),
                               hovertemplate="%{text}<extra></extra>")
                  for name, colour, mask in ((n, c, np.array(m, dtype=bool)) for n, c, m in groups) if mask.any()]
    fig = go.Figure(traces)
    fig.update_layout(height=560, margin=dict(l=0, r=0, t=10, b=0), clickmode="event+select", dragmode="pan",
                      xaxis=dict(showticklabels=False, title=None, zeroline=False),
                      yaxis=dict(showticklabels=False, title=None, zeroline=False),
                      legend=dict(itemsizing="constant", orientation="h", x=0, y=1.01, yanchor="bottom"))
    return fig


def reliability_figure(reliability: Sequence[dict[str, float]], ece: float) -> go.Figure:
    """Reliability diagram (Guo et al. 2017): accuracy against mean confidence per confidence bin (bars, width =
    bin), the diagonal of perfect calibration, and the expected calibration error in the title."""
    centers = [(b["bin_low"] + b["bin_high"]) / 2 * 100 for b in reliability]
    fig = go.Figure([
        go.Bar(x=centers, y=[b["accuracy"] * 100 for b in reliability], name="accuracy",
               width=[(b["bin_high"] - b["bin_low"]) * 100 for b in reliability], marker_color="#2f7ed8",
               customdata=[[b["confidence"] * 100, b["count"]] for b in reliability],
               hovertemplate="confidence %{customdata[0]:.1f}%<br>accuracy %{y:.1f}%<br>%{customdata[1]} images"
                             "<extra></extra>"),
        go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="perfect calibration",
                   line=dict(dash="dash", color="#888")),
    ])
    fig.update_layout(title=f"Expected calibration error: {ece * 100:.1f} %", height=360,
                      xaxis=dict(title="confidence (%)", range=[0, 100]), yaxis=dict(title="accuracy (%)", range=[0, 100]),
                      margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.2))
    return fig


def cost_scatter_figure(rows: Sequence[dict], kinds: dict[str, str]) -> go.Figure:
    """Models as bubbles: batch-1 latency (ms) against accuracy (%), bubble area ∝ parameters, one colour per kind of
    accuracy (``kinds``: row kind → legend title, :data:`carnet_core.evaluation.cards.ACCURACY_KINDS`: a fine-tune's
    val top-1, an ImageNet model's vehicle-at-top-1 on car photos); models whose accuracy is not known here sit in a strip below the chart, by
    latency only, instead of at 0 %. Labels alternate above and below their bubbles and the axes leave room for them.
    Each row: name, latency_ms, top1 (0–1 or None), kind, params, label_set."""
    from plotly.subplots import make_subplots  # lazy: only this chart and the curve figures use subplots

    known = [r for r in rows if r.get("latency_ms") is not None]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.82, 0.18], vertical_spacing=0.04)
    groups = [(kind, title, [r for r in known if r.get("top1") is not None and r.get("kind", "val") == kind])
              for kind, title in kinds.items()]
    groups.append((None, "accuracy not measured here", [r for r in known if r.get("top1") is None]))
    for kind, title, group in groups:
        if not group:
            continue
        fig.add_trace(go.Scatter(
            x=[r["latency_ms"] for r in group], y=[r["top1"] * 100 if kind else 0 for r in group],
            mode="markers+text", text=[r["name"] for r in group], cliponaxis=False,
            textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(group))],
            name=title, marker=dict(size=[8 + 4 * math.sqrt(r["params"] / 1e6) for r in group], opacity=0.75,
                                    symbol="circle" if kind else "circle-open"),
            customdata=[[r["params"] / 1e6, r.get("label_set", "")] for r in group],
            hovertemplate="%{text}<br>%{x:.1f} ms" + ("<br>accuracy %{y:.1f}%" if kind else "")
                          + "<br>%{customdata[0]:.1f} M params · %{customdata[1]}<extra>" + title + "</extra>"),
            row=1 if kind else 2, col=1)
    xmax = max((r["latency_ms"] for r in known), default=1.0)
    accuracies = [r["top1"] * 100 for r in known if r.get("top1") is not None]
    low = max(0.0, min(accuracies, default=0.0) - 8)
    fig.update_xaxes(range=[-0.08 * xmax, xmax * 1.2], row=1, col=1)
    fig.update_xaxes(title_text="batch-1 latency on this machine (ms)", range=[-0.08 * xmax, xmax * 1.2], row=2, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[low, 102], row=1, col=1)
    fig.update_yaxes(showticklabels=False, range=[-1, 1], row=2, col=1)
    fig.update_layout(height=480, margin=dict(l=10, r=10, t=10, b=0), legend=dict(orientation="h", y=-0.25))
    return fig
