from ngfkit.defences import DEFENCES
from ngfkit.studies.ablation import (ablation_rows, changed_options, describe, lr_note, options_text, tried_at,
                                     within_budget)
from ngfkit.viz.tables import markdown_table

SELECTION = {"knob": "lr", "budget": 3.0, "chosen": 0.03, "tried": [
    {"value": 0.01, "val_acc": 90.0, "val_acc_drop": 0.5, "stderr": 0.4},
    {"value": 0.03, "val_acc": 88.0, "val_acc_drop": 2.5, "stderr": 0.5},
    {"value": 0.1, "val_acc": 80.0, "val_acc_drop": 10.5, "stderr": 0.9}]}


def test_changed_options_against_ngf_defaults_ignoring_seed_and_unknown_options():
    config = {"lr": None, "reg_strength": 0.0, "steps": 200, "seed": 3, "not_an_ngf_option": 1}
    assert changed_options(config, ignore=("seed", "steps")) == {"reg_strength": 0.0}
    assert changed_options({"a": 1, "b": 2}, base={"a": 1, "b": 3}) == {"b": 2}
    assert options_text({"body": "sgd", "lr": 0.01}) == "body=sgd, lr=0.01" and options_text({}) == "none"


def test_lr_note_and_the_tried_entries():
    chosen = {"setting": {"lr": 0.03}, "selection": SELECTION}
    assert lr_note(chosen) == "0.03 (chosen; held-out drop 2.5)"
    assert lr_note({"setting": {"lr": 0.01}}) == "0.01 (fixed)"
    assert tried_at(chosen, 0.1)["val_acc_drop"] == 10.5
    assert tried_at(chosen, 0.3) is None and tried_at({"setting": {}}, 0.03) is None
    assert within_budget(SELECTION) == [0.01, 0.03]


def test_describe_falls_back_to_the_docstring():
    assert describe("ngf", {"ngf": "the default"}) == "the default"
    assert describe("ngf-noreg") == DEFENCES.get("ngf-noreg").__doc__.split(".")[0].strip()


def test_ablation_rows_backdoored_first_then_each_run_in_order():
    run = {"after": {"acc": 88.0, "asr": 1.5, "ra": 9.0},
           "history": {"config": {"reg_strength": 0.0, "seed": 0}, "setting": {"lr": 0.03},
                       "selection": SELECTION, "seconds": 12.3}}
    rows = ablation_rows({"ngf-noreg": run}, {"acc": 90.0, "asr": 100.0, "ra": 0.0},
                         descriptions={"ngf-noreg": "no regulariser"})
    assert [r["variant"] for r in rows] == ["backdoored model", "`ngf-noreg`"]
    assert rows[1] == {"variant": "`ngf-noreg`", "what changes": "no regulariser",
                       "options changed": "reg_strength=0.0", "learning rate": "0.03 (chosen; held-out drop 2.5)",
                       "ACC (%)": 88.0, "ASR (%)": 1.5, "RA (%)": 9.0, "seconds": 12.3}
    table = markdown_table(rows, formats={"ACC (%)": ".1f", "seconds": ".0f"}).splitlines()
    assert table[2] == "| backdoored model |  |  |  | 90.0 | 100.0 | 0.0 |  |"
    assert table[3].endswith("| 88.0 | 1.5 | 9.0 | 12 |")
