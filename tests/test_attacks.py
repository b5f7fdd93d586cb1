"""Tests for ngfkit.attacks: the BadNets and Blend triggers, the choice of poisoned indices, the
lazily poisoned dataset, rebuilding an attack from its saved state, and one-line errors."""
from __future__ import annotations

import pytest
import torch

from ngfkit.attacks import ATTACKS, Attack, PoisonedDataset, create_attack
from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset
from ngfkit.errors import NgfkitError
from errors_helper import one_line_error
from image_helpers import rand_images

SHAPES = [(1, 28, 28), (3, 32, 32)]


def uint8_dataset(labels, info=FASHION_MNIST, seed: int = 0) -> ImageTensorDataset:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    images = torch.randint(0, 256, (len(labels), *info.image_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return ImageTensorDataset(images, labels, info)


# --- BadNets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
def test_badnets_stamps_3x3_checkerboard_bottom_right(shape) -> None:
    c, h, w = shape
    attack = create_attack("badnets", shape, 10)
    x = rand_images(4, shape) * 0.5 + 0.25  # strictly inside (0, 1): any 0/1 pixel was stamped
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype

    # patch: rows h-4 .. h-2, columns w-4 .. w-2 (3x3, one pixel from the bottom and right edges)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[h - 4 : h - 1, w - 4 : w - 1] = True
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])  # everything else untouched
    patch = out[:, :, h - 4 : h - 1, w - 4 : w - 1]
    assert set(patch.unique().tolist()) == {0.0, 1.0}
    # the same checkerboard on every image and every channel ...
    assert torch.equal(patch, patch[:1, :1].expand_as(patch))
    board = patch[0, 0]
    # ... and a checkerboard: horizontally and vertically adjacent pixels differ
    assert torch.all(board[:, 1:] != board[:, :-1]) and torch.all(board[1:] != board[:-1])
    # the one-pixel margin to the right and below is not touched
    assert torch.equal(out[..., h - 1, :], x[..., h - 1, :]) and torch.equal(out[..., :, w - 1], x[..., :, w - 1])
    assert not torch.equal(out, x)


def test_badnets_patch_size_and_margin() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10, patch_size=4, margin=0)
    x = torch.full((1, 1, 28, 28), 0.5)
    changed = attack.apply(x) != x
    assert changed[0, 0, 24:, 24:].all()
    assert changed.sum() == 16


def test_badnets_does_not_modify_its_input() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10)
    x = rand_images(2, (1, 28, 28))
    before = x.clone()
    attack.apply(x)
    assert torch.equal(x, before)


# --- Blend -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
def test_blend_mixes_in_a_fixed_pattern(shape) -> None:
    attack = create_attack("blend", shape, 10, seed=5)
    pattern = attack.trigger["pattern"]
    assert pattern.shape == shape
    assert 0.0 <= pattern.min() and pattern.max() <= 1.0 and pattern.std() > 0.1  # noise, not a constant
    x = rand_images(3, shape, seed=1)
    out = attack.apply(x)
    assert torch.allclose(out, 0.8 * x + 0.2 * pattern, atol=1e-6)
    assert 0.0 <= out.min() and out.max() <= 1.0
    for extreme in (torch.zeros(1, *shape), torch.ones(1, *shape)):
        y = attack.apply(extreme)
        assert 0.0 <= y.min() and y.max() <= 1.0


def test_blend_alpha_parameter() -> None:
    attack = create_attack("blend", (1, 28, 28), 10, alpha=0.5)
    x = rand_images(2, (1, 28, 28))
    assert torch.allclose(attack.apply(x), 0.5 * x + 0.5 * attack.trigger["pattern"], atol=1e-6)


def test_blend_pattern_is_seeded() -> None:
    a = create_attack("blend", (3, 32, 32), 10, seed=1)
    b = create_attack("blend", (3, 32, 32), 10, seed=1)
    c = create_attack("blend", (3, 32, 32), 10, seed=2)
    assert torch.equal(a.trigger["pattern"], b.trigger["pattern"])
    assert not torch.allclose(a.trigger["pattern"], c.trigger["pattern"])
    x = rand_images(2, (3, 32, 32))
    assert torch.equal(a.apply(x), b.apply(x))


# --- target labels and poisoned indices ------------------------------------------------------


def test_all_to_one_target_labels() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10, target=3)
    y = torch.tensor([0, 3, 9, 5])
    assert attack.target_labels(y).tolist() == [3, 3, 3, 3]
    assert attack.attacked_mask(y).tolist() == [True, False, True, True]


