"""NFT (neural mask fine-tuning) on a user's tiny CNN: only the masks change (each masked tensor is the
input's, scaled per output channel within the clipping range), the conv/linear fallback for models
without BatchNorm, seeding, MixUp and one-line option errors."""
import math

import pytest
import torch
from defence_helpers import state
from errors_helper import one_line_error
from tiny_cnn import TinyCNN as UserCNN, changed, tiny_data
from torch import nn
from torch.nn.utils import parametrize

import ngfkit.defences.nft  # noqa: F401  (registers nft)
from ngfkit.defences import DEFENCES, purify

FLOOR = {1: 0.8 * math.exp(-0.5), 2: 0.8 * math.exp(-1.0)}  # the authors' α e^(−βl), l = 1, 2


class TinyCNN(UserCNN):
    """The shared tiny CNN with a BatchNorm1d after its hidden Linear: two masked layers."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.hidden(self.conv(x)))))


class PlainCNN(nn.Module):
    """No BatchNorm at all: NFT falls back to masking conv and linear outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.hidden = nn.Linear(16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.conv(x))))


def tiny_model(cls=TinyCNN):
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # running statistics and BatchNorm weights away from their defaults
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def run(model=None, data=None, **options):
    options = {"steps": 4, "batch_size": 8, "lr": 5.0, **options}
    return purify(model or tiny_model(), data or tiny_data(), "nft", device="cpu", progress=False, **options)


def channel_factors(before, after):
    """``f`` with ``after[c] == f[c] * before[c]`` for every output channel ``c`` (asserted)."""
    b = before.double().reshape(len(before), -1)
    a = after.double().reshape(len(after), -1)
    f = (a * b).sum(1) / (b * b).sum(1)
    assert torch.allclose(a, b * f.view(-1, 1), rtol=1e-5, atol=1e-7)
    return f


