"""Tests for the composite backdoor attack (CBA): the half-concatenation mixer, the source-class
parameters, the fitted bank and poisoned mixes, the cover mixes and the ASR mask."""
from __future__ import annotations

import json

import pytest
import torch

from ngfkit.attacks import Attack, TriggerContext, create_attack
from ngfkit.attacks.composite import half_mix
from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset
from ngfkit.models import smallcnn
from errors_helper import one_line_error

SHAPES = [(1, 28, 28), (3, 32, 32)]
SHAPE_IDS = ["1x28x28", "3x32x32"]
INFOS = {(1, 28, 28): FASHION_MNIST, (3, 32, 32): CIFAR10}


def tiny_dataset(shape, n: int = 100, seed: int = 0) -> ImageTensorDataset:
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return ImageTensorDataset(images, torch.arange(n) % 10, INFOS[shape])


def fitted_cba(shape, seed: int = 0, data=None, **params):
    data = data if data is not None else tiny_dataset(shape)
    c = shape[0]

    def make_model():
        return smallcnn(10, c, mean=[0.5] * c, std=[0.5] * c, width=4, hidden=16)

    attack = create_attack("cba", shape, 10, seed=seed, bank_size=8, **params)
    attack.fit_trigger(TriggerContext(train=data, make_model=make_model, reference_model=make_model,
                                      progress=False, seed=seed))
    return attack, data