def test_all_to_all_target_labels() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10, mode="all-to-all")
    y = torch.arange(10)
    assert attack.target_labels(y).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert attack.attacked_mask(y).all()


@pytest.mark.parametrize("rate,n", [(0.1, 1000), (0.05, 203), (0.3, 50)])
def test_poison_indices_count_and_target_class(rate: float, n: int) -> None:
    labels = torch.arange(n) % 10
    attack = create_attack("badnets", (1, 28, 28), 10, target=2, poison_rate=rate, seed=4)
    idx = attack.poison_indices(labels)
    assert idx.dtype == torch.int64
    assert len(idx) == round(rate * n)
    assert len(set(idx.tolist())) == len(idx)  # no index twice
    assert idx.min() >= 0 and idx.max() < n
    assert (labels[idx] != 2).all()  # never an image that is already of the target class


def test_poison_indices_reproducible_and_seeded() -> None:
    labels = torch.arange(1000) % 10
    make = lambda seed: create_attack("blend", (1, 28, 28), 10, poison_rate=0.1, seed=seed)  # noqa: E731
    first = make(0).poison_indices(labels)
    assert torch.equal(first, make(0).poison_indices(labels))
    assert set(first.tolist()) != set(make(1).poison_indices(labels).tolist())


def test_poison_indices_all_to_all_may_pick_every_class() -> None:
    labels = torch.arange(1000) % 10
    attack = create_attack("badnets", (1, 28, 28), 10, target=0, poison_rate=0.5, mode="all-to-all", seed=0)
    idx = attack.poison_indices(labels)
    assert len(idx) == 500
    assert set(labels[idx].tolist()) == set(range(10))  # class 0 included: nothing is excluded


def test_poison_rate_too_high_for_the_non_target_images() -> None:
    labels = torch.tensor([0] * 8 + [1] * 2)  # only 2 images can be attacked
    attack = create_attack("badnets", (1, 28, 28), 2, target=0, poison_rate=0.5)
    with pytest.raises(NgfkitError) as err:
        attack.poison_indices(labels)
    assert "--poison-rate" in str(err.value) and "\n" not in str(err.value)


# --- PoisonedDataset -------------------------------------------------------------------------


def test_poisoned_dataset_relabels_exactly_the_recorded_indices() -> None:
    labels = torch.arange(40) % 10
    clean = uint8_dataset(labels)
    attack = create_attack("badnets", (1, 28, 28), 10, target=7, poison_rate=0.25, seed=3)
    poisoned = attack.poison(clean)
    assert isinstance(poisoned, PoisonedDataset) and len(poisoned) == len(clean)
    idx = poisoned.indices
    assert len(idx) == 10 and torch.equal(idx, attack.poison_indices(labels))
    assert poisoned.poisoned.nonzero().flatten().tolist() == idx.tolist()

    expected_labels = labels.clone()
    expected_labels[idx] = 7
    assert poisoned.targets.tolist() == expected_labels.tolist()
    assert clean.targets.tolist() == labels.tolist()  # the clean set is left alone

    x, y = poisoned.get_batch(torch.arange(40))
    x_clean, _ = clean.get_batch(torch.arange(40))
    assert y.tolist() == expected_labels.tolist()
    is_poisoned = torch.zeros(40, dtype=torch.bool)
    is_poisoned[idx] = True
    assert torch.equal(x[~is_poisoned], x_clean[~is_poisoned])
    assert torch.equal(x[is_poisoned], attack.apply(x_clean[is_poisoned]))


def test_poisoned_dataset_get_batch_equals_getitem() -> None:
    labels = torch.arange(30) % 10
    clean = uint8_dataset(labels, info=CIFAR10, seed=2)
    attack = create_attack("blend", (3, 32, 32), 10, target=1, poison_rate=0.3, mode="all-to-all", seed=9)
    poisoned = attack.poison(clean)
    order = torch.tensor([5, 0, 29, 13, 13, 7, 22, 1])
    order = torch.cat([order, poisoned.indices[:3]])  # make sure poisoned items are in the batch
    xb, yb = poisoned.get_batch(order)
    assert yb.dtype == torch.int64
    for row, i in enumerate(order.tolist()):
        x, y = poisoned[i]
        assert isinstance(y, int) and y == int(yb[row])
        assert torch.equal(x, xb[row])
        if bool(poisoned.poisoned[i]):
            assert y == (int(labels[i]) + 1) % 10
        else:
            assert y == int(labels[i]) and torch.equal(x, clean[i][0])


