"""The `lstc` command line: one sub-command per pipeline stage.

Each stage lives in its own module exposing ``register(subparsers)``; this file only
collects them, so adding a stage never grows a monolithic argparse file. Modules must
keep heavy imports (torch, ray, mlflow) inside their run functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pipelines.ray_setup import StoppedBySignal, shutdown_ray

# (module, attribute) of each stage's register function, in the order shown by --help.
STAGES: tuple[str, ...] = (
    "pipelines.cli.synth",  # lstc synth
    "pipelines.cli.prep",  # lstc prep
    "pipelines.cli.train",  # lstc train
    "pipelines.cli.eval",  # lstc eval
    "pipelines.cli.demo",  # lstc demo
    "pipelines.cli.submit",  # lstc submit, lstc jobs
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstc",
        description="LSTC referring video segmentation: data prep (Ray Data), training (Ray Train), "
        "tracking and registry (MLflow), sweeps (Optuna).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except StoppedBySignal as exc:
        # SIGTERM / SIGINT handled by the stage: Ray stopped in order (no more worker output,
        # bars closed), then one line saying where the work stands, and the conventional
        # exit code (128 + signal number)
        message = f"lstc {args.command}: {exc}"
        if exc.forced:
            # Ray's own processes got the signal too (a job-wide signal, e.g. Slurm): ray.shutdown
            # and the interpreter's exit handlers would wait a minute for them; the run's state
            # is written, so leave at once
            print(message, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(exc.exit_code)
        shutdown_ray()
        print(message, file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
