"""``lstc sweep`` (tuning/): spec validation, and one real sweep on the session's Ray instance.

The sweep test is one study driven twice (real local Ray via ``ray_local``, the tiny shards of
``tiny_shards``, a SQLite MLflow store and a SQLite Optuna study in the test's tmp folder):

1. ``n_trials=2``, 2 in parallel. Enqueued params make it deterministic: trial 0 = a hot lr
   (learns), trial 1 raises on its first step (an injected worker fault: the sweep goes on),
   trial 2 = lr 1e-7 (learns nothing). The median pruner needs 2 complete trials, so neither
   finished trial can be pruned here.
2. A killed sweep is simulated: trial 3 is asked and left RUNNING (params C: lr 1e-7, 2
   workers). The rerun with ``n_trials=4`` fails trial 3, retries its params as trial 4 and
   samples trial 5. Trial 4 learns nothing in epoch 1 while the median of the complete trials
   at epoch 1 lies between trial 0 and trial 2 (= trial 4's level): it is PRUNED after epoch 1
   (2 workers: the stop decision is broadcast from rank 0, else rank 1 would hang).

The study ends with exactly 4 finished trials and no duplicated params; MLflow has the parent,
its children with the trial params and states, and the best trial's model registered.
"""

from __future__ import annotations

import sys
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


# ------------------------------------------------------------------------------- the sweep


def _enqueue(study, *params: dict) -> None:
    for p in params:
        study.enqueue_trial(dict(p))


@pytest.fixture(scope="module")
def sweep_runs(ray_local, tiny_shards, tmp_path_factory):
    """Both invocations of the study (see the module docstring)."""
    import optuna
    import ray.cloudpickle

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
        # a sweep killed while trial 3 ran: asked, params set, never told
        _enqueue(study, KILLED)
        killed = study.ask()
        assert suggest(killed, spec.space) == KILLED and killed.number == 3
        second = run_sweep(spec, n_trials=4, progress=False)
        yield {
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


def test_rerun_retries_the_killed_trial_and_ends_with_n_trials(sweep_runs):
    study, second = sweep_runs["study"], sweep_runs["second"]
    s = states(study)
    assert [s[n] for n in range(5)] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "PRUNED"]
    assert s[5] in ("COMPLETE", "PRUNED") and len(s) == 6
    assert second.counts["COMPLETE"] + second.counts.get("PRUNED", 0) == 4
    killed, retry = study.trials[3], study.trials[4]
    assert killed.user_attrs["lstc.error"].startswith("left RUNNING")
    assert retry.params == KILLED and retry.user_attrs["lstc.retry_of"] == 3
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(keys) == len(set(keys)) == 4  # no finished params twice
    # every trial trained in its own run folder (never resumed another's checkpoints)
    names = [t.user_attrs["lstc.run_name"] for t in study.trials if t.number != 3]
    assert names == [f"{STUDY}-trial-{n}" for n in (0, 1, 2, 4, 5)]


def test_pruned_trial_stopped_after_epoch_one_with_its_reported_value(sweep_runs):
    from pipelines.train.loop import read_events

    study = sweep_runs["study"]
    pruned = study.trials[4]
    assert pruned.user_attrs["lstc.epochs_run"] == 1
    assert list(pruned.intermediate_values) == [1]
    assert pruned.value == pruned.intermediate_values[1]
    epoch1 = {n: study.trials[n].intermediate_values[1] for n in (0, 2)}
    assert pruned.value < (epoch1[0] + epoch1[2]) / 2 < epoch1[0]
    run_dir = sweep_runs["tmp"] / "runs" / f"{STUDY}-trial-4"
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
    assert sorted(by_number) == [0, 1, 2, 4, 5]  # trial 3 never got as far as MLflow
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
    assert {p.name for p in (folder / "plots").iterdir()} == {
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
    }
    best = study.best_trial
    assert parent.data.tags["lstc.best_trial"] == str(best.number)
    history = c.get_metric_history(parent.info.run_id, "sweep/trial_value")
    assert sorted(m.step for m in history) == [0, 1, 2, 4, 5]
    # the best trial's model is registered, from its own run, as champion (first version)
    assert second.registered == ("1", "champion")
    version = c.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == best.user_attrs["lstc.mlflow_run_id"]
    assert float(version.tags["selection_value"]) == pytest.approx(best.value)
