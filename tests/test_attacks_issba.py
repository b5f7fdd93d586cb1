"""Tests for ngfkit.attacks.issba: the steganographic, sample-specific ISSBA trigger. Tiny
networks, tiny data, fixed seeds."""
from __future__ import annotations

import json

import pytest
import torch

from ngfkit.attacks import Attack, TriggerContext, create_attack
from ngfkit.models import smallcnn
from errors_helper import one_line_error
from image_helpers import rand_images, uint8_dataset

SHAPES = [(1, 28, 28), (3, 32, 32)]
SHAPE_IDS = ["1x28x28", "3x32x32"]
TINY = {"steps": 4, "batch_size": 8, "width": 4, "bits": 8}


def tiny_context(shape, seed: int = 0) -> TriggerContext:
    c = shape[0]

    def make_model():
        return smallcnn(10, c, mean=[0.5] * c, std=[0.5] * c, width=4, hidden=16)

    return TriggerContext(train=uint8_dataset(24, shape), make_model=make_model, reference_model=make_model,
                          progress=False, seed=seed)


def fitted(shape, seed: int = 0, **params) -> Attack:
    attack = create_attack("issba", shape, 10, seed=seed, **{**TINY, **params})
    attack.fit_trigger(tiny_context(shape, seed=seed))
    return attack



@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_apply_keeps_shape_range_and_input(shape) -> None:
    attack = create_attack("issba", shape, 10)
    x = rand_images(5, shape)
    before = x.clone()
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(x, before)
    assert torch.equal(out, attack.apply(x))
    assert (out - x).abs().max() > 1e-3


@pytest.mark.parametrize("eps", [0.02, 0.1])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_residual_is_bounded_by_eps(shape, eps: float) -> None:
    attack = create_attack("issba", shape, 10, eps=eps, seed=1)
    x = rand_images(6, shape, seed=2)
    assert (attack.apply(x) - x).abs().max() <= eps + 1e-6
    # a saturated encoder reaches the bound but never passes it
    attack.trigger = {k: v if k == "code" else v * 50 for k, v in attack.trigger.items()}
    inner = 0.3 + 0.4 * x
    change = (attack.apply(inner) - inner).abs()
    assert eps - 1e-4 <= change.max() <= eps + 1e-6
    for extreme in (torch.zeros(1, *shape), torch.ones(1, *shape)):
        out = attack.apply(extreme)
        assert 0.0 <= out.min() and out.max() <= 1.0 and (out - extreme).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_residual_is_sample_specific(shape) -> None:
    for attack in (create_attack("issba", shape, 10, seed=3), fitted(shape, seed=3)):
        x = 0.3 + 0.4 * rand_images(4, shape, seed=4)  # no clamping: the change is the residual
        residual = attack.apply(x) - x
        for i in range(1, 4):
            assert (residual[0] - residual[i]).abs().max() > 1e-3
        # the same image gets the same residual wherever it is in the batch
        assert torch.allclose(attack.apply(x.flip(0)), attack.apply(x).flip(0), atol=1e-6)


def test_residual_depends_on_the_code() -> None:
    attack = create_attack("issba", (1, 28, 28), 10, seed=5)
    x = rand_images(3, (1, 28, 28), seed=6)
    before = attack.apply(x)
    attack.trigger = {**attack.trigger, "code": 1 - attack.trigger["code"]}
    assert (attack.apply(x) - before).abs().max() > 1e-3


