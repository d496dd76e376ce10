"""Training, evaluation and registry with the run folder and the shards on object storage.

A real S3 protocol server (moto's S3 application on 127.0.0.1 in this process,
``tests/local_cluster.S3Server``) holds a bucket; the session's local Ray
instance trains the tiny recipe with ``train.storage_path=s3://.../runs`` and
``data.root=s3://.../shards`` (the session's ``tiny_shards``, uploaded). pyarrow reaches the
server through the URI itself (credentials, ``endpoint_override``, ``scheme``, ``region``),
so the Ray workers of the session's instance, started before this module, need no
environment.

* ``s3_run``: a 2-epoch run, registered in a SQLite MLflow store with a local artifact root;
  every file of the run is an object in the bucket and nothing is written under the cwd;
  ``lstc eval`` of ``s3://.../best`` on the S3 shards reproduces the logged validation
  metrics and writes its ``--output`` to the bucket.
* storage failure during a checkpoint upload, and node failure: on the two-node cluster
  (``tests/test_cluster_jobs.py``), where rank 0 uploads from whatever node it runs on.
* completeness markers, events, moving a run aside and a submission zip on S3, and the
  refusal of a file tracking store on a multi-node cluster, without training.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_cluster import S3Server, assert_same_weights, weights

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "refer_shapes_tiny.yaml"
BUCKET = "lstc-train"
EPOCHS = 2


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_shards(s3: S3Server, tiny_shards: Path) -> str:
    """The session's tiny shards, uploaded to the bucket."""
    from data_prep.storage import copy_dir

    root = s3.uri("shards")
    copy_dir(tiny_shards, root)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("train_s3")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield {"base": base, "uri": f"sqlite:///{base / 'mlflow.db'}"}


def recipe_for(s3: S3Server, shards: str, env: dict, name: str, *extra: str):
    from pipelines.config import load_recipe

    return load_recipe(
        TINY,
        [
            f"data.root={shards}",
            f"train.epochs={EPOCHS}",
            f"train.storage_path={s3.uri('runs')}",
            f"train.run_name={name}",
            f"tracking.uri={env['uri']}",
            "tracking.system_metrics=false",
            "registry.model_name=lstc-s3-tiny",
            # as tests/test_train_e2e.py: a hotter lr and pos_weight for a few dozen steps
            "optim.lr=1e-2",
            "loss.pos_weight=10.0",
            *extra,
        ],
    )


def objects(s3: S3Server, prefix: str) -> list[str]:
    from data_prep.storage import list_files

    return list_files(s3.uri(prefix))


def epoch_starts(run_dir) -> list[int]:
    from pipelines.train.loop import read_events

    return [e["epoch"] for e in read_events(run_dir) if e["event"] == "epoch_start"]


@pytest.fixture(scope="module")
def s3_run(ray_local, s3, s3_shards, env):
    """A finished 2-epoch run on S3, registered; started from ``env['base']`` as cwd."""
    from pipelines.train.driver import train

    recipe = recipe_for(s3, s3_shards, env, "s3run")
    cwd = os.getcwd()
    os.chdir(env["base"])
    try:
        before = sorted(p.name for p in env["base"].iterdir())
        result = train(recipe)
        after = sorted(p.name for p in env["base"].iterdir())
    finally:
        os.chdir(cwd)
    return recipe, result, before, after


# ------------------------------------------------------------------ a run on object storage


def test_run_on_s3_keeps_every_file_in_the_bucket(s3_run, s3, tmp_path):
    from data_prep.storage import read_bytes
    from pipelines.checkpoint import COMPLETE_FILE, describe, is_checkpoint, read_marker
    from pipelines.train.resume import child

    recipe, result, before, after = s3_run
    run_dir = result.run_dir
    assert run_dir == s3.uri("runs/s3run")
    # nothing local: no "<cwd>/s3:/..." folder; only the SQLite MLflow store and its artifacts
    assert before == [] and set(after) <= {"mlflow.db", "mlartifacts"}, after
    names = objects(s3, "runs/s3run")
    for name in (
        "recipe.yaml",
        "mlflow_run_id",
        "summary.json",
        "checkpoint_manager_snapshot.json",
    ):
        assert name in names, names
    for ckpt in ("checkpoint_epoch_0001", "checkpoint_epoch_0002", "best", "last"):
        files = {n.split("/", 1)[1] for n in names if n.startswith(ckpt + "/")}
        assert {"model.pt", "train_state.pt", "recipe.yaml", "metrics.json", COMPLETE_FILE} <= files
        assert is_checkpoint(child(run_dir, ckpt)), ckpt
        assert set(read_marker(child(run_dir, ckpt))["files"]) == files - {COMPLETE_FILE}
    # the journal: one object per event, read back in order
    assert [n for n in names if n.startswith("events/")]
    assert "events.jsonl" not in names
    assert epoch_starts(run_dir) == [1, 2]
    summary = json.loads(read_bytes(child(run_dir, "summary.json")))
    assert summary["mlflow_run_id"] == result.mlflow_run_id
    assert summary["best_checkpoint"] == child(run_dir, "best") == result.best_checkpoint
    assert result.last_metrics["epoch"] == EPOCHS
    assert result.last_metrics["val/num_samples"] == 18
    assert_same_weights(
        weights(result.last_checkpoint), weights(child(run_dir, "checkpoint_epoch_0002"))
    )
    # MLflow: the run's tags and params name the bucket without the credentials
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=recipe.tracking.uri).get_run(result.mlflow_run_id)
    assert run.data.tags["lstc.run_dir"] == describe(run_dir)
    assert run.data.tags["lstc.run_dir"].startswith(f"s3://{BUCKET}/runs/s3run?")
    assert "testing:testing" not in json.dumps({**run.data.tags, **run.data.params})
    logged = MlflowClient(tracking_uri=recipe.tracking.uri).download_artifacts(
        result.mlflow_run_id, "config/recipe.yaml", str(tmp_path)
    )
    text = Path(logged).read_text()
    assert f"s3://{BUCKET}/runs?" in text and "testing:testing" not in text


