"""`lstc submit` / `lstc jobs` against a real two-node Ray cluster with its Jobs server.

The cluster (head + one worker node, each its own raylet and custom resource) runs on
loopback; commands are submitted through the Job Submission SDK exactly as a user would.
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
