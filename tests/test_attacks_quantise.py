"""Tests for BppAttack (ngfkit.attacks.quantise): Floyd–Steinberg dithering against a plain
raster-scan reference, the squeezing trigger, negative samples, the poisoned dataset, the saved
state, and errors."""
from __future__ import annotations

import json

import pytest
import torch

from ngfkit.attacks import Attack, create_attack
from ngfkit.attacks.quantise import floyd_steinberg
from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset
from ngfkit.errors import NgfkitError
from image_helpers import rand_images

SHAPES = [(1, 28, 28), (3, 32, 32)]
IDS = ["1x28x28", "3x32x32"]


def raster_floyd_steinberg(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The textbook algorithm, one pixel at a time in raster order."""
    top = levels - 1
    img = x.to(torch.float64) * top
    _, _, h, w = img.shape
    for row in range(h):
        for col in range(w):
            old = img[:, :, row, col].clone()
            new = old.round().clamp(0, top)
            error = old - new
            img[:, :, row, col] = new
            if row + 1 < h and col > 0:
                img[:, :, row + 1, col - 1] += error * 3 / 16
            if row + 1 < h:
                img[:, :, row + 1, col] += error * 5 / 16
            if row + 1 < h and col + 1 < w:
                img[:, :, row + 1, col + 1] += error * 1 / 16
            if col + 1 < w:
                img[:, :, row, col + 1] += error * 7 / 16
    return (img / top).to(x.dtype)


@pytest.mark.parametrize("levels", [2, 8, 32])
@pytest.mark.parametrize("shape", [(1, 6, 9), (3, 11, 5)])
def test_wavefront_dithering_equals_the_raster_scan(shape, levels) -> None:
    x = rand_images(3, shape, seed=levels)
    assert torch.equal(floyd_steinberg(x, levels), raster_floyd_steinberg(x, levels))


def test_dithering_keeps_the_local_mean() -> None:
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64).contiguous()
    out = floyd_steinberg(ramp, 2)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    # columns of a black-to-white ramp dithered to black and white: the share of white follows
    # the ramp (up to the error that leaks out at the edges)
    assert (out.mean(dim=2) - ramp.mean(dim=2)).abs().mean() < 0.05
    grey = floyd_steinberg(torch.full((1, 1, 16, 16), 0.5), 2)
    assert grey.mean() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("bits", [1, 3, 5])
def test_bpp_squeezes_to_the_colour_depth(shape, bits) -> None:
    attack = create_attack("bpp", shape, 10, bits=bits)
    assert attack.trigger == {}
    x = rand_images(4, shape, seed=bits)
    before = x.clone()
    out = attack.apply(x)
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    levels = out * (2 ** bits - 1)
    assert torch.allclose(levels, levels.round(), atol=1e-5)  # only 2**bits values per channel
    assert len(out.unique()) <= 2 ** bits
    assert torch.equal(out, attack.apply(x))
    assert torch.equal(attack.apply(x[1:2]), out[1:2])  # per image, not across the batch


def test_bpp_leaves_images_that_already_have_the_depth() -> None:
    attack = create_attack("bpp", (1, 28, 28), 10, bits=3)
    x = torch.randint(0, 8, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 7
    assert torch.allclose(attack.apply(x), x, atol=1e-6)
    black = torch.zeros(1, 1, 28, 28)  # Fashion-MNIST's background is exactly representable
    assert torch.equal(attack.apply(black), black)


def test_bpp_more_bits_change_less() -> None:
    x = rand_images(4, (3, 32, 32), seed=3)
    changes = [(create_attack("bpp", (3, 32, 32), 10, bits=b).apply(x) - x).abs().mean() for b in (2, 4, 6)]
    assert changes[0] > changes[1] > changes[2] > 0


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_bpp_negative_samples_carry_a_residual_that_does_not_fit(shape) -> None:
    attack = create_attack("bpp", shape, 10, bits=3, neg_ratio=1.0, poison_rate=0.1)
    assert attack.cover_fraction() == pytest.approx(0.1)
    x = rand_images(5, shape, seed=7) * 0.8 + 0.1
    negative = attack.apply_cover(x, torch.zeros(5, dtype=torch.long))
    assert negative.shape == x.shape and 0.0 <= negative.min() and negative.max() <= 1.0
    squeezed = attack.apply(x)
    # quantisation-sized noise, but not the image's own quantisation (so not on the palette)
    assert (negative - x).abs().mean() == pytest.approx((squeezed - x).abs().mean(), rel=0.3)
    assert (negative - squeezed).abs().mean() > 0.02
    levels = negative * 7
    assert not torch.allclose(levels, levels.round(), atol=1e-3)
    # a lone cover image gets the residual of itself turned around, still not its own
    lone = attack.apply_cover(x[:1], torch.zeros(1, dtype=torch.long))
    assert (lone - squeezed[:1]).abs().mean() > 0.02


@pytest.mark.parametrize("mode", ["all-to-one", "all-to-all"])
def test_bpp_poisoned_dataset(mode) -> None:
    labels = torch.arange(100) % 10
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    clean = ImageTensorDataset(images, labels, FASHION_MNIST)
    make = lambda seed: create_attack("bpp", (1, 28, 28), 10, target=1, poison_rate=0.2,  # noqa: E731
                                      neg_ratio=0.5, mode=mode, seed=seed)
    attack = make(4)
    poisoned = attack.poison(clean)
    again = make(4).poison(clean)
    assert torch.equal(poisoned.poisoned, again.poisoned) and torch.equal(poisoned.covered, again.covered)
    assert not torch.equal(poisoned.covered, make(5).poison(clean).covered)
    assert poisoned.poisoned.sum() == 20 and poisoned.covered.sum() == 10

    x, y = poisoned.get_batch(torch.arange(100))
    x_clean, _ = clean.get_batch(torch.arange(100))
    bad, cover = poisoned.poisoned, poisoned.covered
    expected = (labels[bad] + 1) % 10 if mode == "all-to-all" else torch.full((20,), 1)
    assert torch.equal(y[bad], expected) and torch.equal(y[~bad], labels[~bad])
    assert torch.equal(x[bad], attack.apply(x_clean[bad]))
    assert not torch.equal(x[cover], x_clean[cover])
    assert torch.equal(x[~bad & ~cover], x_clean[~bad & ~cover])


def test_bpp_state_round_trip() -> None:
    attack = create_attack("bpp", (3, 32, 32), 10, target=5, seed=3, bits=4, neg_ratio=0.5)
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, dict(attack.trigger))
    x = rand_images(2, (3, 32, 32))
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    assert rebuilt.state() == attack.state()
    assert rebuilt.params["bits"] == 4
    labels = torch.arange(200) % 10
    assert torch.equal(rebuilt.poison_indices(labels), attack.poison_indices(labels))


def test_bpp_on_a_cifar_shaped_dataset() -> None:
    labels = torch.arange(30) % 10
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    poisoned = create_attack("bpp", (3, 32, 32), 10, poison_rate=0.2).poison(ImageTensorDataset(images, labels, CIFAR10))
    x, y = poisoned.get_batch(torch.arange(30))
    assert x.shape == (30, 3, 32, 32) and (y[poisoned.poisoned] == 0).all()


@pytest.mark.parametrize("params,word", [
    ({"bits": 0}, "bits"), ({"bits": 8}, "bits"), ({"bits": 2.5}, "bits"),
    ({"neg_ratio": -0.1}, "neg_ratio"), ({"neg_ratio": 9}, "neg_ratio"),
])
def test_bpp_bad_parameters(params, word) -> None:
    with pytest.raises(NgfkitError) as err:
        create_attack("bpp", (1, 28, 28), 10, **params)
    assert word in str(err.value) and "\n" not in str(err.value)


def test_bpp_wrong_image_shape() -> None:
    attack = create_attack("bpp", (3, 32, 32), 10)
    with pytest.raises(NgfkitError, match=r"\(3, 32, 32\)"):
        attack.apply(torch.rand(1, 1, 28, 28))
