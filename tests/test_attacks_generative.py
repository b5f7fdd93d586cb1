"""Tests for the generator-based attacks of ngfkit.attacks.generative: the input-aware dynamic
backdoor (dynamic-one, dynamic-all) and LIRA. Tiny networks, tiny data, fixed seeds."""
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
NAMES = ["dynamic-one", "dynamic-all", "lira"]
#: tiny networks and step counts so that a fit takes a fraction of a second
TINY = {"dynamic-one": {"steps": 3, "mask_steps": 3, "batch_size": 8, "width": 4},
        "dynamic-all": {"steps": 3, "mask_steps": 3, "batch_size": 8, "width": 4},
        "lira": {"steps": 3, "batch_size": 8, "width": 4}}


def tiny_context(shape, seed: int = 0, n: int = 24) -> TriggerContext:
    c = shape[0]

    def make_model():
        return smallcnn(10, c, mean=[0.5] * c, std=[0.5] * c, width=4, hidden=16)

    def no_reference():
        raise AssertionError("these attacks train their own classifier")

    return TriggerContext(train=uint8_dataset(n, shape), make_model=make_model, reference_model=no_reference,
                          progress=False, seed=seed)


def fitted(name: str, shape, seed: int = 0, **params) -> Attack:
    attack = create_attack(name, shape, 10, seed=seed, **{**TINY[name], **params})
    attack.fit_trigger(tiny_context(shape, seed=seed))
    return attack



# --- the trigger, before and after fitting ----------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_apply_keeps_shape_range_and_input(name: str, shape) -> None:
    attack = create_attack(name, shape, 10)
    x = rand_images(5, shape)
    before = x.clone()
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(x, before)  # not modified in place
    assert torch.equal(out, attack.apply(x))  # deterministic
    assert (out - x).abs().max() > 1e-3  # it does something
    for extreme in (torch.zeros(2, *shape), torch.ones(2, *shape)):
        y = attack.apply(extreme)
        assert 0.0 <= y.min() and y.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_apply_in_double_precision(name: str) -> None:
    attack = create_attack(name, (1, 28, 28), 10)
    x = rand_images(2, (1, 28, 28)).double()
    out = attack.apply(x)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), attack.apply(x.float()), atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_dynamic_trigger_is_pattern_blended_through_a_mask(shape) -> None:
    c, h, w = shape
    attack = create_attack("dynamic-one", shape, 10, seed=3)
    x = rand_images(4, shape, seed=1)
    pattern, mask = attack._pattern(attack.trigger, x), attack._mask(attack.trigger, x)
    assert pattern.shape == (4, c, h, w) and mask.shape == (4, 1, h, w)
    assert 0.0 <= pattern.min() and pattern.max() <= 1.0 and 0.0 <= mask.min() and mask.max() <= 1.0
    assert torch.allclose(attack.apply(x), x * (1 - mask) + pattern * mask, atol=1e-6)
    # input-aware: each image gets its own pattern and mask
    assert (pattern[0] - pattern[1]).abs().max() > 1e-3 and (mask[0] - mask[1]).abs().max() > 1e-3


@pytest.mark.parametrize("eps", [0.05, 0.2])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_lira_respects_the_linf_bound(shape, eps: float) -> None:
    attack = create_attack("lira", shape, 10, eps=eps, seed=2)
    x = rand_images(6, shape, seed=4)
    assert (attack.apply(x) - x).abs().max() <= eps + 1e-6
    # saturate the generator: tanh hits +-1, so the bound is reached but never passed
    attack.trigger = {k: v * 50 for k, v in attack.trigger.items()}
    inner = 0.3 + 0.4 * x  # far enough from 0 and 1 that clamping plays no part
    change = (attack.apply(inner) - inner).abs()
    assert change.max() <= eps + 1e-6
    assert change.max() >= eps - 1e-4
    for extreme in (torch.zeros(1, *shape), torch.ones(1, *shape)):
        out = attack.apply(extreme)
        assert 0.0 <= out.min() and out.max() <= 1.0 and (out - extreme).abs().max() <= eps + 1e-6


def test_lira_bound_holds_after_fitting() -> None:
    attack = fitted("lira", (1, 28, 28), eps=0.03)
    x = rand_images(8, (1, 28, 28), seed=5)
    change = attack.apply(x) - x
    assert change.abs().max() <= 0.03 + 1e-6
    assert (change[0] - change[1]).abs().max() > 1e-4  # sample-specific


