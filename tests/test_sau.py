"""SAU (shared adversarial unlearning) on a user's tiny CNN: the shared PGD's bounds, the AMSGrad
step through the one loop, what the shared term changes, seeding, the step path and one-line errors."""
import copy
import functools

import pytest
import torch
from defence_helpers import state
from errors_helper import one_line_error
from tiny_cnn import TinyCNN, changed, tiny_data, tiny_model
from torch import nn

import ngfkit.defences.sau  # noqa: F401  (registers the defence)
from ngfkit.defences import DEFENCES, purify
from ngfkit.defences.sau import SAUConfig, SharedAdversarialUnlearning, shared_adversarial_risk, shared_pgd
from ngfkit.errors import NgfkitError
from ngfkit.train import TrainConfig, train_model

CPU = torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _trained():
    model = tiny_model()
    train_model(model, tiny_data(), TrainConfig(steps=30, lr=0.1, batch_size=8), progress=False)
    return model


def trained_model():
    """The tiny CNN after a short fit, so its answers vary and a perturbation can flip them."""
    return copy.deepcopy(_trained())


def run(model=None, data=None, **options):
    options = {"steps": 3, "batch_size": 8, "lr": 0.01, **options}
    return purify(model or trained_model(), data or tiny_data(), "sau", device="cpu", progress=False, **options)


def test_returns_the_same_architecture_and_leaves_the_input_alone():
    model = tiny_model()
    original = state(model)
    purified, history = run(model)
    assert type(purified) is TinyCNN and not purified.training
    assert {k: v.shape for k, v in purified.state_dict().items()} == {k: v.shape for k, v in original.items()}
    assert changed(original, state(model)) == set()
    assert {"conv.0.weight", "hidden.weight", "out.weight"} <= changed(original, state(purified))
    # eval mode throughout, as the authors: BatchNorm's statistics never move
    assert not {k for k in changed(original, state(purified)) if "running" in k or "tracked" in k}
    assert history["method"] == "sau" and history["seconds"] > 0 and history["config"]["steps"] == 3
    assert history["changed"] == "model" and history["setting"] == {"steps": 3}
    for key in ("loss", "shared_loss", "fooled_reference", "shared", "pgd_steps"):
        assert len(history[key]) == 3, key


@pytest.mark.parametrize("init", ["max", "min", "zero"])
def test_shared_pgd_respects_the_bound_and_the_pixel_range(init):
    model, reference = trained_model(), tiny_model(1)
    model.train()  # the attack must run in eval mode and move no statistic
    before = state(model)
    x, y = tiny_data(16).tensors
    x = x.clone()
    x[:4] = 1.0
    x[4:8] = 0.0  # saturated pixels: the bound alone would push them out of range
    delta, stats = shared_pgd(model, reference, x, y, bound=0.1, step_size=0.05, steps=4, init=init)
    assert delta.shape == x.shape and delta.abs().max() <= 0.1 + 1e-6
    assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6
    assert delta.abs().max() > 0 and 1 <= stats["pgd_steps"] <= 4
    assert model.training and changed(before, state(model)) == set()
    assert all(p.grad is None for p in [*model.parameters(), *reference.parameters()])


def test_shared_adversarial_risk_only_counts_images_that_fool_the_reference():
    y = torch.tensor([0, 1, 2])
    clean_ref = torch.tensor([0, 1, 2])
    adv_ref = torch.tensor([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])  # fools rows 0 and 2
    adv_logits = torch.zeros(3, 3, requires_grad=True)
    risk = shared_adversarial_risk(adv_logits, adv_ref, clean_ref, y)
    expected = -2 * torch.log(torch.tensor(1e-6 + 2 / 3)) * 2 / 2 / 3  # two fooled rows, p = 1/3 each
    assert torch.allclose(risk, expected, atol=1e-5)
    (grad,) = torch.autograd.grad(risk, adv_logits)
    assert grad[1].abs().sum() == 0 and grad[0, 1] > 0 and grad[2, 0] > 0  # pushes p(ŷ₀) down
    none = shared_adversarial_risk(adv_logits, adv_ref, adv_ref.argmax(1), y)
    assert none.item() == 0.0


