"""Tests for the WaNet attack (ngfkit.attacks.warp): the warping grid, the warp itself, noise-mode
cover images, the poisoned dataset, rebuilding from the saved state, and errors."""
from __future__ import annotations

import json

import pytest
import torch

from ngfkit.attacks import Attack, create_attack
from ngfkit.attacks.warp import _identity_grid, _warp
from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset
from ngfkit.errors import NgfkitError
from image_helpers import rand_images

SHAPES = [(1, 28, 28), (3, 32, 32)]
IDS = ["1x28x28", "3x32x32"]


def smooth_images(n: int, shape, seed: int = 0) -> torch.Tensor:
    """Random images without pixel-level noise, so that sub-pixel warps change them smoothly."""
    coarse = rand_images(n, (shape[0], 4, 4), seed)
    return torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=True)


def test_identity_grid_reproduces_the_image() -> None:
    x = rand_images(2, (3, 9, 13))
    assert torch.allclose(_warp(x, _identity_grid(9, 13)), x, atol=1e-5)


def test_grid_coordinates_are_x_then_y() -> None:
    x = rand_images(1, (1, 8, 10))
    grid = _identity_grid(8, 10).clone()
    grid[..., 0] += 2 / 9  # one pixel to the right in x: the output shows the next column
    out = _warp(x, grid)
    assert torch.allclose(out[..., :, :-1], x[..., :, 1:], atol=1e-5)
    assert torch.all(out[..., :, -1] == 0)  # sampled outside the image


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_wanet_warps_every_image_the_same_way(shape) -> None:
    c, h, w = shape
    attack = create_attack("wanet", shape, 10, seed=3)
    grid = attack.trigger["grid"]
    assert grid.shape == (h, w, 2) and grid.abs().max() <= 1.0
    # a small warp: on average a fraction of a pixel, at most a few pixels
    shift_pixels = (grid - _identity_grid(h, w)).abs() * (h - 1) / 2
    assert 0.05 < shift_pixels.mean() < 1.0 and shift_pixels.max() < 3.0

    x = smooth_images(4, shape, seed=1)
    before = x.clone()
    out = attack.apply(x)
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, attack.apply(x))  # deterministic
    assert 0.0 < (out - x).abs().mean() < 0.1  # changed, but only slightly
    # one image alone is warped exactly as inside the batch
    assert torch.allclose(attack.apply(x[2:3]), out[2:3], atol=1e-6)


def test_wanet_strength_scales_the_offsets_linearly() -> None:
    weak = create_attack("wanet", (1, 28, 28), 10, s=0.5, seed=2).trigger["grid"]
    strong = create_attack("wanet", (1, 28, 28), 10, s=1.0, seed=2).trigger["grid"]
    identity = _identity_grid(28, 28)
    inside = (strong.abs() < 1) & (weak.abs() < 1)  # not clamped at the border
    assert inside.float().mean() > 0.8
    assert torch.allclose((strong - identity)[inside], 2 * (weak - identity)[inside], atol=1e-6)


def test_wanet_seed_and_k_change_the_warp() -> None:
    a = create_attack("wanet", (1, 28, 28), 10, seed=1).trigger["grid"]
    assert torch.equal(a, create_attack("wanet", (1, 28, 28), 10, seed=1).trigger["grid"])
    assert not torch.allclose(a, create_attack("wanet", (1, 28, 28), 10, seed=2).trigger["grid"])
    assert not torch.allclose(a, create_attack("wanet", (1, 28, 28), 10, seed=1, k=8).trigger["grid"])


def test_wanet_largest_k_fits() -> None:
    attack = create_attack("wanet", (1, 28, 28), 10, k=28)
    assert attack.trigger["grid"].shape == (28, 28, 2)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_wanet_noise_mode_jitters_the_warp(shape) -> None:
    attack = create_attack("wanet", shape, 10, poison_rate=0.1, cross_ratio=2, seed=0)
    assert attack.cover_fraction() == pytest.approx(0.2)
    x = smooth_images(6, shape, seed=4)
    torch.manual_seed(0)
    noisy = attack.apply_cover(x, torch.zeros(6, dtype=torch.long))
    assert noisy.shape == x.shape and 0.0 <= noisy.min() and noisy.max() <= 1.0
    warped = attack.apply(x)
    # each image gets its own noise, of at most half a pixel: close to the trigger, not equal
    assert not torch.allclose(noisy, warped, atol=1e-4)
    assert (noisy - warped).abs().max() < 0.25
    assert not torch.allclose(noisy[0], noisy[1])


