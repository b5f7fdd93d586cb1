"""The NGF-family variants beyond the paper's text: the reference code's two scripts and ngf-shift,
plus the determinism of the clean-data rule across thread counts."""
import pytest
import torch
from defence_helpers import state, tiny_clean, tiny_model

from ngfkit.defences import DEFENCES, purify, select_and_purify
from ngfkit.errors import NgfkitError


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_the_reference_variants_carry_the_reference_codes_settings():
    ref = DEFENCES.get("ngf-reference")().config
    assert (ref.body, ref.damping, ref.reg_strength, ref.lr, ref.lr_milestones, ref.weight_decay_from,
            ref.sample_with_replacement, ref.steps, ref.batch_size) == ("sgd", 1e-3, 0.0, 1e-3, (200,), 200, True, 500, 128)
    reinit = DEFENCES.get("ngf-reference-reinit")().config
    assert reinit.reinit_head and reinit.fisher == "sampled" and reinit.lr == 1e-2 and not reinit.lr_milestones


def test_ngf_reference_trains_every_parameter_with_batchnorm_in_train_mode():
    model, data = tiny_model(), tiny_clean(48)
    purified, history = purify(model, data, "ngf-reference", device="cpu", progress=False, steps=4,
                               lr_milestones=(2,), weight_decay_from=2, batch_size=16)
    changed = changed_keys(state(model), state(purified))
    assert {"head.weight", "body.0.weight", "body.1.running_mean"} <= changed
    assert history["changed"] == "model" and history["setting"]["lr"] == 1e-3


def test_ngf_reference_reinit_starts_from_a_fresh_classifier():
    model, data = tiny_model(), tiny_clean(48)
    purified, _ = purify(model, data, "ngf-reference-reinit", device="cpu", progress=False, steps=1, lr=1e-9,
                         batch_size=16)
    # with a vanishing step the classifier is (nearly) the fresh one, far from the original
    assert (purified.head.weight - model.head.weight).abs().mean() > 1e-3


def test_ngf_shift_changes_the_last_block_and_the_classifier_only():
    model, data = tiny_model(), tiny_clean(48)
    purified, history = purify(model, data, "ngf-shift", device="cpu", progress=False, steps=5, augment=1)
    changed = changed_keys(state(model), state(purified))
    assert changed == {"body.16.weight", "body.16.bias", "head.weight", "head.bias"}
    # FST's projection keeps the classifier's weight norm at the original one
    assert torch.allclose(purified.head.weight.norm(), model.head.weight.norm(), rtol=1e-4)
    assert history["changed"] == "model" and history["setting"] == {"feature_shift": 0.1}


def test_ngf_shift_all_tunes_every_layer_of_any_model_and_keeps_the_classifier_norm():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    purified, history = purify(model, tiny_clean(48), "ngf-shift-all", device="cpu", progress=False, steps=3)
    assert changed_keys(state(model), state(purified)) == set(state(model))  # no Sequential body needed
    assert torch.allclose(purified[5].weight.norm(), model[5].weight.norm(), rtol=1e-4)
    assert history["changed"] == "model" and history["config"]["body"] == "all"


def test_ngf_shift_refuses_an_unknown_body_in_one_line():
    with pytest.raises(NgfkitError, match="body must be one of last-block, all") as info:
        DEFENCES.get("ngf-shift")(body="convs")
    assert "\n" not in str(info.value)


def test_ngf_shift_strength_is_chosen_by_the_one_rule():
    model, data = tiny_model(), tiny_clean(60)
    _, history = select_and_purify(model, data, "ngf-shift", device="cpu", progress=False, values=(0.0, 0.5),
                                   steps=5, augment=1)
    assert [t["value"] for t in history["selection"]["tried"]] == [0.0, 0.5]
    assert history["setting"]["feature_shift"] == history["selection"]["chosen"]


def test_ngf_shift_needs_a_sequential_body_with_a_linear_block():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(NgfkitError, match="nn.Sequential") as info:
        purify(model, tiny_clean(20), "ngf-shift", device="cpu", progress=False, steps=1)
    assert "\n" not in str(info.value)


def test_the_clean_data_rule_chooses_the_same_setting_on_one_and_two_threads():
    model, data = tiny_model(), tiny_clean(60)
    before = torch.get_num_threads()
    chosen = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _, history = purify(model, data, "ngf", device="cpu", progress=False, steps=30, folds=3, augment=1)
            chosen.append((history["setting"], [round(t["val_acc_drop"], 6) for t in history["selection"]["tried"]]))
    finally:
        torch.set_num_threads(before)
    assert chosen[0] == chosen[1]


def test_the_stability_summary_scores_agreement_and_spread_against_the_floors():
    from ngfkit.bench.stability import stability_table, summarise

    def cell(defence, seed, threads, lr, asr, cost, chosen=True):
        return {"defence": defence, "seed": seed, "threads": threads, "setting": {"lr": lr}, "asr": asr,
                "acc_cost": cost, "seconds": 1.0, "budget_met": True if chosen else None}

    report = {"cells": [cell("steady", s, t, 0.01, 1.0 + s, 1.0) for s in range(3) for t in (1, 2)]
              + [cell("lucky", s, t, 0.01 if s else 0.1, 0.0 if s else 90.0, 1.5) for s in range(3) for t in (1, 2)]
              + [cell("fixed", s, t, 0.01, 0.0, 1.0, chosen=False) for s in range(3) for t in (1, 2)],
              "forward_seconds": {"1": 0.5, "2": 0.25}}
    rows = {r["defence"]: r for r in summarise(report)}
    assert rows["steady"]["ratio_to_forward"] == pytest.approx(3.0)  # 1 s against 0.5 s and 0.25 s
    assert rows["steady"]["chosen_from_data"] and not rows["fixed"]["chosen_from_data"]
    report["cells"][0]["forward_seconds"] = 0.1  # a cell's own timing wins over the report's
    # 1 s over 0.1 s for that cell; the other five: 1 s over the report's 0.25 s (2 threads) or 0.5 s (1 thread)
    assert summarise(report)[0]["ratio_to_forward"] == pytest.approx((10.0 + 4 + 2 + 4 + 2 + 4) / 6)
    del report["cells"][0]["forward_seconds"]
    assert rows["steady"]["same_setting_share"] == 1.0 and rows["steady"]["asr_spread"] == 2.0
    assert rows["steady"]["floors"] == {"reproducible": True, "effective": True}
    assert rows["lucky"]["same_setting_share"] == pytest.approx(4 / 6) and rows["lucky"]["asr_max"] == 90.0
    assert rows["lucky"]["floors"] == {"reproducible": False, "effective": False}
    report["summary"] = list(rows.values())
    table = stability_table(report)
    assert "**no**" in table and "lr=0.01 (fixed)" in table and "lr=0.01 (100%)" in table


def test_ngf_shift_auto_chooses_its_distillation_weight_from_clean_data_alone():
    model, data = tiny_model(), tiny_clean(60)
    purified, history = purify(model, data, "ngf-shift-auto", device="cpu", progress=False, steps=3, augment=1)
    selection = history["selection"]
    assert selection["knob"] == "distill" and [t["value"] for t in selection["tried"]] == [3.0, 1.0, 0.3, 0.1, 0.0]
    assert history["setting"] == {"distill": selection["chosen"]} and selection["estimate"] == "holdout"
    # with nothing to lose on random images, the rule takes the strongest defence: no distillation
    assert selection["chosen"] == 0.0 and history["changed"] == "model"
    with pytest.raises(NgfkitError, match="holdout"):
        DEFENCES.get("ngf-shift-auto")(holdout=1.5)
