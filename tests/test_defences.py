"""The fine-tuning defences, the NGF ablations, the shared strength rule and the defence bench."""
import json

import pytest
import torch
from defence_helpers import quick_options, state, tiny_clean, tiny_model
from errors_helper import one_line_error

from ngfkit.bench.defences import _split_grid, defence_table, summarise
from ngfkit.cli import main
from ngfkit.defences import DEFENCES, purify
from ngfkit.defences.selection import holdout_split, select_and_purify
from ngfkit.errors import NgfkitError
from ngfkit.utils import PeakMemory

CPU = torch.device("cpu")


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_every_defence_returns_the_same_architecture_and_leaves_its_input_alone():
    model, data = tiny_model(), tiny_clean(48)
    original = state(model)
    for name in DEFENCES.names():
        options = quick_options(name)
        purified, history = purify(model, data, name, progress=False, **options)
        assert type(purified) is type(model), name
        shapes = {k: v.shape for k, v in purified.state_dict().items()}
        assert shapes == {k: v.shape for k, v in original.items()}, name
        assert changed_keys(original, state(model)) == set(), f"{name} modified its input"
        assert history["method"] == name and history["seconds"] > 0 and "config" in history


def test_ft_last_changes_only_the_classifier_and_matches_ngf_data_pipeline():
    model, data = tiny_model(), tiny_clean(48)
    purified, history = purify(model, data, "ft-last", progress=False, steps=20, lr=0.5)
    assert changed_keys(state(model), state(purified)) == {"head.weight", "head.bias"}
    assert history["changed"] == "head" and history["setting"] == {"lr": 0.5}
    ft, ft_history = purify(model, data, "ft", progress=False, steps=2)
    assert ft_history["changed"] == "model" and ft_history["setting"] == {"steps": 2}


def test_ft_trains_every_layer_and_updates_batchnorm_statistics():
    model, data = tiny_model(), tiny_clean(48)
    purified, history = purify(model, data, "ft", progress=False, steps=3)
    changed = changed_keys(state(model), state(purified))
    assert {"head.weight", "body.0.weight", "body.1.running_mean"} <= changed
    assert len(history["loss"]) == 3


def test_sam_second_pass_leaves_batchnorm_statistics_as_plain_fine_tuning_does():
    model, data = tiny_model(), tiny_clean(48)
    sam, _ = purify(model, data, "ft-sam", progress=False, steps=1, batch_size=16)
    plain, _ = purify(model, data, "ft", progress=False, steps=1, batch_size=16)
    # the same first forward pass moves the running statistics once; SAM's second pass must not
    assert torch.allclose(sam.body[1].running_mean, plain.body[1].running_mean)
    assert not torch.allclose(sam.body[0].weight, plain.body[0].weight)  # but the step itself differs


def test_steps_path_snapshots_equal_shorter_runs():
    model, data = tiny_model(), tiny_clean(32)
    defence = DEFENCES.get("ft")(batch_size=16)
    snapshots = dict(defence.path(model, data, (2, 4), device=CPU, progress=False))
    assert list(snapshots) == [2, 4]
    short, _ = purify(model, data, "ft", progress=False, steps=2, batch_size=16)
    for key, value in state(short).items():
        assert torch.allclose(value.float(), state(snapshots[2])[key].float(), atol=1e-6), key
    assert changed_keys(state(snapshots[2]), state(snapshots[4]))


