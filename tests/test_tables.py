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
