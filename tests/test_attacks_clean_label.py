"""Tests for the clean-label attacks: SIG (sinusoidal signal) and CLB (adversarial perturbation +
four-corner trigger)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ngfkit.attacks import Attack, TriggerContext, create_attack
from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset
from ngfkit.models import smallcnn
from errors_helper import one_line_error
from image_helpers import rand_images

SHAPES = [(1, 28, 28), (3, 32, 32)]
SHAPE_IDS = ["1x28x28", "3x32x32"]
INFOS = {(1, 28, 28): FASHION_MNIST, (3, 32, 32): CIFAR10}


def tiny_dataset(shape, n: int = 60, seed: int = 0) -> ImageTensorDataset:
    """``n`` random uint8 images, labels 0..9 in turn (so class 0 is a tenth of the set)."""
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return ImageTensorDataset(images, torch.arange(n) % 10, INFOS[shape])


def tiny_model(channels: int):
    torch.manual_seed(0)
    return smallcnn(10, channels, mean=[0.5] * channels, std=[0.5] * channels, width=4, hidden=16).eval()


def tiny_context(dataset, model, seed: int = 0) -> TriggerContext:
    return TriggerContext(train=dataset, make_model=lambda: tiny_model(dataset.info.image_shape[0]),
                          reference_model=lambda: model, progress=False, seed=seed)



# --- SIG -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sig_adds_a_horizontal_sinusoid(shape) -> None:
    c, h, w = shape
    attack = create_attack("sig", shape, 10, delta=0.1, frequency=6)
    x = torch.full((2, *shape), 0.5)
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected = 0.5 + 0.1 * torch.sin(2 * math.pi * 6 * torch.arange(w) / w)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)  # same in every row and channel


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sig_clips_and_stays_within_delta(shape) -> None:
    attack = create_attack("sig", shape, 10)
    delta = attack.params["delta"]
    for x in (rand_images(3, shape), torch.zeros(1, *shape), torch.ones(1, *shape)):
        before = x.clone()
        out = attack.apply(x)
        assert torch.equal(x, before)  # not modified in place
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert (out - x).abs().max() <= delta + 1e-6
    x = rand_images(3, shape) * 0.5 + 0.25  # no clipping: the full signal shows
    assert (attack.apply(x) - x).abs().max() > 0.9 * delta


def test_sig_frequency_sets_the_period() -> None:
    signal = create_attack("sig", (1, 28, 28), 10, frequency=7).trigger["signal"][0, 0]
    assert torch.allclose(signal[4:], signal[:-4], atol=1e-6)  # 7 cycles over 28 pixels: period 4
    assert not torch.allclose(signal[2:], signal[:-2], atol=1e-3)


def test_sig_is_clean_label_and_poisons_only_the_target_class() -> None:
    data = tiny_dataset((1, 28, 28), n=200)
    attack = create_attack("sig", (1, 28, 28), 10, target=3, poison_rate=0.05, seed=1)
    poisoned = attack.poison(data)
    assert len(poisoned.indices) == 10 and (data.targets[poisoned.indices] == 3).all()
    assert torch.equal(poisoned.indices, create_attack("sig", (1, 28, 28), 10, target=3, poison_rate=0.05,
                                                       seed=1).poison(data).indices)
    assert torch.equal(poisoned.targets, data.targets)  # labels never change
    x, y = poisoned.get_batch(torch.arange(200))
    x_clean, y_clean = data.get_batch(torch.arange(200))
    assert torch.equal(y, y_clean)
    hit = poisoned.poisoned
    assert torch.equal(x[hit], attack.apply(x_clean[hit])) and torch.equal(x[~hit], x_clean[~hit])


def test_sig_state_round_trip() -> None:
    attack = create_attack("sig", (3, 32, 32), 10, target=2, poison_rate=0.05, delta=0.2, frequency=3)
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    x = rand_images(4, (3, 32, 32))
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    assert rebuilt.state() == attack.state()


@pytest.mark.parametrize("params,word", [({"delta": 0}, "delta"), ({"delta": 1.5}, "delta"),
                                         ({"frequency": 0}, "frequency"), ({"frequency": 14}, "frequency"),
                                         ({"frequency": -2}, "frequency")])
def test_sig_bad_parameters(params, word) -> None:
    assert word in one_line_error(create_attack, "sig", (1, 28, 28), 10, **params)


@pytest.mark.parametrize("name", ["sig", "clb"])
def test_clean_label_attacks_are_all_to_one_only(name) -> None:
    assert "all-to-one" in one_line_error(create_attack, name, (1, 28, 28), 10, mode="all-to-all")


@pytest.mark.parametrize("name", ["sig", "clb"])
def test_poison_rate_above_the_target_share(name) -> None:
    labels = torch.arange(1000) % 10  # 100 images of class 0: at most rate 0.1
    attack = create_attack(name, (1, 28, 28), 10, poison_rate=0.15)
    msg = one_line_error(attack.poison_indices, labels)
    assert "--poison-rate" in msg and "at most 0.1" in msg and "100" in msg
    assert len(create_attack(name, (1, 28, 28), 10, poison_rate=0.1).poison_indices(labels)) == 100


# --- CLB -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_clb_stamps_a_checkerboard_in_each_corner(shape) -> None:
    c, h, w = shape
    attack = create_attack("clb", shape, 10)
    x = rand_images(2, shape) * 0.5 + 0.25
    out = attack.apply(x)
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    corners = [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(w - 3, w)),
               (slice(h - 3, h), slice(0, 3)), (slice(h - 3, h), slice(w - 3, w))]
    inside = torch.zeros(h, w, dtype=torch.bool)
    for rows, cols in corners:
        inside[rows, cols] = True
        board = out[:, :, rows, cols]
        assert torch.equal(board, board[:1, :1].expand_as(board))  # same on every image and channel
        board = board[0, 0]
        assert board.sum() == 5  # 3x3 checkerboard with white corners
        assert torch.all(board[:, 1:] != board[:, :-1]) and torch.all(board[1:] != board[:-1])
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert out[0, 0, 0, 0] == out[0, 0, h - 1, w - 1] == 1.0  # outer corner pixels are white


def test_clb_reduced_amplitude() -> None:
    attack = create_attack("clb", (1, 28, 28), 10, amplitude=0.1)
    x = torch.full((1, 1, 28, 28), 0.5)
    out = attack.apply(x)
    assert torch.allclose(out[0, 0, :3, :3], 0.5 + 0.1 * (2 * attack.trigger["pattern"][0, :3, :3] - 1))
    assert (out - x).abs().max() <= 0.1 + 1e-6


def test_clb_patch_size_changes_the_corners() -> None:
    attack = create_attack("clb", (1, 28, 28), 10, patch_size=5)
    assert attack.trigger["mask"].sum() == 4 * 25


def fitted_clb(shape, seed: int = 0, steps: int = 3, **params):
    data = tiny_dataset(shape, n=100)
    model = tiny_model(shape[0])
    attack = create_attack("clb", shape, 10, poison_rate=0.05, seed=seed, steps=steps, **params)
    attack.fit_trigger(tiny_context(data, model, seed))
    return attack, data, model


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_clb_fit_makes_bounded_perturbations_that_raise_the_loss(shape) -> None:
    attack, data, model = fitted_clb(shape, eps=8 / 255, step_size=2 / 255)
    state = attack.poison_state
    assert torch.equal(state["indices"], attack.poison_indices(data.targets))
    assert len(state["indices"]) == 5 and (data.targets[state["indices"]] == 0).all()
    delta = state["delta"].float()
    assert delta.shape == (5, *shape)
    assert delta.abs().max() <= 8 / 255 + 1e-3 and delta.abs().max() > 4 / 255
    x, y = data.get_batch(state["indices"])
    assert 0.0 <= (x + delta).min() and (x + delta).max() <= 1.0 + 1e-3
    with torch.no_grad():
        assert F.cross_entropy(model((x + delta).clamp(0, 1)), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())  # the reference model is left alone


def test_clb_fit_is_reproducible() -> None:
    first, _, _ = fitted_clb((1, 28, 28), seed=2)
    second, _, _ = fitted_clb((1, 28, 28), seed=2)
    for key in ("indices", "delta"):
        assert torch.equal(first.poison_state[key], second.poison_state[key])


def test_clb_poisoned_dataset_adds_perturbation_then_trigger() -> None:
    attack, data, _ = fitted_clb((3, 32, 32))
    poisoned = attack.poison(data)
    assert torch.equal(poisoned.indices, attack.poison_state["indices"])
    assert torch.equal(poisoned.targets, data.targets)
    order = torch.arange(100)
    x, y = poisoned.get_batch(order)
    x_clean, y_clean = data.get_batch(order)
    assert torch.equal(y, y_clean)
    hit = poisoned.poisoned
    expected = attack.apply((x_clean[hit] + attack.poison_state["delta"].float()).clamp(0, 1))
    assert torch.allclose(x[hit], expected, atol=1e-6)
    assert torch.equal(x[~hit], x_clean[~hit])
    # the test-time trigger has no perturbation: it differs from the training poison
    assert not torch.allclose(attack.apply(x_clean[hit]), x[hit])


def test_clb_poison_needs_fit_trigger() -> None:
    data = tiny_dataset((1, 28, 28), n=100)
    attack = create_attack("clb", (1, 28, 28), 10, poison_rate=0.05)
    msg = one_line_error(attack.poison(data).get_batch, torch.arange(100))
    assert "fit_trigger" in msg


def test_clb_poison_for_other_indices_is_an_error() -> None:
    attack, data, _ = fitted_clb((1, 28, 28))
    x, y = data.get_batch(torch.tensor([1, 2]))
    assert "other poisoned images" in one_line_error(attack.apply_poison, x, y, torch.tensor([1, 2]))


def test_clb_state_round_trip() -> None:
    attack = create_attack("clb", (3, 32, 32), 10, target=4, poison_rate=0.05, amplitude=0.5, patch_size=4)
    rebuilt = Attack.from_state(json.loads(json.dumps(attack.state())),
                                {k: v.clone() for k, v in attack.trigger.items()})
    x = rand_images(4, (3, 32, 32))
    assert torch.equal(rebuilt.apply(x), attack.apply(x))


@pytest.mark.parametrize("params,word", [({"eps": -0.1}, "eps"), ({"eps": 2}, "eps"), ({"steps": -1}, "steps"),
                                         ({"step_size": 0}, "step_size"), ({"amplitude": 0}, "amplitude"),
                                         ({"amplitude": 1.5}, "amplitude"), ({"patch_size": 15}, "patch_size"),
                                         ({"patch_size": 0}, "patch_size")])
def test_clb_bad_parameters(params, word) -> None:
    assert word in one_line_error(create_attack, "clb", (1, 28, 28), 10, **params)


def test_clb_trigger_must_fit_the_image() -> None:
    assert "patch_size" in one_line_error(create_attack, "clb", (1, 5, 5), 10)
    assert create_attack("clb", (1, 6, 6), 10).trigger["mask"].sum() == 36
