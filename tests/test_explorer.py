"""The attacks chapter's tools: short-budget trigger settings, strength knobs, the explorer's pure
view, its widget, and ACC / ASR / RA counted on a few images."""
from __future__ import annotations

import io
import math

import pytest
import torch
from errors_helper import one_line_error
from image_helpers import rand_images

from ngfkit.attacks import ATTACKS, FAMILIES, NO_STRENGTH, create_attack
from ngfkit.attacks.style import FeatureSpaceBackdoor, fba_style
from ngfkit.viz.explorer import (
    attack_explorer,
    attack_names,
    budget_params,
    example_rows,
    explorer_view,
    knob_values,
    metric_counts,
    perturbation_stats,
    prepare_attacks,
    view_html,
    view_png,
    with_strength,
)
from ngfkit.metrics import accuracy, attack_success_rate, robust_accuracy
from ngfkit.viz.plots import explorer_figure

SHAPE = (1, 28, 28)
LABELS = torch.arange(20) % 10  # two images of every class
IMAGES = rand_images(20, SHAPE)


def build(names, shape=SHAPE):
    """Attacks as built from their seeds (learned ones unfitted: their generators are random but
    apply works, which is all the explorer needs)."""
    return {name: create_attack(name, shape, 10) for name in names}


ALL = build(ATTACKS.names())


# -- names and the short budget -------------------------------------------------------------------


def test_attack_names_all_is_every_registered_attack_once_in_family_order() -> None:
    names = attack_names("all")
    assert sorted(names) == ATTACKS.names() and len(names) == len(set(names)) == 15
    families = [FAMILIES.index(ATTACKS.get(n).family) for n in names]
    assert families == sorted(families) and names[:2] == ["badnets", "blend"] and names[-1] == "cba"
    assert attack_names(" badnets, blend ") == ["badnets", "blend"]
    assert "unknown attack 'nope'" in one_line_error(attack_names, "badnets,nope")
    assert "no attack given" in one_line_error(attack_names, "")


def test_short_budget_covers_every_learned_attack_with_parameters_it_has() -> None:
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        assert budget_params(name, "full") == {}
        short = budget_params(name, "short")
        if not cls.learned:
            assert short == {}
        elif name != "cba":  # CBA's fit only gathers images: nothing to shorten
            assert short, f"{name} is learned but has no short-budget setting"
        assert set(short) <= set(cls.defaults)
        create_attack(name, SHAPE, 10, **short)  # the overrides are valid parameters
    assert "trigger_budget must be one of short, full" in one_line_error(budget_params, "lira", "half")


def test_prepare_attacks_builds_fixed_triggers_without_fitting() -> None:
    attacks, rows = prepare_attacks("fashion-mnist", "badnets,blend", trigger_budget="short")
    assert list(attacks) == ["badnets", "blend"]
    assert [r["fit_seconds"] for r in rows] == [0.0, 0.0] and not any(r["learned"] for r in rows)


# -- strength knobs --------------------------------------------------------------------------------


def test_every_attack_has_a_knob_and_its_default_is_on_the_grid() -> None:
    for name, attack in ALL.items():
        knob = attack.strength
        assert knob.meaning != NO_STRENGTH.meaning, f"{name} defines no strength knob"
        values = knob_values(attack)
        if knob.param is None:
            assert values == [] and knob.meaning
            assert "has no strength knob" in one_line_error(with_strength, attack, 0.5)
        else:
            assert knob.low <= knob.current(attack) <= knob.high
            assert round(knob.current(attack), 6) in values and values == sorted(values)
            assert "must be in" in one_line_error(with_strength, attack, knob.high + 1)


def test_fba_style_is_the_identity_at_zero_and_the_defaults_at_one() -> None:
    defaults = FeatureSpaceBackdoor.defaults
    assert fba_style(1.0) == pytest.approx({k: defaults[k] for k in ("gamma", "lift", "warmth", "vignette", "emboss")})
    assert fba_style(0.0) == {"gamma": 1.0, "lift": 0.0, "warmth": 0.0, "vignette": 0.0, "emboss": 0.0}


