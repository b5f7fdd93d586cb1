"""Tests for the feature-space (style) backdoor (ngfkit.attacks.style): each part of the style
filter, the trigger invariants, the poisoned dataset, the saved state, and errors."""
from __future__ import annotations

import json

import pytest
import torch

from ngfkit.attacks import Attack, create_attack
from ngfkit.data import FASHION_MNIST, ImageTensorDataset
from ngfkit.errors import NgfkitError
from image_helpers import rand_images

SHAPES = [(1, 28, 28), (3, 32, 32)]
IDS = ["1x28x28", "3x32x32"]
#: every part of the filter switched off; tests switch on one at a time
PLAIN = {"gamma": 1.0, "lift": 0.0, "warmth": 0.0, "vignette": 0.0, "emboss": 0.0}


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_fba_styles_the_whole_image(shape) -> None:
    c, h, w = shape
    attack = create_attack("fba", shape, 10)
    assert attack.trigger["lut"].shape == (c, 256)
    assert attack.trigger["kernel"].shape == (1, 1, 3, 3)
    assert attack.trigger["vignette"].shape == (1, h, w)
    x = rand_images(4, shape, seed=1)
    before = x.clone()
    out = attack.apply(x)
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, attack.apply(x))
    assert torch.allclose(attack.apply(x[3:]), out[3:], atol=1e-6)
    # a global change, not a patch: most pixels move
    assert ((out - x).abs() > 0.01).float().mean() > 0.8
    for extreme in (torch.zeros(1, *shape), torch.ones(1, *shape)):
        styled = attack.apply(extreme)
        assert 0.0 <= styled.min() and styled.max() <= 1.0


def test_fba_tone_curve() -> None:
    x = rand_images(2, (1, 28, 28)) * 0.9 + 0.1  # away from 0, where x ** 0.5 is steep
    gamma = create_attack("fba", (1, 28, 28), 10, **{**PLAIN, "gamma": 0.5})
    assert torch.allclose(gamma.apply(x), x.sqrt(), atol=2e-3)
    lift = create_attack("fba", (1, 28, 28), 10, **{**PLAIN, "lift": 0.2})
    assert torch.allclose(lift.apply(x), 0.2 + 0.8 * x, atol=1e-5)
    assert torch.allclose(lift.apply(torch.zeros(1, 1, 28, 28)), torch.full((1, 1, 28, 28), 0.2))


def test_fba_vignette_darkens_the_borders() -> None:
    attack = create_attack("fba", (1, 29, 29), 10, **{**PLAIN, "vignette": 0.4})
    out = attack.apply(torch.ones(1, 1, 29, 29))[0, 0]
    assert out[14, 14] == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(0.6) and out[-1, -1] == pytest.approx(0.6)
    assert out[14, 0] == pytest.approx(0.8)
    assert out[14, 14] > out[14, 7] > out[14, 0]


def test_fba_emboss_adds_relief_along_edges_only() -> None:
    attack = create_attack("fba", (1, 16, 16), 10, **{**PLAIN, "emboss": 0.3})
    flat = torch.full((1, 1, 16, 16), 0.5)
    assert torch.allclose(attack.apply(flat), flat, atol=1e-6)  # nothing to emboss, borders included
    step = flat.clone()
    step[..., 8:] = 0.7  # a vertical edge
    out = attack.apply(step)
    changed = (out - step).abs() > 1e-6
    assert changed[..., 7:9].all() and not changed[..., :7].any() and not changed[..., 9:].any()


def test_fba_sunrise_warms_rgb_images() -> None:
    grey = torch.full((1, 3, 32, 32), 0.5)
    out = create_attack("fba", (3, 32, 32), 10, **{**PLAIN, "warmth": 0.5}).apply(grey)[0]
    red, green, blue = out.mean(dim=(1, 2))
    assert red > green > blue
    # warmth alone is not a grayscale filter
    with pytest.raises(NgfkitError, match="changes nothing"):
        create_attack("fba", (1, 28, 28), 10, **{**PLAIN, "warmth": 0.5})


def test_fba_poisoned_dataset() -> None:
    labels = torch.arange(60) % 10
    images = torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    clean = ImageTensorDataset(images, labels, FASHION_MNIST)
    attack = create_attack("fba", (1, 28, 28), 10, target=4, poison_rate=0.25, mode="all-to-all", seed=2)
    poisoned = attack.poison(clean)
    assert attack.cover_fraction() == 0 and not poisoned.covered.any()
    assert torch.equal(poisoned.poisoned, create_attack("fba", (1, 28, 28), 10, target=4, poison_rate=0.25,
                                                        mode="all-to-all", seed=2).poison(clean).poisoned)
    x, y = poisoned.get_batch(torch.arange(60))
    x_clean, _ = clean.get_batch(torch.arange(60))
    bad = poisoned.poisoned
    assert bad.sum() == 15
    assert torch.equal(y[bad], (labels[bad] + 1) % 10) and torch.equal(y[~bad], labels[~bad])
    assert torch.equal(x[bad], attack.apply(x_clean[bad])) and torch.equal(x[~bad], x_clean[~bad])


def test_fba_state_round_trip_uses_the_saved_tensors() -> None:
    attack = create_attack("fba", (3, 32, 32), 10, target=7, seed=1, gamma=0.8, vignette=0.3)
    state = json.loads(json.dumps(attack.state()))
    trigger = {k: v.clone() for k, v in attack.trigger.items()}
    x = rand_images(2, (3, 32, 32))
    rebuilt = Attack.from_state(state, trigger)
    assert torch.equal(rebuilt.apply(x), attack.apply(x)) and rebuilt.state() == attack.state()
    inverted = Attack.from_state(state, {**trigger, "lut": trigger["lut"].flip(1)})
    assert not torch.allclose(inverted.apply(x), attack.apply(x))


@pytest.mark.parametrize("params,word", [
    ({"gamma": 0}, "gamma"), ({"gamma": -1}, "gamma"), ({"lift": 1.5}, "lift"),
    ({"warmth": -0.1}, "warmth"), ({"vignette": 2}, "vignette"), ({"emboss": -1}, "emboss"),
    (PLAIN, "changes nothing"),
])
def test_fba_bad_parameters(params, word) -> None:
    with pytest.raises(NgfkitError) as err:
        create_attack("fba", (1, 28, 28), 10, **params)
    assert word in str(err.value) and "\n" not in str(err.value)


def test_fba_needs_grayscale_or_rgb() -> None:
    with pytest.raises(NgfkitError, match="4 channels"):
        create_attack("fba", (4, 32, 32), 10)


def test_fba_wrong_image_shape() -> None:
    attack = create_attack("fba", (1, 28, 28), 10)
    with pytest.raises(NgfkitError, match=r"\(1, 28, 28\)"):
        attack.apply(torch.rand(1, 3, 32, 32))
