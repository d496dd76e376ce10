"""`lstc submit` / `lstc jobs` against a real two-node Ray cluster with its Jobs server.

The cluster (head + one worker node, each its own raylet and custom resource) runs on
loopback; commands are submitted through the Job Submission SDK exactly as a user would.
The training tests add what a multi-node run needs: an S3 endpoint (moto, loopback) for
shards and run folders and an ``mlflow server`` with its artifacts on that bucket; a file
tracking store is refused there before any worker starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from local_cluster import LocalCluster, cluster_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(root=tmp_path_factory.mktemp("cluster"))
    try:
        c.start_head(num_cpus=1)
        c.add_node("node1", num_cpus=2)
        yield c
    finally:
        c.stop()


def lstc(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=env or cluster_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cluster_has_two_nodes(cluster):
    assert cluster.alive_nodes() == 2


def test_submit_runs_the_command_on_the_cluster_and_streams_its_logs(cluster, tmp_path):
    out = tmp_path / "refer_shapes"
    r = lstc(
        "submit",
        "--address",
        cluster.jobs_address,
        "--submission-id",
        "lstc-synth-ok",
        "--entrypoint-resources",
        json.dumps({"node1": 0.01}),
        "synth",
        "--out",
        str(out),
        "--scale",
        "tiny",
        "--videos",
        "2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "job lstc-synth-ok" in r.stdout
    # the job's own output came back through the log stream
    assert "refer-shapes (tiny, seed 0)" in r.stdout
    assert "SUCCEEDED" in r.stderr
    assert (out / "Release" / "videoset.csv").is_file()

    listed = lstc("jobs", "list", "--address", cluster.jobs_address)
    assert listed.returncode == 0
    assert any(
        line.startswith("lstc-synth-ok") and "SUCCEEDED" in line
        for line in listed.stdout.splitlines()
    ), listed.stdout
    status = lstc("jobs", "status", "lstc-synth-ok", "--address", cluster.jobs_address)
    assert status.stdout.strip() == "SUCCEEDED"
    logs = lstc("jobs", "logs", "lstc-synth-ok", "--address", cluster.jobs_address)
    assert "refer-shapes (tiny, seed 0)" in logs.stdout


def test_a_failing_job_fails_the_submit_with_its_error(cluster, tmp_path):
    r = lstc(
        "submit",
        "--address",
        cluster.jobs_address,
        "prep",
        "--dataset",
        "a2d",
        "--root",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "shards"),
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr
    assert "missing" in r.stdout  # the job's error message, streamed back


def test_runtime_env_forwards_settings_and_leaves_out_local_artefacts():
    from pipelines.jobs import JobSpec, build_runtime_env

    renv = build_runtime_env(
        JobSpec(args=("synth",), env={"LSTC_EXTRA": "y2"}),
        environ={"MLFLOW_TRACKING_URI": "http://t:5000", "LSTC_PROBE": "x1", "HOME": "/h"},
    )
    assert renv["env_vars"]["MLFLOW_TRACKING_URI"] == "http://t:5000"
    assert renv["env_vars"]["LSTC_PROBE"] == "x1" and renv["env_vars"]["LSTC_EXTRA"] == "y2"
    assert renv["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # the job's own settings
    assert "HOME" not in renv["env_vars"]
    assert {"data", "outputs", "mlruns", "mlartifacts", "mlflow.db"} <= set(renv["excludes"])
    assert renv["working_dir"] == str(ROOT)


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    from local_cluster import free_port

    r = lstc("submit", "--address", f"http://127.0.0.1:{free_port()}", "synth", "--help")
    assert r.returncode == 2
    assert "cannot reach the Ray Jobs API" in r.stderr and "--address" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_with_a_file_tracking_store_is_refused_before_any_worker_starts(cluster, tmp_path):
    """`lstc train` as a job on the two-node cluster with the default tracking URI (a SQLite
    file of the driver's machine) stops right after joining the cluster: one error line that
    says how to use a tracking server; no run folder, no Ray Train worker."""
    env = {k: v for k, v in cluster_env().items() if k != "MLFLOW_TRACKING_URI"}
    runs = tmp_path / "runs"
    r = lstc(
        "submit",
        "--address",
        cluster.jobs_address,
        "train",
        "--config",
        "configs/refer_shapes_tiny.yaml",
        f"train.storage_path={runs}",
        f"data.root={tmp_path / 'no-shards'}",  # never read: the check comes first
        env=env,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr
    assert "the MLflow tracking URI sqlite:///" in r.stdout
    assert "the Ray cluster has 2 nodes" in r.stdout
    assert "MLFLOW_TRACKING_URI=http://<host>:5000" in r.stdout
    assert "--artifacts-destination s3://" in r.stdout
    assert "Traceback" not in r.stdout and "RayTrainWorker" not in r.stdout
    assert not runs.exists()


# ------------------------------------------- training across two nodes on object storage

BUCKET = "lstc-cluster"


@pytest.fixture(scope="module")
def s3():
    from local_cluster import S3Server

    server = S3Server()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracking_server(s3, tmp_path_factory):
    """``mlflow server`` on loopback: SQLite backend (the server is its only writer) and
    artifacts proxied to ``s3://lstc-cluster/mlartifacts`` on the moto server."""
    import os
    import signal
    import urllib.request

    from local_cluster import free_port, wait_until

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    env = {k: v for k, v in cluster_env(s3.env()).items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", f"s3://{BUCKET}/mlartifacts"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((root / "server.log").read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, "mlflow server /health")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_two_node_training_on_s3_with_a_tracking_server(
    cluster, s3, tracking_server, tmp_path, monkeypatch
):
    """`lstc submit prep` writes the tiny shards to S3, `lstc submit train` trains on them with
    one Ray Train worker per node (STRICT_SPREAD over the head and node1), storage on S3 and
    MLflow on a tracking server: rank 0's checkpoints, whatever node it ran on, reach the
    bucket through Ray; the driver's best/last copies, the summary and the journal are
    objects there; the run and the registered champion are on the server, with the model's
    artifacts in the bucket."""
    from mlflow import MlflowClient

    from data_prep.storage import list_files, read_bytes
    from data_prep.synthetic import config_for, generate
    from pipelines.checkpoint import is_checkpoint, load_metrics

    for k, v in s3.env().items():  # this process reads the bucket through the same env
        monkeypatch.setenv(k, v)
    generate(tmp_path / "source", config_for("tiny", seed=0))
    env = cluster_env({**s3.env(), "MLFLOW_TRACKING_URI": tracking_server})
    shards, runs = f"s3://{BUCKET}/shards", f"s3://{BUCKET}/runs"
    prep = lstc(
        "submit", "--address", cluster.jobs_address, "prep", "--dataset", "refer_shapes",
        "--root", str(tmp_path / "source"), "--out", shards, "--frames", "4", "--stride", "2",
        "--size", "64", "64", "--clips-per-shard", "8", "--no-progress", env=env,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-2000:]
    r = lstc(
        "submit", "--address", cluster.jobs_address, "train",
        "--config", "configs/refer_shapes_tiny.yaml", f"data.root={shards}",
        f"train.storage_path={runs}", "train.run_name=two-nodes", "train.epochs=1",
        "train.placement_strategy=STRICT_SPREAD", "tracking.num_overlays=0",
        "tracking.system_metrics=false", "registry.model_name=lstc-two-nodes", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

    actors = cluster._get("/api/v0/actors?detail=true&limit=1000")["data"]["result"]["result"]
    workers = [a for a in actors if a.get("class_name") == "RayTrainWorker"]
    assert len({a["node_id"] for a in workers}) == 2, workers  # one worker per node

    run_dir = f"{runs}/two-nodes"
    names = list_files(run_dir)
    assert "summary.json" in names and "checkpoint_manager_snapshot.json" in names, names
    assert [n for n in names if n.startswith("events/")]
    for ckpt in ("checkpoint_epoch_0001", "best", "last"):
        assert is_checkpoint(f"{run_dir}/{ckpt}"), ckpt
    summary = json.loads(read_bytes(f"{run_dir}/summary.json"))
    assert summary["best_checkpoint"] == f"{run_dir}/best"
    assert summary["registered"] == ["1", "champion"]
    client = MlflowClient(tracking_uri=tracking_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lstc.run_dir"] == run_dir and run.data.tags["ray.nodes"] == "2"
    hist = client.get_metric_history(run.info.run_id, "val/mean_iou")
    assert [m.step for m in hist] == [1]
    assert hist[0].value == pytest.approx(load_metrics(f"{run_dir}/best")["val/mean_iou"])
    mv = client.get_model_version_by_alias("lstc-two-nodes", "champion")
    assert mv.run_id == run.info.run_id
    assert [n for n in list_files(f"s3://{BUCKET}/mlartifacts") if n.endswith("model.pt")]