def test_code_is_a_seeded_bit_string() -> None:
    a = create_attack("issba", (1, 28, 28), 10, seed=7)
    b = create_attack("issba", (1, 28, 28), 10, seed=7)
    c = create_attack("issba", (1, 28, 28), 10, seed=8)
    code = a.trigger["code"]
    assert code.shape == (32,) and set(code.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(code, b.trigger["code"]) and not torch.equal(code, c.trigger["code"])
    assert create_attack("issba", (1, 28, 28), 10, bits=12).trigger["code"].shape == (12,)


def test_trigger_holds_the_code_and_the_encoder_only() -> None:
    attack = fitted((1, 28, 28))
    assert "code" in attack.trigger
    assert all(k == "code" or k.startswith("encoder.") for k in attack.trigger)
    assert 5_000 < sum(v.numel() for v in create_attack("issba", (3, 32, 32), 10).trigger.values()) < 100_000


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fit_trigger_changes_the_encoder_reproducibly(shape) -> None:
    initial = create_attack("issba", shape, 10, **TINY)
    first, second = fitted(shape), fitted(shape)
    assert set(first.trigger) == set(initial.trigger)
    for key, value in initial.trigger.items():
        assert first.trigger[key].shape == value.shape and first.trigger[key].dtype == torch.float32
        assert torch.equal(first.trigger[key], second.trigger[key]), key
        assert torch.isfinite(first.trigger[key]).all(), key
    assert torch.equal(first.trigger["code"], initial.trigger["code"])  # the attacker's code is fixed
    assert not torch.equal(first.trigger["encoder.net.out.weight"], initial.trigger["encoder.net.out.weight"])
    x = rand_images(3, shape)
    assert not torch.equal(first.apply(x), initial.apply(x))
    assert not torch.equal(fitted(shape, seed=1).apply(x), first.apply(x))


def test_residual_penalty_shrinks_the_residual() -> None:
    x = rand_images(8, (1, 28, 28), seed=9)
    loose = fitted((1, 28, 28), steps=15, lambda_residual=0.0)
    tight = fitted((1, 28, 28), steps=15, lambda_residual=100.0)
    assert (tight.apply(x) - x).abs().mean() < 0.5 * (loose.apply(x) - x).abs().mean()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_from_state_with_the_fitted_trigger_gives_the_same_apply(shape) -> None:
    attack = fitted(shape, seed=5, target=4)
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    assert type(rebuilt) is type(attack) and rebuilt.state() == attack.state()
    x = rand_images(4, shape, seed=6)
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    assert not torch.equal(Attack.from_state(state).apply(x), attack.apply(x))  # the unfitted encoder


def test_poisoned_dataset_relabels_the_seeded_indices() -> None:
    clean = uint8_dataset(100, (1, 28, 28))
    attack = create_attack("issba", (1, 28, 28), 10, target=6, poison_rate=0.2, seed=2)
    poisoned = attack.poison(clean)
    again = create_attack("issba", (1, 28, 28), 10, target=6, poison_rate=0.2, seed=2).poison(clean)
    assert torch.equal(poisoned.indices, again.indices) and len(poisoned.indices) == 20
    assert attack.cover_fraction() == 0.0 and not poisoned.covered.any()
    x, y = poisoned.get_batch(torch.arange(100))
    x_clean, y_clean = clean.get_batch(torch.arange(100))
    p = poisoned.poisoned
    assert (y[p] == 6).all() and (y_clean[p] != 6).all() and torch.equal(y[~p], y_clean[~p])
    assert torch.equal(x[p], attack.apply(x_clean[p])) and torch.equal(x[~p], x_clean[~p])


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 32, 34)])
def test_image_sizes_not_divisible_by_4(shape) -> None:
    msg = one_line_error(create_attack, "issba", shape, 10)
    assert f"{shape[1]}x{shape[2]}" in msg and "divisible by 4" in msg


@pytest.mark.parametrize("params,word", [
    ({"eps": 0.0}, "eps"), ({"eps": 1.5}, "eps"), ({"bits": 0}, "bits"), ({"bits": 2.5}, "bits"),
    ({"steps": -1}, "steps"), ({"lambda_residual": -0.1}, "lambda_residual"), ({"width": 0}, "width"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_parameters(params: dict, word: str) -> None:
    assert word in one_line_error(create_attack, "issba", (1, 28, 28), 10, **params)


def test_apply_with_the_wrong_image_shape() -> None:
    attack = create_attack("issba", (3, 32, 32), 10)
    msg = one_line_error(attack.apply, torch.rand(2, 1, 28, 28))
    assert "(3, 32, 32)" in msg and "(1, 28, 28)" in msg