@pytest.mark.parametrize("mode", ["all-to-one", "all-to-all"])
def test_wanet_poisoned_dataset(mode) -> None:
    labels = torch.arange(200) % 10
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    clean = ImageTensorDataset(images, labels, FASHION_MNIST)
    attack = create_attack("wanet", (1, 28, 28), 10, target=3, poison_rate=0.1, mode=mode, seed=5)
    poisoned = attack.poison(clean)
    again = create_attack("wanet", (1, 28, 28), 10, target=3, poison_rate=0.1, mode=mode, seed=5).poison(clean)
    assert torch.equal(poisoned.poisoned, again.poisoned) and torch.equal(poisoned.covered, again.covered)
    other = create_attack("wanet", (1, 28, 28), 10, target=3, poison_rate=0.1, mode=mode, seed=6).poison(clean)
    assert not torch.equal(poisoned.covered, other.covered)
    assert poisoned.poisoned.sum() == 20 and poisoned.covered.sum() == 40
    assert not (poisoned.poisoned & poisoned.covered).any()

    x, y = poisoned.get_batch(torch.arange(200))
    x_clean, _ = clean.get_batch(torch.arange(200))
    bad, cover = poisoned.poisoned, poisoned.covered
    expected = (labels[bad] + 1) % 10 if mode == "all-to-all" else torch.full((20,), 3)
    assert torch.equal(y[bad], expected)
    assert torch.equal(y[~bad], labels[~bad])  # noise images keep their labels
    assert torch.equal(x[bad], attack.apply(x_clean[bad]))
    assert not torch.equal(x[cover], x_clean[cover])
    rest = ~bad & ~cover
    assert torch.equal(x[rest], x_clean[rest])


def test_wanet_state_round_trip_uses_the_saved_grid() -> None:
    attack = create_attack("wanet", (3, 32, 32), 10, target=2, seed=9, k=8, s=0.75, cross_ratio=1.0)
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    x = rand_images(3, (3, 32, 32))
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    assert rebuilt.state() == attack.state()
    labels = torch.arange(300) % 10
    assert torch.equal(rebuilt.poison_indices(labels), attack.poison_indices(labels))
    assert torch.equal(rebuilt.cover_indices(300, attack.poison_indices(labels)),
                       attack.cover_indices(300, attack.poison_indices(labels)))
    # apply reads the saved grid, not one rebuilt from the seed
    replaced = Attack.from_state(state, {"grid": _identity_grid(32, 32)})
    assert torch.allclose(replaced.apply(x), x, atol=1e-5)


def test_wanet_poison_on_cifar_shaped_dataset() -> None:
    labels = torch.arange(50) % 10
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    poisoned = create_attack("wanet", (3, 32, 32), 10, poison_rate=0.2).poison(ImageTensorDataset(images, labels, CIFAR10))
    x, y = poisoned.get_batch(torch.arange(50))
    assert x.shape == (50, 3, 32, 32) and (y[poisoned.poisoned] == 0).all()


@pytest.mark.parametrize("params,words", [
    ({"k": 1}, ["k", "2..28"]), ({"k": 29}, ["k", "2..28"]), ({"k": 2.5}, ["k"]),
    ({"s": 0}, ["s"]), ({"s": -1}, ["s"]), ({"cross_ratio": -1}, ["cross_ratio"]),
    ({"cross_ratio": 9}, ["cross_ratio", "poison rate"]),
])
def test_wanet_bad_parameters(params, words) -> None:
    with pytest.raises(NgfkitError) as err:
        create_attack("wanet", (1, 28, 28), 10, **params)
    msg = str(err.value)
    assert "\n" not in msg and all(word in msg for word in words)


def test_wanet_image_too_small_for_k() -> None:
    with pytest.raises(NgfkitError, match="2..3"):
        create_attack("wanet", (1, 3, 3), 10)  # k = 4 control points do not fit 3x3


def test_wanet_wrong_image_shape() -> None:
    attack = create_attack("wanet", (1, 28, 28), 10)
    with pytest.raises(NgfkitError, match=r"\(1, 28, 28\)"):
        attack.apply(torch.rand(2, 3, 32, 32))
