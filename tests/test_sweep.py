"""The regulariser-strength sweep (ngfkit.studies.sweep): rows, invariants, errors, figure and widget."""
import math

import pytest
import torch

from defence_helpers import tiny_clean, tiny_model
from errors_helper import one_line_error
from ngfkit.attacks import create_attack
from ngfkit.defences import purify
from ngfkit.metrics import predict
from ngfkit.models import classifier_layer
from ngfkit.defences.classifier_only import cache_features, head_predictions, layer_matrix
from ngfkit.pipeline import Splits
from ngfkit.studies.sweep import check_etas, classifier_fisher, movement_by_fisher, regulariser_sweep, spearman
from ngfkit.viz.sweep import sweep_figure, sweep_widget

FAST = dict(steps=20, batch_size=32, augment=1, lr=0.05)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    attack = create_attack("badnets", (1, 28, 28), 10, target=0, seed=0)
    splits = Splits(train=None, clean=tiny_clean(60, seed=0), test=tiny_clean(40, seed=1))
    predictions = predict(model, splits.test, attack=attack, keep_inputs_of=classifier_layer(model))
    return model, attack, splits, predictions


def test_one_row_per_eta_with_finite_metrics(setup):
    model, attack, splits, predictions = setup
    rows = regulariser_sweep(model, attack, splits, [10, 0, 1], seed=0, test_predictions=predictions, **FAST)
    assert [r["eta"] for r in rows] == [0.0, 1.0, 10.0]
    for row in rows:
        for key in ("acc", "asr", "ra", "seconds", "shift", "fisher_distance", "clean_set_acc"):
            assert math.isfinite(row[key]), (key, row)
        assert 0 <= row["acc"] <= 100 and 0 <= row["asr"] <= 100
        assert row["lr"] == FAST["lr"] and row["lr_chosen"] is False
        assert row["weight"].shape == layer_matrix(classifier_layer(model)).shape
    # the input model is left as it was
    assert torch.equal(layer_matrix(classifier_layer(model)), layer_matrix(classifier_layer(tiny_model())))


def test_sweep_row_is_what_purify_gives(setup):
    model, attack, splits, predictions = setup
    row = regulariser_sweep(model, attack, splits, [3.0], seed=0, test_predictions=predictions, **FAST)[0]
    purified, _ = purify(model, splits.clean, "ngf", progress=False, seed=0, reg_strength=3.0, **FAST)
    assert torch.allclose(row["weight"], layer_matrix(classifier_layer(purified)), atol=1e-6)


def test_huge_eta_keeps_the_layer_where_clean_data_sees_it(setup):
    model, attack, splits, predictions = setup
    free, held = regulariser_sweep(model, attack, splits, [0, 1e9], seed=0, test_predictions=predictions, **FAST)
    assert free["shift"] > 0 and free["fisher_distance"] > 0
    # the Fisher-weighted distance from the original layer collapses ...
    assert held["fisher_distance"] < 1e-3 * free["fisher_distance"]
    assert held["shift"] < free["shift"]
    # ... and with it what the layer does on the clean images: their outputs barely change
    head = classifier_layer(model)
    features = cache_features(model, head, splits.clean, views=0).features[0]
    original = head(features).softmax(1)
    with torch.no_grad():
        def probabilities(weight):
            return (features @ weight[:, :-1].T + weight[:, -1]).softmax(1)
        assert (probabilities(held["weight"]) - original).abs().max() < 1e-2
        assert (probabilities(free["weight"]) - original).abs().max() > 10 * (probabilities(held["weight"])
                                                                                - original).abs().max()
    assert torch.equal(head_predictions(held["weight"], features), head_predictions(layer_matrix(head), features))


def test_lr_none_is_chosen_once_from_clean_data(setup):
    model, attack, splits, predictions = setup
    options = {**FAST, "lr": None, "lr_grid": (0.01, 0.1), "folds": 2}
    rows = regulariser_sweep(model, attack, splits, [0, 100], seed=0, test_predictions=predictions, **options)
    assert rows[0]["lr"] == rows[1]["lr"] and rows[0]["lr"] in (0.01, 0.1)
    assert all(r["lr_chosen"] for r in rows)


def test_generic_path_runs_purify_per_eta(setup):
    model, attack, splits, _ = setup
    rows = regulariser_sweep(model, attack, splits, [0, 5.0], seed=0, body="sgd", steps=3, batch_size=16,
                             augment=0, lr=0.01)
    assert [r["eta"] for r in rows] == [0.0, 5.0]
    assert all(math.isfinite(r[k]) for r in rows for k in ("acc", "asr", "ra", "shift", "fisher_distance"))
    assert all(r["lr"] == 0.01 for r in rows)


