"""Ray Jobs: run any ``lstc`` command on a Ray cluster through the Job Submission SDK.

``lstc submit train --config configs/a2d_paper.yaml ...`` becomes the job entrypoint
``python -m pipelines.cli train --config configs/a2d_paper.yaml ...`` on the cluster, with a
runtime env that ships this project's working tree (minus local artefacts: the venv, data,
outputs, MLflow stores) and the settings every node needs (``MLFLOW_TRACKING_URI``, S3
credentials/endpoints, ``LSTC_*``). Inside the job, ``RAY_ADDRESS`` is set by Ray, so the
command joins the cluster instead of starting a local instance (see
:func:`pipelines.ray_setup.init_ray`).

The Jobs API lives on the head's dashboard port (``http://<head>:8265``); it has no
authentication, so keep the dashboard on 127.0.0.1 and reach it through an SSH tunnel
(``ray dashboard cluster.yaml``) or ``kubectl port-forward``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: paths of the working tree never shipped to the cluster (gitignore syntax, as Ray reads it)
#: (Ray itself always leaves out .git and .venv)
WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    "venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "data",
    "outputs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "*.db",
    "*.zip",
    "*.mp4",
    "*.parquet",
    "*.pt",
    "*.pth",
    "!lstc/pretrained/*.pt",  # but the package's bundled weights (SHAPES_MOTION_V1) do ship
)

#: environment variables forwarded to the job when set here (exact names or prefixes*)
FORWARDED_ENV: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_DISABLE_TELEMETRY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "LSTC_*",
)

#: final job status -> exit code of ``lstc submit`` (the job's own code is not exposed by Ray)
EXIT_CODES: dict[str, int] = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 143}


class JobError(RuntimeError):
    """The cluster cannot be reached or a job cannot be submitted/found; the message says why."""


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One ``lstc`` command to run as a Ray Job."""

    args: tuple[str, ...]  # the lstc command line, e.g. ("train", "--config", "x.yaml")
    working_dir: str | None = None  # None: the project root of this checkout
    env: Mapping[str, str] = field(default_factory=dict)  # extra env vars (--env K=V)
    entrypoint_num_cpus: float = 0.0  # the driver is light: heavy work runs in Ray tasks
    entrypoint_resources: Mapping[str, float] = field(default_factory=dict)
    submission_id: str | None = None
    python: str = "python"  # the interpreter on the cluster's PATH

    @property
    def entrypoint(self) -> str:
        return shlex.join([self.python, "-m", "pipelines.cli", *self.args])


def project_root() -> Path:
    """The checkout this module runs from (the folder holding ``pyproject.toml``)."""
    return Path(__file__).resolve().parent.parent


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`FORWARDED_ENV` that are set in ``environ``."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in environ.items():
        for pattern in FORWARDED_ENV:
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                out[name] = value
    return out


def build_runtime_env(spec: JobSpec, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime env: this working tree (excludes applied) and the forwarded settings."""
    from pipelines.ray_setup import runtime_env

    base = runtime_env()
    env_vars = {**base.get("env_vars", {}), **forwarded_env(environ), **dict(spec.env)}
    workdir = Path(spec.working_dir) if spec.working_dir else project_root()
    if not (workdir / "pipelines").is_dir():
        raise JobError(f"working dir {workdir} does not hold the lstc sources (no pipelines/)")
    return {
        **base,
        "working_dir": str(workdir),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": env_vars,
    }


def client(address: str | None) -> Any:
    """A Job Submission client for ``address`` (default: ``RAY_ADDRESS``, then a local
    cluster's dashboard); a clear :class:`JobError` when nothing answers."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, wrong scheme, missing ray[default], ...
        where = address or os.environ.get("RAY_ADDRESS") or "a local Ray cluster"
        raise JobError(
            f"cannot reach the Ray Jobs API at {where}: {exc}. Pass the head's dashboard "
            "address, e.g. --address http://127.0.0.1:8265 (tunnel it with `ray dashboard "
            "cluster.yaml` or `kubectl port-forward svc/<cluster>-head-svc 8265`)"
        ) from None


#: how long :func:`submit` retries while the cluster's job agents are still starting
AGENT_WAIT_S = 120.0


def submit(spec: JobSpec, *, address: str | None = None) -> str:
    """Submit ``spec``; returns the submission id.

    A freshly started cluster answers "No available agent to submit job" until the dashboard
    agent of a node is up: that answer is retried for up to :data:`AGENT_WAIT_S` seconds.
    """
    import logging
    import time

    # the per-file "Ignoring upload to cluster" INFO lines of the working-dir packager
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
    c = client(address)
    runtime_env = build_runtime_env(spec)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return c.submit_job(
                entrypoint=spec.entrypoint,
                runtime_env=runtime_env,
                submission_id=spec.submission_id,
                entrypoint_num_cpus=spec.entrypoint_num_cpus,
                entrypoint_resources=dict(spec.entrypoint_resources) or None,
                metadata={"lstc.command": spec.args[0] if spec.args else ""},
            )
        except Exception as exc:
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            raise JobError(f"could not submit `{spec.entrypoint}`: {exc}") from None


def follow(
    job_id: str,
    *,
    address: str | None = None,
    out: TextIO | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Stream the job's logs to ``out`` until it ends; returns its final status name."""
    out = out or sys.stdout
    c = client(address)

    async def pump() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            if on_line is not None:
                for line in chunk.splitlines():
                    on_line(line)

    asyncio.run(pump())
    return wait(job_id, address=address)


def wait(job_id: str, *, address: str | None = None, timeout_s: float = 60.0) -> str:
    """The final status of a job whose log stream has ended (it ends with the job)."""
    import time

    c = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in EXIT_CODES or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _on_job(job_id: str, address: str | None, action: str, call: Callable[[Any], Any]) -> Any:
    """``call(client)`` with any failure but an unreachable cluster turned into a JobError."""
    c = client(address)
    try:
        return call(c)
    except Exception as exc:
        raise JobError(f"cannot {action} job {job_id!r}: {exc}") from None


def status(job_id: str, *, address: str | None = None) -> str:
    return _on_job(
        job_id, address, "get the status of", lambda c: str(c.get_job_status(job_id).value)
    )


def logs(job_id: str, *, address: str | None = None) -> str:
    return _on_job(job_id, address, "get the logs of", lambda c: c.get_job_logs(job_id))


def stop(job_id: str, *, address: str | None = None) -> bool:
    return bool(_on_job(job_id, address, "stop", lambda c: c.stop_job(job_id)))


def list_jobs(*, address: str | None = None) -> list[dict[str, Any]]:
    """One row per job (newest first): id, status, command, start/end time (ms), message."""
    rows = []
    for j in client(address).list_jobs():
        rows.append(
            {
                "submission_id": j.submission_id or j.job_id,
                "status": str(j.status.value),
                "entrypoint": j.entrypoint,
                "start_time": j.start_time,
                "end_time": j.end_time,
                "message": j.message or "",
            }
        )
    return sorted(rows, key=lambda r: r["start_time"] or 0, reverse=True)


def exit_code(final_status: str) -> int:
    return EXIT_CODES.get(final_status, 1)


__all__: Sequence[str] = [
    "EXIT_CODES",
    "JobError",
    "JobSpec",
    "build_runtime_env",
    "exit_code",
    "follow",
    "forwarded_env",
    "list_jobs",
    "logs",
    "stop",
    "submit",
]
