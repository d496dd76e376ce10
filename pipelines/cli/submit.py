"""``lstc submit``: run an lstc command as a Ray Job on a cluster and stream its logs.

Submit `lstc COMMAND ARGS...` to a Ray cluster through the Job Submission SDK. The job gets
this checkout as its working dir (without .venv, data/, outputs/, MLflow stores) and the
settings every node needs (MLFLOW_TRACKING_URI, AWS_* and MLFLOW_S3_ENDPOINT_URL, LSTC_*),
joins the cluster through RAY_ADDRESS, and its logs stream here. The exit code is the job's:
0 succeeded, 1 failed, 143 stopped. Paths in ARGS are read on the cluster: use URIs (s3://...)
or shared mounts.
"""

from __future__ import annotations

import argparse
import json
import sys

SUBMITTABLE = ("synth", "prep", "train", "sweep", "eval", "demo")

EPILOG = """examples:
  lstc submit --address http://127.0.0.1:8265 prep --dataset a2d --root /mnt/a2d \\
      --out s3://bucket/shards/a2d
  lstc submit train --config configs/a2d_paper.yaml train.storage_path=s3://bucket/runs
  lstc submit eval --model models:/lstc-a2d@champion --data s3://bucket/shards/a2d"""


def add_address(p: argparse.ArgumentParser) -> None:
    """The ``--address`` option of the commands that talk to a cluster's Jobs API."""
    p.add_argument(
        "--address",
        default=None,
        help="Ray Jobs API of the head, http://<head>:8265 (default: RAY_ADDRESS, then a "
        "local cluster)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_address(p)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for the job (repeatable)",
    )
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    p.add_argument(
        "--entrypoint-resources",
        default=None,
        metavar="JSON",
        help="custom resources for the job driver, e.g. '{\"head\": 1}'",
    )
    p.add_argument("--working-dir", default=None, help="tree to ship (default: this checkout)")
    p.add_argument(
        "job_command", metavar="COMMAND", choices=SUBMITTABLE, help="the lstc command to run"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")


def _parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from pipelines.jobs import JobError, JobSpec, exit_code, follow, submit

    try:
        resources = json.loads(args.entrypoint_resources) if args.entrypoint_resources else {}
        spec = JobSpec(
            args=(args.job_command, *args.args),
            working_dir=args.working_dir,
            env=_parse_env(args.env),
            entrypoint_resources=resources,
            submission_id=args.submission_id,
        )
        job_id = submit(spec, address=args.address)
    except (JobError, ValueError) as exc:
        print(f"lstc submit: {exc}", file=sys.stderr)
        return 2
    print(f"lstc submit: job {job_id}: {spec.entrypoint}", flush=True)
    if args.no_follow:
        print(job_id)
        return 0
    try:
        final = follow(job_id, address=args.address)
    except KeyboardInterrupt:
        print(
            f"\nlstc submit: stopped following; job {job_id} goes on "
            f"(lstc jobs logs --follow {job_id} / lstc jobs stop {job_id})",
            file=sys.stderr,
        )
        return 130
    print(f"lstc submit: job {job_id} {final}", file=sys.stderr)
    return exit_code(final)
