"""Re-tuning on a few poisoned images (PAM's "does the purification last?"), on a tiny CNN, a
TensorDataset and the registry's BadNets built for 12x12 images."""
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ngfkit.attacks import create_attack
from ngfkit.errors import NgfkitError
from ngfkit.studies.reactivation import DEFAULTS, reactivate, reactivate_models, reactivation_set
from ngfkit.train import TrainConfig, train_model

SHAPE, CLASSES = (1, 12, 12), 4


class TinyCNN(nn.Module):
    def __init__(self, classes=CLASSES):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.out = nn.Linear(72, classes)

    def forward(self, x):
        return self.out(self.conv(x))


def tiny_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = torch.rand(n, *SHAPE, generator=g) * 0.3 + labels.view(-1, 1, 1, 1) * 0.15
    return TensorDataset(images, labels)


@pytest.fixture(scope="module")
def setting():
    """A clean tiny model (briefly trained on clean images), BadNets, clean and test data."""
    torch.manual_seed(0)
    attack = create_attack("badnets", SHAPE, CLASSES)
    clean_data, test_data = tiny_data(160, seed=0), tiny_data(120, seed=1)
    model = TinyCNN()
    train_model(model, clean_data, TrainConfig(steps=30, lr=0.05, batch_size=32), progress=False)
    return model, attack, clean_data, test_data


SMALL = {"poisoned": 8, "clean": 24, "steps": 6, "batch_size": 16}
KEYS = {"before", "after", "asr_climb", "acc_change", "loss", "train_seconds", "seconds", "protocol"}


def without_times(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "train_seconds")}


def test_the_input_model_is_left_unchanged(setting):
    model, attack, clean_data, test_data = setting
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    reactivate(model, attack, clean_data, test_data, **SMALL)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_the_result_has_the_documented_keys_and_is_json(setting):
    model, attack, clean_data, test_data = setting
    result = reactivate(model, attack, clean_data, test_data, **SMALL)
    assert set(result) == KEYS
    for when in ("before", "after"):
        assert set(result[when]) == {"acc", "asr", "ra"}
        assert all(0.0 <= v <= 100.0 for v in result[when].values())
    assert result["asr_climb"] == pytest.approx(result["after"]["asr"] - result["before"]["asr"])
    assert result["acc_change"] == pytest.approx(result["after"]["acc"] - result["before"]["acc"])
    assert len(result["loss"]) == SMALL["steps"]
    protocol = result["protocol"]
    assert {k: protocol[k] for k in SMALL} == SMALL
    assert protocol["lr"] == DEFAULTS["lr"] and protocol["seed"] == 0 and protocol["attack"] == "badnets"
    json.dumps(result, allow_nan=False)


def test_the_same_seed_gives_the_same_numbers(setting):
    model, attack, clean_data, test_data = setting
    first = reactivate(model, attack, clean_data, test_data, seed=3, **SMALL)
    again = reactivate(model, attack, clean_data, test_data, seed=3, **SMALL)
    assert without_times(first) == without_times(again)
    one, other = (reactivation_set(attack, clean_data, poisoned=8, clean=24, seed=s) for s in (3, 4))
    assert not torch.equal(one.source, other.source)


def test_the_poisoned_mix_is_triggered_by_the_attack_and_relabelled(setting):
    _, attack, clean_data, _ = setting
    images, labels = clean_data.tensors
    mix = reactivation_set(attack, clean_data, poisoned=8, clean=24, seed=0)
    assert len(mix) == 32 and int(mix.triggered.sum()) == 8 and len(set(mix.source.tolist())) == 32
    poison = mix.source[mix.triggered]
    assert (labels[poison] != attack.target).all()
    assert torch.equal(mix.labels[mix.triggered], torch.full((8,), attack.target))
    assert torch.allclose(mix.images[mix.triggered], attack.apply(images[poison]))
    kept = mix.source[~mix.triggered]
    assert torch.equal(mix.images[~mix.triggered], images[kept])
    assert torch.equal(mix.labels[~mix.triggered], labels[kept])


def test_many_poisoned_images_plant_the_backdoor_in_a_clean_tiny_model(setting):
    model, attack, clean_data, test_data = setting
    result = reactivate(model, attack, clean_data, test_data, poisoned=60, clean=60, steps=20,
                        lr=0.05, batch_size=32)
    assert result["before"]["asr"] < 40.0
    assert result["after"]["asr"] > 85.0 and result["asr_climb"] > 45.0, result


def test_no_poisoned_image_means_no_trigger_in_the_mix_and_a_small_climb(setting):
    model, attack, clean_data, test_data = setting
    mix = reactivation_set(attack, clean_data, poisoned=0, clean=60, seed=0)
    images, labels = clean_data.tensors
    assert not mix.triggered.any()
    assert torch.equal(mix.images, images[mix.source]) and torch.equal(mix.labels, labels[mix.source])
    options = {"clean": 60, "steps": 20, "lr": 0.05, "batch_size": 32}
    control = reactivate(model, attack, clean_data, test_data, poisoned=0, **options)
    assert control["protocol"]["poisoned"] == 0
    assert abs(control["asr_climb"]) < 15.0, control


def test_several_models_share_the_mix_and_the_clean_one_is_the_reference(setting):
    model, attack, clean_data, test_data = setting
    torch.manual_seed(1)
    models = {"backdoored": TinyCNN(), "clean": model}
    out = reactivate_models(models, attack, clean_data, test_data, reference="clean", **SMALL)
    assert list(out["models"]) == ["backdoored", "clean"] and out["reference"] == "clean"
    assert out["models"]["clean"]["climb_beyond_reference"] == 0.0
    alone = reactivate(model, attack, clean_data, test_data, **SMALL)
    clean_row = {k: v for k, v in out["models"]["clean"].items() if k != "climb_beyond_reference"}
    assert without_times(clean_row) == {k: v for k, v in without_times(alone).items() if k != "protocol"}
    assert out["protocol"] == alone["protocol"]
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("options, named", [
    ({"poisoned": -1}, "poisoned"),
    ({"clean": -2}, "clean"),
    ({"poisoned": 10_000}, "poisoned"),
    ({"poisoned": 10, "clean": 10_000}, "clean"),
    ({"poisoned": 0, "clean": 0}, "poisoned"),
    ({"steps": 0}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -0.1}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"poisoned": 2.5}, "poisoned"),
])
def test_bad_options_are_one_line_errors_naming_the_option(setting, options, named):
    model, attack, clean_data, test_data = setting
    with pytest.raises(NgfkitError) as error:
        reactivate(model, attack, clean_data, test_data, **{**SMALL, **options})
    message = str(error.value)
    assert named in message and "\n" not in message


def test_bad_model_sets_are_errors(setting):
    model, attack, clean_data, test_data = setting
    with pytest.raises(NgfkitError, match="non-empty mapping"):
        reactivate_models({}, attack, clean_data, test_data)
    with pytest.raises(NgfkitError, match="reference"):
        reactivate_models({"clean": model}, attack, clean_data, test_data, reference="purified", **SMALL)
    with pytest.raises(NgfkitError, match="nn.Module"):
        reactivate_models({"clean": "model.safetensors"}, attack, clean_data, test_data, **SMALL)
    only_target = TensorDataset(torch.rand(5, *SHAPE), torch.full((5,), attack.target))
    with pytest.raises(NgfkitError, match="ASR is undefined"):
        reactivate(model, attack, clean_data, only_target, **SMALL)