def test_with_strength_keeps_learned_trigger_tensors_and_sets_the_rate() -> None:
    lira = ALL["lira"]
    lira.trigger = {k: v + 0.01 for k, v in lira.trigger.items()}  # stands in for a fitted generator
    copy = with_strength(lira, 0.1, poison_rate=0.2)
    assert copy.params["eps"] == 0.1 and copy.poison_rate == 0.2
    assert all(torch.equal(copy.trigger[k], lira.trigger[k]) for k in lira.trigger)


# -- the pure view ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_view_shapes(shape) -> None:
    images = rand_images(20, shape)
    view = explorer_view(build(["badnets", "issba"], shape), "issba", images, LABELS, show=3)
    for key in ("clean", "triggered", "residual"):
        assert view[key].shape == (3, *shape)
    assert view["indices"].tolist() == [1, 2, 3]  # class 0 is the target: not attacked
    assert view["targets"].tolist() == [0, 0, 0] and view["images"] == 18
    assert view["residual"].min() >= 0 and view["residual"].max() <= 1


@pytest.mark.parametrize("name", [n for n, a in ALL.items() if a.strength.param and a.strength.zero_is_clean])
def test_strength_zero_means_no_trigger(name) -> None:
    view = explorer_view(ALL, name, IMAGES, LABELS, strength=0)
    assert view["off"] and torch.equal(view["triggered"], view["clean"])
    assert view["linf"] == 0 and view["l2"] == 0 and view["changed"] == 0 and math.isinf(view["psnr"])
    assert torch.all(view["residual"] == 0.5)


@pytest.mark.parametrize("name, value", [("blend", 0.3), ("sig", 0.1), ("clb", 0.4), ("lira", 0.02), ("issba", 0.07)])
def test_additive_triggers_stay_within_their_strength(name, value) -> None:
    view = explorer_view(ALL, name, IMAGES, LABELS, strength=value)
    assert 0 < view["linf"] <= value + 1e-6
    assert view["value"] == value and not view["off"]


def test_a_bigger_patch_changes_more_pixels() -> None:
    changed = [explorer_view(ALL, "badnets", IMAGES, LABELS, strength=s)["changed"] for s in (1, 3, 6)]
    assert changed == sorted(changed) and changed[0] < changed[-1]


def test_perturbation_stats_of_a_uniform_shift() -> None:
    clean = torch.full((2, 1, 4, 4), 0.5)
    stats = perturbation_stats(clean, clean + 0.1)
    assert stats["linf"] == pytest.approx(0.1) and stats["l2"] == pytest.approx(0.1 * 4)
    assert stats["psnr"] == pytest.approx(20.0) and stats["changed"] == 100.0
    assert "one shape" in one_line_error(perturbation_stats, clean, clean[0])


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.25])
def test_poison_count_is_rate_times_training_size(rate) -> None:
    train_labels = torch.arange(1000) % 10
    view = explorer_view(ALL, "badnets", IMAGES, LABELS, poison_rate=rate, train_labels=train_labels)
    assert view["poisoned"] == round(rate * 1000) == view["relabelled"] and view["train_size"] == 1000
    assert view["cover"] == 0 and view["poison_rate"] == rate
    wanet = explorer_view(ALL, "wanet", IMAGES, LABELS, poison_rate=rate, train_labels=train_labels)
    assert wanet["cover"] == round(2.0 * rate * 1000)  # its noise mode: cross_ratio 2


def test_clean_label_attacks_relabel_nothing_and_reject_rates_beyond_the_target_class() -> None:
    train_labels = torch.arange(1000) % 10
    view = explorer_view(ALL, "sig", IMAGES, LABELS, poison_rate=0.05, train_labels=train_labels)
    assert view["poisoned"] == 50 and view["relabelled"] == 0
    msg = one_line_error(explorer_view, ALL, "sig", IMAGES, LABELS, poison_rate=0.2, train_labels=train_labels)
    assert "only target-class images" in msg