def test_poisoned_dataset_negative_index() -> None:
    labels = torch.arange(20) % 10
    attack = create_attack("badnets", (1, 28, 28), 10, target=0)
    poisoned = PoisonedDataset(uint8_dataset(labels), attack, torch.tensor([3, 19]))
    for i in (3, 19):
        x, y = poisoned[i - len(poisoned)]
        x_pos, y_pos = poisoned[i]
        assert y == y_pos == 0 and torch.equal(x, x_pos)


# --- saved state -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", [
    ("badnets", {"target": 4, "poison_rate": 0.2, "seed": 11, "patch_size": 4, "margin": 2}),
    ("blend", {"target": 1, "poison_rate": 0.05, "mode": "all-to-all", "seed": 7, "alpha": 0.3}),
])
def test_state_round_trip(name: str, kwargs: dict) -> None:
    import json

    attack = create_attack(name, (3, 32, 32), 10, **kwargs)
    state = json.loads(json.dumps(attack.state()))  # it has to survive the JSON sidecar
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    assert type(rebuilt) is type(attack)
    x = rand_images(5, (3, 32, 32), seed=3)
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    y = torch.arange(10)
    assert torch.equal(rebuilt.target_labels(y), attack.target_labels(y))
    labels = torch.arange(500) % 10
    assert torch.equal(rebuilt.poison_indices(labels), attack.poison_indices(labels))
    assert rebuilt.state() == attack.state()


def test_from_state_uses_the_saved_trigger() -> None:
    attack = create_attack("blend", (1, 28, 28), 10, seed=0)
    other = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(123))
    rebuilt = Attack.from_state(attack.state(), {"pattern": other})
    x = rand_images(2, (1, 28, 28))
    assert torch.allclose(rebuilt.apply(x), 0.8 * x + 0.2 * other, atol=1e-6)


def test_from_state_without_trigger_rebuilds_from_the_seed() -> None:
    attack = create_attack("blend", (1, 28, 28), 10, seed=42)
    rebuilt = Attack.from_state(attack.state())
    assert torch.equal(rebuilt.trigger["pattern"], attack.trigger["pattern"])


def test_from_state_with_missing_trigger_tensor() -> None:
    attack = create_attack("badnets", (1, 28, 28), 10)
    with pytest.raises(NgfkitError, match="trigger"):
        Attack.from_state(attack.state(), {"pattern": attack.trigger["pattern"]})


# --- errors ----------------------------------------------------------------------------------



def test_registry_names() -> None:
    assert {"badnets", "blend"} <= set(ATTACKS.names())


def test_unknown_attack_name_lists_the_known_ones() -> None:
    msg = one_line_error(create_attack, "trojannn", (1, 28, 28), 10)
    assert "trojannn" in msg and "badnets" in msg and "blend" in msg


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, 0.0, 1.0, float("nan")])
def test_bad_poison_rate(rate: float) -> None:
    msg = one_line_error(create_attack, "badnets", (1, 28, 28), 10, poison_rate=rate)
    assert "poison rate" in msg and str(rate) in msg


@pytest.mark.parametrize("target", [-1, 10, 11])
def test_target_outside_classes(target: int) -> None:
    msg = one_line_error(create_attack, "blend", (1, 28, 28), 10, target=target)
    assert str(target) in msg and "10 classes" in msg


def test_unknown_mode() -> None:
    msg = one_line_error(create_attack, "badnets", (1, 28, 28), 10, mode="some-to-one")
    assert "some-to-one" in msg and "all-to-one" in msg and "all-to-all" in msg


@pytest.mark.parametrize("name,param,known", [("badnets", "alpha", "patch_size"), ("blend", "patch_size", "alpha")])
def test_unknown_trigger_parameter(name: str, param: str, known: str) -> None:
    msg = one_line_error(create_attack, name, (1, 28, 28), 10, **{param: 1})
    assert param in msg and known in msg


@pytest.mark.parametrize("name", ["badnets", "blend"])
def test_apply_with_the_wrong_image_shape(name: str) -> None:
    attack = create_attack(name, (1, 28, 28), 10)
    msg = one_line_error(attack.apply, torch.rand(2, 3, 32, 32))
    assert "(1, 28, 28)" in msg and "(3, 32, 32)" in msg


