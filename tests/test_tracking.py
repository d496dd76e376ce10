"""Tracker against a REAL MLflow tracking server on loopback (the session's, tests/conftest.py).

The outage tests put a small TCP relay between the tracker and the server, so the "server"
can go down and come back mid-run without restarting MLflow (and one test points at a port
where nothing listens). No MLflow object is mocked.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from pipelines.mlops.tracking import Tracker, flatten, metric_key, resolve_tracking_uri

pytestmark = pytest.mark.slow

# The mlflow server: the session-scoped `mlflow_server` fixture of tests/conftest.py (one
# real `mlflow server` on 127.0.0.1 shared with tests/test_runs.py); runs here are found by id.


@pytest.fixture(autouse=True)
def _tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # a loaded CI box is slow
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")


class Relay:
    """A TCP relay 127.0.0.1:<port> -> upstream that can be switched off and on again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener is not None:
                try:  # wakes the thread blocked in accept(); close() alone does not on Linux
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# ------------------------------------------------------------------------------- pure helpers


def test_metric_key_and_flatten():
    assert metric_key("val/P@0.5") == "val/P_at_0.5"
    assert metric_key("J&F") == "J_and_F"
    assert metric_key("mAP@0.5:0.95") == "mAP_at_0.5-0.95"
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == {
        "a.b": "1",
        "a.c.d": "null",
        "e": "[1, 2]",
        "f": "{}",
    }


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x/y.db", cwd=tmp_path) == (
        f"sqlite:///{tmp_path.resolve()}/x/y.db"
    )
    assert resolve_tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:1")
    assert resolve_tracking_uri("sqlite:///a.db") == "http://server:1"


def test_embedded_default_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.start({"tracking": {"experiment": "embedded"}}, system_metrics=False)
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.log_dict({"a": 1}, "recipe.json")
    tracker.end()
    assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (tmp_path / "mlflow.db").is_file()
    run = _client(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").resolve().as_uri())
    assert (tmp_path / "mlartifacts").is_dir()
    assert run.data.metrics == {"loss": 0.5}


# ------------------------------------------------------------------------------- real server


def test_logs_everything_through_server(mlflow_server, tmp_path):
    recipe = {
        "tracking": {"uri": mlflow_server, "experiment": "lstc-test"},
        "train": {"run_name": "r1"},
    }
    tracker = Tracker.start(recipe, tags={"num_workers": 2})
    assert tracker.run_id is not None and tracker.healthy
    tracker.log_params({"model": {"cmam": "cmam_plus", "lasp": "on"}, "optim": {"lr": 5e-4}})
    for step in range(1, 4):
        tracker.log_metrics({"train/step/loss": 1.0 / step}, step=step, axis="step")
        tracker.log_metrics({"val/J&F": 0.1 * step}, step=step, axis="epoch")
    image = np.zeros((12, 16, 3), np.uint8)
    image[2:6, 3:9] = (255, 0, 0)
    tracker.log_image(image, "overlays/epoch_000.png")
    tracker.log_dict({"model": {"cmam": "cmam_plus"}}, "recipe.yaml")
    (tmp_path / "notes.txt").write_text("hello")
    tracker.log_artifact(tmp_path / "notes.txt", "extra")
    tracker.set_tags({"dataset.manifest_sha256": "abc123"})
    # let the system-metrics thread publish one sample (interval 1 s; slow on a loaded machine)
    deadline = time.monotonic() + 600  # a bound; a published sample ends the wait
    while getattr(tracker._monitor, "_logging_step", 1) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    tracker.end()
    assert tracker.failures == 0, tracker.failures

    client = _client(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    assert client.get_experiment(run.info.experiment_id).name == "lstc-test"
    assert run.data.params == {"model.cmam": "cmam_plus", "model.lasp": "on", "optim.lr": "0.0005"}
    assert run.data.tags["num_workers"] == "2"
    assert run.data.tags["dataset.manifest_sha256"] == "abc123"
    assert len(run.data.tags.get("mlflow.source.git.commit", "")) == 40
    hist = client.get_metric_history(tracker.run_id, "train/step/loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1.0 / 3),
    ]
    assert [m.value for m in client.get_metric_history(tracker.run_id, "val/J_and_F")][-1] == (
        pytest.approx(0.3)
    )
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics
    paths = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"overlays", "recipe.yaml", "extra"} <= paths
    png = client.download_artifacts(tracker.run_id, "overlays/epoch_000.png", str(tmp_path))
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), image)


