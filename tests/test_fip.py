"""FIP (``fip``) and fast FIP (``fip-fast``) on a user's tiny CNN: the shared contracts, seeding,
the smoothness term as the authors' code computes it, fast FIP's fixed singular vectors and
one-line option errors."""
import pytest
import torch
import torch.nn.functional as F
from defence_helpers import state
from errors_helper import one_line_error
from tiny_cnn import TinyCNN, changed, tiny_data, tiny_model
from torch import nn

import ngfkit.defences.fip  # noqa: F401  (registers fip and fip-fast)
from ngfkit.defences import DEFENCES, purify
from ngfkit.defences.fip import FisherSmoothness
from ngfkit.errors import NgfkitError

METHODS = ("fip", "fip-fast")


def run(method, model=None, data=None, **options):
    options = {"steps": 4, "batch_size": 8, **options}
    return purify(model or tiny_model(), data or tiny_data(), method, device="cpu", progress=False, **options)


@pytest.mark.parametrize("method", METHODS)
def test_each_returns_the_same_architecture_and_the_shared_history(method):
    model = tiny_model()
    original = state(model)
    purified, history = run(method, model)
    assert type(purified) is TinyCNN
    assert list(purified.state_dict()) == list(original)  # same keys, same order: no parametrisation left
    assert {k: v.shape for k, v in purified.state_dict().items()} == {k: v.shape for k, v in original.items()}
    assert all(p.requires_grad for p in purified.parameters())
    assert changed(original, state(model)) == set()  # the input is left alone
    assert history["method"] == method and history["seconds"] > 0 and history["changed"] == "model"
    assert history["config"]["steps"] == 4 and len(history["loss"]) == 4
    assert history["setting"] == {"smoothness": 0.5}
    assert len(history["term"]) == 1  # steps 0..3, every 5th from the first


def test_fip_trains_every_parameter_and_batchnorm_statistics():
    model = tiny_model()
    purified, _ = run("fip", model, lr=0.05)
    assert {"conv.0.weight", "conv.0.bias", "conv.1.weight", "conv.1.running_mean", "hidden.weight",
            "out.weight", "out.bias"} <= changed(state(model), state(purified))


@pytest.mark.parametrize("method", METHODS)
def test_the_same_seed_gives_the_same_model_and_another_seed_another(method):
    first, h1 = run(method, seed=1)
    again, h2 = run(method, seed=1)
    assert changed(state(first), state(again)) == set() and h1["loss"] == h2["loss"]
    other, _ = run(method, seed=2)
    assert changed(state(first), state(other))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("term", ["code", "trace"])
def test_the_smoothness_term_changes_the_result(method, term):
    model = tiny_model()
    smooth, history = run(method, model, steps=5, every=2, term=term, smoothness=2.0, lr=0.05)
    plain, plain_history = run(method, model, steps=5, every=2, term=term, smoothness=0.0, lr=0.05)
    assert len(history["term"]) == 3 and plain_history["term"] == []  # steps 0, 2, 4 (0-based)
    assert changed(state(plain), state(smooth))
    assert history["loss"][0] != plain_history["loss"][0]  # the first step's loss includes η_F · T


def batch_and_hook(term, probes=20):
    model = tiny_model().train()
    x, y = tiny_data(12).tensors
    params = list(model.parameters())
    hook = FisherSmoothness(params, weight=0.5, term=term, every=5, probes=probes, seed=3,
                            device=torch.device("cpu"))
    return model, params, model(x), y, hook


