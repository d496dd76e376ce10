"""benchmarks/sweep_efficiency.py without training: the pruner replay (hand-computed), the
per-trial curves it keeps in its figures (read back from a real Optuna SQLite study), and the
work folder that lets an interrupted benchmark continue."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sweep_efficiency as eff  # noqa: E402

# three trials of 3 epochs, in trial order
CURVES = [[0.3, 0.5, 0.6], [0.2, 0.55, 0.58], [0.4, 0.45, 0.7]]


def _median(warmup: int) -> dict:
    return {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": warmup}


def test_replay_of_a_median_rule_by_hand():
    # decisions from epoch 1, against the one completed trial (0.3, 0.5, 0.6):
    # trial 1 is pruned at epoch 1 (0.2 < 0.3), trial 2 at epoch 2 (0.45 < 0.5)
    r = eff.replay(CURVES, _median(0), epochs=3)
    assert (r["trial_epochs"], r["of"], r["best"]) == (3 + 1 + 2, 9, 0.6)
    assert r["ratio"] == pytest.approx(6 / 9)
    # first decision at epoch 2: trial 1 passes it (0.55 >= 0.5) and is pruned at epoch 3
    # (0.58 < 0.6: only completed trials count); trial 2 still stops at epoch 2 (0.45 < 0.5)
    r = eff.replay(CURVES, _median(1), epochs=3)
    assert (r["trial_epochs"], r["best"]) == (3 + 3 + 2, 0.6)
    # no pruner: every epoch is spent and the best is the best of all curves
    r = eff.replay(CURVES, {"kind": "none"}, epochs=3)
    assert (r["trial_epochs"], r["best"]) == (9, 0.7)


def test_replay_leaves_optunas_log_level_as_it_found_it():
    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.DEBUG)
        eff.replay(CURVES, _median(0), epochs=3)
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


def test_figures_keep_the_curves_a_replay_needs(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="eff-s0-none", storage=storage, direction="maximize")
    for i, curve in enumerate(CURVES):
        trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        study.tell(trial, max(curve))
        assert trial.number == i
    failed = study.ask()  # a crashed trial: no curve, not replayed
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    trials = eff.study_curves(storage, "eff-s0-none")
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3 + ["FAIL"]
    assert [t["values"] for t in trials[:3]] == CURVES
    assert set(trials[0]["params"]) == {"optim.lr"}

    rows = [
        {"seed": 0, "pruner": "median", "trials": trials[:1]},
        {"seed": 0, "pruner": "none", "trials": trials},
    ]
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"rows": rows}))
    [(_, from_study)] = eff.recorded_curves(storage)
    for source in (jsonl, figures):
        [(label, curves)] = eff.recorded_curves(str(source))  # the unpruned row only
        assert curves == from_study == CURVES
        assert label.endswith("(seed 0)")

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [{"seed": 1, "pruner": "none", "best": 0.5}]}))
    with pytest.raises(SystemExit, match="seed-1 row has no per-trial curves"):
        eff.recorded_curves(str(old))


def _args(workdir: Path, **changed) -> argparse.Namespace:
    args = {
        "trials": 12,
        "epochs": 4,
        "parallel": 2,
        "startup": 2,
        "videos": 48,
        "pruner": "median",
        "sampler": "tpe",
        "warmup": 1,
        "min_resource": 1,
        "reduction_factor": 2,
        "percentile": 50.0,
        "override": [],
        "shards": None,
        "seeds": [0, 1],
        "workdir": str(workdir),
    }
    return argparse.Namespace(**{**args, **changed})


def test_work_folder_returns_finished_sweeps_and_refuses_other_settings(tmp_path):
    work = tmp_path / "eff"
    folder, rows = eff.open_workdir(_args(work))
    assert folder == work and rows == []
    row = {"seed": 0, "pruner": "median", "trial_epochs": 30, "best": 0.5, "trials": []}
    (work / "results.jsonl").write_text(json.dumps(row) + "\n")

    # the same command (another seed list is the same study: seeds are its rows)
    folder, rows = eff.open_workdir(_args(work, seeds=[1]))
    assert rows == [row]

    # another pruning rule is another row of the same folder, compared with the same unpruned
    # sweeps; a different budget is another study and is refused
    folder, rows = eff.open_workdir(_args(work, pruner="percentile", warmup=2))
    assert rows == [row]
    with pytest.raises(SystemExit, match=r"other settings \(epochs, trials differ\)"):
        eff.open_workdir(_args(work, epochs=8, trials=6, warmup=3))
    assert json.loads((work / "settings.json").read_text())["epochs"] == 4  # unchanged


def test_finished_sweeps_are_matched_by_seed_and_rule():
    args = _args(Path("unused"), warmup=2)
    median = eff.pruner_settings("median", args)
    pct = eff.pruner_settings("percentile", _args(Path("unused"), warmup=2, percentile=25.0))
    none = eff.pruner_settings("none", args)
    assert eff.rule_tag(median) == "median-w2-s2"
    assert eff.rule_tag(pct) == "percentile-w2-s2-p25"
    assert eff.rule_tag(none) == "none"
    rows = [
        {"seed": 0, "pruner_settings": none, "best": 0.1},
        {"seed": 0, "pruner_settings": median, "best": 0.2},
        {"seed": 1, "pruner_settings": none, "best": 0.3},
        {"seed": 0, "pruner": "median", "best": 0.4},  # written before rules were recorded
    ]
    assert eff.finished_sweep(rows, 0, none)["best"] == 0.1
    assert eff.finished_sweep(rows, 0, median)["best"] == 0.2
    assert eff.finished_sweep(rows, 1, none)["best"] == 0.3
    assert eff.finished_sweep(rows, 0, pct) is None  # another rule: not run yet
    assert eff.finished_sweep(rows, 1, median) is None


def test_pending_lists_the_sweeps_not_on_record():
    args = _args(Path("unused"), warmup=2)
    median, none = eff.pruner_settings("median", args), eff.pruner_settings("none", args)
    rows = [{"seed": 0, "pruner_settings": none}, {"seed": 1, "pruner_settings": median}]
    assert eff.pending(rows, [0, 1], [median, none]) == [(0, "median-w2-s2"), (1, "none")]
    assert eff.pending(rows, [0], [none]) == []


def test_a_rerun_with_every_sweep_on_record_prints_the_figures_without_training(tmp_path):
    import subprocess

    work = tmp_path / "eff"
    args = _args(work, warmup=1, seeds=[0])
    eff.open_workdir(args)  # writes the folder's settings as the script would
    rows = [
        {
            "seed": 0,
            "pruner": kind,
            "pruner_settings": eff.pruner_settings(kind, args),
            "trial_epochs": spent,
            "best": best,
            "wall_s": 1.0,
            "trials": [],
        }
        for kind, spent, best in (("median", 30, 0.52), ("none", 48, 0.5))
    ]
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = Path(eff.__file__)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--pruner",
            "median",
            "--warmup",
            "1",
            "--seeds",
            "0",
            "--workdir",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "seed 0 median-w1-s2: finished already" in out
    assert "seed 0 none: finished already" in out
    assert "trial-epochs 30/48 = 0.62x, best 52.00 vs 50.00 (equal or better)" in out
    assert "(all seeds, median-w1-s2): 0.62x (target <= 0.6x)" in out
    assert not (work / "shards").exists()  # nothing was built
    assert not any(p.name.startswith("eff-s0") for p in work.iterdir())  # no study either


def test_grid_finds_the_cheapest_rule_that_keeps_every_best():
    # CURVES (best 0.7) and a second sweep whose best trial comes first (best 0.7):
    # median w0 spends 6 + 4 (its second trial is pruned at epoch 1: 0.1 < 0.5) and loses
    # CURVES' best; median w1 spends 8 + 5 and loses it too; only no pruning keeps both
    second = [[0.5, 0.6, 0.7], [0.1, 0.2, 0.3]]
    rules = [_median(0), _median(1), {"kind": "none"}]
    found = eff.grid([CURVES, second], rules, epochs=3)
    assert found["unpruned_best"] == [0.7, 0.7]
    assert [(r["rule"], r["trial_epochs"], r["kept"]) for r in found["rows"]] == [
        ("median-w0-s1", [6, 4], 1),
        ("median-w1-s1", [8, 5], 1),
        ("none", [9, 6], 2),
    ]
    assert found["rows"][0]["ratio"] == pytest.approx(10 / 15)
    assert found["rows"][0]["best"] == [0.6, 0.7]
    assert found["cheapest_keeping_all"]["rule"] == "none"
    assert found["meeting"] == [] and found["closest"] is None  # nothing at <= 0.6x
    loose = eff.grid([CURVES, second], rules, epochs=3, target=0.7)
    assert loose["closest"]["rule"] == "median-w0-s1" and loose["meeting"] == []
    assert [r["rule"] for r in eff.grid([CURVES, second], rules, 3, 1.0)["meeting"]] == ["none"]


def test_the_grid_holds_distinct_valid_rules():
    from tuning.spec import PrunerSpec

    rules = eff.rule_grid(8)
    tags = [eff.rule_tag(r) for r in rules]
    assert len(tags) == len(set(tags)) == 4 * 4 * 7 + 4 * 3 + 2 * 2
    for rule in rules:
        PrunerSpec(**rule)  # every setting is one the spec accepts
    assert {r["n_warmup_steps"] for r in rules if "n_warmup_steps" in r} == {1, 2, 3, 4}


def test_bootstrap_estimates_a_rule_over_the_orders_of_the_recorded_curves():
    # pool: an early leader A and a late bloomer B; sweeps of 2 trials are A,B or B,A.
    # median w0 s1, by hand: A,B -> A completes (2 epochs), B is pruned at epoch 1
    # (0.1 < 0.5): 3/4 trial-epochs, best 0.6, the pool's best 0.9 lost (loss 0.3);
    # B,A -> B completes, A passes epoch 1 (0.5 >= 0.1) and is pruned at epoch 2
    # (0.6 < 0.9): 4/4 trial-epochs, best 0.9 kept
    a, b = [0.5, 0.6], [0.1, 0.9]
    (row,) = eff.bootstrap([[a], [b]], [_median(0)], epochs=2, trials=2, draws=40, seed=3)
    assert row["rule"] == "median-w0-s1"
    kept = round(row["keep"] * 40)
    assert 0 < kept < 40  # both orders were drawn
    assert row["ratio"] == pytest.approx((3 * (40 - kept) + 4 * kept) / (4 * 40))
    assert row["loss"] == pytest.approx(0.3 * (40 - kept) / 40)
    assert (row["ratio_p5"], row["ratio_p95"]) == (0.75, 1.0)
    (plain,) = eff.bootstrap([[a, b]], [{"kind": "none"}], epochs=2, trials=2, draws=5)
    assert (plain["ratio"], plain["keep"], plain["loss"]) == (1.0, 1.0, 0.0)
    with pytest.raises(SystemExit, match="only 2 recorded curves"):
        eff.bootstrap([[a, b]], [_median(0)], epochs=2, trials=3, draws=5)
