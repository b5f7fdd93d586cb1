"""Plotly figures used by the book (kept here so that chapters only call them): attacks, the
defence benchmark, curvature. The studies' figures are in :mod:`ngfkit.viz.sweep`,
:mod:`ngfkit.viz.trajectory` and :mod:`ngfkit.viz.fisher_check`."""
from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import Tensor

from ..attacks import Attack
from ..errors import NgfkitError
from .explorer import amplified_residual, view_summary


def _as_rgb_uint8(image: Tensor) -> Tensor:
    """``(C, H, W)`` in ``[0, 1]`` (C = 1 or 3) -> ``(H, W, 3)`` uint8, what ``go.Image`` draws."""
    image = image.detach().cpu().float().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0)


def attack_gallery(attacks: Sequence[Attack], images: Tensor, labels: Tensor, *, class_names=None):
    """One row per attack: a clean test image | its triggered version | the amplified residual.

    Args:
        attacks: built (and, for learned triggers, fitted) attacks, all for the images' shape.
        images: ``(N, C, H, W)`` in ``[0, 1]``; each row uses the first image the attack targets
            (e.g. a source-class image for CBA).
        labels: ``(N,)`` true classes.
        class_names: optional names for the hover text.
    Returns:
        a ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def name(c: int) -> str:
        return class_names[c] if class_names else str(c)

    if not attacks:
        raise NgfkitError("attack_gallery needs at least one attack")
    if images.dim() != 4 or len(images) != len(labels):
        raise NgfkitError(f"attack_gallery needs images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                          f"and {tuple(labels.shape)}")
    columns = ("clean", "triggered", "residual (amplified)")
    fig = make_subplots(rows=len(attacks), cols=3, horizontal_spacing=0.02, vertical_spacing=0.01,
                        column_titles=list(columns), row_titles=[a.name for a in attacks])
    for row, attack in enumerate(attacks, start=1):
        usable = torch.nonzero(attack.attacked_mask(labels), as_tuple=False).flatten()
        if len(usable) == 0:
            raise NgfkitError(f"none of the {len(labels)} images is of a class that attack {attack.name!r} targets; "
                              f"pass more images")
        i = int(usable[0])
        clean = images[i : i + 1].float()
        triggered = attack.apply(clean)
        residual, gain = amplified_residual(clean[0], triggered[0])
        true_class = int(labels[i])
        target = int(attack.target_labels(labels[i : i + 1])[0])
        hover = [f"{attack.name}: clean, class {name(true_class)}",
                 f"{attack.name}: triggered, target {name(target)}; max |change| {float((triggered - clean).abs().max()):.3f}",
                 f"{attack.name}: residual x{gain:.1f}"]
        for col, (picture, text) in enumerate(zip((clean[0], triggered[0], residual), hover), start=1):
            fig.add_trace(go.Image(z=_as_rgb_uint8(picture).numpy(), name=text, hovertemplate=text + "<extra></extra>"),
                          row=row, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=150 * len(attacks) + 60, width=520, margin=dict(l=10, r=90, t=50, b=10),
                      title="Attack gallery: clean | triggered | residual (triggered − clean, stretched to full range)")
    return fig


def defence_scatter(report: dict, setting: str = "selected"):
    """Mean ASR against mean clean-accuracy drop per defence (one marker each; its area grows
    with the defence's wall time), from a ``bench defences`` report."""
    import plotly.graph_objects as go

    from ..bench.defences import summarise

    rows = [r for r in report.get("summary") or summarise(report) if r["setting"] == setting]
    if not rows:
        raise NgfkitError(f"the report has no cells with setting {setting!r}")
    longest = max(r["seconds"] for r in rows) or 1.0
    figure = go.Figure(go.Scatter(
        x=[r["acc_drop"] for r in rows], y=[r["asr"] for r in rows], mode="markers+text",
        text=[r["defense"] for r in rows], textposition="top center",
        marker={"size": [12 + 38 * (r["seconds"] / longest) ** 0.5 for r in rows], "sizemode": "diameter",
                "opacity": 0.7},
        customdata=[[r["seconds"], r["ra"], r["cells"]] for r in rows],
        hovertemplate="%{text}<br>ASR %{y:.1f} %<br>ACC drop %{x:.2f} points<br>RA %{customdata[1]:.1f} %"
                      "<br>%{customdata[0]:.1f} s per model<br>%{customdata[2]} cells<extra></extra>"))
    figure.update_layout(
        title=f"Defences on {report['dataset']} ({report['arch']}): mean over attacks and seeds",
        xaxis_title="clean-accuracy drop (percentage points)", yaxis_title="attack success rate (%)",
        yaxis_range=[-5, 105], template="plotly_white", height=480)
    return figure


def stability_figure(report: dict):
    """Every run of a ``bench stability`` report: ASR left against clean-accuracy cost, one marker
    per (defence seed, thread count), one colour per defence; the floors as dotted lines."""
    import plotly.graph_objects as go

    from ..bench.stability import FLOORS

    figure = go.Figure()
    for defence in dict.fromkeys(c["defence"] for c in report["cells"]):
        cells = [c for c in report["cells"] if c["defence"] == defence]
        figure.add_trace(go.Scatter(
            x=[c["acc_cost"] for c in cells], y=[c["asr"] for c in cells], mode="markers", name=defence,
            marker={"size": 11, "opacity": 0.75, "symbol": ["circle" if c["threads"] == 1 else "diamond" for c in cells]},
            customdata=[[c["seed"], c["threads"], ", ".join(f"{k}={v}" for k, v in c["setting"].items())]
                        for c in cells],
            hovertemplate=f"{defence}<br>seed %{{customdata[0]}}, %{{customdata[1]}} thread(s)<br>"
                          "ASR %{y:.1f} %, cost %{x:.2f} points<br>%{customdata[2]}<extra></extra>"))
    figure.add_hline(y=FLOORS["asr_max"], line_dash="dot", line_color="grey")
    figure.add_vline(x=FLOORS["acc_cost_max"], line_dash="dot", line_color="grey")
    figure.update_layout(
        title=f"{report['attack']} on {report['dataset']}: each run of each defence (circle 1 thread, diamond 2)",
        xaxis_title="clean-accuracy cost (percentage points)", yaxis_title="attack success rate left (%)",
        yaxis_range=[-5, 105], template="plotly_white", height=460)
    return figure


def defence_heatmap(report: dict, setting: str = "selected", metric: str = "asr"):
    """Attack × defence heatmap of ``metric`` (``asr``, ``acc_drop``, ``ra`` …) after each defence,
    mean over seeds, with the undefended model's value in the first column where it exists."""
    import plotly.graph_objects as go

    from ..bench.defences import cell_mean

    cells = [c for c in report["cells"] if c["setting"] == setting]
    if not cells:
        raise NgfkitError(f"the report has no cells with setting {setting!r}")
    if metric not in cells[0]:
        raise NgfkitError(f"unknown metric {metric!r}; use one of {', '.join(k for k in cells[0] if k != 'choice')}")
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    defences = list(dict.fromkeys(c["defense"] for c in cells))

    def mean(values):
        return sum(values) / len(values) if values else None

    columns, grid = [], []
    if metric in ("asr", "ra", "acc") and report.get("before"):
        columns.append("no defence")
        grid.append([mean([b[metric] for b in report["before"] if b["attack"] == a]) for a in attacks])
    for d in defences:
        columns.append(d)
        grid.append([cell_mean(report, a, d, metric, setting) for a in attacks])
    z = [[grid[j][i] for j in range(len(columns))] for i in range(len(attacks))]  # rows: attacks
    labels = {"asr": "attack success rate (%)", "ra": "robust accuracy (%)", "acc": "clean accuracy (%)",
              "acc_drop": "clean-accuracy drop (points)", "der": "defence effectiveness rating (%)"}
    title = labels.get(metric, metric)
    figure = go.Figure(go.Heatmap(
        z=z, x=columns, y=attacks, colorscale="Reds" if metric in ("asr", "acc_drop") else "Greens",
        colorbar={"title": {"text": title}}, texttemplate="%{z:.0f}", hoverongaps=False,
        hovertemplate="%{y} / %{x}: %{z:.1f}<extra></extra>"))
    figure.update_layout(title=f"{title} per attack and defence ({report['dataset']}, {report['arch']})",
                         xaxis_title="defence", yaxis_title="attack", yaxis_autorange="reversed",
                         template="plotly_white", height=120 + 32 * len(attacks))
    return figure


def write_html(figure, path) -> None:
    """A self-contained HTML file (plotly.js embedded: it opens without network), written atomically."""
    from ..utils import atomic_path

    with atomic_path(path) as tmp:
        figure.write_html(str(tmp), include_plotlyjs=True, full_html=True)


# -- sharpness and loss landscapes (ngfkit.curvature.sharpness, ngfkit.curvature.landscape) ----------------------
def spectrum_figure(density: dict, *, title: str | None = None):
    """The eigenvalue density from :func:`ngfkit.curvature.sharpness.spectral_density`, on a log y axis
    (a Hessian's bulk near 0 and its few outliers differ by orders of magnitude)."""
    import plotly.graph_objects as go

    if not density.get("grid") or len(density["grid"]) != len(density.get("density", [])):
        raise NgfkitError("spectrum_figure needs a spectral_density result (grid and density of equal length)")
    values = torch.as_tensor(density["density"], dtype=torch.float64)
    # a log axis cannot show 0: floor at 1e-10 of the peak (the Gaussian tails underflow to 0)
    floor = float(values.max()) * 1e-10 if float(values.max()) > 0 else 1e-300
    curvature = {"hessian": "Hessian", "ggn": "GGN"}.get(density.get("curvature"), "curvature")
    figure = go.Figure(go.Scatter(
        x=density["grid"], y=values.clamp_min(floor).tolist(), mode="lines", name="density",
        hovertemplate="λ = %{x:.4g}<br>p(λ) = %{y:.3g}<extra></extra>"))
    params = density.get("params", "all")
    params = params if isinstance(params, str) else ", ".join(params)
    figure.update_layout(
        title=title or (f"{curvature} eigenvalue density ({params} parameters, {density.get('samples', '?')} samples; "
                        f"SLQ, {density.get('runs', '?')} × {density.get('lanczos_steps', '?')} Lanczos steps)"),
        xaxis_title=f"eigenvalue λ of the {curvature} of the mean cross-entropy (nats per unit weight²)",
        yaxis_title="spectral density p(λ) (per unit λ, log scale)", yaxis_type="log",
        template="plotly_white", height=420)
    return figure


def sharpness_vs_training_figure(report: dict, *, purified: bool = True, title: str | None = None):
    """λmax and Hessian trace against training length from a ``bench sharpness`` report: one
    marker per model (seed), a line through the means per kind, log axes; with ``purified`` the
    backdoored models after NGF too (dashed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = report.get("rows") or []
    if not rows:
        raise NgfkitError("sharpness_vs_training_figure needs a bench sharpness report with rows")
    series: dict[str, list[tuple[int, int, dict]]] = {}
    for row in rows:
        series.setdefault("benign" if row["kind"] == "clean" else row["kind"], []).append((row["epochs"], row["seed"], row))
        if purified and "purified" in row:
            series.setdefault(f"{row['kind']} after {row['purified'].get('defense', 'ngf')}", []).append(
                (row["epochs"], row["seed"], row["purified"]))
    fields = (("lambda_max", "top Hessian eigenvalue λmax"), ("trace", "Hessian trace"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[name for _, name in fields], horizontal_spacing=0.1)
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for index, (name, points) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        epochs = sorted({e for e, _, _ in points})
        for col, (field, _) in enumerate(fields, start=1):
            fig.add_trace(go.Scatter(
                x=[e for e, _, _ in points], y=[r[field] for _, _, r in points], mode="markers", name=name,
                legendgroup=name, showlegend=False, marker={"color": colour, "size": 7, "opacity": 0.6},
                text=[f"seed {s}" for _, s, _ in points],
                hovertemplate=f"{name}, %{{text}}<br>%{{x}} epochs<br>{field} = %{{y:.4g}}<extra></extra>"), row=1, col=col)
            means = [statistics.fmean(r[field] for e2, _, r in points if e2 == e) for e in epochs]
            fig.add_trace(go.Scatter(
                x=epochs, y=means, mode="lines", name=name, legendgroup=name, showlegend=col == 1,
                line={"color": colour, "dash": "dash" if " after " in name else "solid"},
                hovertemplate=f"{name}, mean<br>%{{x}} epochs<br>{field} = %{{y:.4g}}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(type="log", title_text="training epochs (SGD, lr %s; log scale)" % report.get("train_lr", "?"))
    fig.update_yaxes(type="log", title_text="λmax of the clean loss (nats per unit weight², log scale)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="trace of the Hessian of the clean loss (log scale)", row=1, col=2)
    fig.update_layout(title=title or (f"Sharpness against training length ({report.get('dataset', '?')}, "
                                      f"{report.get('arch', '?')}, {report.get('samples', '?')} clean images; "
                                      "markers: one model each, lines: means)"),
                      template="plotly_white", height=440)
    return fig


def _loss_axis_title(result: dict) -> str:
    if result.get("kind") == "interpolation":
        return "α along the line θ(α) = (1 − α) θ_A + α θ_B (0 = model A, 1 = model B)"
    return "α: step along the filter-normalised direction (in units of each filter's norm)"


def landscape_1d_figure(results, names: Sequence[str] | None = None, *, title: str | None = None):
    """Loss curves from :func:`ngfkit.curvature.landscape.loss_slice_1d` or :func:`~ngfkit.curvature.landscape.interpolate`:
    clean loss solid, triggered-data loss dashed; ``results`` is one result or a list of them
    (e.g. the backdoored and the purified model), labelled with ``names``."""
    import plotly.graph_objects as go

    results = [results] if isinstance(results, dict) else list(results)
    if not results or any("alphas" not in r or "clean_loss" not in r for r in results):
        raise NgfkitError("landscape_1d_figure needs loss_slice_1d or interpolate results")
    if names is None:
        names = [""] if len(results) == 1 else [f"#{i + 1}" for i in range(len(results))]
    names = list(names)
    if len(names) != len(results):
        raise NgfkitError(f"landscape_1d_figure got {len(results)} results but {len(names)} names")
    figure = go.Figure()
    for i, (result, name) in enumerate(zip(results, names)):
        colour = f"hsl({(i * 137) % 360}, 65%, 45%)"
        prefix = f"{name}: " if name else ""
        figure.add_trace(go.Scatter(x=result["alphas"], y=result["clean_loss"], mode="lines+markers",
                                    name=f"{prefix}clean loss", line={"color": colour},
                                    customdata=[[100 * a] for a in result["clean_acc"]],
                                    hovertemplate="α = %{x:.3g}<br>clean loss %{y:.4g} nats<br>"
                                                  "clean accuracy %{customdata[0]:.1f} %<extra></extra>"))
        if "triggered_loss" in result:
            figure.add_trace(go.Scatter(x=result["alphas"], y=result["triggered_loss"], mode="lines+markers",
                                        name=f"{prefix}triggered loss", line={"color": colour, "dash": "dash"},
                                        customdata=[[100 * a] for a in result["asr"]],
                                        hovertemplate="α = %{x:.3g}<br>triggered loss %{y:.4g} nats<br>"
                                                      "ASR %{customdata[0]:.1f} %<extra></extra>"))
    kind = "interpolation" if results[0].get("kind") == "interpolation" else "1-D slice"
    figure.update_layout(title=title or f"Loss landscape, {kind} ({results[0].get('samples', '?')} clean samples)",
                         xaxis_title=_loss_axis_title(results[0]), yaxis_title="mean cross-entropy loss (nats)",
                         template="plotly_white", height=440)
    return figure


def landscape_2d_figure(result: dict, *, which: str = "clean", kind: str = "contour", title: str | None = None):
    """The loss over a 2-D slice from :func:`ngfkit.curvature.landscape.loss_slice_2d`: ``which`` is
    ``"clean"`` or ``"triggered"``, ``kind`` is ``"contour"`` (filled contours) or ``"surface"`` (3-D)."""
    import plotly.graph_objects as go

    key = {"clean": "clean_loss", "triggered": "triggered_loss"}.get(which)
    if key is None:
        raise NgfkitError(f"which must be clean or triggered, got {which!r}")
    if "betas" not in result:
        raise NgfkitError("landscape_2d_figure needs a loss_slice_2d result")
    if key not in result:
        raise NgfkitError("the slice has no triggered loss; compute it with attack=...")
    z, x, y = result[key], result["alphas"], result["betas"]
    label = f"{which} loss (nats)"
    hover = "α = %{x:.3g}<br>β = %{y:.3g}<br>" + which + " loss %{z:.4g} nats<extra></extra>"
    if kind == "contour":
        trace = go.Contour(x=x, y=y, z=z, colorscale="Viridis", colorbar={"title": label}, hovertemplate=hover)
    elif kind == "surface":
        trace = go.Surface(x=x, y=y, z=z, colorscale="Viridis", colorbar={"title": label}, hovertemplate=hover)
    else:
        raise NgfkitError(f"kind must be contour or surface, got {kind!r}")
    figure = go.Figure(trace)
    axis_x, axis_y = "α along direction d1 (filter-normalised)", "β along direction d2 (filter-normalised)"
    samples = result.get("samples", "?")
    figure.update_layout(title=title or f"Loss landscape, 2-D slice: {which} loss ({samples} clean samples)",
                         template="plotly_white", height=520)
    if kind == "contour":
        figure.update_layout(xaxis_title=axis_x, yaxis_title=axis_y)
    else:
        figure.update_layout(scene={"xaxis_title": axis_x, "yaxis_title": axis_y, "zaxis_title": label})
    return figure


def before_after_figure(triggered: Tensor, labels: Tensor, before: Tensor, after: Tensor, *, target: int,
                        class_name=str, title: str | None = None):
    """Triggered images with the class the backdoored and the purified model give each.

    Args:
        triggered: ``(N, C, H, W)`` triggered images in ``[0, 1]``.
        labels, before, after: ``(N,)`` true classes, predictions before and after the defence.
        target: the attacker's class; predictions equal to it are drawn in red.
        class_name: ``int -> str`` for the labels (e.g. ``DatasetInfo.class_name``).
    Returns:
        a ``plotly.graph_objects.Figure`` with one column per image.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if triggered.dim() != 4 or not (len(triggered) == len(labels) == len(before) == len(after)):
        raise NgfkitError("before_after_figure needs N images (N, C, H, W) and N labels / predictions")
    n = len(triggered)
    fig = make_subplots(rows=1, cols=n, horizontal_spacing=0.01)

    def coloured(c: int) -> str:
        return f"<span style='color:#c62828'><b>{class_name(c)}</b></span>" if c == target else class_name(c)

    for i in range(n):
        fig.add_trace(go.Image(z=_as_rgb_uint8(triggered[i]).numpy(), hoverinfo="skip"), row=1, col=i + 1)
        text = (f"true: {class_name(int(labels[i]))}<br>backdoored: {coloured(int(before[i]))}"
                f"<br>after NGF: {coloured(int(after[i]))}")
        fig.add_annotation(text=text, showarrow=False, xref=f"x{i + 1 if i else ''} domain",
                           yref=f"y{i + 1 if i else ''} domain", x=0.5, y=-0.08, yanchor="top", font=dict(size=11))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=280, width=min(120 * n + 40, 760), margin=dict(l=10, r=10, t=50, b=90),
                      title=title or f"Triggered test images (target class in red: {class_name(target)})")
    return fig


