"""``lstc sweep`` (tuning/): spec validation, and one real sweep on the session's Ray instance.

The sweep test is one study driven twice (real local Ray via ``ray_local``, the tiny shards of
``tiny_shards``, a SQLite MLflow store and a SQLite Optuna study in the test's tmp folder):

1. ``n_trials=2``, 2 in parallel. Enqueued params make it deterministic: trial 0 = a hot lr
   (learns), trial 1 raises on its first step (an injected worker fault: the sweep goes on),
   trial 2 = lr 1e-7 (learns nothing). The median pruner needs 2 complete trials, so neither
   finished trial can be pruned here.
2. Two other drivers of the study are simulated, both on Optuna's SQLite heartbeat: a
   killed one, whose trial 3 (params KILLED: lr 1.5e-7, 2 workers) is RUNNING with its last
   heartbeat an hour old (set in the heartbeat table), and a live one, whose trial 4 (LIVE)
   is RUNNING with a heartbeat dated a day ahead (fresh on any machine), watched by a thread
   until it sees the rerun's retry of trial 3
   started, then tells its trial COMPLETE. The rerun with ``n_trials=4`` (heartbeat 2 s,
   grace 120 s) fails trial 3 as stale and retries its params once as trial 5, leaves trial 4
   alone (counting it toward ``n_trials``: it samples nothing more) and waits for it. Trial 5
   learns nothing in epoch 1 while the median of the complete trials at epoch 1 lies between
   trial 0 and trial 2 (= trial 5's level): it is PRUNED after epoch 1 (2 workers: the stop
   decision is broadcast from rank 0, else rank 1 would hang).

The study ends with exactly 4 finished trials and no duplicated params; MLflow has the parent,
its children with the trial params and states, and the best trial's model registered.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.train.callbacks import WorkerCallback

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "refer_shapes_tiny.yaml"
STUDY = "sweep-test"
MODEL = "lstc-sweep-test"

GOOD = {"optim.lr": 1e-2, "train.num_workers": 1}
FAILS = {"optim.lr": 5e-3, "train.num_workers": 1}
FLAT = {"optim.lr": 1e-7, "train.num_workers": 1}
KILLED = {"optim.lr": 1.5e-7, "train.num_workers": 2}
LIVE = {"optim.lr": 3e-3, "train.num_workers": 1}
LIVE_VALUE = 0.0  # what the live driver tells its trial (below every trained trial's)
HEARTBEAT_S, GRACE_S = 2, 120


@dataclass(frozen=True)
class FailTrial(WorkerCallback):
    """Raise on the first optimizer step of the trial whose run name ends with ``suffix``."""

    suffix: str

    def on_step_end(self, epoch: int, step: int, rank: int, run_dir: str) -> None:
        if run_dir.rstrip("/").endswith(self.suffix):
            raise RuntimeError(f"injected trial failure in {run_dir}")


def spec_dict(tmp: Path, shards: Path, **changes) -> dict:
    spec = {
        "name": STUDY,
        "recipe": str(TINY),
        "overrides": [
            f"data.root={shards}",
            f"train.storage_path={tmp / 'runs'}",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            "tracking.experiment=lstc-sweep-test",
            "tracking.system_metrics=false",
            "tracking.num_overlays=0",
            f"registry.model_name={MODEL}",
            "train.max_failures=0",
            "train.cpus_per_worker=0.5",
            "loss.pos_weight=10.0",
        ],
        "space": {
            "optim.lr": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True},
            "train.num_workers": {"type": "int", "low": 1, "high": 2},
        },
        "objective": {"metric": "val/mean_iou", "direction": "maximize"},
        "n_trials": 2,
        "parallel": 2,
        "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 4},
        "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "budget": {"epochs": 2},
        "heartbeat_s": HEARTBEAT_S,
        "grace_s": GRACE_S,
        "output_dir": str(tmp / "sweeps"),
    }
    spec.update(changes)
    return spec


# ------------------------------------------------------------------------- spec validation


def write_spec(tmp: Path, data: dict) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"space": {"optim.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}},
            r"space\.optim\.learning_rate: not a recipe key",
        ),
        (
            {"space": {"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}},
            r"space\.optim\.lr: empty range: low=0\.01 must be < high=0\.0001",
        ),
        (
            {"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1e-2}}},
            r"space\.optim\.lr: optim\.lr=0\.0 is not valid",
        ),
        (
            {"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}},
            r"space\.optim\.lr: a log range needs low > 0",
        ),
        (
            {"space": {"model.cmam": {"type": "categorical", "choices": ["cmam", "cmam_pro"]}}},
            r"space\.model\.cmam: model\.cmam='cmam_pro' is not valid",
        ),
        (
            {"space": {"model.cmam": {"type": "float", "low": 0, "high": 1}}},
            r"space\.model\.cmam: the key takes one of .*use type: categorical",
        ),
        (
            {"space": {"train.num_workers": {"type": "float", "low": 1, "high": 2}}},
            r"space\.train\.num_workers: the key is an int; use type: int",
        ),
        (
            {"space": {"optim.lr": {"type": "float", "low": 1e-4, "hgh": 1e-2}}},
            r"space\.optim\.lr\.float\.hgh|space\.optim\.lr.*hgh",
        ),
        (
            {"objective": {"metric": "val/accuracy"}},
            r"objective\.metric: objective metric 'val/accuracy' is not reported by training",
        ),
        ({"n_trials": 0}, r"n_trials: Input should be greater than or equal to 1"),
        ({"sampler": {"kind": "cmaes"}}, r"sampler\.kind"),
        ({"overrides": ["optim.lrr=1"]}, r"recipe/overrides: .*optim\.lrr"),
        ({"grace_s": 2}, r"spec: grace_s=2 must be > heartbeat_s=2"),
        ({"heartbeat_s": None}, r"spec: grace_s needs heartbeat_s"),
        ({"heartbeat_s": 0}, r"heartbeat_s: Input should be greater than or equal to 1"),
        (
            {"pruner": {"kind": "successive_halving", "min_resource": 2}},
            r"first successive-halving rung is at epoch 2 .* budget\.epochs=2",
        ),
        (
            {"pruner": {"kind": "successive_halving", "reduction_factor": 1}},
            r"pruner\.reduction_factor: Input should be greater than or equal to 2",
        ),
        ({"pruner": {"kind": "hyperband", "min_resource": 2}}, r"min_resource=2 must be < budget"),
    ],
)
def test_spec_errors_name_the_file_and_key(tmp_path, change, match):
    from tuning.spec import SweepSpecError, load_spec

    path = write_spec(tmp_path, spec_dict(tmp_path, tmp_path / "shards", **change))
    with pytest.raises(SweepSpecError, match=match) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: ")


def test_spec_objective_names_and_trial_overrides(tmp_path):
    from tuning.spec import load_spec, normalize_metric, params_to_overrides

    assert normalize_metric("J&F") == "val/J_and_F"
    assert normalize_metric("val/mAP@0.5:0.95") == "val/mAP_at_0.5-0.95"
    spec = load_spec(write_spec(tmp_path, spec_dict(tmp_path, tmp_path / "s")), ["train.seed=3"])
    recipe = spec.base_recipe()
    assert (recipe.train.epochs, recipe.train.seed) == (2, 3)
    assert (recipe.registry.selection_metric, recipe.registry.mode) == ("mean_iou", "max")
    out = recipe.replace(params_to_overrides({"model.lasp": "off", "optim.lr": 1e-05}))
    assert (out.model.lasp, out.optim.lr) == ("off", 1e-05)


def test_cli_refuses_a_bad_spec_before_anything_starts(tmp_path, capsys):
    from pipelines.cli import main

    bad = spec_dict(tmp_path, tmp_path / "s", space={"optim.lr": {"type": "float", "low": 1}})
    path = write_spec(tmp_path, bad)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"lstc sweep: {path}: space.optim.lr" in err and "needs 'low' and 'high'" in err
    assert not (tmp_path / "sweeps").exists()


def test_sqlite_study_refused_on_a_multi_node_cluster():
    from tuning.storage import StudyStorageError, check_cluster_storage, normalize_storage

    check_cluster_storage("sqlite:////tmp/x.db", 1)
    check_cluster_storage("postgresql://u:p@db/optuna", 3)
    with pytest.raises(StudyStorageError, match="Use an RDB URL .* or a journal file"):
        check_cluster_storage("sqlite:////tmp/x.db", 2)
    assert normalize_storage("journal:rel/x.log").startswith("journal:/")


def test_successive_halving_pruner_keeps_the_top_half_at_each_rung():
    """min_resource 1, reduction factor 2: rungs at epochs 1, 2, 4; at a rung a trial goes on
    only if its value is among the top len(values) // 2 (at least the top 1) of the trials
    that reached it, itself included."""
    import optuna

    from tuning.pruning import build_pruner
    from tuning.spec import PrunerSpec

    pruner = build_pruner(PrunerSpec(kind="successive_halving", reduction_factor=2), epochs=4)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def report(value: float, step: int, trial=None):
        trial = trial or study.ask()
        trial.report(value, step)
        return trial, trial.should_prune()

    a, pruned = report(0.5, 1)
    assert not pruned  # alone at rung 1
    assert report(0.3, 1)[1]  # [0.5, 0.3]: top 1 is 0.5
    c, pruned = report(0.6, 1)
    assert not pruned  # [0.5, 0.3, 0.6]: top 1 is 0.6
    assert not report(0.55, 1)[1]  # 4 values: top 2 = 0.6, 0.55
    assert report(0.2, 1)[1]  # 5 values: top 2 = 0.6, 0.55
    assert not report(0.7, 2, a)[1]  # alone at rung 2
    assert report(0.4, 2, c)[1]  # [0.7, 0.4]: top 1 is 0.7
    assert not report(0.0, 3, a)[1]  # epoch 3 is no rung


def test_median_pruner_never_prunes_the_warm_up_epochs():
    """n_warmup_steps: 1 means epoch 1 (the first reported step) is never pruned, epoch 2 may
    be (it was Optuna's step < 1, which protected nothing: trials reported from step 1)."""
    import optuna

    from tuning.pruning import build_pruner
    from tuning.spec import PrunerSpec

    for kind in ("median", "percentile"):
        spec = PrunerSpec(kind=kind, n_startup_trials=1, n_warmup_steps=1)
        study = optuna.create_study(direction="maximize", pruner=build_pruner(spec, epochs=4))
        done = study.ask()
        for epoch, value in ((1, 0.5), (2, 0.6)):
            done.report(value, epoch)
        study.tell(done, 0.6)
        bad = study.ask()
        bad.report(0.1, 1)
        assert not bad.should_prune()  # epoch 1: warm-up
        bad.report(0.1, 2)
        assert bad.should_prune()  # epoch 2: below the median of the finished trial
        spec0 = PrunerSpec(kind=kind, n_startup_trials=1, n_warmup_steps=0)
        study0 = optuna.create_study(direction="maximize", pruner=build_pruner(spec0, epochs=4))
        study0.add_trial(optuna.trial.create_trial(value=0.6, intermediate_values={1: 0.5, 2: 0.6}))
        t = study0.ask()
        t.report(0.1, 1)
        assert t.should_prune()  # no warm-up: epoch 1 can be pruned


def test_heartbeat_fails_only_silent_trials_and_retries_each_once(tmp_path):
    """Real SQLite RDB study, Optuna's heartbeat (interval 1 s, grace 60 s): a trial whose last
    heartbeat is an hour old is failed and retried once; a trial that keeps beating (our
    Heartbeat thread, every 0.2 s) is left alone; a trial that never beat is given a heartbeat
    by adopt_running and goes stale only once that one is old; a retry that goes silent too
    is failed and not retried again; a driver's own beat right before the check keeps its
    trials alive even when its heartbeat thread fell behind."""
    import optuna

    from tuning.heartbeat import (
        Heartbeat,
        RetryStale,
        adopt_running,
        fail_stale,
        quiet_experimental,
    )
    from tuning.storage import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    failed: list[int] = []
    storage = open_storage(
        url, heartbeat_s=1, grace_s=60, on_stale=RetryStale(lambda t: failed.append(t.number))
    )
    study = optuna.create_study(study_name="hb", storage=storage)

    trials = []
    for x in (0.1, 0.2, 0.3):
        study.enqueue_trial({"x": x})
        with quiet_experimental():  # Optuna warns: heartbeats outside Study.optimize
            t = study.ask()
        assert t.suggest_float("x", 0.0, 1.0) == x
        trials.append(t)
    dead, live, silent = trials
    storage.record_heartbeat(dead._trial_id)
    backdate_heartbeat(url, dead._trial_id, 3600)
    beats = Heartbeat(storage, 0.2)
    try:
        beats.add(live._trial_id)

        def by_number() -> dict[int, tuple[str, float]]:
            return {t.number: (t.state.name, t.params["x"]) for t in study.get_trials()}

        fail_stale(study)
        assert failed == [0]
        assert by_number() == {
            0: ("FAIL", 0.1),
            1: ("RUNNING", 0.2),
            2: ("RUNNING", 0.3),
            3: ("WAITING", 0.1),
        }
        assert study.trials[3].system_attrs["failed_trial"] == 0
        assert adopt_running(study, storage) == [1, 2]
        fail_stale(study)  # nothing is stale now: no second retry of trial 0
        assert failed == [0] and len(study.trials) == 4

        with quiet_experimental():
            retry = study.ask()  # the enqueued retry
        assert retry.number == 3 and retry.suggest_float("x", 0.0, 1.0) == 0.1
        storage.record_heartbeat(retry._trial_id)
        backdate_heartbeat(url, retry._trial_id, 3600)
        backdate_heartbeat(url, silent._trial_id, 3600)  # its adopted heartbeat grew old
        fail_stale(study)
        assert sorted(failed) == [0, 2, 3]
        assert by_number() == {
            0: ("FAIL", 0.1),
            1: ("RUNNING", 0.2),
            2: ("FAIL", 0.3),
            3: ("FAIL", 0.1),
            4: ("WAITING", 0.3),  # trial 2's retry; trial 3, already a retry, is not retried
        }
        assert study.trials[4].system_attrs["retry_history"] == [2]
    finally:
        beats.close()
    # a driver whose heartbeat thread fell behind (an hour here): the beat it gives its own
    # trials right before the stale check (what the sweep loop does) keeps them alive ...
    late = Heartbeat(storage, 3600)
    try:
        late.add(live._trial_id)
        backdate_heartbeat(url, live._trial_id, 3600)
        late.beat_now()
        fail_stale(study)
        assert study.trials[1].state.name == "RUNNING" and sorted(failed) == [0, 2, 3]
        # ... which without that beat would have been failed
        backdate_heartbeat(url, live._trial_id, 3600)
        fail_stale(study)
        assert study.trials[1].state.name == "FAIL" and sorted(failed) == [0, 1, 2, 3]
    finally:
        late.close()


def test_journal_study_rerun_fails_every_running_trial(ray_local, tmp_path):
    """Optuna's journal storage keeps no heartbeats: a rerun fails every RUNNING trial at its
    start and enqueues its params (user attr lstc.retry_of); an RDB study uses heartbeats
    unless heartbeat_s is null."""
    import optuna

    from tuning.spec import spec_from_dict
    from tuning.sweep import LEFT_RUNNING, Sweep

    def sweep_of(**changes) -> tuple[Sweep, object]:
        sweep = Sweep(spec_from_dict(spec_dict(tmp_path, tmp_path / "shards", **changes)))
        return sweep, sweep._open_study()

    sweep, study = sweep_of(storage=f"journal:{tmp_path / 'study.log'}")
    assert not sweep.heartbeat_on
    for x in (1e-3, 1e-4):
        study.enqueue_trial({"optim.lr": x, "train.num_workers": 1})
        study.ask().suggest_float("optim.lr", 1e-7, 1e-2, log=True)
    assert sweep._recover(study) == 2
    trials = optuna.load_study(study_name=STUDY, storage=sweep.optuna_storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert [t.user_attrs.get("lstc.error") for t in trials[:2]] == [LEFT_RUNNING] * 2
    assert [t.user_attrs["lstc.retry_of"] for t in trials[2:]] == [0, 1]

    sweep, _ = sweep_of(storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert sweep.heartbeat_on and sweep.optuna_storage.get_heartbeat_interval() == HEARTBEAT_S
    sweep, _ = sweep_of(storage=f"sqlite:///{tmp_path / 'b.db'}", heartbeat_s=None, grace_s=None)
    assert not sweep.heartbeat_on


# ------------------------------------------------------------------------------- the sweep


def _enqueue(study, *params: dict) -> None:
    for p in params:
        study.enqueue_trial(dict(p))


def backdate_heartbeat(url: str, trial_id: int, seconds: int) -> None:
    """Move trial ``trial_id``'s last heartbeat ``seconds`` into the past (negative: into the
    future) (Optuna's SQLite heartbeat table; timestamps are the database's UTC clock, as
    record_heartbeat writes)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        n = db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', ?) WHERE trial_id = ?",
            (f"{-seconds:+d} seconds", trial_id),
        ).rowcount
    assert n == 1, f"trial id {trial_id} has no heartbeat row"


class LiveDriver(threading.Thread):
    """Another sweep driver's running trial. Its heartbeat is recorded dated a day ahead when
    it is made (fresh however slow the machine is), so the rerun leaves it running. The thread
    is started by the rerun's ``on_trial_start`` as the retry of the stale trial starts: it
    notes its own trial's state at that moment, then tells its trial COMPLETE with LIVE_VALUE
    (the retry has already started when it runs)."""

    def __init__(self, url: str, number: int) -> None:
        import optuna

        from tuning.heartbeat import quiet_experimental
        from tuning.storage import open_storage

        super().__init__(name="live-sweep-driver", daemon=True)
        self.number = number
        self.state_when_retried: str | None = None
        with quiet_experimental():
            storage = open_storage(url, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S)
            self.study = optuna.load_study(study_name=STUDY, storage=storage)
        trial_id = self.study.trials[number]._trial_id
        storage.record_heartbeat(trial_id)
        backdate_heartbeat(url, trial_id, -86400)

    def run(self) -> None:
        self.state_when_retried = self.study.trials[self.number].state.name
        self.study.tell(self.number, LIVE_VALUE)


@pytest.fixture(scope="module")
def sweep_runs(ray_local, tiny_shards, tmp_path_factory):
    """Both invocations of the study (see the module docstring)."""
    import optuna
    import ray.cloudpickle

    from tuning.heartbeat import quiet_experimental
    from tuning.space import suggest
    from tuning.spec import spec_from_dict
    from tuning.storage import default_storage, open_storage
    from tuning.sweep import run_sweep

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = spec_from_dict(spec_dict(tmp, tiny_shards))
        storage = default_storage(spec.output_dir, STUDY)
        study = optuna.create_study(
            study_name=STUDY, storage=open_storage(storage), direction="maximize"
        )
        _enqueue(study, GOOD, FAILS, FLAT)
        first = run_sweep(spec, callbacks=[FailTrial("-trial-1")], progress=False)
        # a driver killed while trial 3 ran: asked, params set, heartbeat stopped an hour ago
        with quiet_experimental():
            beats = open_storage(storage, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S)
        _enqueue(study, KILLED)
        killed = study.ask()
        assert suggest(killed, spec.space) == KILLED and killed.number == 3
        beats.record_heartbeat(killed._trial_id)
        backdate_heartbeat(storage, killed._trial_id, 3600)
        # a live driver running trial 4, fresh until the rerun has retried trial 3
        _enqueue(study, LIVE)
        live = study.ask()
        assert suggest(live, spec.space) == LIVE and live.number == 4
        driver = LiveDriver(storage, live.number)

        def on_trial_start(number: int, params: dict) -> None:
            if params == KILLED:  # the retry of trial 3 (asserted in the tests below)
                driver.start()
                driver.join()

        second = run_sweep(spec, n_trials=4, progress=False, on_trial_start=on_trial_start)
        yield {
            "live_driver": driver,
            "tmp": tmp,
            "spec": spec,
            "first": first,
            "second": second,
            "study": optuna.load_study(study_name=STUDY, storage=open_storage(storage)),
            "uri": f"sqlite:///{tmp / 'mlflow.db'}",
        }


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


def test_first_run_survives_a_failing_trial(sweep_runs):
    first = sweep_runs["first"]
    assert first.counts == {"COMPLETE": 2, "FAIL": 1}
    study = sweep_runs["study"]
    failed = study.trials[1]
    assert failed.state.name == "FAIL" and failed.params == FAILS
    assert "injected trial failure" in failed.user_attrs["lstc.error"]
    assert [study.trials[n].params for n in (0, 2)] == [GOOD, FLAT]


def test_rerun_retries_the_stale_trial_leaves_the_live_one_and_ends_with_n_trials(sweep_runs):
    study, second = sweep_runs["study"], sweep_runs["second"]
    s = states(study)
    assert s == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "FAIL", 4: "COMPLETE", 5: "PRUNED"}
    assert second.counts == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 2}
    # the stale trial: failed, retried exactly once (as trial 5), by Optuna's retry callback
    killed, live, retry = study.trials[3], study.trials[4], study.trials[5]
    assert killed.params == retry.params == KILLED and retry.system_attrs["failed_trial"] == 3
    assert [t.number for t in study.trials if 3 in t.system_attrs.get("retry_history", [])] == [5]
    # the live driver's trial: still RUNNING when the retry started, then told by its driver
    assert sweep_runs["live_driver"].state_when_retried == "RUNNING"
    assert not sweep_runs["live_driver"].is_alive()
    assert (
        live.params == LIVE and live.value == LIVE_VALUE and "lstc.run_name" not in live.user_attrs
    )
    assert not any(4 in t.system_attrs.get("retry_history", []) for t in study.trials)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(keys) == len(set(keys)) == 4  # no finished params twice
    # every trial trained in its own run folder (never resumed another's checkpoints)
    names = [t.user_attrs["lstc.run_name"] for t in study.trials if t.number not in (3, 4)]
    assert names == [f"{STUDY}-trial-{n}" for n in (0, 1, 2, 5)]


def test_pruned_trial_stopped_after_epoch_one_with_its_reported_value(sweep_runs):
    from pipelines.train.loop import read_events

    study = sweep_runs["study"]
    pruned = study.trials[5]
    assert pruned.user_attrs["lstc.epochs_run"] == 1
    assert list(pruned.intermediate_values) == [1]
    assert pruned.value == pruned.intermediate_values[1]
    epoch1 = {n: study.trials[n].intermediate_values[1] for n in (0, 2)}
    assert pruned.value < (epoch1[0] + epoch1[2]) / 2 < epoch1[0]
    run_dir = sweep_runs["tmp"] / "runs" / f"{STUDY}-trial-5"
    events = [e["event"] for e in read_events(run_dir)]
    assert events.count("epoch_end") == 1 and "stopped_early" in events
    for n in (0, 2):
        assert study.trials[n].user_attrs["lstc.epochs_run"] == 2
        assert study.trials[n].value == max(study.trials[n].intermediate_values.values())


def test_mlflow_parent_children_and_registered_best(sweep_runs):
    from mlflow import MlflowClient

    study, second = sweep_runs["study"], sweep_runs["second"]
    c = MlflowClient(sweep_runs["uri"])
    parent = c.get_run(second.parent_run_id)
    assert parent.info.run_name == STUDY and parent.info.status == "FINISHED"
    assert sweep_runs["first"].parent_run_id == second.parent_run_id  # re-attached on rerun
    exp = parent.info.experiment_id
    children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_number = {int(r.data.tags["lstc.trial_number"]): r for r in children}
    assert sorted(by_number) == [0, 1, 2, 5]  # trials 3 and 4 never got as far as MLflow
    for n, run in by_number.items():
        t = study.trials[n]
        assert run.info.run_id == t.user_attrs["lstc.mlflow_run_id"]
        assert run.data.tags["lstc.trial_state"] == t.state.name
        assert float(run.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
        assert int(run.data.params["train.num_workers"]) == t.params["train.num_workers"]
        assert run.info.status == ("FAILED" if t.state.name == "FAIL" else "FINISHED")
    assert "injected trial failure" in by_number[1].data.tags["lstc.error"]
    # the parent's artifacts: trials table (one row per trial), best trial, plots
    import pandas as pd

    folder = Path(c.download_artifacts(parent.info.run_id, "sweep", str(sweep_runs["tmp"] / "a")))
    table = pd.read_csv(folder / "trials.csv")
    assert list(table["number"]) == list(range(6))
    assert list(table["state"]) == [states(study)[n] for n in range(6)]
    assert table.loc[3, "error"].startswith("heartbeat stopped")
    assert table.loc[3, "error"].endswith("retried as trial 5") and table.loc[5, "retry_of"] == 3
    assert {p.name for p in (folder / "plots").iterdir()} == {
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
    }
    best = study.best_trial
    assert parent.data.tags["lstc.best_trial"] == str(best.number)
    history = c.get_metric_history(parent.info.run_id, "sweep/trial_value")
    assert sorted(m.step for m in history) == [0, 1, 2, 5]
    # the best trial's model is registered, from its own run, as champion (first version)
    assert second.registered == ("1", "champion")
    version = c.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == best.user_attrs["lstc.mlflow_run_id"]
    assert float(version.tags["selection_value"]) == pytest.approx(best.value)
