"""Sharpness (λmax, trace, spectral density) against exact Hessians, and loss landscapes.

The exact references: ``torch.autograd.functional.hessian`` of a tiny MLP (184 parameters), and
the closed form of the last layer's Hessian for cross-entropy on a linear head,
``mean_n (diag(p_n) - p_n p_nᵀ) ⊗ [f_n; 1][f_n; 1]ᵀ``.
"""
from __future__ import annotations

import json

import curvlinops
import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn
from torch.func import functional_call

from defence_helpers import state, tiny_clean, tiny_model
from errors_helper import one_line_error
from ngfkit.curvature import landscape, sharpness
from ngfkit.viz import plots
from ngfkit.attacks import create_attack


def _mlp_problem(seed: int = 0):
    """A 10-12-4 tanh MLP (184 parameters), 64 samples, and its exact Hessian (float64)."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 4))
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    named = list(mlp.named_parameters())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = flat.split([p.numel() for _, p in named])
        weights = {n: c.view_as(p) for (n, p), c in zip(named, chunks)}
        return nn.functional.cross_entropy(functional_call(mlp, weights, (x,)), y)

    flat = torch.cat([p.detach().flatten() for _, p in named])
    hessian = torch.autograd.functional.hessian(loss, flat).double()
    return mlp, (x, y), [n for n, _ in named], hessian


@pytest.fixture(scope="module")
def mlp_problem():
    return _mlp_problem()


def test_lambda_max_and_top_k_match_the_exact_hessian(mlp_problem) -> None:
    mlp, data, names, hessian = mlp_problem
    exact = torch.linalg.eigvalsh(hessian).flip(0)
    top = sharpness.top_eigenvalues(mlp, data, params=names, seed=0)
    assert top["values"][0] == pytest.approx(float(exact[0]), rel=0.01)
    assert abs(top["values"][0] - float(exact[0])) <= top["error_bound"][0]
    assert top["num_params"] == 184 and top["samples"] == 64 and top["converged"] and top["matvecs"] > 0
    # top-3: eigenvalues 3 and 4 are 2 % apart, so ask a tolerance well below that
    top3 = sharpness.top_eigenvalues(mlp, data, k=3, params=names, tol=1e-4)
    assert np.allclose(top3["values"], exact[:3].numpy(), rtol=0.01)


def test_operator_products_equal_the_exact_hessian_and_chunk_columns(mlp_problem) -> None:
    mlp, data, names, hessian = mlp_problem
    op = sharpness.hessian_operator(mlp, data, params=names, batch_size=24, vector_chunk=3)  # 3 batches
    v = torch.randn(184, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((op @ v).double(), hessian @ v.double(), rtol=1e-4, atol=1e-6)
    assert op.matvecs == 7


def test_trace_estimates_are_within_three_standard_errors_and_ten_percent(mlp_problem) -> None:
    mlp, data, names, hessian = mlp_problem
    exact = float(hessian.trace())
    op = sharpness.hessian_operator(mlp, data, params=names)
    for method in ("hutchinson", "hutch++"):
        for seed in range(3):
            est = sharpness.hessian_trace(op, probes=150, method=method, seed=seed)
            assert est["probes"] == 150 and est["std"] > 0
            assert abs(est["trace"] - exact) <= 3 * est["std"], (method, seed, est)
            assert est["trace"] == pytest.approx(exact, rel=0.10)
    assert sharpness.hessian_trace(op, probes=150, method="xtrace")["trace"] == pytest.approx(exact, rel=0.05)


def test_hutchpp_repeats_curvlinops_hutchpp_draws_and_leaves_the_global_rng_alone(mlp_problem) -> None:
    mlp, data, names, _ = mlp_problem
    op = sharpness.hessian_operator(mlp, data, params=names)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ours = sharpness.hessian_trace(op, probes=60, method="hutch++", seed=5)["trace"]
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(5)
    assert ours == pytest.approx(float(curvlinops.hutchpp_trace(op, 60)), rel=1e-5)


def test_spectral_density_integrates_to_one_where_the_exact_eigenvalues_are(mlp_problem) -> None:
    mlp, data, names, hessian = mlp_problem
    exact = torch.linalg.eigvalsh(hessian).numpy()
    result = sharpness.spectral_density(mlp, data, params=names, lanczos_steps=30, runs=4, seed=0)
    grid, density = np.array(result["grid"]), np.array(result["density"])
    assert result["mass"] == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(np.sum(result["weights"], axis=1), 1.0)
    # the quadrature's nodes and weights approximate the eigenvalue distribution: its
    # 1-Wasserstein distance to the exact eigenvalues is a small share of the spectrum's width
    width = exact.max() - exact.min()
    distance = wasserstein_distance(np.ravel(result["nodes"]), exact, u_weights=np.ravel(result["weights"]))
    assert distance < 0.05 * width
    # and the smoothed density keeps (almost) no mass away from the spectrum
    outside = (grid < exact.min() - 0.1 * width) | (grid > exact.max() + 0.1 * width)
    assert np.trapezoid(np.where(outside, density, 0.0), grid) < 1e-3
    again = sharpness.spectral_density(mlp, data, params=names, lanczos_steps=30, runs=4, seed=0)
    assert again["density"] == result["density"]


def _last_layer_hessian(model, x, y) -> torch.Tensor:
    """Closed-form Hessian of mean cross-entropy w.r.t. (head.weight row-major, head.bias)."""
    with torch.no_grad():
        features = model.features(x).double()
        p = model.head(model.features(x)).double().softmax(1)
    n, classes, dim = features.shape[0], p.shape[1], features.shape[1]
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
    ww = torch.einsum("ncd,ni,nj->cidj", a, features, features).reshape(classes * dim, classes * dim)
    wb = torch.einsum("ncd,ni->cid", a, features).reshape(classes * dim, classes)
    bb = a.sum(0)
    return torch.cat([torch.cat([ww, wb], 1), torch.cat([wb.T, bb], 1)], 0) / n


def test_last_layer_lambda_max_matches_the_closed_form_and_leaves_the_model_alone() -> None:
    model, clean = tiny_model(), tiny_clean(32)
    model.train()  # the measurement must use eval mode without switching the caller's model
    before = state(model)
    x, y = clean.get_batch(torch.arange(32))
    exact = torch.linalg.eigvalsh(_last_layer_hessian(model.eval(), x, y))
    model.train()
    top = sharpness.top_eigenvalues(model, clean, params="last")
    assert top["num_params"] == 256 * 10 + 10 and top["params"] == "last"
    assert top["values"][0] == pytest.approx(float(exact[-1]), rel=0.01)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_measure_reports_a_json_summary() -> None:
    report = sharpness.measure(tiny_model(), tiny_clean(20), params=["head"], samples=16, probes=6)
    assert report["samples"] == 16 and report["num_params"] == 2570
    assert report["param_names"] == ["head.weight", "head.bias"]
    assert report["lambda_max"] == report["top_k"][0] > 0 and report["trace"] > 0 and report["trace_std"] >= 0
    json.dumps(report)


def test_bad_input_is_one_clear_error_line(mlp_problem) -> None:
    mlp, data, names, _ = mlp_problem
    assert "unknown parameter or layer 'head'" in one_line_error(sharpness.top_eigenvalues, mlp, data, params=["head"])
    assert "classifier_name" in one_line_error(sharpness.top_eigenvalues, mlp, data, params="last")
    assert "no samples" in one_line_error(sharpness.hessian_trace, mlp, (data[0][:0], data[1][:0]), params=names)
    assert "no samples" in one_line_error(sharpness.top_eigenvalues, tiny_model(), tiny_clean(0), params="last")
    broken = tiny_model()
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    assert "is nan" in one_line_error(sharpness.measure, broken, tiny_clean(8), params="last")
    assert "k must be" in one_line_error(sharpness.top_eigenvalues, mlp, data, k=184, params=names)
    assert "unknown trace method" in one_line_error(sharpness.hessian_trace, mlp, data, method="exact", params=names)
    assert "probes" in one_line_error(sharpness.hessian_trace, mlp, data, probes=500, params=names)
    assert "labels must lie" in one_line_error(sharpness.hessian_operator, mlp, (data[0], data[1] + 10), params=names)


# -- loss landscapes ---------------------------------------------------------------------------
def _loss(model, x, y) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model.eval()(x), y))


def test_filter_normalised_direction_matches_each_filter_norm() -> None:
    model = tiny_model()
    d = landscape.filter_normalised_direction(model, seed=3)
    weights = dict(model.named_parameters())
    conv = "body.0.weight"
    assert torch.allclose(d[conv].flatten(1).norm(dim=1), weights[conv].detach().flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.count_nonzero(d["head.bias"]) == 0  # 1-D parameters stay put (Li et al.'s biasbn)
    last = landscape.filter_normalised_direction(model, seed=3, params="last")
    assert set(last) == {"head.weight", "head.bias"} and torch.equal(last["head.weight"], d["head.weight"])


def test_slices_at_the_origin_equal_the_model_loss_clean_and_triggered() -> None:
    model, clean = tiny_model(), tiny_clean(30)
    before = state(model)
    attack = create_attack("badnets", (1, 28, 28), 10)
    x, y = clean.get_batch(torch.arange(30))
    keep = attack.attacked_mask(y)
    d1 = landscape.filter_normalised_direction(model, seed=0)
    d2 = landscape.filter_normalised_direction(model, seed=1)
    one = landscape.loss_slice_1d(model, clean, d1, [-0.5, 0.0, 0.5], attack=attack)
    assert one["clean_loss"][1] == pytest.approx(_loss(model, x, y), rel=1e-5)
    triggered = _loss(model, attack.apply(x[keep]), attack.target_labels(y[keep]))
    assert one["triggered_loss"][1] == pytest.approx(triggered, rel=1e-5)
    assert one["triggered_samples"] == int(keep.sum()) and one["clean_loss"][0] != one["clean_loss"][1]
    two = landscape.loss_slice_2d(model, clean, d1, d2, [-0.5, 0.0], [0.0, 0.5, 1.0], num_samples=30)
    assert np.shape(two["clean_loss"]) == (3, 2) and "triggered_loss" not in two
    assert two["clean_loss"][0][1] == pytest.approx(one["clean_loss"][1], rel=1e-6)
    assert two["clean_loss"][0][0] == pytest.approx(one["clean_loss"][0], rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_interpolation_endpoints_equal_each_model_loss() -> None:
    a, b, clean = tiny_model(0), tiny_model(1), tiny_clean(24)
    with torch.no_grad():  # different BatchNorm statistics, as after purification
        b.body[1].running_mean.add_(0.3)
        b.body[1].running_var.mul_(2.0)
    x, y = clean.get_batch(torch.arange(24))
    line = landscape.interpolate(a, b, clean, [0.0, 0.5, 1.0])
    assert line["clean_loss"][0] == pytest.approx(_loss(a, x, y), rel=1e-5)
    assert line["clean_loss"][2] == pytest.approx(_loss(b, x, y), rel=1e-5)
    wider = nn.Sequential(nn.Linear(3, 4))
    assert "architecture" in one_line_error(landscape.interpolate, a, wider, clean, [0.0])


def test_landscape_errors_are_one_line() -> None:
    model, clean = tiny_model(), tiny_clean(8)
    d = landscape.filter_normalised_direction(model)
    assert "not a parameter" in one_line_error(landscape.loss_slice_1d, model, clean, {"nope": d["head.bias"]}, [0.0])
    assert "alphas" in one_line_error(landscape.loss_slice_1d, model, clean, d, [])
    assert "unknown parameter" in one_line_error(landscape.filter_normalised_direction, model, params=["fc"])


# -- figures -----------------------------------------------------------------------------------
def test_figures_build_with_titles_and_labelled_axes(mlp_problem) -> None:
    mlp, data, names, _ = mlp_problem
    density = sharpness.spectral_density(mlp, data, params=names, lanczos_steps=10, runs=1, num_points=64)
    fig = plots.spectrum_figure(density)
    assert fig.layout.yaxis.type == "log" and "λ" in fig.layout.xaxis.title.text and fig.layout.title.text
    assert min(fig.data[0].y) > 0
    one = {"kind": "direction", "alphas": [0.0, 1.0], "clean_loss": [0.5, 0.7], "clean_acc": [0.9, 0.8],
           "triggered_loss": [0.1, 2.0], "asr": [0.99, 0.2], "samples": 10}
    line = dict(one, kind="interpolation")
    fig = plots.landscape_1d_figure([one, line], names=["backdoored", "purified"])
    assert len(fig.data) == 4 and "nats" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text
    two = {"kind": "direction-2d", "alphas": [0.0, 1.0], "betas": [0.0, 1.0, 2.0],
           "clean_loss": [[1, 2], [3, 4], [5, 6]], "samples": 10}
    contour = plots.landscape_2d_figure(two)
    assert contour.data[0].type == "contour" and "β" in contour.layout.yaxis.title.text
    surface = plots.landscape_2d_figure(two, kind="surface")
    assert surface.data[0].type == "surface" and "nats" in surface.layout.scene.zaxis.title.text
    assert "triggered" in one_line_error(plots.landscape_2d_figure, two, which="triggered")
