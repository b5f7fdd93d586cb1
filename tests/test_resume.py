"""A killed ``bench defences`` resumes to exactly the uninterrupted result (issue 17).

Property-style: seeded random kills, at a cell boundary (right after the report is written) and
in the middle of a cell (inside a defence), as many as a trial draws, each followed by a resume;
the finished report always holds the uninterrupted run's cells and before-rows. A resume with
other settings refuses in one line and leaves the report as it was. Tiny: 4 cells of 2-step
defences on a 300-image Fashion-MNIST stand-in.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from errors_helper import one_line_error
from fashion_helpers import write_fashion_mnist
from ngfkit import data
from ngfkit.bench import defences as bench
from ngfkit.train import TrainConfig

#: what varies between two runs of one cell (timing and memory), left out of the comparison
VARYING = ("seconds", "peak_mb")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A data folder and a model cache shared by every run of the module (the backdoored model is
    trained once, by the reference run)."""
    root = tmp_path_factory.mktemp("resume")
    write_fashion_mnist(root / "data" / "fashion-mnist", train=300, test=40)
    return {"root": root, "data": root / "data", "cache": root / "cache"}


@pytest.fixture(autouse=True)
def _isolated(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NGFKIT_DATA", raising=False)
    monkeypatch.setenv("NGFKIT_CACHE", str(world["cache"]))
    monkeypatch.setattr(data.locations, "SYSTEM_DATA_DIRS", {name: () for name in data.SYSTEM_DATA_DIRS})


#: two classifier-only defences (they run on cached features), 2 steps each, at both settings
OPTIONS = {"ngf": {"steps": 2, "augment": 0, "folds": 2, "lr": [0.01, 0.1]},
           "ft-last": {"steps": 2, "augment": 0, "lr": [0.01, 0.1]}}


def run(world: dict, json_path: Path, **changes):
    kwargs = dict(dataset="fashion-mnist", attacks="badnets", defenses="ngf,ft-last", seeds=1,
                  train=TrainConfig(epochs=1, batch_size=64), clean_fraction=0.2, device="cpu", progress=False,
                  json_path=json_path, data_root=world["data"], defence_options=OPTIONS)
    return bench.bench_defences(**{**kwargs, **changes})


def comparable(report: dict) -> tuple[list, list]:
    cells = sorted(({k: v for k, v in c.items() if k not in VARYING} for c in report["cells"]),
                   key=lambda c: (c["attack"], c["defense"], c["seed"], c["setting"]))
    return cells, sorted(report["before"], key=lambda b: (b["attack"], b["seed"]))


@pytest.fixture(scope="module")
def reference(world: dict) -> dict:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("NGFKIT_CACHE", str(world["cache"]))
    monkeypatch.setattr(data.locations, "SYSTEM_DATA_DIRS", {name: () for name in data.SYSTEM_DATA_DIRS})
    try:
        report = run(world, world["root"] / "reference.json")
    finally:
        monkeypatch.undo()
    assert len(report["cells"]) == 4
    return report


class Kill(KeyboardInterrupt):
    """What a kill looks like from inside: the run stops where it is."""


def kill_after(monkeypatch: pytest.MonkeyPatch, where: str, count: int) -> None:
    """Stop the next run after ``count`` report writes (``boundary``) or inside the ``count``-th
    defence call (``mid-cell``, before the cell is recorded)."""
    calls = {"n": 0}
    if where == "boundary":
        original = bench.write_json

        def write_then_die(path, obj):
            original(path, obj)
            calls["n"] += 1
            if calls["n"] == count:
                raise Kill()

        monkeypatch.setattr(bench, "write_json", write_then_die)
    else:
        for name in ("purify", "select_and_purify"):
            original = getattr(bench, name)

            def die_inside(*args, _original=original, **kwargs):
                calls["n"] += 1
                if calls["n"] == count:
                    raise Kill()
                return _original(*args, **kwargs)

            monkeypatch.setattr(bench, name, die_inside)


@pytest.mark.parametrize("trial", range(3))
def test_random_kills_then_resume_end_identical(trial: int, world: dict, reference: dict, tmp_path: Path) -> None:
    rng = random.Random(trial)
    path = tmp_path / "report.json"
    kills = 0
    for _ in range(3):  # at most 2 kills, then one run to finish (a run has 4 cells)
        with pytest.MonkeyPatch.context() as monkeypatch:
            if kills < 2:
                kill_after(monkeypatch, rng.choice(["boundary", "mid-cell"]), rng.randint(1, 3))
            try:
                report = run(world, path)
            except Kill:
                kills += 1
                continue
        break
    assert kills >= 1  # every trial was interrupted at least once
    assert comparable(report) == comparable(reference)
    assert comparable(json.loads(path.read_text())) == comparable(reference)
    assert report["defence_options"] == OPTIONS


@pytest.mark.parametrize("changes, key", [({"acc_budget": 5.0}, "acc_budget"), ({"holdout": 0.3}, "holdout"),
                                          ({"defence_options": {**OPTIONS, "ngf": {**OPTIONS["ngf"], "reg_strength": 0}}},
                                           "defence_options"),
                                          ({"train": TrainConfig(epochs=2, batch_size=64)}, "train"),
                                          ({"clean_fraction": 0.05}, "clean_fraction"),
                                          ({"poison_rate": 0.01}, "poison_rate")],
                         ids=["acc_budget", "holdout", "defence-option", "training", "clean-share", "poison-rate"])
def test_a_resume_with_other_settings_refuses(changes: dict, key: str, world: dict, reference: dict,
                                              tmp_path: Path) -> None:
    path = tmp_path / "report.json"  # a run killed after its first cell
    path.write_text(json.dumps({**reference, "cells": reference["cells"][:1]}))
    before = path.read_bytes()
    message = one_line_error(run, world, path, **changes)
    assert "other settings" in message and key in message
    assert path.read_bytes() == before  # the report is left as it was


@pytest.mark.parametrize("key, value", [("poison_rate", 0.01), ("clean_fraction", 0.05)])
def test_merge_refuses_reports_of_another_clean_share_or_poison_rate(key: str, value: float, reference: dict,
                                                                    tmp_path: Path) -> None:
    assert reference["poison_rate"] is None and reference["clean_fraction"] == 0.2  # both recorded
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    ours.write_text(json.dumps(reference))
    theirs.write_text(json.dumps({**reference, key: value}))
    message = one_line_error(bench.merge_reports, [ours, theirs])
    assert key in message and "other settings" in message


@pytest.mark.parametrize("rate", [0.0, 1.5, float("nan")])
def test_a_bad_poison_rate_is_refused_before_any_model_trains(rate: float, tmp_path: Path) -> None:
    from ngfkit.bench.attacks import bench_attacks

    for bench_call in (bench.bench_defences, bench_attacks):
        message = one_line_error(bench_call, attacks="badnets", poison_rate=rate, progress=False,
                                 data_root=tmp_path)  # no data there: a check after loading would fail otherwise
        assert "poison rate must be in (0, 1)" in message