def explorer_figure(view: dict, *, class_name=str, title: str | None = None):
    """The attack explorer's view (:func:`ngfkit.viz.explorer.explorer_view`) as a static figure: one
    row per shown image, columns clean | triggered | residual (amplified by the view's ``gain``),
    the view's statistics under the title. ``class_name``: ``int -> str`` for the row labels."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = len(view["clean"])
    if rows == 0 or not (len(view["triggered"]) == len(view["residual"]) == rows):
        raise NgfkitError("explorer_figure needs a view with as many clean, triggered and residual images (at least 1)")
    names = [f"{class_name(int(y))} → {class_name(int(t))}" for y, t in zip(view["labels"], view["targets"])]
    fig = make_subplots(rows=rows, cols=3, horizontal_spacing=0.02, vertical_spacing=0.02, row_titles=names,
                        column_titles=["clean", "triggered", f"residual × {view['gain']:.1f}"])
    for row in range(rows):
        for col, key in enumerate(("clean", "triggered", "residual"), start=1):
            text = f"{key}, image {int(view['indices'][row])}"
            fig.add_trace(go.Image(z=_as_rgb_uint8(view[key][row]).numpy(), name=text,
                                   hovertemplate=text + "<br>pixel (%{x}, %{y})<extra></extra>"), row=row + 1, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    summary = view_summary(view)
    head, _, tail = summary.partition(": ")
    fig.update_layout(height=170 * rows + 130, width=600, margin=dict(l=10, r=130, t=110, b=10),
                      title=dict(text=(title or f"Explorer: {head}") + "<br><sup>" + tail.replace("; ", "<br>") + "</sup>",
                                 font=dict(size=14)))
    return fig