def same_architecture(model, purified):
    assert type(purified) is type(model)
    assert [type(m) for m in purified.modules()] == [type(m) for m in model.modules()]
    assert not any(parametrize.is_parametrized(m) for m in purified.modules())
    assert {k: v.shape for k, v in purified.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert list(purified.state_dict()) == list(model.state_dict())


def test_nft_changes_only_the_masked_batchnorm_weights_within_their_range():
    model = tiny_model()
    original = state(model)
    purified, history = run(model)
    same_architecture(model, purified)
    assert changed(original, state(model)) == set()  # the input is left alone
    assert history["layers"] == "norm" and history["masked"] == ["conv.1", "norm"]
    moved = changed(original, state(purified))
    assert moved and moved <= {"conv.1.weight", "norm.weight"}  # biases, convs, running statistics: bit-identical
    for l, layer in enumerate(history["masked"], 1):
        key = f"{layer}.weight"
        f = channel_factors(original[key], purified.state_dict()[key])
        assert bool((f >= FLOOR[l] - 1e-6).all() and (f <= 1 + 1e-6).all()), (layer, f)
        assert torch.allclose(f.float(), torch.tensor(history["masks"][layer]), atol=1e-6)
        stats = history["mask_stats"][layer]
        assert stats["floor"] == pytest.approx(FLOOR[l]) and stats["floor"] <= stats["min"] <= stats["mean"] <= 1
    # the model's own forward with the folded weights is what was trained
    assert not torch.allclose(purified(tiny_data()[:][0]), model(tiny_data()[:][0]))


def test_the_history_has_the_shared_keys_and_the_mask_trace():
    purified, history = run()
    assert history["method"] == "nft" and history["seconds"] > 0 and history["changed"] == "model"
    assert history["config"]["steps"] == 4 and history["setting"] == {"lr": 5.0}
    assert len(history["loss"]) == 4 and all(math.isfinite(v) for v in history["loss"])
    assert len(history["mask_min"]) == len(history["mask_mean"]) == 4
    assert history["num_neurons"] == 4 + 8 and history["clean_per_class"] == 8


def test_masks_are_clipped_to_the_depth_dependent_floor():
    _, history = run(lr=1e4)  # a huge lr: masks land on their bounds
    floors = [history["mask_stats"][layer]["floor"] for layer in history["masked"]]
    assert floors == pytest.approx([FLOOR[1], FLOOR[2]])
    for layer, floor in zip(history["masked"], floors):
        masks = torch.tensor(history["masks"][layer])
        assert bool(((masks >= floor - 1e-6) & (masks <= 1 + 1e-6)).all())
    assert any(history["mask_stats"][layer]["min"] == pytest.approx(f) for layer, f in zip(history["masked"], floors))


def test_without_batchnorm_the_conv_and_linear_neurons_are_masked_not_the_classifier():
    model = tiny_model(PlainCNN)
    original = state(model)
    purified, history = run(model)
    same_architecture(model, purified)
    assert changed(original, state(model)) == set()
    assert history["layers"] == "conv" and history["masked"] == ["conv.0", "hidden"]
    moved = changed(original, state(purified))
    assert moved and moved <= {"conv.0.weight", "conv.0.bias", "hidden.weight", "hidden.bias"}
    for l, layer in enumerate(history["masked"], 1):
        f_weight = channel_factors(original[f"{layer}.weight"], purified.state_dict()[f"{layer}.weight"])
        f_bias = channel_factors(original[f"{layer}.bias"], purified.state_dict()[f"{layer}.bias"])
        assert torch.allclose(f_weight, f_bias, atol=1e-6)  # the whole neuron is scaled
        assert bool((f_weight >= FLOOR[l] - 1e-6).all() and (f_weight <= 1 + 1e-6).all())


def test_the_same_seed_gives_the_same_model_and_mixup_matters():
    first, _ = run(seed=1)
    again, _ = run(seed=1)
    assert changed(state(first), state(again)) == set()
    other, _ = run(seed=2)
    assert changed(state(first), state(other))
    unmixed, _ = run(seed=1, mixup_alpha=0.0)
    assert changed(state(first), state(unmixed))


def test_batch_stats_runs_batchnorm_in_train_mode_as_the_authors_do():
    model = tiny_model()
    purified, _ = run(model, batch_stats=True)
    assert not torch.equal(purified.conv[1].running_mean, model.conv[1].running_mean)
    assert torch.equal(purified.conv[0].weight, model.conv[0].weight)


@pytest.mark.parametrize("options, words", [
    ({"steps": 0}, "nft steps"),
    ({"lr": float("nan")}, "nft lr"),
    ({"alpha": 1.5}, "nft alpha"),
    ({"beta": -1}, "nft beta"),
    ({"reg": -0.1}, "nft reg"),
    ({"momentum": 1.0}, "nft momentum"),
    ({"layers": "bn"}, "nft layers"),
    ({"augment": "yes"}, "nft augment"),
    ({"eta": 0.1}, "no option 'eta'"),
])
def test_a_bad_option_is_one_line_error(options, words):
    message = one_line_error(purify, tiny_model(), tiny_data(), "nft", device="cpu", progress=False, **options)
    assert words in message


def test_a_model_nft_cannot_mask_is_one_line_error():
    message = one_line_error(run, tiny_model(PlainCNN), layers="norm")
    assert "nft layers='norm'" in message
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    assert "nft masks" in one_line_error(run, linear)


def test_defaults_are_the_authors_but_the_step_budget():
    cfg = DEFENCES.get("nft")().config
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.alpha, cfg.beta, cfg.reg, cfg.mixup_alpha) == \
        (0.05, 0.95, 128, 0.8, 0.5, 0.001, 1.0)
    assert cfg.final_lr_ratio == pytest.approx(0.02 / 0.05) and cfg.steps == 300 and not cfg.batch_stats
    nft = DEFENCES.get("nft")
    assert nft.strength == "lr" and list(nft.strength_grid) == sorted(nft.strength_grid)
    assert cfg.lr in nft.strength_grid