def test_lstc_eval_of_the_s3_checkpoint_reproduces_validation_metrics(s3_run, s3, s3_shards, env):
    from data_prep.storage import read_bytes
    from pipelines.cli import main
    from pipelines.mlops.tracking import metric_key

    recipe, result, _, _ = s3_run
    out = s3.uri("eval/best.json")
    rc = main(
        ["eval", "--model", result.best_checkpoint, "--data", s3_shards,
         "--tracking-uri", env["uri"], "--output", out]
    )  # fmt: skip
    assert rc == 0
    evaluated = json.loads(read_bytes(out))
    for name in ("overall_iou", "mean_iou", "P@0.5", "mAP@0.5:0.95", "J&F", "num_samples"):
        want = result.best_metrics[f"val/{metric_key(name)}"]
        assert evaluated[name] == pytest.approx(want, abs=1e-6), name


def test_best_s3_checkpoint_is_registered_with_its_weights(s3_run, env):
    from pipelines.mlops.registry import checkpoint_of, get_version

    recipe, result, _, _ = s3_run
    assert result.registered == ("1", "champion")
    mv = get_version(f"models:/{recipe.registry.model_name}@champion", tracking_uri=env["uri"])
    assert mv.run_id == result.mlflow_run_id
    assert mv.tags["checkpoint"].startswith(f"s3://{BUCKET}/runs/s3run/best?")
    local = checkpoint_of(f"models:/{recipe.registry.model_name}/1", tracking_uri=env["uri"])
    assert_same_weights(weights(local), weights(result.best_checkpoint))


# ------------------------------------------------------------- pieces, without training


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    """A local checkpoint of the untrained tiny model."""
    import torch

    from lstc.model import build_model
    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_recipe

    recipe = load_recipe(TINY, [])
    torch.manual_seed(0)
    model = build_model(recipe.model.without_pretrained())
    path = tmp_path_factory.mktemp("ckpt") / "c"
    return save_checkpoint(path, model=model, recipe=recipe, epoch=1, global_step=3,
                           metrics={"val/mean_iou": 0.25})  # fmt: skip


