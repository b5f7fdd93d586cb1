"""Drawing the worked Fisher example of :mod:`ngfkit.studies.fisher_check`: a block of the exact
Fisher next to K-FAC's (:func:`fisher_heatmaps_figure`) and how well the approximations point the
natural gradient (:func:`direction_error_figure`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def slice_indices(result: dict, classes: Sequence[int] = (0, 1, 2), inputs: int = 12) -> tuple[Tensor, list[str]]:
    """Parameter indices of a small readable block of the Fisher: the given classes' rows times the
    ``inputs`` most active inputs (largest diagonal of ``A``; the bias counts as an input), with labels."""
    d = result["num_inputs"]
    active = result["A"].diagonal().topk(min(inputs, d)).indices.sort().values
    index = torch.tensor([c * d + int(j) for c in classes for j in active])
    labels = [f"c{c}·{'b' if int(j) == d - 1 else f'a{int(j)}'}" for c in classes for j in active]
    return index, labels


def fisher_heatmaps_figure(result: dict, classes: Sequence[int] = (0, 1, 2), inputs: int = 12):
    """Three heatmaps of one block of the Fisher: exact, K-FAC ``G ⊗ A``, and their difference."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    index, labels = slice_indices(result, classes, inputs)
    exact = result["fisher"][index][:, index]
    kfac = result["kfac"][index][:, index]
    bound = float(torch.maximum(exact.abs().max(), kfac.abs().max()))
    figure = make_subplots(rows=1, cols=3, horizontal_spacing=0.06,
                           subplot_titles=(f"exact {result['kind']} Fisher", "K-FAC  G ⊗ A", "exact − K-FAC"))
    for col, (values, show) in enumerate(((exact, False), (kfac, False), (exact - kfac, True)), start=1):
        figure.add_trace(go.Heatmap(
            z=values.tolist(), x=labels, y=labels, zmin=-bound, zmax=bound, colorscale="RdBu", reversescale=True,
            showscale=show, colorbar={"title": "Fisher entry (nats² per weight²)"},
            hovertemplate="row %{y}<br>column %{x}<br>%{z:.3g}<extra></extra>"), row=1, col=col)
    figure.update_yaxes(autorange="reversed", showticklabels=False)
    figure.update_yaxes(showticklabels=True, title_text="parameter (class c, input a_j or bias b)", row=1, col=1)
    figure.update_xaxes(showticklabels=False, title_text="parameter (same order as the rows)")
    figure.update_layout(template="plotly_white", height=430,
                         title=f"A block of the classifier's Fisher ({result['num_samples']} clean images, "
                               f"classes {', '.join(map(str, classes))} × the {inputs} most active inputs)")
    return figure


def direction_error_figure(results: Sequence[dict]):
    """Cosine between the K-FAC / EKFAC natural-gradient direction and the exact one, against
    the damping, for one or more :func:`~ngfkit.studies.fisher_check.compare_fisher` results (e.g.
    empirical and true Fisher)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for result in results:
        dampings = [row["damping"] for row in result["directions"]]
        for name, dash in (("kfac", "solid"), ("ekfac", "dash")):
            figure.add_trace(go.Scatter(
                x=dampings, y=[row[f"{name}_cosine"] for row in result["directions"]], mode="lines+markers",
                line={"dash": dash}, name=f"{name.upper()}, {result['kind']} Fisher",
                customdata=[[row[f"{name}_error"]] for row in result["directions"]],
                hovertemplate="damping %{x:.0e}<br>cosine %{y:.3f}<br>relative error %{customdata[0]:.2f}"
                              "<extra></extra>"))
        figure.add_trace(go.Scatter(
            x=dampings, y=[row["sgd_cosine"] for row in result["directions"]], mode="lines+markers",
            line={"dash": "dot"}, name=f"plain gradient, {result['kind']} Fisher",
            hovertemplate="damping %{x:.0e}<br>cosine %{y:.3f}<extra></extra>"))
    figure.update_layout(template="plotly_white", height=420,
                         title="How well the Kronecker approximations point the natural gradient",
                         xaxis_title="damping λ added to the Fisher (log scale)", xaxis_type="log",
                         yaxis_title="cosine with the exact (F + λI)⁻¹ ∇ (1 = same direction)")
    return figure