def test_unknown_or_missing_attacks_give_a_clear_error() -> None:
    assert "unknown attack 'nope'" in one_line_error(explorer_view, ALL, "nope", IMAGES, LABELS)
    msg = one_line_error(explorer_view, build(["badnets"]), "lira", IMAGES, LABELS)
    assert "registered but not among the explorer's attacks" in msg and "prepare_attacks" in msg
    assert "none of the 2 images" in one_line_error(explorer_view, ALL, "badnets", IMAGES[:2], torch.zeros(2, dtype=torch.long))


def test_view_picture_and_figure() -> None:
    from PIL import Image

    view = explorer_view(ALL, "blend", IMAGES, LABELS, show=2)
    picture = Image.open(io.BytesIO(view_png(view, scale=2, gap=2)))
    assert picture.size == (2 * (3 * 28 + 2 * 2), 2 * (2 * 28 + 2))
    assert view_html(view).startswith('<img src="data:image/png;base64,')
    figure = explorer_figure(view, class_name=lambda c: f"class {c}")
    assert len(figure.data) == 6 and all(trace.type == "image" for trace in figure.data)
    assert "blend, alpha = 0.2" in figure.layout.title.text and f"L∞ {view['linf']:.3f}" in figure.layout.title.text


# -- the widget -------------------------------------------------------------------------------------


def test_explorer_widget_has_one_panel_per_attack_and_control_value() -> None:
    import ipywidgets as widgets

    train_labels = torch.arange(1000) % 10
    box = attack_explorer(ALL, IMAGES, LABELS, train_labels=train_labels, initial="blend")
    assert isinstance(box, widgets.VBox) and list(box.menu.options) == list(ALL) and box.menu.value == "blend"
    for name, panel in box.panels.items():
        values = knob_values(ALL[name])
        assert len(panel["views"].children) == max(1, len(values))
        if values:
            assert panel["strength"].value == f"{ALL[name].strength.current(ALL[name]):.3g}"
        else:
            assert panel["strength"] is None
        assert len(panel["counts"].children) == len(panel["rate"].options)
    # the rate 0.2 asks for more images than sig's target class holds: that panel says so
    sig = box.panels["sig"]
    assert "not possible" in sig["counts"].children[sig["rate"].options.index("0.2")].value
    # with a kernel, moving a control shows its panel
    box.menu.value = "badnets"
    assert box.children[1].selected_index == list(ALL).index("badnets")
    badnets = box.panels["badnets"]
    badnets["strength"].value = "0"
    assert badnets["views"].selected_index == 0 and "trigger off" in badnets["views"].children[0].value


def test_explorer_widget_errors() -> None:
    assert "at least one attack" in one_line_error(attack_explorer, {}, IMAGES, LABELS)
    assert "unknown attack 'nope'" in one_line_error(attack_explorer, ALL, IMAGES, LABELS, initial="nope")


# -- ACC, ASR and RA counted -------------------------------------------------------------------------


def test_metric_counts_agree_with_the_metrics_module() -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    predictions = {"labels": labels, "clean": torch.tensor([0, 1, 2, 3, 0, 5]),
                   "triggered": torch.tensor([0, 0, 0, 3, 1, 0]), "target": torch.tensor([0, 0, 0, 0, 0, 0])}
    counts = metric_counts(predictions)
    assert counts["n"] == 6 and counts["clean_correct"] == 5 and counts["attacked"] == 5
    assert (counts["to_target"], counts["to_true"], counts["to_other"]) == (3, 1, 1)
    assert counts["acc"] == pytest.approx(accuracy(predictions["clean"], labels))
    assert counts["asr"] == pytest.approx(attack_success_rate(predictions["triggered"], labels, predictions["target"]))
    assert counts["ra"] == pytest.approx(robust_accuracy(predictions["triggered"], labels, predictions["target"]))
    rows = example_rows(predictions, names=[f"c{i}" for i in range(6)])
    assert [r["counts towards"].split(" ")[0] for r in rows] == ["neither", "ASR", "ASR", "RA", "neither", "ASR"]
    assert rows[4]["clean prediction"] == "c0 ✗" and rows[1]["clean prediction"] == "c1 ✓"
