"""Training, evaluation and registry with the run folder and the shards on object storage.

A real S3 protocol server (moto's S3 application, served by werkzeug on 127.0.0.1 in this
process behind a small fault-injecting WSGI layer) holds a bucket; the session's local Ray
instance trains the tiny recipe with ``train.storage_path=s3://.../runs`` and
``data.root=s3://.../shards`` (the session's ``tiny_shards``, uploaded). pyarrow reaches the
server through the URI itself (credentials, ``endpoint_override``, ``scheme``, ``region``),
so the Ray workers of the session's instance, started before this module, need no
environment.

* ``s3_run``: a 2-epoch run, registered in a SQLite MLflow store with a local artifact root;
  every file of the run is an object in the bucket and nothing is written under the cwd;
  ``lstc eval`` of ``s3://.../best`` on the S3 shards reproduces the logged validation
  metrics and writes its ``--output`` to the bucket.
* storage failure: the server stops while rank 0's epoch-2 checkpoint is being uploaded (on
  the PUT of its ``model.pt``); the run fails (``train.max_failures=0``), epoch 2 is not taken
  as a checkpoint, and rerunning the same command after the server is back resumes from the
  checkpoint on S3 (epoch 1: resume line, same MLflow run, no epoch redone) and ends with
  weights bit-identical to ``s3_run``'s.
* completeness markers, events, moving a run aside and a submission zip on S3, and the
  refusal of a file tracking store on a multi-node cluster, without training.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "refer_shapes_tiny.yaml"
BUCKET = "lstc-train"
EPOCHS = 2


class FlakyS3:
    """moto's S3 app on 127.0.0.1 behind a WSGI layer that can stop the server.

    :attr:`stop_on`: an object key (``prefix/rel`` in :data:`BUCKET`); the first request that
    writes it (PUT, or POST of a multipart upload) stops the server: that request is answered
    503, the listening socket is closed and requests on open connections get 503, until
    :meth:`start` serves again on the same port (moto keeps its objects in this process).
    """

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.port = free_port()
        self.stop_on: str | None = None
        self.stopped_at: str | None = None  # the key whose write stopped the server
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None
        self._down = threading.Event()
        self.start()
        from data_prep.storage import resolve

        fs, _ = resolve(self.uri("", allow_bucket_creation="true"))
        fs.create_dir(BUCKET)

    def start(self) -> None:
        from moto.server import MotoRequestHandler
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        self._server = make_server(
            "127.0.0.1", self.port, self._app, threaded=True, request_handler=Quiet
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._down.clear()

    def stop(self) -> None:
        self._down.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return not self._down.is_set()

    def _app(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        if self._down.is_set():
            return self._unavailable(start_response)
        path = environ.get("PATH_INFO", "").lstrip("/")
        key = path.removeprefix(f"{BUCKET}/")
        writes = environ["REQUEST_METHOD"] in ("PUT", "POST")
        if writes and self.stop_on is not None and key == self.stop_on:
            self.stop_on, self.stopped_at = None, key
            self._down.set()
            threading.Thread(target=self.stop, daemon=True).start()
            return self._unavailable(start_response)
        return self._moto(environ, start_response)

    @staticmethod
    def _unavailable(start_response: Callable) -> list[bytes]:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
            b"<Message>stopped by the test</Message></Error>"
        )
        start_response(
            "503 Service Unavailable",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def uri(self, prefix: str, **query: str) -> str:
        """``s3://`` URI of ``prefix`` in the bucket that reaches this server from any process."""
        params = {
            "endpoint_override": f"127.0.0.1:{self.port}",
            "scheme": "http",
            "region": "us-east-1",
            **query,
        }
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"s3://testing:testing@{BUCKET}/{prefix}?{q}"


@pytest.fixture(scope="module")
def s3() -> Iterator[FlakyS3]:
    server = FlakyS3()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_shards(s3: FlakyS3, tiny_shards: Path) -> str:
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


def recipe_for(s3: FlakyS3, shards: str, env: dict, name: str, *extra: str):
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


def objects(s3: FlakyS3, prefix: str) -> list[str]:
    from data_prep.storage import list_files

    return list_files(s3.uri(prefix))


def weights(where) -> dict:
    from pipelines.checkpoint import load_model_state, local_checkpoint

    with local_checkpoint(where) as d:
        return load_model_state(d)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


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


# ------------------------------------------------------------------------ storage failure


def test_upload_failure_resumes_from_the_last_complete_checkpoint(
    s3_run, s3, s3_shards, env, capsys
):
    """The server stops on the PUT of epoch 2's model.pt (rank 0's upload through Ray): the
    run fails, with the storage error and not a bookkeeping one; epoch 2 was never recorded
    by Ray and whatever part of it reached the bucket is not a complete checkpoint. With the
    server back, the same command resumes from epoch 1 (resume line, same MLflow run, epoch 1
    not redone) and ends with the weights of the uninterrupted run."""
    import ray.train

    from pipelines.checkpoint import checkpoint_problem
    from pipelines.train.driver import RUN_ID_FILE, train
    from pipelines.train.resume import child, latest_checkpoint, read_text

    _, reference, _, _ = s3_run
    recipe = recipe_for(s3, s3_shards, env, "s3fault", "train.max_failures=0")
    s3.stop_on = "runs/s3fault/checkpoint_epoch_0002/model.pt"
    try:
        with (
            pytest.raises(ray.train.TrainingFailedError) as failed,
            pytest.warns(RuntimeWarning, match="recording the driver_failed event failed"),
        ):
            train(recipe, register=False)
    finally:
        stopped_at, s3.stop_on = s3.stopped_at, None
        if not s3.running:
            s3.start()
    assert stopped_at == "runs/s3fault/checkpoint_epoch_0002/model.pt"
    # the storage error itself, not a bookkeeping one (Ray shortens the worker's traceback)
    assert f"127.0.0.1 port {s3.port}" in str(failed.value), failed.value
    run_dir = s3.uri("runs/s3fault")
    assert latest_checkpoint(run_dir)[0] == 1
    assert checkpoint_problem(child(run_dir, "checkpoint_epoch_0002")) is not None
    assert "best" not in {n.split("/")[0] for n in objects(s3, "runs/s3fault")}
    first_run_id = read_text(child(run_dir, RUN_ID_FILE)).strip()

    capsys.readouterr()
    result = train(recipe, register=False)
    out = capsys.readouterr().out
    ckpt1 = f"s3://{BUCKET}/runs/s3fault/checkpoint_epoch_0001?"
    assert f"resuming run s3fault from epoch 1 checkpoint {ckpt1}" in out, out
    assert f"(MLflow run {first_run_id})" in out and result.mlflow_run_id == first_run_id
    assert epoch_starts(run_dir) == [1, 2, 2]  # epoch 1 once; epoch 2 failed, then redone
    assert_same_weights(weights(result.last_checkpoint), weights(reference.last_checkpoint))
    for k, v in reference.last_metrics.items():
        if k.startswith("val/"):
            assert result.last_metrics[k] == pytest.approx(v, abs=0, nan_ok=True), k


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
