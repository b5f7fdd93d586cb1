"""K-FAC / EKFAC factors, the natural-gradient step and the Fisher regulariser, checked against
an explicit Fisher (curvlinops' empirical-Fisher operator, and brute-force per-sample gradients)."""
import math

import pytest
import torch
from curvlinops import EFLinearOperator

from ngfkit.curvature.fisher import (KFACState, diagonal_fisher, eigenbasis_scales, kfac_factors,
                           softmax_output_gradients, with_bias_column)
from ngfkit.defences.classifier_only import layer_matrix
from ngfkit.defences.natural_gradient import FisherRegulariser, NaturalGradient, layer_statistics

from defence_helpers import LINEAR_IN as D_IN, LINEAR_OUT as D_OUT, LINEAR_SAMPLES as N


def exact_fisher(layer, x, y):
    """Empirical Fisher from curvlinops, reordered to our ``[W, b]`` row-major layout."""
    ef = EFLinearOperator(layer, torch.nn.CrossEntropyLoss(), [layer.weight, layer.bias], [(x, y)],
                          check_deterministic=False)
    dense = ef @ torch.eye(D_OUT * (D_IN + 1), dtype=torch.float64)
    # curvlinops orders W (row-major) then b; ours is row i = [W_i, b_i]
    order = []
    for i in range(D_OUT):
        order += [i * D_IN + j for j in range(D_IN)] + [D_OUT * D_IN + i]
    order = torch.tensor(order)
    return dense[order][:, order]


def per_sample(layer, x, y):
    a = with_bias_column(x)
    g = softmax_output_gradients(layer(x), y)
    return a, g


def test_per_sample_gradients_rebuild_exact_fisher(linear_problem):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x, y)
    grads = torch.einsum("ni,nj->nij", g, a).reshape(N, -1)
    assert torch.allclose(grads.T @ grads / N, exact_fisher(layer, x, y), atol=1e-10)


def test_kfac_is_exact_for_one_sample(linear_problem):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x[:1], y[:1])
    A, G = kfac_factors(a, g)
    # row-major vec(g aᵀ) = g ⊗ a, so the Fisher is G ⊗ A in our layout
    assert torch.allclose(torch.kron(G, A), exact_fisher(layer, x[:1], y[:1]), atol=1e-10)


def test_kfac_factors_are_batch_means(linear_problem):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x, y)
    A, G = kfac_factors(a, g)
    assert A.shape == (D_IN + 1, D_IN + 1) and G.shape == (D_OUT, D_OUT)
    assert torch.allclose(A, sum(torch.outer(r, r) for r in a) / N)
    assert torch.allclose(G, sum(torch.outer(r, r) for r in g) / N)
    assert torch.allclose(A[-1, -1], torch.tensor(1.0, dtype=A.dtype))  # the bias column


def test_ekfac_scales_are_the_exact_diagonal_in_the_kronecker_eigenbasis(linear_problem):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x, y)
    A, G = kfac_factors(a, g)
    _, q_a = torch.linalg.eigh(A)
    _, q_g = torch.linalg.eigh(G)
    q = torch.kron(q_g, q_a)
    rotated = q.T @ exact_fisher(layer, x, y) @ q
    assert torch.allclose(eigenbasis_scales(a, g, q_a, q_g).flatten(), torch.diagonal(rotated), atol=1e-10)


def test_diagonal_fisher_is_mean_of_squared_per_sample_gradients(linear_problem):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x, y)
    assert torch.allclose(diagonal_fisher(a, g).flatten(), torch.diagonal(exact_fisher(layer, x, y)), atol=1e-10)
    batch_grad = (g.T @ a / N).flatten()
    assert not torch.allclose(diagonal_fisher(a, g).flatten(), batch_grad ** 2)


@pytest.mark.parametrize("ekfac", [False, True])
def test_solve_inverts_the_damped_fisher(linear_problem, ekfac):
    layer, x, y = linear_problem
    a, g = per_sample(layer, x, y)
    state = KFACState(damping=1e-2, ekfac=ekfac)
    state.update(a, g)
    state.refresh_eigenbasis()
    if ekfac:
        state.update(a, g)  # folds the EKFAC scales in (decay makes it a blend with the K-FAC ones)
    q = torch.kron(state.q_g, state.q_a)
    fisher = q @ torch.diag(state.scales.flatten()) @ q.T
    if not ekfac:
        A, G = kfac_factors(a, g)
        assert torch.allclose(fisher, torch.kron(G, A), atol=1e-10)
    grad = torch.randn(D_OUT, D_IN + 1, dtype=torch.float64)
    expected = torch.linalg.solve(fisher + 1e-2 * torch.eye(len(fisher), dtype=torch.float64), grad.flatten())
    assert torch.allclose(state.solve(grad).flatten(), expected, atol=1e-8)


