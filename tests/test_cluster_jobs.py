"""`lstc submit` / `lstc jobs` against a real two-node Ray cluster with its Jobs server.

The cluster (head + one worker node, each its own raylet and custom resource) runs on
loopback; commands are submitted through the Job Submission SDK exactly as a user would.
The training tests add what a multi-node run needs: an S3 endpoint (moto, loopback) for
shards and run folders and an ``mlflow server`` with its artifacts on that bucket; a file
tracking store is refused there before any worker starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from local_cluster import LocalCluster, assert_same_weights, cluster_env, wait_until, weights

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


#: bound on one `lstc submit` (a two-node training run over S3: minutes idle, and any step
#: may take 10x its idle time on a loaded 2-core box)
SUBMIT_TIMEOUT_S = 1800


def lstc(*args: str, env: dict[str, str] | None = None, timeout: float = SUBMIT_TIMEOUT_S):
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
    # what Ray leaves out of the upload (its own gitignore matcher): checkpoints and weight
    # files, but not the package's bundled tiny 3D encoder weights
    from ray._private.runtime_env.packaging import _get_excludes

    left_out = _get_excludes(ROOT, renv["excludes"])
    assert left_out(ROOT / "outputs" / "model.pt") and left_out(ROOT / "model.pt")
    assert not left_out(ROOT / "lstc" / "pretrained" / "tiny_temporal_shapes_motion_v1.pt")
    assert not left_out(ROOT / "lstc" / "model.py")


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
#: the tiny recipe as every two-node run here trains it (one worker per node, 2 epochs, no
#: train cache: a killed node must not take cached blocks with it); the runs differ only in
#: name, registration and max_failures, so their final weights must be bit-identical
TRAIN_ARGS = (
    "--config", "configs/refer_shapes_tiny.yaml", "train.epochs=2",
    "train.placement_strategy=STRICT_SPREAD", "data.cache_train=false",
    "tracking.num_overlays=0", "tracking.system_metrics=false",
)  # fmt: skip


@pytest.fixture(scope="module")
def s3():
    from local_cluster import S3Server

    server = S3Server(BUCKET)
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
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a loaded machine: gunicorn drains slowly
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def job_env(s3, tracking_server):
    """The environment of `lstc submit` (forwarded to the jobs) and of this process (which
    reads the bucket through the same AWS_* variables)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        yield cluster_env({**s3.env(), "MLFLOW_TRACKING_URI": tracking_server})


def node_line(stdout: str, prefix: str) -> tuple[str, str]:
    """``(ip, node id)`` of the line ``<prefix> node <ip> (<id>)`` a command printed."""
    import re

    m = re.search(re.escape(prefix) + r" node (\S+) \(([0-9a-f]+)\)", stdout)
    assert m, f"no {prefix!r} line in:\n{stdout[-3000:]}"
    return m.group(1), m.group(2)


def events_of(run_dir: str, name: str, field: str) -> list:
    from pipelines.train.loop import read_events

    return [e[field] for e in read_events(run_dir) if e["event"] == name]


@pytest.fixture(scope="module")
def two_node_run(cluster, s3, tracking_server, job_env, tmp_path_factory):
    """`lstc submit prep` of the tiny benchmark to S3, then `lstc submit train` of
    :data:`TRAIN_ARGS` (run ``two-nodes``, registered): the reference run of this module."""
    from data_prep.synthetic import config_for, generate

    source = tmp_path_factory.mktemp("cluster-source") / "source"
    generate(source, config_for("tiny", seed=0))
    shards, runs = f"s3://{BUCKET}/shards", f"s3://{BUCKET}/runs"
    node1 = cluster.node("node1")
    node1_id = cluster.node_id(node1)
    prep = lstc(
        "submit", "--address", cluster.jobs_address, "prep", "--dataset", "refer_shapes",
        "--root", str(source), "--out", shards, "--frames", "4", "--stride", "2",
        "--size", "64", "64", "--clips-per-shard", "8", "--no-progress", env=job_env,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-2000:]
    train = lstc(
        "submit", "--address", cluster.jobs_address, "train", *TRAIN_ARGS,
        f"data.root={shards}", f"train.storage_path={runs}", "train.run_name=two-nodes",
        "registry.model_name=lstc-two-nodes", env=job_env,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-2000:]
    return {
        "shards": shards,
        "runs": runs,
        "run_dir": f"{runs}/two-nodes",
        "prep": prep,
        "train": train,
        "node1": (node1.ip, node1_id),
    }