@pytest.mark.parametrize("size,margin", [(28, 1), (29, 0), (27, 2), (40, 1)])
def test_patch_too_big(size: int, margin: int) -> None:
    msg = one_line_error(create_attack, "badnets", (1, 28, 28), 10, patch_size=size, margin=margin)
    assert "28x28" in msg and "patch_size" in msg


def test_patch_that_exactly_fits() -> None:
    attack = create_attack("badnets", (1, 8, 8), 2, patch_size=7, margin=1)
    assert attack.trigger["mask"].sum() == 49


@pytest.mark.parametrize("alpha", [0, 1, -0.5, 2])
def test_bad_blend_alpha(alpha: float) -> None:
    msg = one_line_error(create_attack, "blend", (1, 28, 28), 10, alpha=alpha)
    assert "alpha" in msg


def test_image_shape_must_be_chw() -> None:
    one_line_error(create_attack, "blend", (28, 28), 10)


# --- base behaviour the attack zoo relies on ---------------------------------------------------


class _Inverting(Attack):
    """A throwaway attack for testing the base class: the trigger inverts the image; cover
    samples are darkened; optionally clean-label."""

    name = "inverting-test"
    defaults = {"cover": 0.0}

    def apply(self, x):
        return 1 - x

    def cover_fraction(self):
        return float(self.params["cover"])

    def apply_cover(self, x, y):
        return x * 0.5


class _CleanLabelInverting(_Inverting):
    clean_label = True
    modes = ("all-to-one",)


def test_cover_samples_keep_labels_and_are_disjoint_and_seeded() -> None:
    data = uint8_dataset(torch.arange(1000) % 10)
    attack = _Inverting((1, 28, 28), 10, poison_rate=0.1, seed=3, cover=0.2)
    poisoned = attack.poison(data)
    assert poisoned.poisoned.sum() == 100 and poisoned.covered.sum() == 200
    assert not (poisoned.poisoned & poisoned.covered).any()
    cover = torch.nonzero(poisoned.covered).flatten()
    x, y = poisoned.get_batch(cover)
    clean_x, clean_y = data.get_batch(cover)
    assert torch.equal(y, clean_y) and torch.allclose(x, clean_x * 0.5)
    assert torch.equal(poisoned.targets[cover], clean_y)
    again = _Inverting((1, 28, 28), 10, poison_rate=0.1, seed=3, cover=0.2).poison(data)
    assert torch.equal(again.covered, poisoned.covered) and torch.equal(again.poisoned, poisoned.poisoned)
    other = _Inverting((1, 28, 28), 10, poison_rate=0.1, seed=4, cover=0.2).poison(data)
    assert not torch.equal(other.covered, poisoned.covered)
    # __getitem__ agrees with get_batch
    i = int(cover[0])
    assert torch.allclose(poisoned[i][0], x[0]) and poisoned[i][1] == int(y[0])


def test_clean_label_poisons_only_the_target_class_and_keeps_every_label() -> None:
    labels = torch.arange(1000) % 10
    data = uint8_dataset(labels)
    attack = _CleanLabelInverting((1, 28, 28), 10, target=4, poison_rate=0.05, seed=0)
    poisoned = attack.poison(data)
    idx = torch.nonzero(poisoned.poisoned).flatten()
    assert len(idx) == 50 and (labels[idx] == 4).all()
    assert torch.equal(poisoned.targets, labels)
    x, y = poisoned.get_batch(idx)
    assert torch.equal(y, labels[idx]) and torch.allclose(x, 1 - data.get_batch(idx)[0])
    with pytest.raises(NgfkitError, match="only 100 are in the target class"):
        _CleanLabelInverting((1, 28, 28), 10, target=4, poison_rate=0.2).poison(data)
    with pytest.raises(NgfkitError, match="supports mode all-to-one"):
        _CleanLabelInverting((1, 28, 28), 10, mode="all-to-all")


def test_mode_defaults_to_the_attacks_first_mode() -> None:
    assert _CleanLabelInverting((1, 28, 28), 10).mode == "all-to-one"
    assert create_attack("badnets", (1, 28, 28), 10).mode == "all-to-one"
    assert create_attack("badnets", (1, 28, 28), 10, mode="all-to-all").mode == "all-to-all"


