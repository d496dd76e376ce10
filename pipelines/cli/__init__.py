"""The `lstc` command line: one sub-command per pipeline stage.

Each command lives in its own module (``add_arguments`` + ``run``, its docstring as the help
text); this file only collects them, so adding one never grows a monolithic argparse file. Modules must
keep heavy imports (torch, ray, mlflow) inside their run functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pipelines.ray_setup import StoppedBySignal, shutdown_ray

#: command -> (module, one-line help), in the order shown by ``lstc --help``. Each module has
#: ``add_arguments(parser)`` and ``run(args) -> exit code``; its docstring, after the first
#: line, is the command's ``--help`` description, and an optional ``EPILOG`` its examples.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "pipelines.cli.synth",
        "generate the synthetic refer-shapes benchmark (A2D Sentences layout)",
    ),
    "prep": (
        "pipelines.cli.prep",
        "benchmark files -> Parquet shards + manifest + rejects (Ray Data)",
    ),
    "pretrain-temporal": (
        "pipelines.cli.pretrain_temporal",
        "motion pretraining of the tiny 3D encoder on synthetic shapes (the miniature's Kinetics)",
    ),
    "train": (
        "pipelines.cli.train",
        "train a recipe with Ray Train (DDP), track in MLflow, register the best model",
    ),
    "sweep": (
        "pipelines.cli.sweep",
        "Optuna hyperparameter sweep of training runs on Ray (pruning, MLflow parent/children)",
    ),
    "eval": (
        "pipelines.cli.eval",
        "evaluate a registered model or checkpoint on shards (metrics, MLflow, submission)",
    ),
    "predict": (
        "pipelines.cli.predict",
        "segment the object a sentence refers to in every frame of a video (masks, overlay)",
    ),
    "runs": (
        "pipelines.cli.runs",
        "list and compare MLflow runs: params and final metrics table, overlaid metric curves",
    ),
    "weights": (
        "pipelines.cli.weights",
        "fetch a recipe's pretrained files once (sha256) and write a recipe overlay using them",
    ),
    "demo": (
        "pipelines.cli.demo",
        "run the whole pipeline on a synthetic benchmark (synth -> prep -> train -> eval)",
    ),
    "submit": (
        "pipelines.cli.submit",
        "run an lstc command as a Ray Job on a cluster, stream its logs",
    ),
    "jobs": ("pipelines.cli.jobs", "list, inspect, follow or stop the Ray Jobs of a cluster"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstc",
        description="LSTC referring video segmentation: data prep (Ray Data), training (Ray Train), "
        "tracking and registry (MLflow), sweeps (Optuna).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=summary,
            description=doc.split("\n\n", 1)[-1],
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(func=module.run)
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
