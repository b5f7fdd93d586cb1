"""Drawing the regulariser sweep of :mod:`ngfkit.studies.sweep`: C-ACC / ASR / RA against η
(:func:`sweep_figure`), the clean-data Fisher next to how far NGF moved each weight
(:func:`fisher_heatmaps`, :func:`movement_figure`), and a slider over the swept η
(:func:`sweep_widget`, no computation inside it).

Shapes: per-weight Fisher values and weight changes are ``(C, D+1)`` (the classifier ``[W, b]``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import NgfkitError

METRIC_NAMES = {"acc": "C-ACC", "asr": "ASR", "ra": "RA"}


def _eta_positions(etas: Sequence[float]) -> tuple[list[float], list[float], list[str]]:
    """x positions on a log axis: η > 0 where it is, η = 0 one decade below the smallest positive
    η. Returns the positions and the tick values and texts."""
    positive = [e for e in etas if e > 0]
    zero_at = (min(positive) if positive else 1.0) / 10
    xs = [e if e > 0 else zero_at for e in etas]
    ticks = sorted(set(xs))
    return xs, ticks, [("0" if t == zero_at and 0 in etas else f"{t:g}") for t in ticks]


def sweep_figure(rows: Sequence[dict], before: Mapping[str, float] | None = None, *, title: str | None = None):
    """C-ACC (top panel, its own scale) and ASR / RA (bottom panel, 0–100 %) against η on a log
    axis; η = 0 (no regulariser) sits one decade left of the smallest positive η, drawn with open
    markers behind a dotted axis break. ``before`` (the backdoored model's metrics) adds dotted
    reference lines for the keys it has."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not rows:
        raise NgfkitError("sweep_figure needs at least one sweep row")
    etas = [r["eta"] for r in rows]
    xs, ticks, texts = _eta_positions(etas)
    colours = {"acc": "#1f77b4", "asr": "#d62728", "ra": "#2ca02c"}
    panel = {"acc": 1, "asr": 2, "ra": 2}
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.45, 0.55])
    for key, colour in colours.items():
        values = [r.get(key, float("nan")) for r in rows]
        if all(math.isnan(v) for v in values):
            continue
        figure.add_trace(go.Scatter(
            x=[x for x, e in zip(xs, etas) if e > 0], y=[v for v, e in zip(values, etas) if e > 0],
            mode="lines+markers", name=METRIC_NAMES[key], line={"color": colour}, legendgroup=key,
            hovertemplate=f"η = %{{x:g}}<br>{METRIC_NAMES[key]} %{{y:.2f}} %<extra></extra>"), panel[key], 1)
        zero = [(x, v) for x, v, e in zip(xs, values, etas) if e == 0]
        if zero:
            figure.add_trace(go.Scatter(
                x=[zero[0][0]], y=[zero[0][1]], mode="markers", name=f"{METRIC_NAMES[key]}, η = 0",
                marker={"color": colour, "symbol": "circle-open", "size": 12, "line": {"width": 2}},
                legendgroup=key, showlegend=False,
                hovertemplate=f"η = 0 (no regulariser)<br>{METRIC_NAMES[key]} %{{y:.2f}} %<extra></extra>"),
                panel[key], 1)
        if before and key in before:
            figure.add_hline(y=before[key], line={"color": colour, "dash": "dot", "width": 1}, row=panel[key], col=1,
                             annotation_text=f"{METRIC_NAMES[key]} before NGF", annotation_position="top right",
                             annotation_font_color=colour)
    if 0 in etas and any(e > 0 for e in etas):
        zero_at = xs[etas.index(0)]
        figure.add_vline(x=zero_at * 10 ** 0.5, line={"color": "grey", "dash": "dot", "width": 1}, row="all", col=1)
    lr = rows[0].get("lr")
    figure.update_xaxes(type="log", tickvals=ticks, ticktext=texts)
    figure.update_xaxes(title_text="regulariser strength η (dimensionless, log scale; open markers: η = 0)", row=2, col=1)
    figure.update_yaxes(title_text="clean accuracy (%)", row=1, col=1)
    figure.update_yaxes(title_text="ASR, RA (%)", range=[-5, 105], row=2, col=1)
    figure.update_layout(
        title=title or f"NGF with Fisher regulariser strength η (learning rate {lr:g} for every η)",
        template="plotly_white", height=560, legend={"orientation": "h", "y": -0.18})
    return figure


