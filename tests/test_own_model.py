"""A user's own model and data: a CNN that is not an ngfkit architecture (GroupNorm, a classifier
named ``out``), a trigger that is not in the registry, a plain ``TensorDataset``; every defence
that targets the classifier runs on it through the public API, on the cached-feature path."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from defence_helpers import quick_options

from ngfkit.defences import DEFENCES, FeatureCache, HeadDefence, find_classifier, purify, select_and_purify
from ngfkit.errors import NgfkitError
from ngfkit.metrics import evaluate


class MyCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.hidden = nn.Linear(32, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.conv(x))))


def my_data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.rand(n, 1, 12, 12, generator=g) * 0.3 + labels.view(-1, 1, 1, 1) * 0.15
    return TensorDataset(images, labels)


def corner_square(images):
    """A trigger of the user's own: a bright 3x3 square in the top-left corner."""
    out = images.clone()
    out[..., :3, :3] = 1.0
    return out


def named_cnn():
    model = MyCNN()
    model.classifier_name = "out"
    return model


HEAD_DEFENCES = [n for n in DEFENCES.names() if issubclass(DEFENCES.get(n), HeadDefence)
                 and DEFENCES.get(n)().head_only(named_cnn())]


def test_the_classifier_is_found_by_a_forward_hook():
    name, layer = find_classifier(MyCNN(), my_data())
    assert name == "out" and isinstance(layer, nn.Linear)


@pytest.mark.parametrize("method", HEAD_DEFENCES)
def test_every_classifier_defence_purifies_a_users_model_on_a_tensor_dataset(method):
    torch.manual_seed(0)
    model, data = MyCNN(), my_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    purified, history = purify(model, data, method, device="cpu", progress=False, steps=20, lr=0.05)
    assert history["changed"] == "head" and type(purified) is MyCNN
    changed = {k for k, v in purified.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"out.weight", "out.bias"}, method
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched


#: defences that need more of a model than a classifier, with what their one-line error asks for
NEEDS_MORE = {"ngf-shift": "nn.Sequential", "ngf-shift-auto": "nn.Sequential", "anp": "no affine BatchNorm", "nad": "name them with the layers option"}


@pytest.mark.parametrize("method", [n for n in DEFENCES.names() if n not in HEAD_DEFENCES])
def test_every_other_defence_runs_on_a_users_model_or_says_in_one_line_what_it_needs(method):
    torch.manual_seed(0)
    model, data = named_cnn(), my_data(48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = quick_options(method)
    if method in NEEDS_MORE:
        with pytest.raises(NgfkitError, match=NEEDS_MORE[method]) as info:
            purify(model, data, method, device="cpu", progress=False, **options)
        assert "\n" not in str(info.value)
        return
    purified, history = purify(model, data, method, device="cpu", progress=False, **options)
    assert type(purified) is MyCNN and history["method"] == method
    assert {k: v.shape for k, v in purified.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched


def test_ngf_chooses_its_strength_on_a_users_model_and_the_result_evaluates():
    torch.manual_seed(0)
    model, data = MyCNN(), my_data()
    purified, history = purify(model, data, "ngf", device="cpu", progress=False, steps=20, folds=3,
                               features=FeatureCache())
    assert history["selection"]["chosen"] == history["setting"]["lr"]
    triggered = TensorDataset(corner_square(my_data(20, seed=1).tensors[0]), torch.zeros(20, dtype=torch.long))
    assert 0 <= evaluate(purified, triggered, device="cpu")["acc"] <= 100
    _, held = select_and_purify(model, data, "ft-last", device="cpu", progress=False, values=(0.01, 0.1), steps=10)
    assert held["changed"] == "head" and held["selection"]["estimate"] == "holdout"


def test_an_explicit_layer_and_the_ambiguous_cases_are_one_line_errors():
    model, data = MyCNN(), my_data()
    purified, _ = purify(model, data, "ft-last", layer="out", device="cpu", progress=False, steps=5)
    with pytest.raises(NgfkitError, match="'conv' is not an nn.Linear.*hidden, out") as info:
        purify(model, data, "ngf", layer="conv", device="cpu", progress=False, steps=5)
    assert "\n" not in str(info.value) and "--" not in str(info.value)
    with pytest.raises(NgfkitError, match="several nn.Linear layers.*layer=NAME"):
        find_classifier(model)
    no_linear = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(NgfkitError, match="no nn.Linear layer.*layer=NAME"):
        purify(no_linear, data, "ngf", device="cpu", progress=False)
    post_processed = nn.Sequential(MyCNN(), nn.Tanh())
    with pytest.raises(NgfkitError, match="none of the model's nn.Linear layers.*layer=NAME"):
        purify(post_processed, data, "ngf", device="cpu", progress=False)


@pytest.mark.parametrize("data, message", [
    (TensorDataset(torch.rand(10, 1, 12, 12), torch.rand(10)), "clean_data's labels.*integer"),
    (TensorDataset(torch.rand(10, 1, 12, 12), -torch.ones(10, dtype=torch.long)), "clean_data's labels.*0 or more"),
])
def test_a_malformed_clean_set_is_one_line_naming_the_argument(data, message):
    with pytest.raises(NgfkitError, match=message) as info:
        purify(MyCNN(), data, "ngf", device="cpu", progress=False)
    assert "\n" not in str(info.value)
