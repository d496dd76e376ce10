"""Shared fixtures: one real local Ray instance and environment hygiene for the whole session.

Expensive fixtures are session-scoped and shared across test modules (one Ray instance,
one prepared tiny dataset). Add new shared fixtures below, each in its own block.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Environment for every test: offline, no telemetry, Ray without auth and with its own temp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="lstc-ray-", dir="/tmp"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def free_port() -> int:
    """A free TCP port for a server on loopback (never hard-code ports): outside the kernel's
    ephemeral range, so no outgoing connection takes it before the server binds it, and never
    handed out twice in the session (tests/ports.py)."""
    from ports import free_port as pick

    return pick()


#: process-wide settings that product code writes into os.environ (a Tracker on a server
#: shortens MLflow's HTTP timeouts, `lstc runs` too; registry's helpers set the tracking URI and
#: experiment): put back after every test, so no test runs with what an earlier one left behind
RESTORED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "RAY_ADDRESS",
)


@pytest.fixture(autouse=True)
def _restore_process_env():
    """Environment hygiene: :data:`RESTORED_ENV` as before the test (fixtures of a wider scope
    are set up before, so what they set stays until their own teardown)."""
    before = {k: os.environ.get(k) for k in RESTORED_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance on 127.0.0.1 for the whole test session.

    4 logical CPUs on a 2-core machine so that 2 training workers and Ray Data tasks can
    be scheduled side by side; the object store is capped so tests stay small.
    """
    import ray

    from pipelines.ray_setup import runtime_env

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=400 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env(local=True),
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


# --- data_prep: the tiny refer-shapes benchmark, prepared once per session ---------------
# Clip settings of `tiny_shards` (T frames at a stride around the target, resized to SIZE).
TINY_SHARDS_FRAMES = 4
TINY_SHARDS_STRIDE = 2
TINY_SHARDS_SIZE = (64, 64)


@pytest.fixture(scope="session")
def tiny_shards(ray_local, tmp_path_factory) -> Path:
    """Shard root of the tiny refer-shapes benchmark (seed 0), prepared with `lstc prep`.

    8 videos (6 train / 2 test) of 24 frames at 72x96, 3 annotated frames each; clips of
    TINY_SHARDS_FRAMES frames at stride TINY_SHARDS_STRIDE resized to TINY_SHARDS_SIZE
    (target at index TINY_SHARDS_FRAMES // 2); masks at 72x96. Splits: "train", "test".
    Read it with data_prep.shards.read_samples(root, split) / read_clips / load_manifest.
    """
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate

    base = tmp_path_factory.mktemp("tiny_refer_shapes")
    generate(base / "source", config_for("tiny", seed=0))
    run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(base / "source"),
            out=str(base / "shards"),
            clip=ClipSpec(
                num_frames=TINY_SHARDS_FRAMES,
                stride=TINY_SHARDS_STRIDE,
                height=TINY_SHARDS_SIZE[0],
                width=TINY_SHARDS_SIZE[1],
            ),
            clips_per_shard=8,
            progress=False,
        )
    )
    return base / "shards"


# --- mlops: one real `mlflow server` on loopback for the session -------------------------
# ~30 s idle, over a minute on a loaded 2-core box; a bound (10x the idle time), not a wait
MLFLOW_SERVER_START_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory):
    """A real ``mlflow server`` being started on 127.0.0.1:<free port> (venv's mlflow, SQLite
    backend, proxied artifacts under the session tmp; MLflow's job runner off, which this
    project does not use); yields ``(uri, process, log path)`` WITHOUT waiting for it, so a
    module can start it early and do other work while it boots (use ``mlflow_server`` to get a
    ready one). Stopped with its process group at the end of the session."""
    import contextlib
    import shutil
    import signal
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("mlflow-server-session")
    exe = Path(sys.executable).with_name("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(exe) if exe.exists() else (shutil.which("mlflow") or "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'server.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,  # own process group: teardown stops the server and workers
        )
    try:
        yield f"http://127.0.0.1:{port}", proc, log_path
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process) -> str:
    """URI of the session's ``mlflow server`` once its ``/health`` answers (bounded wait).
    Tests share it: use your own experiment names."""
    import time
    import urllib.request

    uri, proc, log_path = mlflow_server_process
    deadline = time.monotonic() + MLFLOW_SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {proc.returncode}:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return uri
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"mlflow server did not answer {uri}/health within "
                f"{MLFLOW_SERVER_START_TIMEOUT_S} s:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.5)  # poll interval of a bounded readiness wait


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (model tests: the same sums on any machine), then back
    (``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
