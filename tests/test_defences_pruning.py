"""Fine-Pruning (fp) and Adversarial Neuron Pruning (anp) on a tiny smallcnn: a few steps each."""
import pytest
import torch
from torch import nn

from defence_helpers import state, tiny_clean, tiny_model
from errors_helper import one_line_error
from ngfkit.defences import DEFENCES, purify

FP = dict(steps=2, batch_size=32)
ANP = dict(iterations=3, batch_size=32, lr=2.0)  # a large mask lr so that a few masks leave 1


def same_architecture(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in b.modules())


def bn_output(model: nn.Module, norm: str, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = dict(model.named_modules())[norm].register_forward_hook(lambda m, i, o: seen.setdefault("o", o.clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return seen["o"]


def zero_weights(model: nn.Module, norm: str) -> int:
    return int((dict(model.named_modules())[norm].weight == 0).sum())


@pytest.fixture(scope="module")
def data():
    return tiny_clean(64)


def test_fp_prunes_last_conv_and_keeps_it_zero_through_finetuning(data):
    model = tiny_model()
    before = state(model)
    purified, history = purify(model, data, "fp", progress=False, ratio=0.5, **FP)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same_architecture(model, purified)
    assert (history["layer"], history["norm"]) == ("body.10", "body.11")
    pruned = history["pruned"]
    assert history["num_pruned"] == len(pruned) == 32 and history["num_channels"] == 64
    assert len(history["loss"]) == FP["steps"] and len(history["activation"]) == 64
    # the least active channels are the pruned ones
    activation = torch.tensor(history["activation"])
    kept = sorted(set(range(64)) - set(pruned))
    assert activation[pruned].max() <= activation[kept].min()
    net = dict(purified.named_modules())
    for t in (net["body.10"].weight, net["body.11"].weight, net["body.11"].bias):
        assert torch.all(t[pruned] == 0)
    # every layer was fine-tuned
    assert not torch.equal(net["head"].weight, model.head.weight)
    x = torch.rand(8, 1, 28, 28)
    out = bn_output(purified, "body.11", x)
    assert torch.all(out[:, pruned] == 0) and out[:, kept].abs().sum() > 0


def test_fp_path_reuses_one_ranking_and_prunes_more_with_ratio(data, monkeypatch):
    from ngfkit.defences import pruning

    calls = []
    measure = pruning._channel_activity
    monkeypatch.setattr(pruning, "_channel_activity", lambda *a, **k: calls.append(1) or measure(*a, **k))
    model = tiny_model()
    before = state(model)
    defence = DEFENCES.get("fp")(**FP)
    values = (0.0, 0.25, 0.75)
    path = list(defence.path(model, data, values, device=torch.device("cpu"), progress=False))
    assert [v for v, _ in path] == list(values) and len(calls) == 1
    counts = [zero_weights(m, "body.11") for _, m in path]
    assert counts == [0, 16, 48]
    for _, m in path:
        same_architecture(model, m)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_anp_prunes_only_bn_weights_below_threshold(data):
    model = tiny_model()
    before = state(model)
    purified, history = purify(model, data, "anp", progress=False, threshold=1.0, **ANP)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same_architecture(model, purified)
    assert set(history["masks"]) == {"body.1", "body.4", "body.8", "body.11"}
    assert len(history["loss"]) == ANP["iterations"]
    after = purified.state_dict()
    assert history["num_pruned"] > 0
    for key, value in before.items():
        layer, _, kind = key.rpartition(".")
        if kind == "weight" and layer in history["pruned"]:
            pruned = history["pruned"][layer]
            masks = torch.tensor(history["masks"][layer])
            assert pruned == torch.nonzero(masks < 1.0).flatten().tolist()
            assert torch.all(after[key][pruned] == 0)
            kept = torch.ones(len(value), dtype=torch.bool)
            kept[pruned] = False
            assert torch.equal(after[key][kept], value[kept])
        else:
            assert torch.equal(after[key], value), key


def test_anp_masks_stay_in_unit_interval(data):
    _, history = purify(tiny_model(), data, "anp", progress=False, **{**ANP, "lr": 50.0})
    masks = torch.cat([torch.tensor(m) for m in history["masks"].values()])
    assert masks.min() >= 0 and masks.max() <= 1
    assert masks.min() < 1  # the masks did move


def test_anp_path_optimises_once_and_is_monotone(data, monkeypatch):
    from ngfkit.defences import pruning

    model = tiny_model()
    defence = DEFENCES.get("anp")(**ANP)
    calls = []
    optimise = pruning.ANP._masks
    monkeypatch.setattr(pruning.ANP, "_masks", lambda self, *a, **k: calls.append(1) or optimise(self, *a, **k))
    values = (0.0, 0.5, 0.999, 1.0)
    path = list(defence.path(model, data, values, device=torch.device("cpu"), progress=False))
    assert [v for v, _ in path] == list(values) and len(calls) == 1
    counts = [sum(zero_weights(m, n) for n in ("body.1", "body.4", "body.8", "body.11")) for _, m in path]
    assert counts[0] == 0 and counts == sorted(counts) and counts[-1] > 0
    single, history = purify(model, data, "anp", progress=False, threshold=1.0, **ANP)
    assert history["num_pruned"] == counts[-1]
    assert all(torch.equal(a, b) for a, b in zip(single.state_dict().values(), path[-1][1].state_dict().values()))


@pytest.mark.parametrize("batch_stats", [False, True])
def test_anp_leaves_running_stats_untouched(data, batch_stats):
    model = tiny_model()
    before = state(model)
    purified, _ = purify(model, data, "anp", progress=False, threshold=0.0, batch_stats=batch_stats, **ANP)
    assert all(torch.equal(before[k], v) for k, v in purified.state_dict().items())


@pytest.mark.parametrize("method, options, word", [
    ("fp", {"ratio": 1.5}, "ratio"),
    ("fp", {"ratio": -0.1}, "ratio"),
    ("fp", {"steps": 0}, "steps"),
    ("anp", {"threshold": -1}, "threshold"),
    ("anp", {"eps": -0.1}, "eps"),
    ("anp", {"alpha": 2}, "alpha"),
    ("anp", {"iterations": 0}, "iterations"),
    ("anp", {"bogus": 1}, "bogus"),
    ("fp", {"bogus": 1}, "bogus"),
])
def test_bad_options_are_one_line_errors(data, method, options, word):
    assert word in one_line_error(purify, tiny_model(), data, method, progress=False, **options)


def test_bad_path_value_is_one_line_error(data):
    for method, knob in (("anp", "threshold"), ("fp", "ratio")):
        defence = DEFENCES.get(method)()
        # checked before any work is done: the default settings would take minutes here
        msg = one_line_error(lambda: list(defence.path(tiny_model(), data, (0.1, 1.5), device=torch.device("cpu"),
                                                        progress=False)))
        assert knob in msg


def test_fp_needs_a_conv_and_anp_a_batchnorm():
    from ngfkit.data import ImageTensorDataset, dataset_info

    info = dataset_info("fashion-mnist")
    data = ImageTensorDataset(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4), info)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert "Conv2d" in one_line_error(purify, mlp, data, "fp", progress=False, **FP)
    assert "BatchNorm" in one_line_error(purify, mlp, data, "anp", progress=False, **ANP)
