"""End-to-end training on the tiny synthetic shards with Ray Train (2 CPU workers, 2 epochs).

One trained run (``trained``) is shared: the end-to-end checks read it, and the fault-injection
and driver-restart runs compare their final weights with it. All runs use the session's single
Ray instance (``ray_local``) and a SQLite MLflow store in a temp folder.

Fault test (worker raises in epoch 2 on its first attempt, tracking server down) equality: the **final weights are bit-identical** to the uninterrupted run (and so
are the epoch-2 validation metrics). That holds because every source of randomness is a
function of (seed, epoch, rank or sample key) rather than of process history: python/numpy/torch
are reseeded at each epoch start, augmentation draws come from (seed, epoch, sample key), the
local shuffle seed from (seed, epoch), Ray Data runs with ``preserve_order`` so the split of
samples over workers and their order are the same in every execution, and the checkpoint holds
the exact model/optimizer/scheduler state. Loss sequences alone would be a weaker check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "refer_shapes_tiny.yaml"
EPOCHS = 2


@pytest.fixture(scope="module")
def train_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the env var would win over the recipe
        yield {"base": base, "uri": f"sqlite:///{base / 'mlflow.db'}", "storage": base / "runs"}


def overrides(shards: Path, env: dict, name: str, *extra: str) -> list[str]:
    return [
        f"data.root={shards}",
        f"train.epochs={EPOCHS}",
        f"train.storage_path={env['storage']}",
        f"train.run_name={name}",
        f"tracking.uri={env['uri']}",
        "registry.model_name=lstc-e2e-tiny",
        # a few dozen steps on 8 videos: a hotter lr and pos_weight than the demo's recipe
        # (tuned for thousands of steps) get the net off the empty mask within 2 epochs
        "optim.lr=1e-2",
        "loss.pos_weight=10.0",
        *extra,
    ]


def tiny_recipe(shards: Path, env: dict, name: str, *extra: str):
    from pipelines.config import load_recipe

    return load_recipe(TINY, overrides(shards, env, name, *extra))


@pytest.fixture(scope="module")
def trained(ray_local, tiny_shards, train_env):
    from pipelines.train.driver import train

    recipe = tiny_recipe(tiny_shards, train_env, "e2e")
    return recipe, train(recipe)


def client(env):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["uri"])


def val_metrics_of(recipe, model, split="test"):
    from data_prep.shards import iter_clip_rows
    from pipelines.data import decode_val_rows, eval_batches
    from pipelines.inference import evaluate

    rows = iter_clip_rows(recipe.data.root, split)
    return evaluate(model, eval_batches(decode_val_rows(rows), recipe)).compute()


def epoch_starts(run_dir: Path) -> list[int]:
    from pipelines.train.loop import read_events

    return [e["epoch"] for e in read_events(run_dir) if e["event"] == "epoch_start"]


def assert_same_weights(a: Path, b: Path) -> None:
    from pipelines.checkpoint import load_model_state

    sa, sb = load_model_state(a), load_model_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not (sa[k] == sb[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


# ----------------------------------------------------------------------------- end to end


def test_run_finishes_with_best_and_last_checkpoints(trained):
    from pipelines.checkpoint import is_checkpoint, load_metrics

    recipe, result = trained
    assert is_checkpoint(result.best_checkpoint) and is_checkpoint(result.last_checkpoint)
    assert load_metrics(result.last_checkpoint)["epoch"] == EPOCHS
    assert epoch_starts(result.run_dir) == [1, 2]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["mlflow_run_id"] == result.mlflow_run_id
    # every validation sample counted exactly once across the 2 workers (no padding, no drops)
    assert result.last_metrics["val/num_samples"] == 18


def test_metrics_improve_over_untrained_model(trained):
    from lstc.model import build_model
    from pipelines.train.loop import seed_everything

    recipe, result = trained
    seed_everything(recipe.train.seed)
    untrained = val_metrics_of(recipe, build_model(recipe.model))
    best = result.best_metrics
    assert best["val/mean_iou"] > untrained["mean_iou"] + 0.05, (best, untrained)
    assert best["val/overall_iou"] > untrained["overall_iou"] + 0.05, (best, untrained)


def test_mlflow_holds_params_metrics_artifacts_tags(trained, train_env):
    recipe, result = trained
    c = client(train_env)
    run = c.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == str(recipe.optim.lr)
    assert params["train.num_workers"] == "2" and params["model.lasp"] == "on"
    tags = run.data.tags
    assert tags["lstc.num_workers"] == "2"
    assert json.loads(tags["ray.cluster_resources"])["CPU"] >= 2
    assert len(tags["dataset.manifest_sha256"]) == 64
    assert "git.commit" in tags
    hist = c.get_metric_history(result.mlflow_run_id, "val/mean_iou")
    assert sorted(m.step for m in hist) == [1, 2]
    assert len(c.get_metric_history(result.mlflow_run_id, "train/step/loss")) >= 2
    assert len(c.get_metric_history(result.mlflow_run_id, "train/step/lr")) >= 2
    names = {a.path for a in c.list_artifacts(result.mlflow_run_id, "overlays")}
    assert {"overlays/epoch_001.png", "overlays/epoch_002.png"} <= names
    assert [a.path for a in c.list_artifacts(result.mlflow_run_id, "curves")]
    assert [a.path for a in c.list_artifacts(result.mlflow_run_id, "config")]


def test_best_checkpoint_registered_as_champion(trained, train_env):
    recipe, result = trained
    assert result.registered == ("1", "champion")
    mv = client(train_env).get_model_version_by_alias(recipe.registry.model_name, "champion")
    assert str(mv.version) == "1" and mv.run_id == result.mlflow_run_id


def test_lstc_eval_reproduces_logged_validation_metrics(trained, train_env, tmp_path):
    from pipelines.cli import main
    from pipelines.mlops.tracking import metric_key

    recipe, result = trained
    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--model",
            f"models:/{recipe.registry.model_name}@champion",
            "--data",
            str(recipe.data.root),
            "--tracking-uri",
            train_env["uri"],
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    evaluated = json.loads(out.read_text())
    best = result.best_metrics
    for name in ("overall_iou", "mean_iou", "P@0.5", "mAP@0.5:0.95", "J&F", "num_samples"):
        assert evaluated[name] == pytest.approx(best[f"val/{metric_key(name)}"], abs=1e-6), name


# -------------------------------------------------------------------------- fault injection


def test_worker_failure_resumes_from_checkpoint_and_matches(trained, tiny_shards, train_env):
    """A worker raises in epoch 2 (first attempt only; a test-side worker callback) while the
    tracking server is down too: Ray Train restarts the workers from the epoch-1 checkpoint,
    the run finishes with bit-identical weights, and the tracking outage only warns."""
    from conftest import free_port
    from faults import FAULT_MARKER, FailOnce, picklable

    from pipelines.train.driver import train
    from pipelines.train.loop import read_events

    _, reference = trained
    picklable()  # the callback reaches the Ray workers by value
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: tracking is down
    recipe = tiny_recipe(tiny_shards, train_env, "fault", f"tracking.uri={dead}")
    assert recipe.train.max_failures >= 1 and recipe.train.num_workers == 2
    with pytest.warns(RuntimeWarning, match="MLflow tracking failed"):
        result = train(recipe, register=False, callbacks=[FailOnce(epoch=2, rank=1)])
    assert result.mlflow_run_id is None
    marker = result.run_dir / FAULT_MARKER
    assert marker.is_file(), "the fault was not injected"
    assert marker.read_text().startswith("rank 1 epoch 2 step ")
    # two attempts: the first from scratch, the retry from checkpoint 1 (so epoch 1 ran once;
    # epoch 2 started, failed on rank 1, and was redone)
    attempts = [
        e["start_epoch"] for e in read_events(result.run_dir) if e["event"] == "attempt_start"
    ]
    assert attempts == [1, 2]
    assert epoch_starts(result.run_dir) == [1, 2, 2]
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)
    for k, v in reference.last_metrics.items():
        if k.startswith("val/") and k != "val/time_s":
            assert result.last_metrics[k] == pytest.approx(v, abs=0, nan_ok=True), k


# --------------------------------------------------------------------------- driver restart


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if snapshot.is_file() and "checkpoint_epoch_0001" in snapshot.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"driver exited early ({proc.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no epoch-1 checkpoint after {timeout} s:\n{log.read_text()[-4000:]}")


def test_killed_driver_resumes_same_run(trained, ray_local, tiny_shards, train_env):
    from pipelines.train.driver import RUN_ID_FILE, run_dir_of, train
    from pipelines.train.loop import read_events

    _, reference = trained
    name = "restart"
    recipe = tiny_recipe(tiny_shards, train_env, name)
    run_dir = run_dir_of(recipe)
    log = train_env["base"] / "restart-driver.log"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(TINY), "--no-register"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd + overrides(tiny_shards, train_env, name),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=train_env["base"],
        )
    try:
        # a bound: the driver imports the stack, joins Ray and trains epoch 1 (over a minute
        # idle; any step may take 10x that on a loaded 2-core box)
        _wait_for_checkpoint(run_dir, proc, log, timeout=900)
        first_run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)

    # the same command again (here in-process, on the same cluster): resumes, same MLflow run
    result = train(recipe, register=False)
    assert result.mlflow_run_id == first_run_id
    drivers = [e for e in read_events(run_dir) if e["event"] == "driver_start"]
    assert [d["resumed"] for d in drivers] == [False, True]
    starts = epoch_starts(run_dir)
    assert starts.count(1) == 1 and starts[-1] == 2, starts  # epoch 1 never redone
    hist = client(train_env).get_metric_history(first_run_id, "val/mean_iou")
    assert sorted({m.step for m in hist}) == [1, 2]
    assert client(train_env).get_run(first_run_id).info.status == "FINISHED"
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)


# ------------------------------------------------------------ metric axes and dataset lineage


def test_each_metric_key_has_one_step_axis(trained, train_env):
    """Every metric of the run belongs to one family and has the steps of its axis: per-step
    keys every log_every_steps optimizer steps (strictly increasing), per-epoch keys exactly
    1..epochs, best/ one point at the best epoch, system/ MLflow's increasing sample counter."""
    from pipelines.mlops.tracking import metric_family

    recipe, result = trained
    c = client(train_env)
    keys = set(c.get_run(result.mlflow_run_id).data.metrics)
    assert {"train/step/loss", "train/step/lr", "train/epoch/loss", "val/mean_iou"} <= keys
    assert {"best/mean_iou", "train/epoch/lr", "train/epoch/time_s"} <= keys
    total_steps = result.last_metrics["global_step"]
    every = recipe.tracking.log_every_steps
    assert total_steps >= 2 * every, "too few steps to see a per-step series"
    for key in sorted(keys):
        fam = metric_family(key)
        assert fam is not None, f"{key} is outside the metric families"
        steps = sorted(m.step for m in c.get_metric_history(result.mlflow_run_id, key))
        if fam.axis == "step":  # one point per logged optimizer step, no repeats
            assert steps == list(range(every, total_steps + 1, every)), (key, steps)
        elif fam.axis == "epoch":
            assert steps == list(range(1, EPOCHS + 1)), (key, steps)
        elif fam.axis == "summary":
            assert steps == [result.best_metrics["epoch"]], (key, steps)
        else:
            assert fam.axis == "system", key
            assert len(set(steps)) == len(steps), (key, steps)