def test_reattach_to_run_id(mlflow_server):
    first = Tracker.start(
        {"tracking": {"uri": mlflow_server, "experiment": "lstc-test"}}, system_metrics=False
    )
    first.log_metrics({"loss": 1.0}, step=0)
    run_id = first.run_id
    # the driver died: no end(); a new process re-attaches to the same run
    second = Tracker.start(
        {"tracking": {"uri": mlflow_server}}, run_id=run_id, system_metrics=False
    )
    assert second.run_id == run_id
    second.log_metrics({"loss": 0.5}, step=1)
    second.end()
    client = _client(mlflow_server)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [0, 1]
    # re-attaching to a finished run marks it RUNNING again until the next end()
    third = Tracker.start({"tracking": {"uri": mlflow_server}}, run_id=run_id, system_metrics=False)
    assert client.get_run(run_id).info.status == "RUNNING"
    third.end("KILLED")
    assert client.get_run(run_id).info.status == "KILLED"


def test_dead_server_warns_once_and_never_raises():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = Tracker.start({"tracking": {"uri": uri}}, system_metrics=False, cooldown_s=60)
        for step in range(50):
            tracker.log_metrics({"loss": 1.0}, step=step)
            tracker.log_params({"lr": 0.1})
            tracker.log_image(np.zeros((4, 4), np.uint8), "x.png")
            tracker.set_tags({"a": "b"})
        tracker.end()
    ours = [
        w for w in caught if issubclass(w.category, RuntimeWarning) and "MLflow" in str(w.message)
    ]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert uri in str(ours[0].message)
    assert tracker.run_id is None
    # one failed attempt at start, one last try at end(); every other call was skipped
    assert tracker.failures == 2
    assert tracker.dropped >= 200


