"""The worked Fisher example: the exact Fisher against autograd and curvlinops, K-FAC where it
must be exact, EKFAC's error identity, the damped solves, and the chapter's figures."""
import pytest
import torch
import torch.nn.functional as F

from defence_helpers import tiny_clean, tiny_model
from ngfkit.errors import NgfkitError
from ngfkit.curvature.fisher import eigenbasis_scales, softmax_output_gradients, with_bias_column
from ngfkit.studies.fisher_check import (compare_fisher, curvlinops_reference, damped_solve, ekfac_scales,
                                         exact_fisher, fisher_example, kfac_pair, kronecker_state, output_fisher, rotate)
from ngfkit.viz.fisher_check import direction_error_figure, fisher_heatmaps_figure
from ngfkit.defences.classifier_only import layer_matrix

from defence_helpers import LINEAR_IN as D, LINEAR_OUT as C, LINEAR_SAMPLES as N


def flat_grad(layer, x, y):
    """Autograd gradient of the cross-entropy of one sample, flattened as row-major ``[W, b]``."""
    loss = F.cross_entropy(layer(x.unsqueeze(0)), y.view(1))
    dw, db = torch.autograd.grad(loss, [layer.weight, layer.bias])
    return torch.cat([dw, db.view(-1, 1)], dim=1).flatten()


def fisher_of(layer, x, y, kind):
    a = with_bias_column(x)
    return exact_fisher(a, output_fisher(layer(x).detach(), y, kind))


def test_exact_empirical_fisher_is_the_mean_outer_product_of_autograd_gradients(linear_problem):
    layer, x, y = linear_problem
    grads = torch.stack([flat_grad(layer, x[i], y[i]) for i in range(N)])
    assert torch.allclose(fisher_of(layer, x, y, "empirical"), grads.T @ grads / N, atol=1e-12)


def test_exact_true_fisher_is_the_expectation_over_model_labels(linear_problem):
    layer, x, y = linear_problem
    probs = layer(x).softmax(1).detach()
    expected = torch.zeros(C * (D + 1), C * (D + 1), dtype=torch.float64)
    for i in range(N):
        for c in range(C):
            g = flat_grad(layer, x[i], torch.tensor(c))
            expected += probs[i, c] * torch.outer(g, g) / N
    assert torch.allclose(fisher_of(layer, x, y, "true"), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_exact_fisher_and_kfac_agree_with_curvlinops(linear_problem, kind):
    layer, x, y = linear_problem
    a = with_bias_column(x)
    m = output_fisher(layer(x).detach(), y, kind)
    A, G = kfac_pair(a, m)
    reference = curvlinops_reference(a, y, layer_matrix(layer), kind)
    assert torch.allclose(reference["fisher"], exact_fisher(a, m), atol=1e-12)
    assert torch.allclose(reference["kfac"], torch.kron(G, A), atol=1e-12)


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_kfac_is_exact_for_a_single_sample(linear_problem, kind):
    layer, x, y = linear_problem
    result = compare_fisher(with_bias_column(x[:1]), layer(x[:1]).detach(), y[:1], kind=kind,
                            dampings=(1e-3, 1e-1))
    assert torch.allclose(result["kfac"], result["fisher"], atol=1e-12)
    assert result["fro"]["kfac"] < 1e-10 and result["fro"]["ekfac"] < 1e-6
    assert result["kfac_trace_ratio"] == pytest.approx(1.0)
    for row in result["directions"]:
        assert row["kfac_error"] < 1e-8 and row["kfac_cosine"] == pytest.approx(1.0, abs=1e-10)
        assert row["ekfac_error"] < 1e-6


def test_kfac_is_exact_when_every_sample_has_the_same_input():
    """K-FAC's only assumption is that inputs and output gradients are independent; identical
    inputs make it hold for any number of samples with different labels and logits."""
    torch.manual_seed(1)
    a = with_bias_column(torch.randn(1, D, dtype=torch.float64)).repeat(N, 1)
    logits = torch.randn(N, C, dtype=torch.float64)
    result = compare_fisher(a, logits, torch.randint(0, C, (N,)), dampings=(1e-2,))
    assert result["fro"]["kfac"] < 1e-10
    # but not in general
    random = compare_fisher(with_bias_column(torch.randn(N, D, dtype=torch.float64)), logits,
                            torch.randint(0, C, (N,)), dampings=(1e-2,))
    assert random["fro"]["kfac"] > 1e-3


def test_ekfac_scales_are_the_diagonal_of_the_rotated_fisher_and_beat_kfac(linear_problem):
    layer, x, y = linear_problem
    a = with_bias_column(x)
    m = output_fisher(layer(x).detach(), y, "empirical")
    fisher = exact_fisher(a, m)
    A, G = kfac_pair(a, m)
    state = kronecker_state(A, G, 1.0)
    scales = ekfac_scales(a, m, state.q_a, state.q_g)
    rotated = rotate(fisher, state.q_g, state.q_a)
    assert torch.allclose(rotated.diagonal(), scales.flatten(), atol=1e-12)
    # the same as ngfkit.curvature.fisher's EKFAC scales from per-sample gradients
    g = softmax_output_gradients(layer(x).detach(), y)
    assert torch.allclose(scales, eigenbasis_scales(a, g, state.q_a, state.q_g), atol=1e-12)
    # the reported EKFAC error is that of the dense EKFAC matrix, and never above K-FAC's
    q = torch.kron(state.q_g, state.q_a)
    ekfac = q @ torch.diag(scales.flatten()) @ q.T
    result = compare_fisher(a, layer(x).detach(), y)
    assert result["fro"]["ekfac"] == pytest.approx(float((ekfac - fisher).norm() / fisher.norm()), rel=1e-6)
    assert result["fro"]["ekfac"] <= result["fro"]["kfac"] + 1e-12


def test_damped_solve_inverts_the_damped_fisher(linear_problem):
    layer, x, y = linear_problem
    fisher = fisher_of(layer, x, y, "true")
    grad = torch.randn(C, D + 1, dtype=torch.float64)
    direction = damped_solve(fisher, grad, 1e-2)
    back = (fisher + 1e-2 * torch.eye(len(fisher), dtype=torch.float64)) @ direction.flatten()
    assert torch.allclose(back, grad.flatten(), atol=1e-10)


def test_bad_kind_is_a_one_line_error(linear_problem):
    layer, x, y = linear_problem
    with pytest.raises(NgfkitError, match="empirical, true"):
        output_fisher(layer(x).detach(), y, "sampled")


def test_fisher_example_on_a_real_classifier_and_its_figures():
    model, data = tiny_model(), tiny_clean(40)
    result = fisher_example(model, data, num_samples=24, dampings=(1e-3, 1e-1))
    p = 10 * 257
    assert result["fisher"].shape == (p, p) and result["num_samples"] == 24
    assert torch.allclose(result["fisher"], result["fisher"].T, atol=1e-12)
    assert result["fro"]["ekfac"] <= result["fro"]["kfac"]
    assert [row["damping"] for row in result["directions"]] == [1e-3, 1e-1]
    heatmaps = fisher_heatmaps_figure(result, classes=(0, 1), inputs=5)
    assert len(heatmaps.data) == 3 and len(heatmaps.data[0].z) == 10
    lines = direction_error_figure([result])
    assert len(lines.data) == 3 and "damping" in lines.layout.xaxis.title.text
