"""I-BAU (implicit hypergradient unlearning) and NAD (attention distillation): architecture and
input untouched, the hypergradient against finite differences, paths equal shorter runs, options."""
import copy

import pytest
import torch
from torch import nn

from defence_helpers import state, tiny_clean, tiny_model
from errors_helper import one_line_error
from ngfkit.defences import DEFENCES, purify
from ngfkit.defences.distillation import NAD, _record, _strip, attention_layers, attention_loss, attention_map
from ngfkit.defences.unlearning import IBAU, implicit_hypergradient, inner_loss, perturb

IBAU_FAST = dict(rounds=1, fixed_point_steps=2, batch_size=16, fixed_point_batch=8)
NAD_FAST = dict(steps=2, teacher_steps=2, batch_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """These passes are tiny: one thread is faster, and two spin-wait badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method, options", [("i-bau", IBAU_FAST), ("nad", NAD_FAST)])
def test_same_architecture_input_untouched_no_hooks(method, options):
    model, data = tiny_model(), tiny_clean(32)
    before = state(model)
    purified, history = purify(model, data, method, progress=False, **options)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and no_hooks(model)
    assert type(purified) is type(model) and no_hooks(purified)
    new = purified.state_dict()
    assert new.keys() == before.keys() and all(new[k].shape == before[k].shape for k in new)
    assert not same_state(model, purified)
    assert history["loss"] and all(torch.isfinite(torch.tensor(history["loss"])))


def test_ibau_keeps_batchnorm_statistics_and_bounds_delta():
    model, data = tiny_model(), tiny_clean(32)
    purified, history = purify(model, data, "i-bau", progress=False, radius=0.5, perturbation_lr=1e4,
                               **{**IBAU_FAST, "rounds": 2})
    for name, buffer in model.state_dict().items():
        if "running_" in name or "num_batches" in name:
            assert torch.equal(buffer, purified.state_dict()[name]), name
    assert len(history["round_loss"]) == 2 and len(history["loss"]) == 4
    assert all(n <= 0.5 + 1e-5 for n in history["perturbation_norm"])
    assert max(history["perturbation_norm"]) > 0.49  # so large a step lands on the bound


def toy_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x = 0.4 + 0.2 * torch.rand(6, 1, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pseudo = torch.tensor([1, 1, 0, 2, 2, 0])
    return model, x, y, pseudo


def test_hypergradient_with_no_fixed_point_steps_is_the_plain_gradient():
    model, x, y, pseudo = toy_problem()
    delta = 0.05 * torch.randn(1, 1, 2, 2, dtype=torch.float64)
    params = list(model.parameters())
    grads, _ = implicit_hypergradient(model, params, delta, x, y, pseudo, perturbed=6, steps=0,
                                      fixed_point_lr=0.1, reg=1e-3)
    plain = torch.autograd.grad(nn.functional.cross_entropy(model(perturb(x, delta)), y), params)
    assert all(torch.allclose(g, p) for g, p in zip(grads, plain))


def test_hypergradient_matches_finite_differences_through_the_fixed_point():
    """With a strong δ penalty Φ is a contraction, δ*(θ) its fixed point, and the K-step
    Neumann hypergradient must converge to d/dθ CE(f_θ(x + δ*(θ)), y)."""
    model, x, y, pseudo = toy_problem()
    reg, step = 5.0, 0.1

    @torch.enable_grad()
    def fixed_point(net):
        d = torch.zeros(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
        for _ in range(30):
            (g,) = torch.autograd.grad(inner_loss(net(perturb(x, d)), pseudo, d, reg), d)
            d = (d - step * g).detach().requires_grad_(True)
        return d.detach()

    def outer(net):
        with torch.no_grad():
            return nn.functional.cross_entropy(net(perturb(x, fixed_point(net))), y).item()

    params = list(model.parameters())
    grads, _ = implicit_hypergradient(model, params, fixed_point(model), x, y, pseudo, perturbed=6, steps=100,
                                      fixed_point_lr=step, reg=reg)
    plain, _ = implicit_hypergradient(model, params, fixed_point(model), x, y, pseudo, perturbed=6, steps=0,
                                      fixed_point_lr=step, reg=reg)
    eps = 1e-6
    for i, (p, g, g0) in enumerate(zip(params, grads, plain)):
        numeric = torch.zeros_like(p)
        for j in range(p.numel()):
            shifted = []
            for sign in (1, -1):
                net = copy.deepcopy(model)
                with torch.no_grad():
                    list(net.parameters())[i].view(-1)[j] += sign * eps
                shifted.append(outer(net))
            numeric.view(-1)[j] = (shifted[0] - shifted[1]) / (2 * eps)
        assert torch.allclose(g, numeric, atol=1e-7, rtol=1e-5)
        assert not torch.allclose(g0, numeric, atol=1e-5)  # the implicit term matters here


def test_hypergradient_equals_explicit_jacobians_with_phi_on_a_sub_batch():
    """v = Σ_{k<K} (Jᵀ)^k ∂L_out/∂δ and ∂L_out/∂θ + (∂Φ/∂θ)ᵀ v from full Jacobians (torch.func)."""
    from torch.func import functional_call, grad, jacrev

    model, x, y, pseudo = toy_problem()
    delta = 0.05 * torch.randn(1, 1, 2, 2, dtype=torch.float64)
    params = dict(model.named_parameters())
    reg, step, k, rows = 1e-3, 0.1, 3, 2

    def l_in(d, ps):
        return inner_loss(functional_call(model, ps, (perturb(x[:rows], d),)), pseudo[:rows], d, reg)

    def phi(d, ps):
        return d - step * grad(l_in)(d, ps)

    def l_out(d, ps):
        return nn.functional.cross_entropy(functional_call(model, ps, (perturb(x, d),)), y)

    g_delta, g_params = grad(l_out, argnums=(0, 1))(delta, params)
    jac = jacrev(phi, argnums=0)(delta, params).reshape(4, 4)
    mixed = jacrev(phi, argnums=1)(delta, params)
    v, term = torch.zeros(4, dtype=torch.float64), g_delta.reshape(4)
    for _ in range(k):
        v = jac.T @ v + term
    expected = [g_params[n] + (mixed[n].reshape(4, -1).T @ v).reshape(p.shape) for n, p in params.items()]
    got, _ = implicit_hypergradient(model, list(params.values()), delta, x, y, pseudo, perturbed=6, steps=k,
                                    fixed_point_lr=step, reg=reg, inner_rows=rows)
    assert all(torch.allclose(g, e, atol=1e-10) for g, e in zip(got, expected))


def test_hypergradient_with_a_share_of_the_batch_perturbed():
    model, x, y, pseudo = toy_problem()
    delta = 0.05 * torch.randn(1, 1, 2, 2, dtype=torch.float64)
    params = list(model.parameters())
    _, loss = implicit_hypergradient(model, params, delta, x, y, pseudo, perturbed=2, steps=1,
                                     fixed_point_lr=0.1, reg=1e-3)
    mixed = torch.cat([perturb(x[:2], delta), x[2:]])
    assert torch.allclose(loss, nn.functional.cross_entropy(model(mixed), y))


def test_ibau_path_snapshots_equal_shorter_runs():
    model, data = tiny_model(), tiny_clean(32)
    defence = IBAU(**{**IBAU_FAST, "fixed_point_steps": 1, "batch_size": 32})
    path = dict(defence.path(model, data, (1, 2), device=torch.device("cpu"), progress=False))
    assert sorted(path) == [1, 2] and not same_state(path[1], path[2])
    one, _ = defence.with_options(rounds=1).run(model, data, device=torch.device("cpu"), progress=False)
    assert same_state(path[1], one)


def test_attention_map_rows_have_unit_norm():
    features = torch.randn(3, 5, 4, 4)
    am = attention_map(features)
    assert am.shape == (3, 16) and torch.allclose(am.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(am[0], (features[0] ** 2).sum(0).flatten() / (features[0] ** 2).sum(0).norm(), atol=1e-5)
    assert torch.allclose(attention_map(7 * features), am, atol=1e-5)


def test_attention_loss_is_zero_when_student_is_teacher():
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    assert attention_loss(feats, feats, (500.0, 1000.0), 2.0).item() == 0.0
    other = [f + torch.randn_like(f) for f in feats]
    assert attention_loss(other, feats, (500.0, 1000.0), 2.0).item() > 0


def test_nad_extra_loss_is_zero_for_a_student_equal_to_its_teacher():
    model, data = tiny_model(), tiny_clean(8)
    names = attention_layers(model, data, 3, None, torch.device("cpu"))
    assert names == ("body.5", "body.9", "body.12")  # the ReLUs after smallcnn's last three convs
    teacher, student = copy.deepcopy(model), copy.deepcopy(model)
    defence = NAD(**NAD_FAST)
    t_maps, s_maps, record = {}, {}, []
    handles = _record({n: dict(teacher.named_modules())[n] for n in names}, t_maps)
    s_handles = _record({n: dict(student.named_modules())[n] for n in names}, s_maps)
    extra = defence._extra_loss(teacher, names, t_maps, s_maps, record)
    x, y = data.get_batch(torch.arange(8))
    logits = student(x)
    assert extra(x, logits, y).item() == 0.0 and record == [0.0]
    _strip(handles + s_handles, [teacher, student])
    assert no_hooks(teacher) and no_hooks(student)


def test_nad_finds_stage_ends_when_the_body_has_few_activation_modules():
    from ngfkit.data import dataset_info
    from ngfkit.models import build_model

    info = dataset_info("fashion-mnist")
    model = build_model("preact-resnet18", info.num_classes, info.image_shape, info.mean, info.std).eval()
    assert attention_layers(model, tiny_clean(2), 3, None, torch.device("cpu")) == ("body.4", "body.6", "body.10")


def test_nad_path_snapshots_equal_shorter_runs_and_carry_no_hooks():
    model, data = tiny_model(), tiny_clean(64)
    defence = NAD(**{**NAD_FAST, "steps": 3})
    path = dict(defence.path(model, data, (1, 3), device=torch.device("cpu"), progress=False))
    assert sorted(path) == [1, 3] and all(no_hooks(m) for m in path.values())
    one, history = defence.with_options(steps=1).run(model, data, device=torch.device("cpu"), progress=False)
    assert same_state(path[1], one) and not same_state(path[1], path[3])
    assert len(history["attention_loss"]) == 1 and len(history["teacher_loss"]) == 2


def test_nad_explicit_layers():
    model, data = tiny_model(), tiny_clean(64)
    purified, history = purify(model, data, "nad", progress=False, layers=("body.2",), betas=(100.0,),
                               **NAD_FAST)
    assert history["layers"] == ["body.2"] and no_hooks(purified)


def test_registered():
    assert DEFENCES.get("i-bau") is IBAU and DEFENCES.get("nad") is NAD
    assert IBAU.strength == "rounds" and IBAU.strength_grid == (1, 2, 3, 5, 8) and NAD.strength == "steps"


@pytest.mark.parametrize("method, options, words", [
    ("i-bau", dict(rounds=0), "rounds"),
    ("i-bau", dict(rounds=1.5), "rounds"),
    ("i-bau", dict(fixed_point_steps=-1), "fixed_point_steps"),
    ("i-bau", dict(lr=0), "lr"),
    ("i-bau", dict(share=0), "share"),
    ("i-bau", dict(radius=-1.0), "radius"),
    ("i-bau", dict(fixed_point_batch=0), "fixed_point_batch"),
    ("i-bau", dict(bogus=1), "bogus"),
    ("nad", dict(betas=(500.0, -1.0, 1000.0)), "betas"),
    ("nad", dict(layers=("body.2",)), "one beta per layer"),
    ("nad", dict(layers=("body.2", "body.nope", "body.5")), "body.nope"),
    ("nad", dict(layers=("body.2", "head", "body.5")), "2-D outputs"),
    ("nad", dict(teacher_steps=0), "teacher_steps"),
    ("nad", dict(steps=0), "steps"),
    ("nad", dict(bogus=1), "bogus"),
])
def test_bad_options_are_one_line_errors(method, options, words):
    msg = one_line_error(purify, tiny_model(), tiny_clean(8), method, progress=False, **options)
    assert words in msg