def test_two_node_training_on_s3_with_a_tracking_server(cluster, two_node_run, tracking_server):
    """`lstc submit train` with one Ray Train worker per node (STRICT_SPREAD over the head and
    node1), storage on S3 and MLflow on a tracking server: rank 0's checkpoints, whatever node
    it ran on, reach the bucket through Ray; the driver's best/last copies, the summary and the
    journal are objects there; the run and the registered champion are on the server, with the
    model's artifacts in the bucket."""
    from mlflow import MlflowClient

    from data_prep.storage import list_files, read_bytes
    from pipelines.checkpoint import is_checkpoint, load_metrics

    actors = cluster._get("/api/v0/actors?detail=true&limit=1000")["data"]["result"]["result"]
    workers = [a for a in actors if a.get("class_name") == "RayTrainWorker"]
    assert len({a["node_id"] for a in workers}) == 2, workers  # one worker per node

    run_dir = two_node_run["run_dir"]
    names = list_files(run_dir)
    assert "summary.json" in names and "checkpoint_manager_snapshot.json" in names, names
    assert events_of(run_dir, "epoch_start", "epoch") == [1, 2]
    for ckpt in ("checkpoint_epoch_0001", "checkpoint_epoch_0002", "best", "last"):
        assert is_checkpoint(f"{run_dir}/{ckpt}"), ckpt
    summary = json.loads(read_bytes(f"{run_dir}/summary.json"))
    assert summary["best_checkpoint"] == f"{run_dir}/best"
    assert summary["registered"] == ["1", "champion"]
    client = MlflowClient(tracking_uri=tracking_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lstc.run_dir"] == run_dir and run.data.tags["ray.nodes"] == "2"
    hist = client.get_metric_history(run.info.run_id, "val/mean_iou")
    assert [m.step for m in hist] == [1, 2]
    best_epoch = int(run.data.tags["lstc.best_epoch"])
    assert hist[best_epoch - 1].value == pytest.approx(
        load_metrics(f"{run_dir}/best")["val/mean_iou"]
    )
    mv = client.get_model_version_by_alias("lstc-two-nodes", "champion")
    assert mv.run_id == run.info.run_id
    assert [n for n in list_files(f"s3://{BUCKET}/mlartifacts") if n.endswith("model.pt")]


def test_prep_indexing_ran_in_a_task_on_the_worker_node(two_node_run):
    """The benchmark's index (annotations, video listing) was built in a Ray task that the
    head (1 CPU, enough for it) did not get: it ran on node1."""
    stdout = two_node_run["prep"].stdout
    assert node_line(stdout, "prep: indexed refer_shapes in a Ray task on") == two_node_run["node1"]


def test_submit_eval_reproduces_the_logged_validation_metrics(
    cluster, two_node_run, tracking_server, job_env
):
    """`lstc submit eval` of the run's best checkpoint on the S3 shards: the scoring runs in a
    Ray task on node1 (not on the head, where the job's driver is), and its metrics equal the
    validation metrics the training run logged to the tracking server for that epoch."""
    from mlflow import MlflowClient

    from data_prep.storage import read_bytes
    from pipelines.mlops.tracking import metric_key

    run_dir = two_node_run["run_dir"]
    out = f"s3://{BUCKET}/eval/best.json"
    r = lstc(
        "submit", "--address", cluster.jobs_address,
        "--entrypoint-resources", json.dumps({"head": 0.01}),
        "eval", "--model", f"{run_dir}/best", "--data", two_node_run["shards"],
        "--output", out, env=job_env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert node_line(r.stdout, "lstc eval: scored in a Ray task on") == two_node_run["node1"]
    evaluated = json.loads(read_bytes(out))
    summary = json.loads(read_bytes(f"{run_dir}/summary.json"))
    client = MlflowClient(tracking_uri=tracking_server)
    run = client.get_run(summary["mlflow_run_id"])
    best_epoch = int(run.data.tags["lstc.best_epoch"])
    checked = 0
    for name in ("overall_iou", "mean_iou", "P@0.5", "P@0.9", "mAP@0.5:0.95", "J&F"):
        logged = {
            m.step: m.value
            for m in client.get_metric_history(run.info.run_id, f"val/{metric_key(name)}")
        }
        assert evaluated[name] == pytest.approx(logged[best_epoch], abs=1e-6), name
        checked += 1
    assert checked == 6 and evaluated["num_samples"] == summary["best_metrics"]["val/num_samples"]


def test_submit_sweep_runs_its_trials_on_the_cluster_with_a_journal_study(
    cluster, two_node_run, tracking_server, job_env, tmp_path
):
    """`lstc submit sweep` of a 2-trial sweep (1 epoch, both trials at once, one worker each)
    on the S3 shards: the study is a journal file every node reaches (SQLite is refused on
    two nodes), MLflow is the tracking server. The study has 2 COMPLETE trials with distinct
    params, each with the epoch-1 value its rank 0 reported from a worker; the server has the
    sweep's parent run with both trials as children (params, states) and the best trial's
    model registered from its own run; each trial's run folder is on S3."""
    import optuna
    import yaml
    from mlflow import MlflowClient

    from data_prep.storage import list_files
    from tuning.storage import open_storage

    study_file = tmp_path / "study.log"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "cluster-sweep",
                "recipe": str(ROOT / "configs" / "refer_shapes_tiny.yaml"),
                "overrides": [
                    "train.num_workers=1",
                    "data.cache_train=false",
                    "tracking.num_overlays=0",
                    "tracking.system_metrics=false",
                    "tracking.experiment=lstc-cluster-sweep",
                    "registry.model_name=lstc-cluster-sweep",
                    "train.max_failures=0",
                ],  # fmt: skip
                "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                "n_trials": 2,
                "parallel": 2,
                "sampler": {"kind": "tpe", "seed": 0},
                "budget": {"epochs": 1},
                "storage": f"journal:{study_file}",
            }
        )
    )
    runs = f"s3://{BUCKET}/sweep-runs"
    r = lstc(
        "submit", "--address", cluster.jobs_address, "sweep", str(spec),
        f"data.root={two_node_run['shards']}", f"train.storage_path={runs}", "--no-progress",
        env=job_env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    study = optuna.load_study(
        study_name="cluster-sweep", storage=open_storage(f"journal:{study_file}")
    )
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params["optim.lr"] != trials[1].params["optim.lr"]
    for t in trials:
        assert list(t.intermediate_values) == [1]  # reported by the trial's rank 0
        assert t.intermediate_values[1] == pytest.approx(t.value)
        assert "summary.json" in list_files(f"{runs}/cluster-sweep-trial-{t.number}")

    client = MlflowClient(tracking_uri=tracking_server)
    exp = client.get_experiment_by_name("lstc-cluster-sweep")
    parents = client.search_runs([exp.experiment_id], "attributes.run_name = 'cluster-sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    by_number = {int(c.data.tags["lstc.trial_number"]): c for c in children}
    assert sorted(by_number) == [0, 1]
    for t in trials:
        child = by_number[t.number]
        assert child.info.run_id == t.user_attrs["lstc.mlflow_run_id"]
        assert child.data.tags["lstc.trial_state"] == "COMPLETE"
        assert float(child.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
    version = client.get_model_version_by_alias("lstc-cluster-sweep", "champion")
    assert version.run_id == study.best_trial.user_attrs["lstc.mlflow_run_id"]


def test_storage_failure_during_a_checkpoint_upload_resumes_from_the_last_complete_one(
    cluster, s3, two_node_run, job_env
):
    """The S3 server stops on the PUT of epoch 2's model.pt (rank 0's upload through Ray, on
    whichever node rank 0 runs): the job fails (``train.max_failures=0``); epoch 2 was never
    recorded by Ray and what reached the bucket is not a complete checkpoint (no
    ``_COMPLETE`` marker that matches), no best/last copy was made. With the server back, the
    same command resumes from epoch 1 and ends with the reference run's weights."""
    from pipelines.checkpoint import checkpoint_problem
    from pipelines.train.resume import latest_checkpoint

    name = "two-nodes-s3fault"
    run_dir = f"{two_node_run['runs']}/{name}"
    cmd = (
        "submit", "--address", cluster.jobs_address, "train", *TRAIN_ARGS,
        f"data.root={two_node_run['shards']}", f"train.storage_path={two_node_run['runs']}",
        f"train.run_name={name}", "train.max_failures=0", "registry.register=false",
    )  # fmt: skip
    s3.stopped_at = None
    s3.stop_on_write = f"runs/{name}/checkpoint_epoch_0002/model.pt"
    try:
        failed = lstc(*cmd, env=job_env)
    finally:
        stopped_at = s3.stopped_at
        s3.restart_if_stopped()
    assert stopped_at == f"runs/{name}/checkpoint_epoch_0002/model.pt", failed.stdout[-3000:]
    assert failed.returncode == 1 and "FAILED" in failed.stderr, failed.stdout[-3000:]
    assert latest_checkpoint(run_dir)[0] == 1
    assert checkpoint_problem(f"{run_dir}/checkpoint_epoch_0002") is not None
    from data_prep.storage import list_files

    assert not {"best", "last"} & {n.split("/")[0] for n in list_files(run_dir)}

    again = lstc(*cmd, env=job_env)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    ckpt1 = f"{run_dir}/checkpoint_epoch_0001"
    assert f"resuming run {name} from epoch 1 checkpoint {ckpt1}" in again.stdout, again.stdout
    assert events_of(run_dir, "epoch_start", "epoch") == [1, 2, 2]  # epoch 2 failed, redone
    assert_same_weights(weights(f"{run_dir}/last"), weights(f"{two_node_run['run_dir']}/last"))


def test_node_failure_mid_training_resumes_once_capacity_is_back(
    cluster, two_node_run, job_env, tmp_path
):
    """Training with one worker per node; both ranks pause after epoch 1's checkpoint is
    reported (:class:`faults.PauseOnce`); once Ray has recorded it, node1 dies (its whole
    process group SIGKILLed: raylet, object store, the worker). The job's driver (and the Ray
    Train controller, which Ray pins to the driver's node) is on the head and lives on: the
    controller retries (``train.max_failures``) and waits for the placement group of two
    workers, which one node cannot hold (STRICT_SPREAD). The test starts a fresh node1 with
    the same resources; the job then resumes from epoch 1's checkpoint on it and finishes
    with the reference run's weights."""
    import shlex

    from pipelines.jobs import JobSpec, build_runtime_env, client, wait
    from pipelines.train.resume import latest_checkpoint

    name = "two-nodes-nodefail"
    run_dir = f"{two_node_run['runs']}/{name}"
    pause = tmp_path / "pause"
    pause.mkdir()
    overrides = [
        *TRAIN_ARGS[2:], f"data.root={two_node_run['shards']}",
        f"train.storage_path={two_node_run['runs']}", f"train.run_name={name}",
        "train.max_failures=2", "registry.register=false",
    ]  # fmt: skip
    entrypoint = shlex.join(
        ["python", "tests/cluster_train_job.py", "--pause-epoch", "1", "--pause-dir", str(pause),
         TRAIN_ARGS[1], *overrides]
    )  # fmt: skip
    jobs = client(cluster.jobs_address)
    job = jobs.submit_job(
        entrypoint=entrypoint,
        runtime_env=build_runtime_env(JobSpec(args=("train",)), environ=job_env),
        entrypoint_resources={"head": 0.01},  # the driver on the head, which stays up
    )

    def finished() -> bool:
        return str(jobs.get_job_status(job).value) in ("SUCCEEDED", "FAILED", "STOPPED")

    def logs() -> str:
        return jobs.get_job_logs(job)[-4000:]

    both = [pause / f"paused-rank{r}" for r in (0, 1)]
    # bounds on condition polls, at 10x the idle time (a loaded 2-core box): no cost when fast
    wait_until(lambda: all(p.exists() for p in both) or finished(), "both ranks to pause", 1800)
    assert not finished(), logs()
    wait_until(lambda: (latest_checkpoint(run_dir) or (0,))[0] == 1, "Ray to record epoch 1", 600)
    node1 = cluster.node("node1")
    node1.kill(signal.SIGKILL)
    assert not node1.alive()
    wait_until(lambda: cluster.node_id(node1) is None, "the GCS to see node1 dead", 600)

    def waiting_for_capacity() -> bool:
        rows = cluster._get("/api/v0/placement_groups?detail=true&limit=100")
        states = [p["state"] for p in rows["data"]["result"]["result"]]
        return any(st in ("PENDING", "RESCHEDULING") for st in states) or finished()

    wait_until(waiting_for_capacity, "the controller to wait for a placement group", 600)
    assert not finished(), logs()
    fresh = cluster.add_node("node1", num_cpus=2)
    assert wait(job, address=cluster.jobs_address, timeout_s=SUBMIT_TIMEOUT_S) == "SUCCEEDED", (
        logs()
    )

    assert events_of(run_dir, "attempt_start", "start_epoch") == [1, 2]
    assert events_of(run_dir, "epoch_start", "epoch") == [1, 2]
    fresh_id = cluster.node_id(fresh)
    actors = cluster._get("/api/v0/actors?detail=true&limit=1000")["data"]["result"]["result"]
    assert any(
        a.get("class_name") == "RayTrainWorker" and a["node_id"] == fresh_id for a in actors
    ), "no training worker ran on the fresh node"
    assert_same_weights(weights(f"{run_dir}/last"), weights(f"{two_node_run['run_dir']}/last"))