def test_training_and_eval_runs_share_dataset_identity(trained, train_env, capsys):
    """The train run's validation input and an eval run of its checkpoint on the same shards
    are one MLflow dataset (name + digest = the manifest's sha256); tags mean the same."""
    import hashlib

    from data_prep.shards import load_manifest
    from pipelines.eval.runner import EvalOptions, run_eval

    recipe, result = trained
    root = Path(recipe.data.root)
    sha = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    c = client(train_env)

    def inputs(run_id: str) -> dict[str, tuple[str, str]]:
        return {
            {t.key: t.value for t in di.tags}["mlflow.data.context"]: (
                di.dataset.name,
                di.dataset.digest,
            )
            for di in c.get_run(run_id).inputs.dataset_inputs
        }

    assert inputs(result.mlflow_run_id) == {
        "training": ("refer_shapes/train", sha[:32]),
        "validation": ("refer_shapes/test", sha[:32]),
    }
    run_eval(
        EvalOptions(
            model=str(result.best_checkpoint),
            data=str(root),
            split="test",
            tracking_uri=train_env["uri"],
            experiment="lineage-eval",
        )
    )
    eval_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]
    assert inputs(eval_id) == {"evaluation": inputs(result.mlflow_run_id)["validation"]}
    config_hash = load_manifest(root)["config_hash"]
    for run_id in (result.mlflow_run_id, eval_id):
        tags = c.get_run(run_id).data.tags
        assert tags["dataset.manifest_sha256"] == sha, run_id
        assert tags["dataset.config_hash"] == config_hash, run_id
        assert "dataset.manifest_hash" not in tags