def test_ngf_path_trains_one_head_per_learning_rate_like_single_runs():
    model, data = tiny_model(), tiny_clean(40)
    defence = DEFENCES.get("ngf")(steps=20, augment=1)
    path = dict(defence.path(model, data, (0.003, 0.01), device=CPU, progress=False))
    for lr in (0.003, 0.01):
        alone, _ = purify(model, data, "ngf", progress=False, steps=20, augment=1, lr=lr)
        # the same arithmetic batched over heads (float rounding differs slightly)
        assert torch.allclose(alone.head.weight, path[lr].head.weight, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(path[0.003].head.weight, path[0.01].head.weight)


def test_ngf_ablations_are_registered_with_their_one_change():
    expected = {"ngf-sgd-body": ("body", "sgd"), "ngf-noreg": ("reg_strength", 0.0),
                "ngf-sampled": ("fisher", "sampled"), "ngf-kfac": ("ekfac", False)}
    base = DEFENCES.get("ngf")().config
    for name, (field, value) in expected.items():
        config = DEFENCES.get(name)().config
        assert getattr(config, field) == value and getattr(base, field) != value
        assert DEFENCES.get(name).strength == "lr"
    assert DEFENCES.get("ngf-noreg")(reg_strength=2.0).config.reg_strength == 2.0  # options still apply


def test_selection_keeps_the_strongest_value_within_the_budget():
    model, data = tiny_model(), tiny_clean(60)
    purified, history = select_and_purify(model, data, "ft-last", acc_budget=3.0, progress=False,
                                          values=(0.01, 1.0, 30.0), steps=30)
    selection = history["selection"]
    drops = {t["value"]: t["val_acc_drop"] for t in selection["tried"]}
    assert list(drops) == [0.01, 1.0, 30.0] and selection["knob"] == "lr" and selection["estimate"] == "holdout"
    chosen = selection["chosen"]
    if selection["budget_met"]:
        assert drops[chosen] <= 3.0 and all(drops[v] > 3.0 for v in drops if v > chosen)
    else:
        assert drops[chosen] == min(drops.values())
    assert selection["fit_images"] == 48 and selection["held_out_images"] == 12
    assert history["config"]["lr"] == chosen == history["setting"]["lr"] and history["changed"] == "head"


def test_holdout_split_is_seeded_and_disjoint():
    fit, held = holdout_split(50, 0.2, seed=3)
    assert len(held) == 10 and set(fit.tolist()).isdisjoint(held.tolist())
    assert torch.equal(held, holdout_split(50, 0.2, seed=3)[1])
    for bad in (0.0, 1.0):
        with pytest.raises(NgfkitError):
            holdout_split(50, bad, seed=0)


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory("cpu") as memory:
        block = torch.ones(40_000_000)  # 160 MB
        block.add_(1)
        del block
    assert memory.peak_mb > 80


def test_bad_defence_options_give_one_line_errors():
    model, data = tiny_model(), tiny_clean(16)
    for call in (lambda: purify(model, data, "ft", progress=False, bogus=1),
                 lambda: purify(model, data, "nope", progress=False),
                 lambda: purify(model, data, "ft", progress=False, steps=0),
                 lambda: purify(model, data, "ft-last", progress=False, lr=-1.0),
                 lambda: _split_grid("ft", {"steps": []})):
        one_line_error(call)


def test_grid_given_for_the_knob_is_split_from_the_options():
    options, grid = _split_grid("ft", {"steps": [5, 10], "lr": 0.02})
    assert options == {"lr": 0.02} and grid == (5, 10)
    assert _split_grid("ft", {"steps": 5}) == ({"steps": 5}, None)


def fake_report():
    cells = []
    for defence, asr, drop, seconds in (("ngf", 1.0, 2.0, 1.0), ("ft", 80.0, 1.0, 4.0)):
        for attack in ("badnets", "blend"):
            for seed in (0, 1):
                cells.append({"attack": attack, "defense": defence, "seed": seed, "setting": "selected",
                              "acc": 88.0, "asr": asr + seed, "ra": 5.0, "der": 90.0, "acc_drop": drop,
                              "seconds": seconds, "peak_mb": 10.0})
    before = [{"attack": a, "seed": s, "acc": 90.0, "asr": 100.0, "ra": 0.0} for a in ("badnets", "blend")
              for s in (0, 1)]
    return {"dataset": "fashion-mnist", "arch": "smallcnn", "acc_budget": 3.0, "seeds": [0, 1],
            "cells": cells, "before": before}


def test_summary_means_and_table():
    report = fake_report()
    summary = {r["defense"]: r for r in summarise(report)}
    assert summary["ngf"]["asr"] == pytest.approx(1.5) and summary["ngf"]["cells"] == 4
    assert summary["ngf"]["asr_std"] == pytest.approx(torch.tensor([1.0, 2.0, 1.0, 2.0]).std().item())
    table = defence_table(report)
    assert "| ngf | 2 | 2.00 ± 0.00 | 1.50 ± 0.58 |" in table
    assert "| badnets | 100.0 | 1.5 (+2.0) | 80.5 (+1.0) |" in table


def test_training_length_table_has_a_row_per_training_length():
    from ngfkit.bench.defences import training_length_table

    short = {**fake_report(), "train": {"epochs": 1, "lr": 0.05}}
    long = {**fake_report(), "train": {"epochs": 30, "lr": 0.1}}
    long["cells"] = [{**c, "asr": c["asr"] + 50.0} for c in long["cells"] if c["defense"] == "ngf"]
    table = training_length_table([long, short]).splitlines()
    assert table[0] == "| epochs | train lr | seeds | ASR before | ngf | ft |"
    assert table[2] == "| 1 | 0.05 | 2 | 100.0 | 1.5 (+2.0) | 80.5 (+1.0) |"
    assert table[3] == "| 30 | 0.1 | 2 | 100.0 | 51.5 (+2.0) | – |"  # ft was not run on it
    assert "none of the reports" in one_line_error(lambda: training_length_table([short], attack="wanet"))


def test_defence_scatter_has_one_marker_per_defence():
    from ngfkit.viz.plots import defence_scatter

    figure = defence_scatter(fake_report())
    assert list(figure.data[0].text) == ["ngf", "ft"]
    assert figure.layout.xaxis.title.text.startswith("clean-accuracy drop")


def test_bench_defences_cli_rejects_bad_input_in_one_line(capsys, tmp_path):
    for argv, needle in ((["--defenses", "nope"], "unknown defence 'nope'"),
                         (["--defense-param", "ftsteps=3"], "NAME.KEY=VALUE"),
                         (["--defense-param", "ft.bogus=3"], "has no option 'bogus'"),
                         (["--settings", "best"], "unknown setting 'best'")):
        assert main(["bench", "defences", "--attacks", "badnets", *argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    stale = tmp_path / "old.json"
    stale.write_text(json.dumps({"dataset": "cifar10", "arch": "preact-resnet18", "acc_budget": 3.0}))
    assert main(["bench", "defences", "--attacks", "badnets", "--defenses", "ngf", "--json", str(stale),
                 "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_merge_joins_reports_of_one_benchmark_and_refuses_others(tmp_path):
    from ngfkit.bench.defences import merge_reports

    settings = {"holdout": 0.2, "clean_fraction": 0.01, "train": {"epochs": 1}}
    first, second = {**fake_report(), **settings}, {**fake_report(), **settings}
    renamed = {"badnets": "wanet", "blend": "lf"}
    second["cells"] = [{**c, "attack": renamed[c["attack"]]} for c in second["cells"]]
    second["before"] = [{**b, "attack": renamed[b["attack"]]} for b in second["before"]]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, report in zip(paths, (first, second)):
        path.write_text(json.dumps(report))
    merged = merge_reports(paths + paths[:1])  # a report given twice adds nothing
    assert len(merged["cells"]) == 16 and len(merged["before"]) == 8
    assert {r["defense"]: r["cells"] for r in merged["summary"]} == {"ngf": 8, "ft": 8}
    other = tmp_path / "c.json"
    other.write_text(json.dumps({**first, "acc_budget": 1.0}))
    with pytest.raises(NgfkitError, match="other settings"):
        merge_reports([paths[0], other])


def test_bench_defences_all_runs_every_registered_defence_once():
    from ngfkit.bench.defences import ALL_DEFENCES

    assert sorted(ALL_DEFENCES) == sorted(DEFENCES.names()) and len(set(ALL_DEFENCES)) == len(ALL_DEFENCES)
    assert DEFENCES.parse_names("all", default=ALL_DEFENCES)[:1] == ["ngf"]
