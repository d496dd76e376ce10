"""``lstc jobs``: list, inspect, follow or stop the Ray Jobs of a cluster.

Manage the Ray Jobs submitted with `lstc submit`: `list` (newest first), `status ID`,
`logs ID [--follow]`, `stop ID`.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.submit import add_address


def add_arguments(p: argparse.ArgumentParser) -> None:
    jsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (
        ("list", "jobs of the cluster, newest first"),
        ("status", "status of one job"),
        ("logs", "logs of one job (--follow streams until it ends)"),
        ("stop", "stop a running job"),
    ):
        q = jsub.add_parser(name, help=helptext, description=helptext)
        add_address(q)
        if name != "list":
            q.add_argument("job_id", help="submission id printed by `lstc submit`")
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines import jobs

    try:
        if args.action == "list":
            rows = jobs.list_jobs(address=args.address)
            print(f"{'SUBMISSION ID':<28} {'STATUS':<10} ENTRYPOINT")
            for r in rows:
                print(f"{r['submission_id']:<28} {r['status']:<10} {r['entrypoint']}")
            return 0
        if args.action == "status":
            print(jobs.status(args.job_id, address=args.address))
            return 0
        if args.action == "logs":
            if args.follow:
                return jobs.exit_code(jobs.follow(args.job_id, address=args.address))
            print(jobs.logs(args.job_id, address=args.address), end="")
            return 0
        stopped = jobs.stop(args.job_id, address=args.address)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'was not running'}")
        return 0
    except jobs.JobError as exc:
        print(f"lstc jobs: {exc}", file=sys.stderr)
        return 2