def test_hung_server_times_out_and_is_not_retried_every_step(monkeypatch):
    """A server that accepts connections but never answers: one short timeout, then cooldown."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
    try:
        uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker = Tracker.start({"tracking": {"uri": uri}}, system_metrics=False)
            for step in range(100):
                tracker.log_metrics({"loss": 1.0}, step=step)
        assert tracker.failures == 1 and tracker.dropped == 101
        assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
        assert not tracker.healthy
    finally:
        hole.close()


def test_server_outage_mid_run_then_recovery(mlflow_server):
    relay = Relay(int(mlflow_server.rsplit(":", 1)[1]))
    relay.start()
    uri = f"http://127.0.0.1:{relay.port}"
    tracker = Tracker.start(
        {"tracking": {"uri": uri, "experiment": "lstc-test"}}, system_metrics=False, cooldown_s=0.0
    )  # no cooldown: every call really tries the relay, no waiting on the clock
    run_id = tracker.run_id
    assert run_id is not None
    tracker.log_metrics({"loss": 1.0}, step=0)

    relay.stop()  # the server goes away mid-run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 4):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            tracker.log_params({"p": step})  # dropped while down
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not tracker.healthy

    relay.start()  # back up: buffered metrics are replayed on the next call
    tracker.log_metrics({"loss": 0.1}, step=4)
    assert tracker.healthy
    tracker.end()
    relay.stop()

    client = _client(mlflow_server)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == [0, 1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_rejected_data_is_dropped_not_fatal(mlflow_server):
    tracker = Tracker.start({"tracking": {"uri": mlflow_server}}, system_metrics=False)
    tracker.log_params({"lr": 0.1})
    with pytest.warns(RuntimeWarning, match="rejected"):
        tracker.log_params({"lr": 0.2})  # params are immutable: the server refuses the change
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.healthy
    tracker.end()
    run = _client(mlflow_server).get_run(tracker.run_id)
    assert run.data.params["lr"] == "0.1"
    assert run.data.metrics["loss"] == 1.0


def test_disabled_tracker_is_a_no_op():
    tracker = Tracker.disabled()
    tracker.log_metrics({"a": 1}, step=0)
    tracker.log_params({"a": 1})
    tracker.end()
    assert tracker.run_id is None and tracker.failures == 0


# ------------------------------------------------------------------- metric axes (one per key)


def test_metric_families_give_one_axis_per_key():
    from pipelines.mlops.tracking import metric_family

    axes = {
        k: metric_family(k).axis
        for k in (
            "train/step/loss",
            "train/epoch/loss",
            "val/P@0.5",
            "best/mean_iou",
            "eval/J&F",
            "system/cpu_utilization_percentage",
        )
    }
    assert axes == {
        "train/step/loss": "step",
        "train/epoch/loss": "epoch",
        "val/P@0.5": "epoch",
        "best/mean_iou": "summary",
        "eval/J&F": "once",
        "system/cpu_utilization_percentage": "system",
    }
    assert metric_family("loss") is None and metric_family("train/loss") is None


@pytest.mark.parametrize(
    ("metrics", "step", "axis", "match"),
    [
        ({"val/mean_iou": 0.5}, 3, None, "axis='epoch'"),  # a family key needs its axis
        ({"train/step/loss": 1.0}, 40, "epoch", "axis='step'"),  # the bug: epoch on a step key
        ({"train/epoch/loss": 1.0}, 2, "step", "axis='epoch'"),
        ({"system/cpu": 1.0}, 1, "system", "MLflow's monitor"),
        ({"eval/mean_iou": 0.5}, 3, "once", "step 0"),
        ({"val/mean_iou": 0.5}, 0, "epoch", "counts from 1"),
        ({"loss": 1.0}, 1, "sideways", "unknown step axis"),
    ],
)
def test_tracker_refuses_a_key_on_the_wrong_axis(metrics, step, axis, match):
    from pipelines.mlops.tracking import MetricAxisError

    with pytest.raises(MetricAxisError, match=match):
        Tracker.disabled().log_metrics(metrics, step=step, axis=axis)


def test_key_outside_the_families_keeps_its_first_axis(tmp_path):
    """Refused before any I/O: the store holds only the points logged on the first axis."""
    from pipelines.mlops.tracking import MetricAxisError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start({"tracking": {"uri": uri}}, system_metrics=False)
    tracker.log_metrics({"custom/x": 1.0}, step=1, axis="epoch")
    tracker.log_metrics({"custom/x": 2.0}, step=2, axis="epoch")
    with pytest.raises(MetricAxisError, match="logged on axis 'epoch'"):
        tracker.log_metrics({"custom/x": 3.0, "custom/y": 1.0}, step=25, axis="step")
    tracker.log_metrics({"custom/y": 4.0}, step=25, axis="step")  # y was never logged: fine
    tracker.end()
    client = _client(uri)
    hist = client.get_metric_history(tracker.run_id, "custom/x")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 1.0), (2, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "custom/y")] == [
        (25, 4.0)
    ]


# ------------------------------------------------------------------------------ dataset lineage


def _fake_shard_root(root: Path, *, config_hash: str = "cfg123") -> Path:
    """A shard root holding only a manifest (all that dataset lineage reads)."""
    import json

    root.mkdir(parents=True)
    manifest = {
        "schema_version": 1,
        "dataset": "refer_shapes",
        "config_hash": config_hash,
        "counts": {
            "train": {"clips": 18, "objects": 30, "samples": 36, "shards": 3},
            "test": {"clips": 6, "objects": 9, "samples": 18, "shards": 1},
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def test_shard_dataset_identity_and_tags(tmp_path):
    import hashlib

    from pipelines.mlops.tracking import dataset_tags, shard_dataset

    root = _fake_shard_root(tmp_path / "shards")
    sha = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    ds = shard_dataset(root, "test")
    assert (ds.name, ds.digest, ds.manifest_sha256) == ("refer_shapes/test", sha[:32], sha)
    assert ds.source == str(root.resolve()) and ds.config_hash == "cfg123"
    assert ds.profile == {
        "split": "test",
        "clips": 6,
        "objects": 9,
        "samples": 18,
        "shards": 1,
        "config_hash": "cfg123",
        "manifest_sha256": sha,
    }
    # the same shards seen through another spelling of the path: the same identity
    same = shard_dataset(f"{tmp_path}/./shards/", "test")
    assert (same.name, same.digest, same.source) == (ds.name, ds.digest, ds.source)
    assert dataset_tags(root) == {
        "dataset.root": str(root.resolve()),
        "dataset.manifest_sha256": sha,
        "dataset.config_hash": "cfg123",
    }
    with pytest.raises(KeyError, match="valid"):
        shard_dataset(root, "valid")
    missing = dataset_tags(tmp_path / "nowhere")
    assert missing["dataset.manifest_sha256"] == missing["dataset.config_hash"] == "none"


def test_log_inputs_round_trip_with_contexts(tmp_path):
    import json

    from pipelines.mlops.tracking import shard_dataset

    root = _fake_shard_root(tmp_path / "shards")
    other = _fake_shard_root(tmp_path / "shards-v2", config_hash="cfg456")  # re-prepared
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_ds, val_ds = shard_dataset(root, "train"), shard_dataset(root, "test")
    tracker = Tracker.start({"tracking": {"uri": uri}}, system_metrics=False)
    tracker.log_inputs([(train_ds, "training"), (val_ds, "validation")])
    tracker.log_inputs([(train_ds, "training")])  # a resumed run logs them again: no duplicate
    with pytest.raises(ValueError, match="context"):
        tracker.log_inputs([(val_ds, "testing")])
    tracker.end()
    evaluation = Tracker.start({"tracking": {"uri": uri}}, system_metrics=False)
    evaluation.log_inputs([(shard_dataset(other, "test"), "evaluation")])
    evaluation.end()
    assert tracker.failures == evaluation.failures == 0

    client = _client(uri)

    def inputs(run_id: str) -> dict[str, tuple[str, str, dict, dict]]:
        out = {}
        for di in client.get_run(run_id).inputs.dataset_inputs:
            tags = {t.key: t.value for t in di.tags}
            d = di.dataset
            out[tags["mlflow.data.context"]] = (
                d.name,
                d.digest,
                json.loads(d.source),
                json.loads(d.profile),
            )
        return out

    got = inputs(tracker.run_id)
    assert sorted(got) == ["training", "validation"]
    assert got["training"][:2] == ("refer_shapes/train", train_ds.digest)
    assert got["validation"][:2] == ("refer_shapes/test", val_ds.digest)
    assert got["training"][2] == {"uri": str(root.resolve())}
    assert got["validation"][3]["samples"] == 18 and got["validation"][3]["config_hash"] == "cfg123"
    # other shards under the same dataset name: same name, another digest
    ev = inputs(evaluation.run_id)["evaluation"]
    assert ev[0] == "refer_shapes/test" and ev[1] != val_ds.digest


# ----------------------------------------------------------- HTTP patience of model registration


def test_registration_gets_mlflows_http_patience_back(monkeypatch, tmp_path):
    """A tracker on a server shortens MLflow's HTTP timeout/retries for the whole process (its
    calls must fail fast); registering a model in that process (the training driver does, at
    the end) runs with MLflow's own values instead: 10 s and one retry are too short for a
    model upload through a busy server. A user's setting is kept; the short values come back."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES as RETRIES,
    )
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_TIMEOUT as TIMEOUT,
    )

    import pipelines.mlops.registry as registry
    from pipelines.checkpoint import write_marker
    from pipelines.mlops import tracking

    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.25")  # the user's own
    monkeypatch.setattr(tracking, "_shortened", set())
    with pytest.warns(RuntimeWarning, match="MLflow tracking failed"):
        tracker = Tracker.start(
            {"tracking": {"uri": f"http://127.0.0.1:{free_port()}"}},  # nothing listens
            system_metrics=False,
            cooldown_s=3600,
        )
    tracker.end()
    short = (TIMEOUT.get(), RETRIES.get())
    assert short == (10, 1)

    seen = []

    def register_local(ckpt, source, **kwargs):  # what registration would run with
        seen.append(
            (TIMEOUT.get(), RETRIES.get(), os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])
        )
        return "1", "champion"

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("model.pt", "train_state.pt", "recipe.yaml", "metrics.json"):
        (ckpt / name).write_bytes(b"-")  # complete as far as the marker goes; never read here
    write_marker(ckpt)
    monkeypatch.setattr(registry, "_register_local", register_local)
    assert registry.register_checkpoint(ckpt, recipe=None, run_id=None, metrics={}) == (
        "1",
        "champion",
    )
    assert seen == [(TIMEOUT.default, RETRIES.default, "0.25")] == [(120, 7, "0.25")]
    assert (TIMEOUT.get(), RETRIES.get()) == short
    with tracking.patient_http(), tracking.patient_http():  # nested (threads): restored once
        assert TIMEOUT.get() == 120
    assert (TIMEOUT.get(), RETRIES.get()) == short
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] == "0.25"
