"""Per-step trajectories replay the defences exactly (same final weights as purify) and measure
the model at the requested steps."""
import pytest
import torch

from defence_helpers import tiny_clean, tiny_model
from ngfkit.attacks import create_attack
from ngfkit.defences import purify
from ngfkit.errors import NgfkitError
from ngfkit.metrics import evaluate, evaluate_layer, predict
from ngfkit.studies.trajectory import fixed_subset, full_trajectory, head_trajectory
from ngfkit.viz.trajectory import trajectory_figure

NGF = dict(steps=12, batch_size=16, augment=1, factor_every=3, eigen_every=6)


@pytest.fixture(scope="module")
def setting():
    model, clean, test = tiny_model(), tiny_clean(48, seed=1), tiny_clean(30, seed=2)
    attack = create_attack("badnets", (1, 28, 28), 10)
    kept = predict(model, test, attack=attack, keep_inputs_of=model.head)
    return model, clean, test, attack, kept


def test_ngf_trajectory_replays_purify_and_measures_every_few_steps(setting):
    model, clean, _, _, kept = setting
    trajectory = head_trajectory(model, clean, kept, "ngf", eval_every=5, lr=0.05, **NGF)
    purified, _ = purify(model, clean, "ngf", lr=0.05, progress=False, **NGF)
    assert torch.allclose(trajectory["model"].head.weight, purified.head.weight, atol=1e-6)
    assert trajectory["steps"] == [0, 5, 10, 12] and trajectory["lr"] == 0.05
    assert trajectory["acc"][0] == pytest.approx(evaluate_layer(model.head, kept)["acc"])
    final = evaluate_layer(purified.head, kept)
    assert [trajectory[k][-1] for k in ("acc", "asr", "ra")] == pytest.approx([final[k] for k in ("acc", "asr", "ra")])
    # the body is untouched
    assert torch.equal(trajectory["model"].body[0].weight, model.body[0].weight)


def test_ngf_trajectory_chooses_its_lr_from_clean_data_like_purify(setting):
    model, clean, _, _, kept = setting
    options = dict(NGF, folds=2, lr_grid=(1e-3, 1e-1))
    trajectory = head_trajectory(model, clean, kept, "ngf-noreg", eval_every=6, **options)
    purified, history = purify(model, clean, "ngf-noreg", progress=False, **options)
    assert trajectory["lr"] == history["setting"]["lr"]
    assert trajectory["selection"]["tried"] == history["selection"]["tried"]
    assert torch.allclose(trajectory["model"].head.weight, purified.head.weight, atol=1e-6)


def test_last_layer_sgd_trajectory_replays_purify(setting):
    model, clean, _, _, kept = setting
    options = dict(steps=10, batch_size=16, augment=1)
    trajectory = head_trajectory(model, clean, kept, "ft-last", eval_every=4, **options)
    purified, _ = purify(model, clean, "ft-last", progress=False, **options)
    assert torch.equal(trajectory["model"].head.weight, purified.head.weight)
    assert trajectory["steps"] == [0, 4, 8, 10] and trajectory["lr"] == 0.01


def test_full_finetuning_trajectory_snapshots_equal_shorter_runs(setting):
    model, clean, test, attack, _ = setting
    options = dict(steps=6, batch_size=16)
    trajectory = full_trajectory(model, clean, test, attack, "ft", eval_every=4, **options)
    assert trajectory["steps"] == [0, 4, 6]
    purified, _ = purify(model, clean, "ft", progress=False, **options)
    assert all(torch.equal(a, b) for a, b in zip(trajectory["model"].state_dict().values(),
                                                  purified.state_dict().values()))
    final = evaluate(purified, test, attack)
    assert trajectory["asr"][-1] == pytest.approx(final["asr"]) and trajectory["acc"][-1] == pytest.approx(final["acc"])
    assert trajectory["acc"][0] == pytest.approx(evaluate(model, test, attack)["acc"])


@pytest.mark.parametrize("call, message", [
    (lambda s: head_trajectory(s[0], s[1], s[4], "ft"), "does not train the classifier alone"),
    (lambda s: head_trajectory(s[0], s[1], s[4], "ngf-sgd-body"), "full_trajectory"),
    (lambda s: head_trajectory(s[0], s[1], s[4], "ngf", eval_every=0), "eval_every"),
    (lambda s: full_trajectory(s[0], s[1], s[2], s[3], "ngf"), "ft or ft-sam"),
])
def test_wrong_methods_are_one_line_errors(setting, call, message):
    with pytest.raises(NgfkitError, match=message) as info:
        call(setting)
    assert "\n" not in str(info.value)


def test_fixed_subset_and_figure():
    data = tiny_clean(20)
    first, second = fixed_subset(data, 7, seed=3), fixed_subset(data, 7, seed=3)
    assert len(first) == 7 and torch.equal(first.images, second.images)
    assert fixed_subset(data, None) is data and fixed_subset(data, 50) is data
    lines = [{"method": m, "steps": [0, 5], "acc": [90.0, 88.0], "asr": [100.0, 3.0], "ra": [0.0, 80.0]}
             for m in ("ngf", "ft")]
    figure = trajectory_figure(lines, ["NGF", "FT"])
    assert len(figure.data) == 4
    assert figure.layout.yaxis.title.text == "attack success rate (%)"
    assert figure.layout.xaxis.title.text == "fine-tuning step"


def test_a_feature_cache_runs_the_body_once_and_only_for_identical_weights(setting):
    from ngfkit.defences import FeatureCache
    from ngfkit.defences.classifier_only import cache_features

    model, clean, _, _, _ = setting
    calls = []
    handle = model.body.register_forward_hook(lambda *args: calls.append(1))
    try:
        plain = cache_features(model, model.head, clean, views=1)
        first_calls = len(calls)
        cache = FeatureCache()
        a = cache.features(model, model.head, clean, views=1)
        b = cache.features(model, model.head, clean, views=1)
        assert len(calls) == 2 * first_calls  # the second call reused the first one's result
        changed = tiny_model(seed=5)
        cache.features(changed, changed.head, clean, views=1)  # other weights: computed anew
        assert len(cache) == 2
        cache_features(model, model.head, clean, views=1)  # without the cache: nothing stored
        assert len(cache) == 2
    finally:
        handle.remove()
    assert b is a and torch.equal(a.features, plain.features)


def test_purify_with_a_feature_cache_gives_the_same_model(setting):
    from ngfkit.defences import FeatureCache, purify

    model, clean, _, _, _ = setting
    cache = FeatureCache()
    plain, _ = purify(model, clean, "ngf", steps=20, lr=0.01, device="cpu", progress=False)
    shared, history = purify(model, clean, "ngf", steps=20, lr=0.01, device="cpu", progress=False, features=cache)
    again, _ = purify(model, clean, "ft-last", steps=20, device="cpu", progress=False, features=cache)
    assert len(cache) == 1 and history["changed"] == "head"
    assert torch.equal(plain.head.weight, shared.head.weight)