@pytest.mark.parametrize("etas", [[-1.0], [0, -0.5], [float("nan")], [float("inf")], [], ["strong"]])
def test_invalid_eta_is_a_clear_error(setup, etas):
    model, attack, splits, predictions = setup
    message = one_line_error(regulariser_sweep, model, attack, splits, etas, test_predictions=predictions, **FAST)
    assert "η" in message or "strength" in message


def test_reg_strength_option_is_refused(setup):
    model, attack, splits, _ = setup
    assert "etas" in one_line_error(regulariser_sweep, model, attack, splits, [1.0], reg_strength=3.0)


def test_check_etas_sorts():
    assert check_etas([100, 0, 1]) == [0.0, 1.0, 100.0]


def test_classifier_fisher_and_movement_summary(setup):
    model, _, splits, _ = setup
    result = classifier_fisher(model, splits.clean)
    fisher = result.diagonal
    assert fisher.shape == layer_matrix(classifier_layer(model)).shape and (fisher >= 0).all()
    # the eigenbasis is orthonormal and the eigen-scales carry the same total Fisher (the trace)
    assert torch.allclose(result.q_a.T @ result.q_a, torch.eye(result.q_a.shape[0]), atol=1e-4)
    assert result.scales.shape == fisher.shape
    assert float(result.scales.sum()) == pytest.approx(float(fisher.sum()), rel=1e-3)
    change = torch.randn(fisher.shape)
    assert float(result.rotate(change).norm()) == pytest.approx(float(change.norm()), rel=1e-4)
    bias_column = fisher[:, -1]
    assert (bias_column > 0).all()  # the bias sees every image
    shift = fisher.sqrt()
    summary = movement_by_fisher(fisher, {"a": shift, "b": -2 * shift}, bins=5)
    assert len(summary["centres"]) == 5 and len(summary["edges"]) == 6
    assert summary["spearman"]["a"] == pytest.approx(1.0)
    means = summary["mean_shift"]["b"]
    assert means == sorted(means) and means[0] == pytest.approx(2 * summary["mean_shift"]["a"][0])
    normalised = fisher / fisher.mean()
    assert summary["zero_fraction"] == pytest.approx(float((fisher == 0).double().mean()))
    assert summary["unseen_fraction"] == pytest.approx(float((normalised < 1e-6).double().mean()))
    assert summary["centres"][0] >= 1e-6  # bins hold only weights the clean data see
    assert 1 - summary["unseen_fraction"] > 0.1
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)


ROWS = [{"eta": e, "lr": 0.03, "acc": 85 + e / 100, "asr": 100 - e / 10, "ra": 10.0, "clean_set_acc": 90.0,
         "seconds": 1.0, "shift": 1.0, "fisher_distance": 2.0} for e in (0.0, 1.0, 10.0, 100.0)]


def test_sweep_figure_draws_eta_zero_apart_on_a_log_axis():
    figure = sweep_figure(ROWS, before={"acc": 90.0, "asr": 100.0, "ra": 0.0})
    for axis in (figure.layout.xaxis, figure.layout.xaxis2):
        assert axis.type == "log"
        assert list(axis.ticktext) == ["0", "1", "10", "100"]
        assert list(axis.tickvals)[0] == pytest.approx(0.1)
    zero_markers = [t for t in figure.data if t.marker.symbol == "circle-open"]
    assert len(zero_markers) == 3 and all(list(t.x) == [pytest.approx(0.1)] for t in zero_markers)
    # η = 0 is not also on the line through the positive η
    assert all(min(t.x) >= 1 for t in figure.data if t.mode == "lines+markers")
    assert "(%)" in figure.layout.yaxis.title.text and "(%)" in figure.layout.yaxis2.title.text
    assert "η" in figure.layout.xaxis2.title.text


def test_widget_shows_precomputed_rows_only():
    box = sweep_widget(ROWS, before={"acc": 90.0, "asr": 100.0, "ra": 0.0}, value=10.0)
    assert list(box.slider.options) == ["0", "1", "10", "100"]
    assert box.slider.value == "10" and box.panels.selected_index == 2
    assert len(box.panels.children) == len(ROWS)
    assert "η = 100" in box.panels.children[3].value and "99.90 %" in box.panels.children[1].value
    box.slider.value = "100"
    assert box.panels.selected_index == 3
    assert "ASR" in box.panels.children[3].value and "90.00 %" in box.panels.children[3].value