def test_checkpoint_on_s3_loads_only_when_complete(s3, saved_checkpoint, env):
    from data_prep.storage import delete_file, read_bytes, write_bytes
    from pipelines.checkpoint import (
        COMPLETE_FILE,
        IncompleteCheckpointError,
        copy_checkpoint,
        is_checkpoint,
        load_metrics,
        load_model_from_checkpoint,
        load_model_state,
    )
    from pipelines.eval.loading import EvalError, load_model
    from pipelines.mlops.registry import RegistryError, register_checkpoint
    from pipelines.train.resume import child

    uri = s3.uri("pieces/ckpt")
    copy_checkpoint(saved_checkpoint, uri)
    assert is_checkpoint(uri) and load_metrics(uri)["val/mean_iou"] == 0.25
    model, recipe = load_model_from_checkpoint(uri)
    assert_same_weights(model.state_dict(), load_model_state(saved_checkpoint))
    assert objects(s3, "pieces/ckpt") == sorted(p.name for p in saved_checkpoint.iterdir())

    target = child(uri, "model.pt")
    model_pt = read_bytes(target)
    write_bytes(target, model_pt[: len(model_pt) // 2])  # a truncated upload
    with pytest.raises(IncompleteCheckpointError, match=r"size differs .*model\.pt"):
        load_model_from_checkpoint(uri)
    with pytest.raises(EvalError, match="not a complete one|complete checkpoint"):
        load_model(uri, env["uri"])
    delete_file(target)  # a missing file
    with pytest.raises(IncompleteCheckpointError, match=r"missing model\.pt"):
        load_model_from_checkpoint(uri)
    copy_checkpoint(saved_checkpoint, uri)
    delete_file(child(uri, COMPLETE_FILE))  # no marker
    assert not is_checkpoint(uri)
    with pytest.raises(IncompleteCheckpointError, match="no _COMPLETE marker"):
        load_model_from_checkpoint(uri)
    with pytest.raises(RegistryError, match="no _COMPLETE marker"):
        register_checkpoint(uri, recipe=recipe, run_id=None, metrics={}, tracking_uri=env["uri"])
    # a local folder without its marker is refused the same way
    local = env["base"] / "unmarked"
    copy_checkpoint(saved_checkpoint, local)
    (local / COMPLETE_FILE).unlink()
    with pytest.raises(IncompleteCheckpointError, match="no _COMPLETE marker"):
        load_model_from_checkpoint(local)


def test_registered_s3_checkpoint_loads_even_from_a_bundle_without_marker(
    s3, saved_checkpoint, env
):
    """register_checkpoint from a URI logs a verified download; the checkpoint inside a
    registered model is complete by MLflow's doing, so a bundle without ``_COMPLETE`` (a
    model registered before markers existed) still loads."""
    from pipelines.checkpoint import (
        COMPLETE_FILE,
        copy_checkpoint,
        load_model_state,
        load_recipe_from_checkpoint,
    )
    from pipelines.mlops.registry import checkpoint_of, load_registered, register_checkpoint

    uri = s3.uri("pieces/registered")
    copy_checkpoint(saved_checkpoint, uri)
    recipe = load_recipe_from_checkpoint(saved_checkpoint).replace(
        [f"tracking.uri={env['uri']}", "registry.model_name=lstc-s3-pieces", "data.root=none"]
    )

    def markers() -> set[Path]:
        return set((env["base"] / "mlartifacts").rglob(COMPLETE_FILE))

    before = markers()
    version, _ = register_checkpoint(uri, recipe=recipe, run_id=None, metrics={})
    bundle = checkpoint_of(f"models:/lstc-s3-pieces/{version}", tracking_uri=env["uri"])
    assert (bundle / COMPLETE_FILE).is_file()
    shutil.rmtree(next(p for p in bundle.parents if p.name.startswith("lstc-model-")))
    # the stored bundle (in the store's local artifact root), as an older version logged it
    stored = sorted(markers() - before)
    assert len(stored) == 1, stored
    stored[0].unlink()
    model, _ = load_registered(f"models:/lstc-s3-pieces/{version}", tracking_uri=env["uri"])
    assert_same_weights(model.state_dict(), load_model_state(saved_checkpoint))


def test_events_move_aside_and_submission_on_s3(s3, tmp_path):
    from datetime import UTC, datetime

    import numpy as np

    from data_prep.storage import list_files, read_bytes, write_text
    from pipelines.eval.submission import SubmissionWriter, zip_submission
    from pipelines.train.loop import append_event, read_events
    from pipelines.train.resume import child, move_aside

    run_dir = s3.uri("pieces/run")
    for i in range(3):
        append_event(run_dir, "tick", i=i)
    assert [(e["event"], e["i"]) for e in read_events(run_dir)] == [
        ("tick", 0),
        ("tick", 1),
        ("tick", 2),
    ]
    assert len(list_files(child(run_dir, "events"))) == 3

    write_text(child(run_dir, "recipe.yaml"), "x: 1\n")
    moved = move_aside(run_dir, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert moved == s3.uri("pieces/run.prev-20260102T030405Z")
    assert list_files(run_dir) == []
    assert read_bytes(child(moved, "recipe.yaml")) == b"x: 1\n"
    assert [e["i"] for e in read_events(moved)] == [0, 1, 2]

    writer = SubmissionWriter(tmp_path / "sub")
    writer.add("v1", "0", "00003", np.eye(4, dtype=np.uint8))
    zipped = zip_submission(tmp_path / "sub", s3.uri("pieces/sub.zip"), writer.expected,
                            sizes=writer.sizes)  # fmt: skip
    assert zipped == s3.uri("pieces/sub.zip")
    (tmp_path / "sub.zip").write_bytes(read_bytes(zipped))
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert zf.namelist() == ["Annotations/v1/0/00003.png"]


def test_file_tracking_store_is_refused_on_a_multi_node_cluster():
    from pipelines.mlops.tracking import ClusterTrackingError, check_cluster_tracking

    for uri in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "mlruns"):
        check_cluster_tracking(uri, 1)  # one node: the SQLite default is fine
        with pytest.raises(ClusterTrackingError) as err:
            check_cluster_tracking(uri, 2)
        text = str(err.value)
        assert uri in text and "2 nodes" in text
        assert "MLFLOW_TRACKING_URI=http://<host>:5000" in text
        assert "mlflow server" in text and "--backend-store-uri postgresql://" in text
        assert "--artifacts-destination s3://" in text
    for uri in ("http://mlflow:5000", "https://m.example.com", "databricks"):
        check_cluster_tracking(uri, 3)
