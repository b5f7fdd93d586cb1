import pytest

from ngfkit.errors import NgfkitError
from ngfkit.studies.reports import complete_attacks


def cell(attack, defense):
    return {"attack": attack, "defense": defense, "setting": "selected", "acc": 88.0, "acc_drop": 2.0, "asr": 5.0,
            "ra": 50.0, "der": 90.0, "seconds": 1.0, "peak_mb": None}


def test_keeps_the_attacks_every_defence_finished():
    report = {"cells": [cell("badnets", "ngf"), cell("badnets", "ft"), cell("blend", "ngf")],
              "before": [{"attack": "badnets"}, {"attack": "blend"}]}
    kept = complete_attacks(report)
    assert {c["attack"] for c in kept["cells"]} == {"badnets"} and kept["before"] == [{"attack": "badnets"}]
    assert {r["defense"]: r["attacks"] for r in kept["summary"]} == {"ngf": ["badnets"], "ft": ["badnets"]}
    assert len(report["cells"]) == 3 and "summary" not in report  # the input is left as it was


def test_an_empty_report_is_one_clear_error():
    with pytest.raises(NgfkitError, match="no cells"):
        complete_attacks({"cells": []})


def test_only_defences_keeps_their_cells_in_the_given_order():
    from ngfkit.studies.reports import only_defences

    report = {"cells": [cell("badnets", "ngf"), cell("badnets", "ft"), cell("badnets", "nft")], "before": []}
    kept = only_defences(report, ["nft", "ngf"])
    assert [r["defense"] for r in kept["summary"]] == ["nft", "ngf"] and len(report["cells"]) == 3
    with pytest.raises(NgfkitError, match="no cell of 'fip'"):
        only_defences(report, ["fip"])


def test_seconds_per_defence_are_set_against_ngfs_in_the_same_run():
    from ngfkit.studies.reports import seconds_per_defence

    slow = {**cell("badnets", "sau"), "seconds": 12.0, "setting": "authors"}
    rows = seconds_per_defence({"cells": [{**cell("badnets", "ngf"), "seconds": 4.0, "setting": "authors"}, slow]})
    assert [(r["defence"], r["ratio"]) for r in rows] == [("ngf", 1.0), ("sau", 3.0)]
    with pytest.raises(NgfkitError, match="no 'ngf' cell"):
        seconds_per_defence({"cells": [slow]})