# ----------------------------------------------------------- reruns: changed recipe, new run

RERUN = "rerun"


def rerun_overrides(shards: Path, env: dict, *extra: str) -> list[str]:
    # one short epoch, no overlays or system metrics: these tests are about the run directory
    short = ("train.epochs=1", "tracking.num_overlays=0", "tracking.system_metrics=false")
    return overrides(shards, env, RERUN, *short, *extra)


def rerun_recipe(shards: Path, env: dict, *extra: str):
    from pipelines.config import load_recipe

    return load_recipe(TINY, rerun_overrides(shards, env, *extra))


@pytest.fixture(scope="module")
def rerun_base(ray_local, tiny_shards, train_env):
    """A finished 1-epoch run named RERUN (the tests below rerun it)."""
    from pipelines.train.driver import train

    recipe = rerun_recipe(tiny_shards, train_env)
    return recipe, train(recipe, register=False)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_ids(env: dict, experiment: str) -> set[str]:
    exp = client(env).get_experiment_by_name(experiment)
    return {r.info.run_id for r in client(env).search_runs([exp.experiment_id])}


def test_rerun_with_changed_recipe_stops_before_anything(
    rerun_base, tiny_shards, train_env, capsys
):
    from pipelines.cli import main
    from pipelines.train.driver import train
    from pipelines.train.resume import RecipeChangedError

    recipe, first = rerun_base
    storage = Path(recipe.train.storage_path)
    before, runs_before = _tree(storage), _run_ids(train_env, recipe.tracking.experiment)
    changed = rerun_recipe(tiny_shards, train_env, "optim.lr=0.005", "train.max_failures=3")
    with pytest.raises(RecipeChangedError) as err:
        train(changed, register=False)
    msg = str(err.value)
    assert "optim.lr: 0.01 -> 0.005" in msg and "--new-run" in msg and "--name" in msg
    assert "train.max_failures: 2 -> 3" not in msg  # a key a resume may change: not refused
    assert set(err.value.refused) == {"optim.lr"}
    # the CLI: one message, exit code 2
    args = ["train", "--config", str(TINY), "--no-register"]
    rc = main([*args, *rerun_overrides(tiny_shards, train_env, "optim.lr=0.005")])
    assert rc == 2
    assert "optim.lr: 0.01 -> 0.005" in capsys.readouterr().err
    # nothing was written: no file touched, no MLflow run created
    assert _tree(storage) == before
    assert _run_ids(train_env, recipe.tracking.experiment) == runs_before


