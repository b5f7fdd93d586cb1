"""FST's tuning family (``lp``, ``ft-init``, ``fe-tuning``, ``fst``) on a user's tiny CNN: what each
trains, FST's norm constraint, seeding, the strength paths and one-line option errors."""
import pytest
import torch
from defence_helpers import state
from errors_helper import one_line_error
from tiny_cnn import TinyCNN, changed, tiny_data, tiny_model
from torch import nn

import ngfkit.defences.fst  # noqa: F401  (registers the four defences)
from ngfkit.defences import DEFENCES, purify
from ngfkit.models import reinitialise
from ngfkit.errors import NgfkitError

CPU = torch.device("cpu")
METHODS = ("lp", "ft-init", "fe-tuning", "fst")
HEAD = {"out.weight", "out.bias"}


def run(method, model=None, data=None, **options):
    options = {"steps": 4, "batch_size": 8, **options}
    return purify(model or tiny_model(), data or tiny_data(), method, device="cpu", progress=False, **options)


@pytest.mark.parametrize("method", METHODS)
def test_each_returns_the_same_architecture_and_the_shared_history(method):
    model = tiny_model()
    original = state(model)
    purified, history = run(method, model)
    assert type(purified) is TinyCNN
    assert {k: v.shape for k, v in purified.state_dict().items()} == {k: v.shape for k, v in original.items()}
    assert changed(original, state(model)) == set()  # the input is left alone
    assert history["method"] == method and history["seconds"] > 0 and history["config"]["steps"] == 4
    assert history["changed"] == ("head" if method == "lp" else "model")
    knob = DEFENCES.get(method).strength
    assert history["setting"] == {knob: history["config"][knob]}
    if method != "lp":
        assert len(history["loss"]) == 4


def test_fst_holds_the_classifier_norm_and_moves_it():
    model = tiny_model()
    purified, history = run("fst", model, feature_shift=0.5, lr=0.1)
    before, after = model.out.weight.detach().norm(), purified.out.weight.detach().norm()
    assert abs(float(after / before) - 1) < 1e-4
    assert not torch.allclose(purified.out.weight, model.out.weight)
    assert {"conv.0.weight", "hidden.weight", "conv.1.running_mean"} <= changed(state(model), state(purified))
    assert history["setting"] == {"feature_shift": 0.5}
    # the term changes the run: α = 0 is not the same tuning
    plain, _ = run("fst", model, feature_shift=0.0, lr=0.1)
    assert not torch.allclose(plain.out.weight, purified.out.weight)


def test_lp_changes_only_the_classifier():
    model = tiny_model()
    purified, _ = run("lp", model, lr=0.1)
    assert changed(state(model), state(purified)) == HEAD


def test_fe_tuning_keeps_the_reinitialised_classifier_and_tunes_the_body():
    model = tiny_model()
    purified, _ = run("fe-tuning", model, seed=3, lr=0.1)
    expected = nn.Linear(8, 3)
    reinitialise(expected, 3)
    assert torch.equal(purified.out.weight, expected.weight) and torch.equal(purified.out.bias, expected.bias)
    assert not torch.equal(expected.weight, model.out.weight)
    assert {"conv.0.weight", "hidden.weight"} <= changed(state(model), state(purified))


def test_ft_init_reinitialises_then_trains_the_classifier():
    model = tiny_model()
    purified, _ = run("ft-init", model, lr=0.1)
    fresh = nn.Linear(8, 3)
    reinitialise(fresh, 0)
    assert not torch.allclose(purified.out.weight, model.out.weight)
    assert not torch.equal(purified.out.weight, fresh.weight)  # trained after the re-initialisation
    assert {"conv.0.weight", "hidden.weight"} <= changed(state(model), state(purified))


@pytest.mark.parametrize("method", METHODS)
def test_the_same_seed_gives_the_same_model(method):
    first, _ = run(method, seed=1)
    again, _ = run(method, seed=1)
    assert changed(state(first), state(again)) == set()
    if method != "lp":  # lp's body is frozen and its head starts from the model's, so only order changes
        other, _ = run(method, seed=2)
        assert changed(state(first), state(other))


def test_step_paths_equal_single_runs_under_either_schedule():
    model, data = tiny_model(), tiny_data()
    for ratio in (1.0, 0.0):  # constant: snapshots of one run; cosine: one run per value
        defence = DEFENCES.get("ft-init")(batch_size=8, final_lr_ratio=ratio)
        path = dict(defence.path(model, data, (2, 4), device=CPU, progress=False))
        assert list(path) == [2, 4]
        alone, _ = run("ft-init", model, data, steps=2, final_lr_ratio=ratio)
        for key, value in state(alone).items():
            assert torch.allclose(value.float(), state(path[2])[key].float(), atol=1e-6), (ratio, key)
    fst = DEFENCES.get("fst")(steps=2, batch_size=8)
    path = dict(fst.path(model, data, (0.1, 0.5), device=CPU, progress=False))
    assert list(path) == [0.1, 0.5] and not torch.allclose(path[0.1].out.weight, path[0.5].out.weight)


@pytest.mark.parametrize("method, options, words", [
    ("fst", {"feature_shift": -1}, "fst feature_shift"),
    ("fst", {"steps": 0}, "fst steps"),
    ("ft-init", {"lr": float("nan")}, "ft-init lr"),
    ("fe-tuning", {"augment": "yes"}, "fe-tuning augment"),
    ("lp", {"steps": 0}, "lp steps"),
    ("fst", {"alpha": 0.2}, "no option 'alpha'"),
])
def test_a_bad_option_is_one_line_error(method, options, words):
    message = one_line_error(purify, tiny_model(), tiny_data(), method, device="cpu", progress=False, **options)
    assert words in message


def test_defaults_are_the_authors_scaled_to_our_budget():
    fst = DEFENCES.get("fst")().config
    assert (fst.lr, fst.momentum, fst.weight_decay, fst.final_lr_ratio, fst.feature_shift) == (0.01, 0.9, 0.0, 0.0, 0.2)
    assert (fst.steps, fst.batch_size) == (200, 64)
    lp = DEFENCES.get("lp")().config
    assert (lp.lr, lp.weight_decay, lp.final_lr_ratio, lp.steps) == (0.01, 0.0, 0.0, 200)
    for method in METHODS:
        grid = DEFENCES.get(method).strength_grid
        assert list(grid) == sorted(grid) and len(grid) >= 3
    with pytest.raises(NgfkitError):
        DEFENCES.get("ft-init")(steps=1.5)