def fisher_heatmaps(fisher: Tensor, shifts: Mapping[str, Tensor], *, columns: slice = slice(0, 64),
                    floor: float = 1e-6, class_names: Sequence[str] | None = None):
    """Stacked heatmaps over the same slice of the classifier ``[W, b]`` (rows: classes; columns:
    input features ``columns``): ``log10 F̂_jj`` (Fisher normalised to mean 1; blank below
    ``floor``) on top, then ``log10 |Δθ_j|`` for each entry of ``shifts`` (one shared colour scale,
    so their sizes compare)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def log10(t: Tensor, below: float = 0.0) -> list:
        t = t[:, columns].detach().cpu().double()
        return torch.where(t > below, t.clamp_min(1e-300).log10(), torch.full_like(t, float("nan"))).tolist()

    labels = list(shifts)
    normalised = fisher / fisher.mean().clamp_min(1e-300)
    figure = make_subplots(rows=1 + len(labels), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=["clean-data Fisher F_jj / mean F (log10; blank: below "
                                           f"{floor:g} or zero)"] +
                                          [f"|Δθ_j| after NGF, {label} (log10)" for label in labels])
    n_classes = fisher.shape[0]
    ys = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    start = columns.start or 0
    xs = list(range(start, start + len(range(*columns.indices(fisher.shape[1])))))
    figure.add_trace(go.Heatmap(z=log10(normalised, floor), x=xs, y=ys, coloraxis="coloraxis",
                                hovertemplate="class %{y}, feature %{x}<br>log10 F/mean F = %{z:.2f}<extra></extra>"),
                     1, 1)
    for row, label in enumerate(labels, start=2):
        figure.add_trace(go.Heatmap(z=log10(shifts[label].abs()), x=xs, y=ys, coloraxis="coloraxis2",
                                    hovertemplate="class %{y}, feature %{x}<br>log10 |Δθ| = %{z:.2f}<extra></extra>"),
                         row, 1)
    rows = 1 + len(labels)
    figure.update_layout(
        coloraxis={"colorscale": "Viridis", "cmin": math.log10(floor), "colorbar": {
            "title": "log10 F/mean F", "len": 1 / rows, "y": 1, "yanchor": "top"}},
        coloraxis2={"colorscale": "Magma", "colorbar": {"title": "log10 |Δθ|", "len": (rows - 1) / rows, "y": 0,
                                                         "yanchor": "bottom"}},
        template="plotly_white", height=180 * rows + 80)
    figure.update_xaxes(title_text="classifier input feature (index)", row=rows, col=1)
    for row in range(1, rows + 1):
        figure.update_yaxes(title_text="class", row=row, col=1)
    return figure


def movement_figure(summaries: Mapping[str, dict] | dict, *, title: str | None = None):
    """Mean ``|Δθ|`` per Fisher bin (from :func:`ngfkit.studies.sweep.movement_by_fisher`), one line per label, log–log;
    ``summaries`` is one summary or a mapping of panel titles to summaries (side by side, e.g. single
    weights and eigen-directions; lines of the same label share a colour)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    if "mean_shift" in summaries:
        summaries = {"": summaries}
    titles = list(summaries)
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.1)
    colours: dict[str, str] = {}
    for col, panel in enumerate(titles, start=1):
        summary = summaries[panel]
        for label, means in summary["mean_shift"].items():
            first = label not in colours
            colour = colours.setdefault(label, qualitative.Plotly[len(colours) % len(qualitative.Plotly)])
            figure.add_trace(go.Scatter(
                x=summary["centres"], y=means, mode="lines+markers", name=label, legendgroup=label,
                showlegend=first, line={"color": colour},
                hovertemplate=f"{label}<br>Fisher ≈ %{{x:.2g}}<br>mean |Δθ| %{{y:.3g}}<extra></extra>"), 1, col)
        figure.update_xaxes(type="log", exponentformat="power", row=1, col=col,
                            title_text="Fisher / mean Fisher (decile median; log scale)")
        figure.update_yaxes(type="log", exponentformat="power", row=1, col=col)
    figure.update_yaxes(title_text="mean |Δθ| in the decile (weight units, log scale)", row=1, col=1)
    figure.update_layout(title=title or "How far NGF moved the classifier, by clean-data Fisher",
                         template="plotly_white", height=460)
    return figure


def _bar(value: float, colour: str) -> str:
    width = 0.0 if math.isnan(value) else max(0.0, min(100.0, value))
    return (f'<div style="background:#eee;width:220px;height:12px;display:inline-block;vertical-align:middle">'
            f'<div style="background:{colour};width:{width * 2.2:.0f}px;height:12px"></div></div>')


def _row_html(row: dict, before: Mapping[str, float] | None) -> str:
    colours = {"acc": "#1f77b4", "asr": "#d62728", "ra": "#2ca02c"}
    lines = [f"<b>η = {row['eta']:g}</b>{' (no regulariser)' if row['eta'] == 0 else ''}, "
             f"learning rate {row['lr']:g}", '<table style="border-collapse:collapse">']
    for key, colour in colours.items():
        value = row.get(key, float("nan"))
        if math.isnan(value):
            continue
        change = f" ({value - before[key]:+.2f} vs before NGF)" if before and key in before else ""
        lines.append(f"<tr><td style='padding-right:8px'>{METRIC_NAMES[key]}</td><td>{_bar(value, colour)}</td>"
                     f"<td style='padding-left:8px'>{value:.2f} %{change}</td></tr>")
    lines.append("</table>")
    lines.append(f"classifier moved ‖Δθ‖/‖θ⁰‖ = {row['shift']:.2f}; Fisher-weighted distance "
                 f"{row['fisher_distance']:.3g}; clean-set accuracy {row['clean_set_acc']:.1f} %")
    return "".join(lines)


def sweep_widget(rows: Sequence[dict], before: Mapping[str, float] | None = None, *, value: float | None = None):
    """A slider over the swept η showing C-ACC / ASR / RA there, from precomputed ``rows``.

    One HTML panel per η sits in an ``ipywidgets.Stack`` whose visible panel is linked to the
    slider in the browser (``jslink``): nothing runs in Python when the slider moves, so the
    widget also works in a static page with embedded widget state.
    """
    import ipywidgets as widgets

    if not rows:
        raise NgfkitError("sweep_widget needs at least one sweep row")
    labels = [f"{r['eta']:g}" for r in rows]
    start = labels.index(f"{value:g}") if value is not None and f"{value:g}" in labels else 0
    slider = widgets.SelectionSlider(options=labels, index=start, description="η",
                                     continuous_update=True, layout=widgets.Layout(width="480px"))
    panels = widgets.Stack([widgets.HTML(_row_html(r, before)) for r in rows], selected_index=start)
    widgets.jslink((slider, "index"), (panels, "selected_index"))  # in the browser, kernel or not

    def follow(change):  # keeps the kernel's copy in step when a kernel is attached
        panels.selected_index = change["new"]

    slider.observe(follow, names="index")
    box = widgets.VBox([slider, panels])
    box.slider, box.panels = slider, panels  # for tests and for linking from Python
    return box
