"""NGF as a defence: the batched fast path equals the generic loop, the selection rule, options."""
import dataclasses

import pytest
import torch

from ngfkit.defences import purify
from ngfkit.defences.ngf import NGF, NGFConfig
from ngfkit.errors import NgfkitError
from ngfkit.defences.classifier_only import FeatureDataset, layer_matrix
from ngfkit.defences.batched_heads import fit_heads


def toy_features(views=3, n=40, d=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    centres = torch.randn(c, d, generator=g)
    features = torch.relu(centres[labels] + 0.7 * torch.randn(views, n, d, generator=g))
    return FeatureDataset(features, labels)


@pytest.mark.parametrize("options", [
    dict(),
    dict(fisher="sampled", ekfac=False),
    dict(reg_strength=2.0),
    dict(kl_clip=1e-4, momentum=0.5, weight_decay=1e-2),
])
def test_batched_heads_equal_the_generic_training_loop(options):
    data = toy_features()
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 4)
    cfg = NGFConfig(steps=60, batch_size=16, factor_every=5, eigen_every=20, damping=1e-2, **options)
    defence = NGF(**dataclasses.asdict(cfg))
    generic, fit = defence.finetune_layers(head, ("",), data, 0.05, "cpu", False, desc="test")
    batched = fit_heads(data.features, data.labels, layer_matrix(head), [torch.arange(40)], [0.05], cfg)
    assert torch.allclose(batched["weight"][0], layer_matrix(generic), atol=1e-4)
    assert torch.allclose(batched["loss"][:, 0], torch.tensor(fit["loss"]), atol=1e-4)


def test_heads_train_independently():
    data = toy_features()
    head = torch.nn.Linear(6, 4)
    cfg = NGFConfig(steps=30, batch_size=16)
    sets = [torch.arange(0, 30), torch.arange(10, 40)]
    together = fit_heads(data.features, data.labels, layer_matrix(head), sets, [0.01, 0.1], cfg)["weight"]
    alone = fit_heads(data.features, data.labels, layer_matrix(head), sets[1:], [0.1], cfg)["weight"]
    assert not torch.allclose(together[0], together[1])
    # the second head does not depend on the first one's learning rate
    different_first = fit_heads(data.features, data.labels, layer_matrix(head), sets, [0.5, 0.1], cfg)["weight"]
    assert torch.allclose(different_first[1], together[1], atol=1e-6)
    assert alone.shape == (1, 4, 7)


class FeatureModel(torch.nn.Module):
    """A 'model' whose body is the identity on 2-D inputs, for defence-level tests."""

    classifier_name = "head"

    def __init__(self, d=6, c=4):
        super().__init__()
        self.body = torch.nn.Identity()
        self.head = torch.nn.Linear(d, c)

    def forward(self, x):
        return self.head(self.body(x))


def test_selection_rule_picks_the_strongest_lr_within_budget_and_records_the_grid():
    data = toy_features(views=1, n=60)
    clean = torch.utils.data.TensorDataset(data.features[0], data.labels)
    model = FeatureModel()
    purified, history = purify(model, clean, "ngf", steps=40, augment=0, folds=3, acc_budget=2.0,
                               lr_grid=(1e-4, 1e-2, 1.0), batch_size=16)
    selection = history["selection"]
    tried = selection["tried"]
    assert [t["value"] for t in tried] == [1e-4, 1e-2, 1.0]
    assert selection["knob"] == "lr" and selection["estimate"] == "cross-fit"
    assert all(len(t["val_curve"]) > 0 and t["stderr"] >= 0 for t in tried)
    within = [t["value"] for t in tried if t["val_acc_drop"] <= 2.0]
    cheapest = min(tried, key=lambda t: t["val_acc_drop"])["value"]
    assert history["setting"]["lr"] == selection["chosen"] == (within[-1] if within else cheapest)
    assert selection["budget_met"] == bool(within)
    assert len(history["loss"]) == 40 and history["changed"] == "head"
    assert torch.equal(model.head.weight, model.head.weight)  # input untouched below
    assert not torch.equal(purified.head.weight, model.head.weight)


def test_purify_leaves_the_input_model_untouched_and_is_seeded():
    data = toy_features(views=1, n=60)
    clean = torch.utils.data.TensorDataset(data.features[0], data.labels)
    model = FeatureModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = purify(model, clean, "ngf", steps=20, augment=0, lr=0.05, seed=3)
    second, _ = purify(model, clean, "ngf", steps=20, augment=0, lr=0.05, seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(first.head.weight, second.head.weight)


def test_generic_path_trains_named_layers_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    data = toy_features(views=1, n=60)
    clean = torch.utils.data.TensorDataset(data.features[0], data.labels)
    purified, history = purify(model, clean, "ngf", steps=10, lr=0.05, layers=("0",), augment=0)
    assert history["changed"] == "model"
    assert not torch.equal(purified[0].weight, model[0].weight)
    assert torch.equal(purified[2].weight, model[2].weight)


@pytest.mark.parametrize("options, message", [
    (dict(body="nope"), "body"), (dict(fisher="nope"), "fisher"), (dict(folds=1), "folds"),
    (dict(nope=1), "no option 'nope'"), (dict(layers=("missing",)), "missing"),
])
def test_bad_options_are_one_line_errors(options, message):
    data = toy_features(views=1, n=30)
    clean = torch.utils.data.TensorDataset(data.features[0], data.labels)
    with pytest.raises(NgfkitError, match=message) as info:
        purify(FeatureModel(), clean, "ngf", steps=5, **options)
    assert "\n" not in str(info.value)


def test_metrics_from_kept_classifier_inputs_equal_a_full_evaluation():
    from ngfkit.attacks import create_attack
    from ngfkit.data import FASHION_MNIST, ImageTensorDataset
    from ngfkit.metrics import evaluate, evaluate_layer, predict
    from ngfkit.models import build_model

    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.randint(0, 10, (50,)), FASHION_MNIST)
    model = build_model("smallcnn", 10, (1, 28, 28), (0.5,), (0.5,)).eval()
    attack = create_attack("badnets", (1, 28, 28), 10)
    kept = predict(model, data, attack=attack, batch_size=16, keep_inputs_of=model.head)
    assert kept["clean_inputs"].shape == (50, 256) and kept["triggered_inputs"].shape == (50, 256)
    with torch.no_grad():
        model.head.weight.mul_(-1)  # a different classifier on the same body
    assert evaluate_layer(model.head, kept) == pytest.approx(evaluate(model, data, attack, batch_size=16))


def test_negative_or_nan_regulariser_strength_is_one_clear_error():
    import pytest

    from ngfkit.defences.ngf import NGFConfig
    from ngfkit.errors import NgfkitError

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(NgfkitError, match="reg_strength"):
            NGFConfig(reg_strength=bad)
