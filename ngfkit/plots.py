"""Plotly figures used by the book (kept here so that chapters only call them)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .attacks import Attack
from .errors import NgfkitError


def _as_rgb_uint8(image: Tensor) -> Tensor:
    """``(C, H, W)`` in ``[0, 1]`` (C = 1 or 3) -> ``(H, W, 3)`` uint8, what ``go.Image`` draws."""
    image = image.detach().cpu().float().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0)


def amplified_residual(clean: Tensor, triggered: Tensor) -> tuple[Tensor, float]:
    """The signed change ``triggered - clean`` mapped to ``[0, 1]`` around mid-grey, stretched so
    the largest change spans the range; returns it and the stretch factor (how many times the
    residual was amplified)."""
    residual = triggered - clean
    peak = float(residual.abs().max())
    gain = 0.5 / peak if peak > 0 else 1.0
    return (0.5 + gain * residual).clamp(0, 1), gain


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

    from .bench_defences import summarise

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


def write_html(figure, path) -> None:
    """A self-contained HTML file (plotly.js embedded: it opens without network), written atomically."""
    from .utils import atomic_path

    with atomic_path(path) as tmp:
        figure.write_html(str(tmp), include_plotlyjs=True, full_html=True)