def test_the_code_term_is_the_authors_loop_on_the_mean_probe():
    model, params, logits, y, hook = batch_and_hook("code")
    start = hook.generator.get_state()
    value = hook.value(logits, y)
    hook.generator.set_state(start)
    probe = hook.probe()  # the same draw: w ~ N(0, I/probes), the mean of the authors' probes
    assert abs(float(torch.cat([w.flatten() for w in probe]).std()) * 20 ** 0.5 - 1) < 0.1
    # get_trace_loss literally, with the label vector indexing both axes and the running sum
    # appended after every tensor; it is linear in the probes, so the mean probe gives its value
    likelihood = F.log_softmax(logits, dim=1)[:, y].mean()
    grads = torch.autograd.grad(likelihood, params, create_graph=True)
    trace, running = [], 0.0
    for g, w in zip(grads, probe):
        running = running + torch.sum(g * w)
        trace.append(running)
    assert torch.allclose(value, sum(trace), rtol=1e-5, atol=1e-7)
    # it is differentiable (the second backward pass moves the weights) and differs from gather
    assert torch.autograd.grad(value, params[0], retain_graph=True)[0].abs().sum() > 0
    own = F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).mean()
    assert not torch.allclose(likelihood, own)


def test_the_trace_term_is_the_squared_gradient_norm_of_the_log_likelihood():
    model, params, logits, y, hook = batch_and_hook("trace")
    value = hook.value(logits, y)
    grads = torch.autograd.grad(-F.cross_entropy(logits, y), params, retain_graph=True)
    assert torch.allclose(value, sum((g * g).sum() for g in grads), rtol=1e-5)


def weights(model):
    return {name: m.weight.detach().clone() for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_fip_fast_moves_only_singular_values():
    model = tiny_model()
    purified, _ = run("fip-fast", model, steps=6, lr=0.5, smoothness=1.0, every=2)
    before, after = weights(model), weights(purified)
    moved = 0
    for name, w0 in before.items():
        u, s, vh = torch.linalg.svd(w0.reshape(w0.shape[0], -1), full_matrices=False)
        w1 = after[name].reshape(w0.shape[0], -1)
        m = u.T @ w1 @ vh.T  # diagonal iff w1 keeps w0's singular vectors
        values = torch.diagonal(m)
        assert torch.allclose(m - torch.diag(values), torch.zeros_like(m), atol=1e-5), name
        assert torch.allclose(w1, (u * values) @ vh, atol=1e-5), name  # nothing outside their span
        assert (values >= -1e-6).all(), name  # relu(S + δ)
        moved += not torch.allclose(values, s, atol=1e-4)
    assert moved == len(before)  # every conv/linear layer's singular values moved
    keep = {k for k in state(model) if k.endswith("bias") or k in ("conv.1.weight",)}
    assert changed(state(model), state(purified)) & keep == set()  # biases, BatchNorm's affine
    assert "conv.1.running_mean" in changed(state(model), state(purified))  # train mode, as FIP


@pytest.mark.parametrize("method, options, words", [
    ("fip", {"smoothness": -1}, "fip smoothness"),
    ("fip", {"smoothness": float("nan")}, "fip smoothness"),
    ("fip", {"term": "hutchinson"}, "fip term"),
    ("fip", {"every": 0}, "fip every"),
    ("fip", {"steps": 1.5}, "fip steps"),
    ("fip", {"momentum": 1.0}, "fip momentum"),
    ("fip", {"lr": 0}, "fip lr"),
    ("fip-fast", {"probes": 0}, "fip-fast probes"),
    ("fip-fast", {"augment": "yes"}, "fip-fast augment"),
    ("fip", {"reg_F": 0.5}, "no option 'reg_F'"),
])
def test_a_bad_option_is_one_line_error(method, options, words):
    message = one_line_error(purify, tiny_model(), tiny_data(), method, device="cpu", progress=False, **options)
    assert words in message


def test_defaults_are_the_authors_but_the_budget_and_the_papers_term():
    for method in METHODS:
        cfg = DEFENCES.get(method)().config
        assert (cfg.smoothness, cfg.term, cfg.every, cfg.probes) == (0.5, "trace", 5, 20)
        assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.augment) == (0.005, 0.95, 0.0, True)
        assert (cfg.steps, cfg.batch_size) == (200, 64)  # the authors: 2,000 of 128
        defence = DEFENCES.get(method)
        grid = defence.strength_grid
        assert defence.strength == "smoothness" and list(grid) == sorted(grid) and 0.5 in grid
    with pytest.raises(NgfkitError):
        DEFENCES.get("fip")(term="Code")
