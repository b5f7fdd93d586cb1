"""Tests for ngfkit.metrics, every expected value counted by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ngfkit.attacks import create_attack
from ngfkit.data import FASHION_MNIST, ImageTensorDataset
from ngfkit.metrics import accuracy, attack_success_rate, defence_effectiveness_rating, evaluate, robust_accuracy

T = torch.tensor


# --- accuracy, ASR, RA -----------------------------------------------------------------------


def test_accuracy() -> None:
    assert accuracy(T([0, 3, 1, 5, 2, 0]), T([0, 3, 0, 5, 2, 7])) == pytest.approx(400 / 6)
    assert accuracy(T([1, 2, 3]), T([1, 2, 3])) == pytest.approx(100.0)
    assert accuracy(T([1, 2, 3]), T([0, 0, 0])) == pytest.approx(0.0)


def test_asr_and_ra_exclude_images_of_the_target_class() -> None:
    labels = T([0, 3, 0, 5, 2, 7])  # target 0: images 0 and 2 do not count
    target = T([0, 0, 0, 0, 0, 0])
    triggered = T([0, 0, 1, 5, 0, 0])
    # counted images 1, 3, 4, 5 -> predictions 0, 5, 0, 0
    assert attack_success_rate(triggered, labels, target) == pytest.approx(75.0)  # 3 of 4 go to 0
    assert robust_accuracy(triggered, labels, target) == pytest.approx(25.0)  # only image 3 keeps its label


def test_asr_all_to_all() -> None:
    attack = create_attack("badnets", (1, 28, 28), 4, mode="all-to-all")
    labels = T([0, 1, 2, 3, 3])
    target = attack.target_labels(labels)
    assert target.tolist() == [1, 2, 3, 0, 0]
    triggered = T([1, 2, 0, 0, 3])
    assert attack_success_rate(triggered, labels, target) == pytest.approx(60.0)  # images 0, 1, 3
    assert robust_accuracy(triggered, labels, target) == pytest.approx(20.0)  # image 4


def test_asr_without_attackable_images_is_nan() -> None:
    labels = T([2, 2])
    assert math.isnan(attack_success_rate(T([2, 1]), labels, T([2, 2])))


# --- DER -------------------------------------------------------------------------------------


@pytest.mark.parametrize("before,after,der", [
    ({"acc": 90.0, "asr": 100.0}, {"acc": 85.0, "asr": 10.0}, (0.90 - 0.05 + 1) / 2),  # 0.925
    ({"acc": 90.0, "asr": 100.0}, {"acc": 90.0, "asr": 0.0}, 1.0),  # perfect defence
    ({"acc": 90.0, "asr": 100.0}, {"acc": 90.0, "asr": 100.0}, 0.5),  # nothing changed
    ({"acc": 90.0, "asr": 100.0}, {"acc": 0.0, "asr": 100.0}, 0.05),  # only accuracy lost
    ({"acc": 80.0, "asr": 10.0}, {"acc": 90.0, "asr": 50.0}, 0.5),  # ASR and ACC both rose: both clipped to 0
    ({"acc": 80.0, "asr": 90.0}, {"acc": 90.0, "asr": 30.0}, (0.60 + 1) / 2),  # ACC rose: no bonus for it
    ({"acc": 90.0, "asr": 20.0}, {"acc": 70.0, "asr": 60.0}, (1 - 0.20) / 2),  # ASR rose: no penalty for it
])
def test_defence_effectiveness_rating(before: dict, after: dict, der: float) -> None:
    assert defence_effectiveness_rating(before, after) == pytest.approx(der)


def test_der_ignores_other_keys() -> None:
    before = {"acc": 90.0, "asr": 100.0, "ra": 0.0}
    after = {"acc": 88.0, "asr": 4.0, "ra": 85.0}
    assert defence_effectiveness_rating(before, after) == pytest.approx((0.96 - 0.02 + 1) / 2)


# --- evaluate --------------------------------------------------------------------------------


class ScriptedModel(nn.Module):
    """Predicts the class written into pixel (0, 0) (value 20 * class); if the BadNets corner
    (rows/columns 24..26) holds any ink and pixel (0, 1) is set, predicts class 0 instead."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pred = torch.round(x[:, 0, 0, 0] * 255 / 20).long()
        triggered = x[:, 0, 24:27, 24:27].flatten(1).sum(1) > 0
        vulnerable = x[:, 0, 0, 1] > 0.5
        pred = torch.where(triggered & vulnerable, torch.zeros_like(pred), pred)
        return nn.functional.one_hot(pred, self.num_classes).float() * 5 - 1


def scripted_dataset(labels, clean_pred, vulnerable) -> ImageTensorDataset:
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(clean_pred, dtype=torch.uint8) * 20
    images[:, 0, 0, 1] = torch.tensor(vulnerable, dtype=torch.uint8) * 255
    return ImageTensorDataset(images, torch.tensor(labels), FASHION_MNIST)


LABELS = [0, 0, 1, 2, 3, 4]
CLEAN_PRED = [0, 1, 1, 2, 0, 4]  # right on images 0, 2, 3, 5
VULNERABLE = [1, 0, 1, 1, 0, 0]


@pytest.mark.parametrize("batch_size", [4, 512])
def test_evaluate_all_to_one(batch_size: int) -> None:
    ds = scripted_dataset(LABELS, CLEAN_PRED, VULNERABLE)
    model = ScriptedModel()
    attack = create_attack("badnets", (1, 28, 28), 10, target=0)
    result = evaluate(model, ds, attack, batch_size=batch_size)
    assert set(result) == {"acc", "asr", "ra"}
    assert result["acc"] == pytest.approx(400 / 6)
    # images 2..5 count (labels 1..4); triggered predictions 0, 0, 0 (clean guess), 4
    assert result["asr"] == pytest.approx(75.0)
    assert result["ra"] == pytest.approx(25.0)


def test_evaluate_all_to_all() -> None:
    ds = scripted_dataset(LABELS, CLEAN_PRED, VULNERABLE)
    attack = create_attack("badnets", (1, 28, 28), 10, mode="all-to-all")
    result = evaluate(ScriptedModel(), ds, attack, batch_size=5)
    # every image counts; targets 1, 1, 2, 3, 4, 5; triggered predictions 0, 1, 0, 0, 0, 4
    assert result["asr"] == pytest.approx(100 / 6)  # only image 1
    assert result["ra"] == pytest.approx(200 / 6)  # images 0 and 5 keep their labels


def test_evaluate_clean_only() -> None:
    ds = scripted_dataset(LABELS, CLEAN_PRED, VULNERABLE)
    assert evaluate(ScriptedModel(), ds) == {"acc": pytest.approx(400 / 6)}


def test_evaluate_keeps_the_training_mode() -> None:
    ds = scripted_dataset(LABELS, CLEAN_PRED, VULNERABLE)
    model = ScriptedModel().train()
    evaluate(model, ds, create_attack("badnets", (1, 28, 28), 10))
    assert model.training
    model.eval()
    evaluate(model, ds)
    assert not model.training