# --- cross-trigger (cover) samples of the dynamic backdoor --------------------------------------


def test_dynamic_cover_uses_the_trigger_of_another_image() -> None:
    attack = create_attack("dynamic-one", (1, 28, 28), 10, seed=1)
    x = rand_images(2, (1, 28, 28), seed=2)
    out = attack.apply_cover(x, torch.tensor([3, 4]))
    partners = x.flip(0)  # with two images each one's partner is the other
    pattern, mask = attack._pattern(attack.trigger, partners), attack._mask(attack.trigger, partners)
    assert torch.allclose(out, x * (1 - mask) + pattern * mask, atol=1e-6)
    assert not torch.allclose(out, attack.apply(x), atol=1e-3)


def test_dynamic_cover_never_pairs_an_image_with_itself() -> None:
    attack = create_attack("dynamic-all", (1, 28, 28), 10, seed=1)
    x = rand_images(7, (1, 28, 28), seed=3)
    own = attack.apply(x)
    for seed in range(5):
        torch.manual_seed(seed)
        cover = attack.apply_cover(x, torch.zeros(7, dtype=torch.long))
        assert ((cover - own).flatten(1).abs().max(1).values > 1e-4).all()
        assert 0.0 <= cover.min() and cover.max() <= 1.0
    single = attack.apply_cover(x[:1], torch.zeros(1, dtype=torch.long))
    assert single.shape == (1, 1, 28, 28) and (single - own[:1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["dynamic-one", "dynamic-all"])
def test_dynamic_poisoned_dataset_relabels_poison_and_keeps_cover_labels(name: str) -> None:
    clean = uint8_dataset(200, (1, 28, 28))
    attack = create_attack(name, (1, 28, 28), 10, target=2, poison_rate=0.1, seed=4, cross_ratio=0.2)
    assert attack.cover_fraction() == 0.2
    poisoned = attack.poison(clean)
    again = create_attack(name, (1, 28, 28), 10, target=2, poison_rate=0.1, seed=4, cross_ratio=0.2).poison(clean)
    assert torch.equal(poisoned.poisoned, again.poisoned) and torch.equal(poisoned.covered, again.covered)
    assert int(poisoned.poisoned.sum()) == 20 and int(poisoned.covered.sum()) == 40
    assert not (poisoned.poisoned & poisoned.covered).any()

    x, y = poisoned.get_batch(torch.arange(200))
    x_clean, y_clean = clean.get_batch(torch.arange(200))
    p, cv = poisoned.poisoned, poisoned.covered
    expected = (y_clean[p] + 1) % 10 if name == "dynamic-all" else torch.full_like(y_clean[p], 2)
    assert torch.equal(y[p], expected)
    assert torch.equal(y[~p], y_clean[~p])  # cross-triggered images keep their labels
    assert torch.equal(x[p], attack.apply(x_clean[p]))
    assert (x[cv] - x_clean[cv]).flatten(1).abs().max(1).values.min() > 0  # every cover image changed
    clean_rows = ~(p | cv)
    assert torch.equal(x[clean_rows], x_clean[clean_rows])


def test_dynamic_modes() -> None:
    assert create_attack("dynamic-one", (1, 28, 28), 10).mode == "all-to-one"
    all_to_all = create_attack("dynamic-all", (1, 28, 28), 10)
    assert all_to_all.mode == "all-to-all"
    assert all_to_all.target_labels(torch.arange(10)).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert "separate attacks" in one_line_error(create_attack, "dynamic-one", (1, 28, 28), 10, mode="all-to-all")
    one_line_error(create_attack, "dynamic-all", (1, 28, 28), 10, mode="all-to-one")


# --- fitting --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_fit_trigger_changes_the_trigger_reproducibly(name: str, shape) -> None:
    initial = create_attack(name, shape, 10, **TINY[name])
    first, second = fitted(name, shape), fitted(name, shape)
    assert set(first.trigger) == set(initial.trigger)
    for key, value in initial.trigger.items():
        assert first.trigger[key].shape == value.shape and first.trigger[key].dtype == torch.float32
        assert torch.equal(first.trigger[key], second.trigger[key]), key
        assert torch.isfinite(first.trigger[key]).all(), key
    # every network learned (the ones trained; dynamic's mask and pattern generators both are)
    changed = {key.split(".")[0] for key in initial.trigger if not torch.equal(first.trigger[key], initial.trigger[key])}
    assert changed == {key.split(".")[0] for key in initial.trigger}
    x = rand_images(3, shape)
    assert not torch.equal(first.apply(x), initial.apply(x))
    other_seed = fitted(name, shape, seed=1)
    assert not torch.equal(other_seed.apply(x), first.apply(x))


def test_dynamic_mask_phase_makes_masks_sparser() -> None:
    shape = (1, 28, 28)
    before = create_attack("dynamic-one", shape, 10, **TINY["dynamic-one"])
    after = fitted("dynamic-one", shape, mask_steps=25, steps=0)
    x = rand_images(16, shape, seed=7)
    density_before = before._mask(before.trigger, x).mean()
    density_after = after._mask(after.trigger, x).mean()
    assert density_after < 0.5 * density_before
    # steps=0: the pattern generator is untouched
    for key, value in before.trigger.items():
        if key.startswith("pattern_generator."):
            assert torch.equal(after.trigger[key], value)


# --- saved state ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_from_state_with_the_fitted_trigger_gives_the_same_apply(name: str, shape) -> None:
    attack = fitted(name, shape, seed=5, target=3)
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    assert type(rebuilt) is type(attack) and rebuilt.state() == attack.state()
    x = rand_images(4, shape, seed=6)
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    # without the trigger tensors the attack is rebuilt from its seed: the unfitted trigger
    unfitted = Attack.from_state(state)
    assert not torch.equal(unfitted.apply(x), attack.apply(x))
    assert torch.equal(unfitted.apply(x), create_attack(name, shape, 10, seed=5, target=3, **TINY[name]).apply(x))


def test_seeded_initial_trigger() -> None:
    a, b = create_attack("lira", (1, 28, 28), 10, seed=1), create_attack("lira", (1, 28, 28), 10, seed=1)
    c = create_attack("lira", (1, 28, 28), 10, seed=2)
    assert all(torch.equal(a.trigger[k], b.trigger[k]) for k in a.trigger)
    assert not torch.equal(a.trigger["generator.inc.weight"], c.trigger["generator.inc.weight"])


def test_building_an_attack_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for name in NAMES:
        create_attack(name, (3, 32, 32), 10)
    assert torch.equal(torch.rand(3), expected)


def test_networks_are_small() -> None:
    for name in NAMES:
        size = sum(v.numel() for v in create_attack(name, (3, 32, 32), 10).trigger.values())
        assert 5_000 < size < 100_000, (name, size)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 32, 30), (1, 6, 9)])