def test_the_step_is_amsgrad():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    reference = w.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([reference], lr=0.01, amsgrad=True)
    hooks = SharedAdversarialUnlearning(nn.Identity(), nn.Identity(), [w], SAUConfig())
    for step in range(4):
        target = torch.randn(5)
        for p in (w, reference):
            p.grad = 2 * (p.detach() - target) * (step + 1)
        hooks.precondition(0.01)
        with torch.no_grad():
            w -= 0.01 * w.grad  # the loop's SGD step with momentum and weight decay 0
        adam.step()
    assert torch.allclose(w, reference, atol=1e-6)


def test_the_shared_term_changes_the_result():
    model = trained_model()
    with_term, history = run(model)
    without, _ = run(model, shared_weight=0.0)
    assert changed(state(with_term), state(without))
    assert any(value > 0 for value in history["shared_loss"])


def test_the_same_seed_gives_the_same_model():
    first, h1 = run(seed=1)
    again, h2 = run(seed=1)
    assert changed(state(first), state(again)) == set() and h1["loss"] == h2["loss"]
    other, _ = run(seed=2)
    assert changed(state(first), state(other))


def test_the_step_path_equals_single_runs():
    model, data = tiny_model(), tiny_data()
    defence = DEFENCES.get("sau")(batch_size=8, lr=0.01)
    path = dict(defence.path(model, data, (1, 3), device=CPU, progress=False))
    assert list(path) == [1, 3] and changed(state(path[1]), state(path[3]))
    alone, _ = run(model, data, steps=1)
    for key, value in state(alone).items():
        assert torch.allclose(value.float(), state(path[1])[key].float(), atol=1e-6), key


def test_train_mode_moves_statistics_with_clean_batches_only():
    model = tiny_model()
    purified, _ = run(model, train_mode=True, steps=2)
    moved = changed(state(model), state(purified))
    assert "conv.1.running_mean" in moved
    assert int(purified.conv[1].num_batches_tracked) == 2  # one update per step: the clean pass


@pytest.mark.parametrize("options, words", [
    ({"steps": 0}, "sau steps"),
    ({"bound": -0.1}, "sau bound"),
    ({"lr": float("nan")}, "sau lr"),
    ({"pgd_steps": 1.5}, "sau pgd_steps"),
    ({"shared_weight": -1}, "sau shared_weight"),
    ({"pgd_init": "random"}, "sau pgd_init"),
    ({"train_mode": "yes"}, "sau train_mode"),
    ({"epsilon": 0.2}, "no option 'epsilon'"),
])
def test_a_bad_option_is_one_line_error(options, words):
    message = one_line_error(purify, tiny_model(), tiny_data(), "sau", device="cpu", progress=False, **options)
    assert words in message


def test_defaults_are_the_authors_but_the_budget():
    cfg = DEFENCES.get("sau")().config
    assert (cfg.lr, cfg.bound, cfg.pgd_steps, cfg.pgd_step_size, cfg.pgd_init) == (1e-4, 0.2, 5, 0.2, "max")
    assert (cfg.adversarial_weight, cfg.agreement_weight) == (0.01, 1.0)
    assert (cfg.clean_weight, cfg.robust_weight, cfg.shared_weight) == (1.0, 0.0, 1.0)
    assert (cfg.train_mode, cfg.augment, cfg.steps, cfg.batch_size) == (False, False, 50, 128)
    grid = DEFENCES.get("sau").strength_grid
    assert list(grid) == sorted(grid) and cfg.steps in grid
    with pytest.raises(NgfkitError):
        DEFENCES.get("sau")(batch_size=0)