def test_natural_gradient_step_matches_explicit_kfac_and_kl_clip(linear_problem):
    layer, x, y = linear_problem
    net = torch.nn.Sequential(layer)
    hooks = NaturalGradient({"0": layer}, damping=1e-2, kl_clip=1e9, ekfac=False)
    logits = net(x)
    hooks.observe(logits, y, step=0)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grad = torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], 1).clone()
    hooks.precondition(lr=0.1)
    a, g = per_sample(layer, x, y)
    A, G = kfac_factors(a, g)
    fisher = torch.kron(G, A) + 1e-2 * torch.eye(D_OUT * (D_IN + 1), dtype=torch.float64)
    expected = torch.linalg.solve(fisher, grad.flatten()).view(D_OUT, D_IN + 1)
    got = torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], 1)
    assert hooks.last_scale == 1.0
    assert torch.allclose(got, expected, atol=1e-8)

    # a tight KL budget rescales the same direction by sqrt(kappa / (lr² Σ V ⊙ ∇))
    layer.weight.grad.copy_(grad[:, :D_IN])
    layer.bias.grad.copy_(grad[:, D_IN])
    hooks.kl_clip = 1e-6
    hooks.precondition(lr=0.1)
    nu = math.sqrt(1e-6 / (0.01 * (expected * grad).sum().item()))
    assert hooks.last_scale == pytest.approx(nu)
    got = torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], 1)
    assert torch.allclose(got, nu * expected, atol=1e-10)
    hooks.close()


@pytest.mark.parametrize("kind", ["diag", "kfac"])
def test_regulariser_gradient_and_proximal_step(linear_problem, kind):
    layer, x, y = linear_problem
    layers = {"": layer}
    stats = layer_statistics(layer, layers, torch.utils.data.TensorDataset(x, y), device="cpu")
    reg = FisherRegulariser(layers, stats, strength=3.0, structure=kind)
    a, g = stats[""]
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
        layer.bias.add_(0.3)
    delta = layer_matrix(layer) - reg.anchor[""]
    layer.zero_grad()
    reg.penalty().backward()
    autograd = torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], 1)
    if kind == "diag":
        curvature = diagonal_fisher(a, g)
        expected = 3.0 * curvature / curvature.mean() * delta
    else:
        A, G = kfac_factors(a, g)
        scale = torch.linalg.eigvalsh(G).clamp_min(0).view(-1, 1) * torch.linalg.eigvalsh(A).clamp_min(0).view(1, -1)
        expected = 3.0 * G @ delta @ A / scale.mean()
    assert torch.allclose(autograd, expected, atol=1e-8)

    # the proximal step lands where (θ − θ_step)/lr + ∇penalty(θ) = 0, and never moves away from θ⁰
    lr = 0.5
    before = layer_matrix(layer)
    reg.after_step(lr)
    after = layer_matrix(layer)
    layer.zero_grad()
    reg.penalty().backward()
    stationarity = (after - before) / lr + torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], 1)
    assert torch.allclose(stationarity, torch.zeros_like(stationarity), atol=1e-8)
    assert (after - reg.anchor[""]).norm() <= (before - reg.anchor[""]).norm() + 1e-12


def test_regulariser_in_natural_gradient_metric_is_a_stationary_convex_pull(linear_problem):
    layer, x, y = linear_problem
    layers = {"": layer}
    stats = layer_statistics(layer, layers, torch.utils.data.TensorDataset(x, y), device="cpu")
    natural = NaturalGradient(layers, damping=1e-3)
    natural.observe(layer(x), y, step=0)
    reg = FisherRegulariser(layers, stats, strength=5.0).use_metric(natural)
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    lr = 0.2
    state = natural.states[""]
    rotate = lambda m: state.q_g.T @ m @ state.q_a  # noqa: E731
    before = rotate(layer_matrix(layer) - reg.anchor[""])
    reg.after_step(lr)
    after = rotate(layer_matrix(layer) - reg.anchor[""])
    # optimality of  ‖θ − θ'‖²_{S+λ} / (2 lr) + (η/2) ‖θ − θ⁰‖²_{S_reg}  in the eigenbasis
    residual = (state.scales + state.damping) * (after - before) / lr + 5.0 * reg.anchor_scales("", state) * after
    assert torch.allclose(residual, torch.zeros_like(residual), atol=1e-8)
    assert torch.all(after.abs() <= before.abs() + 1e-12)
    natural.close()