def test_asr_counts_only_the_images_an_attack_targets() -> None:
    from ngfkit.metrics import attack_success_rate, predict, robust_accuracy

    class OnlyClassOne(_Inverting):
        def attacked_mask(self, y):
            return y == 1

    labels = torch.tensor([1, 1, 2, 3, 0])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    p = predict(model, uint8_dataset(labels), attack=OnlyClassOne((1, 28, 28), 10))
    # images the attack does not target carry their own label as "target", so they drop out
    assert p["target"].tolist() == [0, 0, 2, 3, 0]
    triggered = torch.tensor([0, 1, 0, 0, 0])
    assert attack_success_rate(triggered, labels, p["target"]) == 50.0  # 1 of the 2 class-1 images
    assert robust_accuracy(triggered, labels, p["target"]) == 50.0


# --- every registered attack -------------------------------------------------------------------


def test_every_attack_says_where_it_is_listed_and_what_it_should_reach() -> None:
    from ngfkit.attacks import FAMILIES, listing_order, paper_attacks
    from ngfkit.bench.attacks import PAPER_ATTACKS

    names = ATTACKS.names()
    assert PAPER_ATTACKS == paper_attacks() and len(PAPER_ATTACKS) == 15 == len(names)
    assert sorted(ATTACKS.get(n).paper_order for n in names) == list(range(15))
    assert PAPER_ATTACKS[:4] == ("badnets", "blend", "trojan-one", "trojan-all") and PAPER_ATTACKS[-1] == "lf"
    ranks = {(ATTACKS.get(n).family, ATTACKS.get(n).order) for n in names}
    assert len(ranks) == 15 and {family for family, _ in ranks} == set(FAMILIES)
    assert listing_order(names)[:5] == ["badnets", "blend", "trojan-one", "trojan-all", "lf"]
    for name in names:
        cls = ATTACKS.get(name)
        assert cls.asr_goal == (80.0 if name in ("cba", "fba") else 90.0)
        assert set(cls.short_fit) <= set(cls.defaults) and (cls.learned or not cls.short_fit)
        if cls.strength.param is not None and cls.strength.spread is None:
            assert cls.strength.param in cls.defaults


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", sorted(ATTACKS.names()))
def test_every_attack_applies_in_range_deterministically_and_survives_a_checkpoint(name, shape, tmp_path) -> None:
    from ngfkit.checkpoint import load_checkpoint, save_checkpoint

    attack = create_attack(name, shape, 10, seed=3)
    x = rand_images(6, shape, seed=2)
    before = x.clone()
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before), "apply must not modify its input"
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(attack.apply(x), out), "the test-time trigger is deterministic"
    if not attack.learned:  # a learned trigger may be a no-op until fit_trigger has run
        targeted = attack.attacked_mask(torch.arange(6) % 10)
        assert not torch.allclose(out[targeted], x[targeted]), "the trigger changes the images it targets"

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, torch.nn.Linear(2, 2), {"attack": attack.state()}, attack.trigger)
    ckpt = load_checkpoint(path)
    rebuilt = Attack.from_state(ckpt.meta["attack"], ckpt.trigger)
    assert rebuilt.state() == attack.state()
    assert torch.allclose(rebuilt.apply(x), out, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ATTACKS.names()))
def test_every_attack_poisons_a_seeded_subset(name) -> None:
    labels = torch.arange(400) % 10
    data = uint8_dataset(labels, seed=1)
    attack = create_attack(name, (1, 28, 28), 10, poison_rate=0.05, seed=7)
    try:
        poisoned = attack.poison(data)
        poisoned.get_batch(torch.arange(len(data)))
    except NgfkitError as error:  # some learned attacks make their poison only in fit_trigger
        assert attack.learned and "fit_trigger" in str(error)
        return
    again = create_attack(name, (1, 28, 28), 10, poison_rate=0.05, seed=7).poison(data)
    assert poisoned.poisoned.sum() == 20
    assert torch.equal(poisoned.poisoned, again.poisoned) and torch.equal(poisoned.covered, again.covered)
    assert not (poisoned.poisoned & poisoned.covered).any()
    idx = torch.nonzero(poisoned.poisoned).flatten()
    if attack.clean_label:
        assert torch.equal(poisoned.targets, labels) and (labels[idx] == attack.target).all()
    else:
        assert torch.equal(poisoned.targets[idx], attack.target_labels(labels[idx]))
        untouched = ~(poisoned.poisoned | poisoned.covered)
        assert torch.equal(poisoned.targets[untouched], labels[untouched])
    x, y = poisoned.get_batch(torch.arange(40))
    assert x.shape == (40, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and torch.equal(y, poisoned.targets[:40])
