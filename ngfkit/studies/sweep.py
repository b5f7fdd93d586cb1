"""How strong should NGF's Fisher regulariser be? A sweep of its strength η, and what it holds.

NGF's regulariser (:class:`ngfkit.defences.natural_gradient.FisherRegulariser`) adds ``(η/2) Σ_j F_jj (θ_j − θ⁰_j)²``
to the fine-tuning loss, ``F`` the backdoored model's Fisher on the clean set and ``θ⁰`` its
weights. This module measures what η does, on NGF's fast path (body frozen, classifier only):

- :func:`regulariser_sweep` caches the classifier's clean inputs once, fixes one learning rate
  (given, or chosen once from clean data at the default η), then fine-tunes the head once per η
  and measures C-ACC / ASR / RA from cached test inputs;
- :func:`classifier_fisher` is the Fisher of the classifier on clean data, per weight and in its
  eigenbasis, and :func:`movement_by_fisher` bins how far each weight (or eigen-direction) moved
  by its Fisher value;
- :func:`sweep_figure`, :func:`fisher_heatmaps`, :func:`movement_figure` draw them and
  :func:`sweep_widget` is a slider over the swept η (no computation inside it).

Shapes: the classifier ``s = W a + b`` with ``C`` classes and ``D`` input features is handled as
one matrix ``[W, b]`` ``(C, D+1)``; cached clean features are ``(V, N, D)`` (``V`` views of ``N``
images, view 0 unaugmented); per-weight Fisher values and weight changes are ``(C, D+1)``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NgfkitError
from ..curvature.fisher import (diagonal_fisher, eigenbasis_scales, fisher_labels, kfac_factors, softmax_output_gradients,
                     symmetric_eigh, with_bias_column)
from ..metrics import evaluate, evaluate_layer, predict
from ..models import classifier_layer
from ..defences.natural_gradient import FeatureDataset, cache_features, layer_matrix, set_layer_matrix
from ..defences.heads import fit_heads, head_predictions

METRIC_NAMES = {"acc": "C-ACC", "asr": "ASR", "ra": "RA"}


def check_etas(etas: Sequence[float]) -> list[float]:
    """``etas`` as floats, sorted; an empty list, a negative, NaN or infinite value is an error."""
    try:
        values = [float(e) for e in etas]
    except (TypeError, ValueError):
        raise NgfkitError(f"regulariser strengths must be numbers, got {etas!r}") from None
    if not values:
        raise NgfkitError("give at least one regulariser strength η (e.g. etas=[0, 1, 10, 100])")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise NgfkitError(f"regulariser strength η must be a finite number >= 0 (0 switches it off), "
                              f"got {value}")
    return sorted(values)


def _head_gradients(features: Tensor, labels: Tensor, weight: Tensor, fisher: str, seed: int) -> tuple[Tensor, Tensor]:
    """Per-image inputs ``a`` ``(N, D+1)`` and output gradients ``g`` ``(N, C)`` of the head ``weight``
    ``(C, D+1)`` on ``features`` ``(N, D)``, at the true labels (``"empirical"``) or sampled ones."""
    a = with_bias_column(features)
    logits = a @ weight.T
    chosen = fisher_labels(logits, labels.to(logits.device), fisher, torch.Generator().manual_seed(seed))
    return a, softmax_output_gradients(logits, chosen)


@dataclass
class ClassifierFisher:
    """The Fisher of the classifier ``[W, b]`` on clean data, two ways.

    ``diagonal`` ``(C, D+1)``: per-weight ``F_jj`` (mean squared per-image gradient), what a
    diagonal penalty uses. ``scales`` ``(C, D+1)``: the same Fisher's diagonal in its K-FAC
    eigenbasis ``q_g`` ``(C, C)``, ``q_a`` ``(D+1, D+1)`` (EKFAC scales): the coordinates in which
    NGF's optimiser, and so its regulariser, work. Neither is normalised.
    """

    diagonal: Tensor
    scales: Tensor
    q_g: Tensor
    q_a: Tensor

    def rotate(self, matrix: Tensor) -> Tensor:
        """A ``(C, D+1)`` weight change in eigen-coordinates: ``q_gᵀ M q_a``."""
        return self.q_g.T @ matrix.to(self.q_g.dtype) @ self.q_a


def classifier_fisher(model: nn.Module, clean_data, *, device: torch.device | str = "cpu", fisher: str = "empirical",
                      seed: int = 0) -> ClassifierFisher:
    """The Fisher of the model's classifier on the clean images (eval mode, no augmentation), per
    weight and in its eigenbasis (see :class:`ClassifierFisher`); CPU tensors."""
    model = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(model)
    data = cache_features(model, head, clean_data, views=0, seed=seed, device=device)
    a, g = _head_gradients(data.features[0], data.labels, layer_matrix(head), fisher, seed)
    a_factor, g_factor = kfac_factors(a, g)
    q_a, q_g = symmetric_eigh(a_factor)[1], symmetric_eigh(g_factor)[1]
    return ClassifierFisher(diagonal_fisher(a, g).cpu(), eigenbasis_scales(a, g, q_a, q_g).cpu(), q_g.cpu(), q_a.cpu())


def fisher_distance(fisher: Tensor, shift: Tensor) -> float:
    """``Σ_j F̂_jj Δθ_j²`` with ``F̂`` the diagonal Fisher normalised to mean 1 (``(C, D+1)`` each):
    the diagonal penalty divided by ``η/2``."""
    return float((fisher / fisher.mean().clamp_min(1e-12) * shift.pow(2)).sum())


def regulariser_sweep(model: nn.Module, attack, splits, etas: Sequence[float], *,
                      device: torch.device | str = "cpu", seed: int = 0, lr: float | None = None,
                      test_predictions: dict | None = None, progress: bool = False,
                      **ngf_options: Any) -> list[dict]:
    """NGF once per regulariser strength η in ``etas``, at one fixed learning rate.

    ``lr=None`` chooses the learning rate once, with NGF's clean-data rule (cross-fitted clean
    accuracy on ``lr_grid``) at the default η, and keeps it for every η, so the sweep changes
    nothing but η; no test data is used to choose anything. ``ngf_options`` are further
    :class:`~ngfkit.defences.ngf.NGFConfig` options (``steps``, ``damping``, ``augment``, ...).
    ``test_predictions`` (from :func:`ngfkit.metrics.predict` with ``keep_inputs_of`` the
    classifier, e.g. on a subset of the test set) saves the pass over ``splits.test``.

    Returns one row per η, weakest first: ``eta``, ``lr``, ``lr_chosen`` (True when chosen from
    clean data), ``acc``, ``asr``, ``ra`` (in %; ASR and RA are NaN without an attack),
    ``clean_set_acc`` (accuracy on the defender's clean images, the one metric a defender sees),
    ``seconds`` (fine-tuning time), ``shift`` (``‖Δθ‖ / ‖θ⁰‖`` of the classifier),
    ``fisher_distance`` (:func:`fisher_distance`) and ``weight`` (the purified ``[W, b]``, CPU).

    On NGF's fast path (frozen body, biased classifier) the clean features are cached once for
    all η; otherwise each η is a full :func:`~ngfkit.defences.purify` run.
    """
    from ..defences import purify
    from ..defences.ngf import NGF

    etas = check_etas(etas)
    if "reg_strength" in ngf_options:
        raise NgfkitError("regulariser_sweep sets reg_strength itself; give the strengths as etas")
    defence = NGF(**{**ngf_options, "seed": seed, "lr": lr})  # unknown or invalid options fail here
    cfg = defence.config
    model = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(model)
    weight = layer_matrix(head)
    rows: list[dict] = []

    if not defence._fast(model):
        lr_chosen = lr is None
        if lr is None:
            _, history = purify(model, splits.clean, "ngf", device=device, progress=progress,
                                **{**dataclasses.asdict(cfg), "lr": None})
            lr = history["chosen"]["lr"]
        clean_fisher = classifier_fisher(model, splits.clean, device=device, fisher=cfg.fisher, seed=seed).diagonal
        for eta in etas:
            purified, history = purify(model, splits.clean, "ngf", device=device, progress=progress,
                                       **{**dataclasses.asdict(cfg), "lr": lr, "reg_strength": eta})
            metrics = evaluate(purified, splits.test, attack, device=device)
            clean_acc = evaluate(purified, splits.clean, device=device)["acc"]
            rows.append(_row(eta, lr, lr_chosen, metrics, clean_acc, history["seconds"], weight,
                             layer_matrix(classifier_layer(purified)), clean_fisher))
        return rows

    data: FeatureDataset = cache_features(model, head, splits.clean, views=cfg.augment, seed=cfg.seed, device=device)
    lr_chosen = lr is None
    if lr is None:
        lr, _ = defence._choose_lr(len(data.labels), data.labels, defence._head_grid(data, weight), progress,
                                   before=head_predictions(weight, data.features[0]))
    if test_predictions is None:
        test_predictions = predict(model, splits.test, attack=attack, device=device, keep_inputs_of=head)
    clean_fisher = diagonal_fisher(*_head_gradients(data.features[0], data.labels, weight, cfg.fisher, seed)).cpu()
    every = torch.arange(len(data.labels))
    for eta in etas:
        start = time.perf_counter()
        fit = fit_heads(data.features, data.labels, weight, [every], [lr],
                        dataclasses.replace(cfg, lr=lr, reg_strength=eta))
        seconds = time.perf_counter() - start
        tuned = fit["weight"][0]
        set_layer_matrix(head, tuned)
        metrics = evaluate_layer(head, test_predictions)
        set_layer_matrix(head, weight)
        clean_acc = 100.0 * (head_predictions(tuned, data.features[0]) == data.labels.to(tuned.device)).float().mean()
        rows.append(_row(eta, lr, lr_chosen, metrics, float(clean_acc), seconds, weight, tuned, clean_fisher))
    return rows


def _row(eta, lr, lr_chosen, metrics, clean_acc, seconds, before: Tensor, after: Tensor, fisher: Tensor) -> dict:
    before, after = before.detach().cpu(), after.detach().cpu()
    shift = after - before
    return {"eta": eta, "lr": float(lr), "lr_chosen": lr_chosen, "acc": metrics["acc"],
            "asr": metrics.get("asr", float("nan")), "ra": metrics.get("ra", float("nan")),
            "clean_set_acc": clean_acc, "seconds": seconds,
            "shift": float(shift.norm() / before.norm().clamp_min(1e-12)),
            "fisher_distance": fisher_distance(fisher, shift), "weight": after}


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), for Spearman's correlation."""
    from scipy.stats import rankdata

    return torch.as_tensor(rankdata(x.double().numpy()))


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors (flattened)."""
    rx, ry = _ranks(x.flatten().cpu()), _ranks(y.flatten().cpu())
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def movement_by_fisher(fisher: Tensor, shifts: Mapping[str, Tensor], bins: int = 10, floor: float = 1e-6) -> dict:
    """How far the weights moved, grouped by their clean-data Fisher value.

    ``fisher`` ``(C, D+1)`` is normalised to mean 1 (``F̂``, as the regulariser uses it);
    ``shifts`` maps a label (e.g. ``"η = 0"``) to ``θ − θ⁰`` ``(C, D+1)``. Weights with
    ``F̂ < floor`` are ones the clean data practically never exercise (inputs that are zero or
    nearly so on every clean image, e.g. dead ReLUs) and form their own group; the others are cut
    into ``bins`` groups of equal size by Fisher value.

    Returns ``zero_fraction`` (``F = 0`` exactly), ``unseen_fraction`` (``F̂ < floor``),
    ``unseen_shift`` (mean ``|Δθ|`` of those, per label), ``centres`` (median ``F̂`` per bin),
    ``edges`` (``bins + 1``), ``mean_shift`` (per label, mean ``|Δθ|`` per bin) and ``spearman``
    (per label, rank correlation of ``F̂`` and ``|Δθ|`` over the weights with ``F̂ >= floor``).
    """
    flat = fisher.flatten().cpu().double()
    flat = flat / flat.mean().clamp_min(1e-300)
    seen = flat >= floor
    if int(seen.sum()) < bins:
        raise NgfkitError(f"only {int(seen.sum())} weights have a normalised Fisher value >= {floor:g}; "
                          f"need at least {bins}")
    values = flat[seen]
    edges = torch.quantile(values, torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    which = torch.bucketize(values, edges[1:-1], right=True)  # 0 .. bins-1
    out = {"zero_fraction": float((flat == 0).double().mean()), "unseen_fraction": float(1 - seen.double().mean()),
           "floor": floor, "edges": edges.tolist(), "centres": [float(values[which == b].median()) for b in range(bins)],
           "mean_shift": {}, "unseen_shift": {}, "spearman": {}}
    for label, shift in shifts.items():
        moved = shift.flatten().cpu().double().abs()
        if moved.shape != flat.shape:
            raise NgfkitError(f"shift {label!r} has {moved.numel()} entries, the Fisher {flat.numel()}")
        kept = moved[seen]
        out["mean_shift"][label] = [float(kept[which == b].mean()) for b in range(bins)]
        out["unseen_shift"][label] = float(moved[~seen].mean()) if (~seen).any() else float("nan")
        out["spearman"][label] = spearman(values, kept)
    return out


# -- figures and the widget ------------------------------------------------------------------
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
    """Mean ``|Δθ|`` per Fisher bin (from :func:`movement_by_fisher`), one line per label, log–log;
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
