"""The attack gallery figure: one row per attack, clean | triggered | amplified residual."""
from __future__ import annotations

import pytest
import torch

from ngfkit.attacks import create_attack
from ngfkit.errors import NgfkitError
from ngfkit.viz.explorer import amplified_residual
from ngfkit.viz.plots import attack_gallery


def test_amplified_residual_maps_no_change_to_mid_grey_and_the_largest_change_to_the_range() -> None:
    clean = torch.full((1, 4, 4), 0.5)
    triggered = clean.clone()
    triggered[0, 0, 0] = 0.6
    triggered[0, 1, 1] = 0.45
    residual, gain = amplified_residual(clean, triggered)
    assert gain == pytest.approx(5.0)
    assert residual[0, 0, 0] == pytest.approx(1.0) and residual[0, 1, 1] == pytest.approx(0.25)
    assert residual[0, 2, 2] == 0.5


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_gallery_has_three_images_per_attack(shape) -> None:
    attacks = [create_attack(name, shape, 10) for name in ("badnets", "blend")]
    images = torch.rand(10, *shape, generator=torch.Generator().manual_seed(0))
    fig = attack_gallery(attacks, images, torch.arange(10))
    assert len(fig.data) == 6 and all(trace.type == "image" for trace in fig.data)
    assert fig.data[0].z.shape == (shape[1], shape[2], 3)
    # the clean image is the first one the attack targets: class 1 (class 0 is the target)
    assert torch.equal(torch.as_tensor(fig.data[0].z[..., 0]), (images[1, 0] * 255).round().to(torch.uint8))
    assert [a.text for a in fig.layout.annotations][:3] == ["clean", "triggered", "residual (amplified)"]


def test_gallery_errors() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10)
    with pytest.raises(NgfkitError, match="at least one attack"):
        attack_gallery([], torch.rand(2, 1, 28, 28), torch.arange(2))
    with pytest.raises(NgfkitError, match="none of the 2 images"):
        attack_gallery([attack], torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