def test_rerun_says_it_resumes_and_records_an_allowed_change(
    rerun_base, tiny_shards, train_env, capsys
):
    """The same recipe up to train.max_failures (a key a resume may change): the run resumes,
    says so, records the change as a tag (MLflow params are immutable), logs nothing twice."""
    import warnings

    from pipelines.train.driver import train

    recipe, first = rerun_base
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(rerun_recipe(tiny_shards, train_env, "train.max_failures=3"), register=False)
    out = capsys.readouterr().out
    ckpt = first.run_dir / "checkpoint_epoch_0001"
    line = f"resuming run {RERUN} from epoch 1 checkpoint {ckpt} (MLflow run {first.mlflow_run_id})"
    assert line in out, out[-3000:]
    assert "changed on resume: train.max_failures 2 -> 3" in out
    assert not [w for w in caught if "MLflow" in str(w.message)], [str(w.message) for w in caught]
    assert result.mlflow_run_id == first.mlflow_run_id
    assert epoch_starts(first.run_dir) == [1]  # the finished epoch was not trained again
    run = client(train_env).get_run(first.mlflow_run_id)
    assert run.data.params["train.max_failures"] == "2"
    assert run.data.tags["lstc.resume_changes"] == "train.max_failures 2 -> 3"
    assert len(run.inputs.dataset_inputs) == 2  # training + validation, not logged twice
    assert "max_failures: 3" in (first.run_dir / "recipe.yaml").read_text()


def test_new_run_starts_fresh_and_keeps_the_old_run(rerun_base, tiny_shards, train_env):
    from pipelines.cli import main
    from pipelines.train.driver import RUN_ID_FILE
    from pipelines.train.resume import PREV_MARK

    recipe, first = rerun_base
    storage = Path(recipe.train.storage_path)
    args = ["train", "--config", str(TINY), "--no-register", "--new-run"]
    rc = main([*args, *rerun_overrides(tiny_shards, train_env, "optim.lr=0.005")])
    assert rc == 0
    (prev,) = storage.glob(f"{RERUN}{PREV_MARK}*")
    assert (prev / RUN_ID_FILE).read_text().strip() == first.mlflow_run_id
    assert "lr: 0.01" in (prev / "recipe.yaml").read_text()
    new_id = (first.run_dir / RUN_ID_FILE).read_text().strip()
    assert new_id != first.mlflow_run_id
    assert epoch_starts(first.run_dir) == [1]  # trained from epoch 1 in a fresh folder
    c = client(train_env)
    new, old = c.get_run(new_id), c.get_run(first.mlflow_run_id)
    assert new.data.params["optim.lr"] == "0.005" and old.data.params["optim.lr"] == "0.01"
    assert new.data.tags["lstc.previous_mlflow_run_id"] == first.mlflow_run_id
    assert new.data.tags["lstc.previous_run_dir"] == str(prev)
    assert sorted(m.step for m in c.get_metric_history(new_id, "val/mean_iou")) == [1]