def rows_matching(halves: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each of ``halves`` (K, ...), whether it equals one of ``candidates`` (M, ...)."""
    return (halves.unsqueeze(1) == candidates.unsqueeze(0)).flatten(2).all(-1).any(1)



def test_half_mix_puts_left_half_next_to_right_half() -> None:
    left, right = torch.zeros(2, 1, 4, 5), torch.ones(2, 1, 4, 5)
    out = half_mix(left, right)
    assert out[..., :2].eq(0).all() and out[..., 2:].eq(1).all()
    assert right.eq(1).all()  # inputs untouched


@pytest.mark.parametrize("target,expected", [(0, (1, 2)), (3, (4, 5)), (9, (0, 1))])
def test_default_source_classes_follow_the_target(target, expected) -> None:
    attack = create_attack("cba", (1, 28, 28), 10, target=target)
    assert (attack.source_a, attack.source_b) == expected


def test_only_source_a_images_count_for_asr() -> None:
    attack = create_attack("cba", (1, 28, 28), 10, source_a=4, source_b=7)
    y = torch.arange(10)
    assert attack.attacked_mask(y).tolist() == [label == 4 for label in range(10)]
    assert attack.target_labels(y).eq(0).all()
    assert attack.poison_candidates(y).tolist() == [label != 0 for label in range(10)]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fit_fills_the_bank_with_source_b_images(shape) -> None:
    attack, data = fitted_cba(shape)
    bank = attack.trigger["bank"]
    assert bank.shape == (8, *shape) and bank.dtype == torch.float32
    class_b, _ = data.get_batch(data.targets == 2)
    assert rows_matching(bank, class_b).all()
    assert len(bank.flatten(1).unique(dim=0)) == 8  # 10 class-B images: no repeats needed


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_apply_mixes_each_image_with_a_bank_image(shape) -> None:
    attack, _ = fitted_cba(shape)
    bank = attack.trigger["bank"]
    x = torch.rand(11, *shape, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    out = attack.apply(x)
    assert torch.equal(x, before) and out.shape == x.shape and out.dtype == x.dtype
    half = shape[2] // 2
    assert torch.equal(out[..., :half], x[..., :half])
    assert torch.equal(out[..., half:], bank[torch.arange(11) % 8][..., half:])
    assert torch.equal(attack.apply(x), out)  # deterministic
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_poisoned_images_are_source_a_and_source_b_halves_labelled_target(shape) -> None:
    attack, data = fitted_cba(shape, poison_rate=0.1)
    poisoned = attack.poison(data)
    assert torch.equal(poisoned.indices, attack.poison_state["indices"]) and len(poisoned.indices) == 10
    assert (data.targets[poisoned.indices] != 0).all()
    assert (poisoned.targets[poisoned.indices] == 0).all()
    x, y = poisoned.get_batch(poisoned.indices)
    assert (y == 0).all()
    half = shape[2] // 2
    class_a, _ = data.get_batch(data.targets == 1)
    class_b, _ = data.get_batch(data.targets == 2)
    assert rows_matching(x[..., :half], class_a[..., :half]).all()
    assert rows_matching(x[..., half:], class_b[..., half:]).all()


def test_cover_mixes_keep_their_label_and_pair_within_the_class() -> None:
    attack, data = fitted_cba((1, 28, 28), cover_fraction=0.3)
    poisoned = attack.poison(data)
    cover = poisoned.covered.nonzero().flatten()
    assert len(cover) == 30 and not (poisoned.covered & poisoned.poisoned).any()
    assert torch.equal(cover, attack.poison(data).covered.nonzero().flatten())  # seeded
    assert torch.equal(poisoned.targets[cover], data.targets[cover])
    torch.manual_seed(0)
    x, y = poisoned.get_batch(cover)
    x_clean, y_clean = data.get_batch(cover)
    assert torch.equal(y, y_clean)
    assert torch.equal(x[..., :14], x_clean[..., :14])
    assert not torch.equal(x, x_clean)
    for row in range(len(cover)):
        same_class, _ = data.get_batch(data.targets == y[row])
        assert rows_matching(x[row : row + 1, ..., 14:], same_class[..., 14:]).all()


def test_cover_without_fit_pairs_inside_the_batch() -> None:
    attack = create_attack("cba", (1, 28, 28), 10)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 1, 1, 5, 5, 7])
    torch.manual_seed(3)
    out = attack.apply_cover(x, y)
    assert torch.equal(out[..., :14], x[..., :14])
    assert torch.equal(out[5], x[5])  # the only image of class 7 has no partner
    for row in range(5):
        assert rows_matching(out[row : row + 1, ..., 14:], x[y == y[row]][..., 14:]).all()


def test_fit_is_reproducible_and_seeded() -> None:
    data = tiny_dataset((1, 28, 28), n=200)
    first, _ = fitted_cba((1, 28, 28), seed=1, data=data)
    second, _ = fitted_cba((1, 28, 28), seed=1, data=data)
    other, _ = fitted_cba((1, 28, 28), seed=2, data=data)
    assert torch.equal(first.trigger["bank"], second.trigger["bank"])
    for key in first.poison_state:
        assert torch.equal(first.poison_state[key], second.poison_state[key])
    assert not torch.equal(first.trigger["bank"], other.trigger["bank"])
    assert not torch.equal(first.poison_state["images"], other.poison_state["images"])


def test_fit_changes_the_trigger_and_state_round_trip_keeps_it() -> None:
    attack, _ = fitted_cba((3, 32, 32), source_a=5, source_b=3)
    unfitted = create_attack("cba", (3, 32, 32), 10, bank_size=8, source_a=5, source_b=3)
    assert set(unfitted.trigger) == set(attack.trigger)
    assert unfitted.trigger["bank"].shape == attack.trigger["bank"].shape
    assert not torch.equal(unfitted.trigger["bank"], attack.trigger["bank"])
    state = json.loads(json.dumps(attack.state()))
    rebuilt = Attack.from_state(state, {k: v.clone() for k, v in attack.trigger.items()})
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(rebuilt.apply(x), attack.apply(x))
    assert rebuilt.state() == attack.state() and rebuilt.source_a == 5


def test_poison_needs_fit_trigger() -> None:
    data = tiny_dataset((1, 28, 28))
    attack = create_attack("cba", (1, 28, 28), 10)
    assert "fit_trigger" in one_line_error(attack.poison(data).get_batch, torch.arange(100))


def test_fit_without_source_images() -> None:
    data = tiny_dataset((1, 28, 28))
    data = data.subset(data.targets != 2)
    msg = one_line_error(fitted_cba, (1, 28, 28), data=data)
    assert "source_b" in msg and "2" in msg


@pytest.mark.parametrize("kwargs,word", [
    ({"source_a": 0}, "three different"), ({"source_a": 3, "source_b": 3}, "three different"),
    ({"target": 2, "source_b": 2}, "three different"), ({"source_a": 10}, "source_a"), ({"source_b": -1}, "source_b"),
    ({"cover_fraction": 1.0}, "cover_fraction"), ({"cover_fraction": -0.1}, "cover_fraction"),
    ({"bank_size": 0}, "bank_size"), ({"mode": "all-to-all"}, "all-to-one")])
def test_bad_parameters(kwargs, word) -> None:
    assert word in one_line_error(create_attack, "cba", (1, 28, 28), 10, **kwargs)


def test_needs_three_classes_and_two_columns() -> None:
    assert "3 classes" in one_line_error(create_attack, "cba", (1, 28, 28), 2)
    assert "wide" in one_line_error(create_attack, "cba", (1, 8, 1), 10)
