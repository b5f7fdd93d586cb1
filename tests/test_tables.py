import pytest

from ngfkit.errors import NgfkitError
from ngfkit.viz.tables import markdown_table


def test_dict_rows_every_key_in_first_seen_order():
    table = markdown_table([{"a": 1, "b": "x"}, {"a": 2, "c": None}])
    assert table.splitlines() == ["| a | b | c |", "| --- | --- | --- |", "| 1 | x |  |", "| 2 |  |  |"]


def test_columns_choose_rename_and_format():
    rows = [{"eta": 0.0, "asr": 98.125, "weight": object()}, {"eta": 1000.0, "asr": 5.0}]
    table = markdown_table(rows, {"eta": "η", "asr": "ASR (%)"}, formats={"eta": "g", "asr": ".1f"})
    assert table.splitlines() == ["| η | ASR (%) |", "| --- | --- |", "| 0 | 98.1 |", "| 1000 | 5.0 |"]


def test_sequence_rows_under_a_header_with_a_callable_format_and_missing_text():
    table = markdown_table([("ngf", 0.031, None)], ["defence", "lr", "note"],
                           formats={"lr": lambda v: f"{v:g} (chosen)"}, missing="–")
    assert table.splitlines()[2] == "| ngf | 0.031 (chosen) | – |"


def test_pipes_are_escaped_and_newlines_flattened():
    table = markdown_table([{"cell": "`a|b`\nc"}])
    assert table.splitlines()[2] == "| `a\\|b` c |"


@pytest.mark.parametrize("call, words", [
    (lambda: markdown_table([]), "no rows"),
    (lambda: markdown_table([(1, 2)]), "need a header"),
    (lambda: markdown_table([(1, 2)], ["a"]), "row 0 has 2 cells for 1 columns"),
    (lambda: markdown_table([{"a": 1}], formats={"b": ".1f"}), "'b', which is not a column"),
])
def test_bad_input_is_one_clear_error(call, words):
    with pytest.raises(NgfkitError, match=words):
        call()


def test_the_demo_table_lists_the_headline_defence_then_the_compared_ones():
    from ngfkit.viz.tables import demo_table

    metrics = {"acc": 90.0, "asr": 100.0, "ra": 0.0}
    result = {"attack": "badnets", "defense": "ngf-shift", "before": metrics,
              "after": {"acc": 89.0, "asr": 0.5, "ra": 20.0}, "seconds": {"purify": 7.25, "forward_pass": 2.5},
              "defense_history": {"setting": {"feature_shift": 0.1}},
              "compared": [{"defense": "ngf", "after": {"acc": 88.0, "asr": 61.6, "ra": 5.0},
                            "setting": {"lr": 0.01}, "seconds": 8.0}]}
    lines = demo_table(result).splitlines()
    assert lines[2].startswith("| backdoored (badnets) | 90.00 | 100.00 | 0.00 |")
    assert lines[3] == "| after `ngf-shift` | 89.00 | 0.50 | 20.00 | feature_shift=0.1 | 7.2 | 2.9 |"
    assert lines[4].startswith("| after `ngf` | 88.00 | 61.60 |") and lines[4].endswith("| 8.0 | 3.2 |")


def test_the_readme_generator_fills_an_empty_block_without_touching_the_next_one(monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TABLES", {"a": lambda: "| x |\n| --- |\n| 1 |", "b": lambda: "| y |\n| --- |\n| 2 |"})
    text = "<!-- table: a -->\n<!-- /table -->\n\nprose between\n\n<!-- table: b -->\n| old |\n<!-- /table -->\n"
    new, changed, unknown = module.regenerate(text)
    assert changed == ["a", "b"] and unknown == []
    assert new == ("<!-- table: a -->\n| x |\n| --- |\n| 1 |\n<!-- /table -->\n\nprose between\n\n"
                   "<!-- table: b -->\n| y |\n| --- |\n| 2 |\n<!-- /table -->\n")


def test_reported_table_sets_their_numbers_beside_ours_and_marks_what_is_missing():
    from ngfkit.viz.tables import reported_table

    reported = {"dataset": "cifar10", "before": {"cells": {"badnets": {"asr": 100.0, "acc": 93.0},
                                                           "wanet": {"asr": 98.6, "acc": 92.3}}},
                "methods": {"nft": {"cells": {"badnets": {"asr": 1.74, "acc": 90.82}}}}}
    cell = {"attack": "badnets", "defense": "nft", "seed": 0, "setting": "authors", "asr": 2.0, "acc_drop": 1.25}
    ours = {"dataset": "fashion-mnist", "cells": [cell, {**cell, "seed": 1, "asr": 4.0, "acc_drop": 0.75}],
            "before": [{"attack": "badnets", "seed": 0, "asr": 100.0}]}
    lines = reported_table(reported, ours, methods=("nft",)).splitlines()
    assert lines[0] == "| attack | before (cifar10) | nft (cifar10, theirs) | before (fashion-mnist, ours) | nft (fashion-mnist, ours) |"
    assert lines[2] == "| badnets | 100.0 (93.0) | 1.7 (90.8) | 100.0 | 3.0 (+1.0) |"  # ours: mean of 2 seeds
    assert len(lines) == 3  # wanet: in theirs only, so not shown
    with pytest.raises(NgfkitError, match="shares no attack"):
        reported_table(reported, {**ours, "cells": [{**cell, "attack": "lf"}]})