def test_image_sizes_not_divisible_by_4(name: str, shape) -> None:
    msg = one_line_error(create_attack, name, shape, 10)
    assert f"{shape[1]}x{shape[2]}" in msg and "divisible by 4" in msg


def test_small_image_sizes_divisible_by_4_work() -> None:
    attack = create_attack("lira", (2, 8, 12), 3)
    assert attack.apply(torch.rand(2, 2, 8, 12)).shape == (2, 2, 8, 12)


@pytest.mark.parametrize("name,params,word", [
    ("dynamic-one", {"cross_ratio": 0.0}, "cross_ratio"),
    ("dynamic-one", {"cross_ratio": 1.2}, "cross_ratio"),
    ("dynamic-all", {"cross_ratio": 0.9}, "cross_ratio"),  # with poison rate 0.1 nothing is clean
    ("dynamic-one", {"mask_density": 0.0}, "mask_density"),
    ("dynamic-one", {"mask_steps": -1}, "mask_steps"),
    ("dynamic-one", {"steps": 2.5}, "steps"),
    ("dynamic-one", {"lambda_div": -1.0}, "lambda_div"),
    ("dynamic-all", {"width": 0}, "width"),
    ("dynamic-one", {"batch_size": 0}, "batch_size"),
    ("lira", {"eps": 0.0}, "eps"),
    ("lira", {"eps": 1.0}, "eps"),
    ("lira", {"alpha": 1.0}, "alpha"),
    ("lira", {"steps": -3}, "steps"),
    ("lira", {"width": 1.5}, "width"),
])
def test_bad_parameters(name: str, params: dict, word: str) -> None:
    assert word in one_line_error(create_attack, name, (1, 28, 28), 10, **params)


@pytest.mark.parametrize("name", NAMES)
def test_apply_with_the_wrong_image_shape(name: str) -> None:
    attack = create_attack(name, (1, 28, 28), 10)
    msg = one_line_error(attack.apply, torch.rand(2, 3, 32, 32))
    assert "(1, 28, 28)" in msg and "(3, 32, 32)" in msg
