"""``lstc sweep``: an Optuna hyperparameter sweep of training runs on the Ray cluster.

Run the sweep of a spec (configs/sweeps/*.yaml: base recipe, search space over recipe keys,
objective, trials, parallelism, sampler, pruner, budget per trial). Each trial is a full
training run with its own Ray Train workers and run name <sweep>-trial-<N>; epochs that
fall behind are pruned; every trial is a child of the sweep's MLflow parent run, which gets
the trials table, the best params and Optuna's plots; the best trial's model is registered.
Rerunning the same command continues the study: finished trials are kept, trials a stopped
sweep left running are failed and retried once (on RDB/SQLite studies when their heartbeat has
been silent for the spec's grace_s; trials of drivers still running are left alone). The spec
is checked before any trial starts (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  lstc sweep configs/sweeps/refer_shapes_tiny.yaml data.root=data/refer_shapes/shards
  lstc sweep configs/sweeps/refer_shapes_tiny.yaml --n-trials 16 --parallel 2 \\
      --storage journal:/mnt/shared/sweeps/tiny.log
  lstc submit sweep configs/sweeps/refer_shapes_tiny.yaml \\
      --storage postgresql://optuna:secret@db:5432/optuna train.storage_path=s3://bucket/runs"""


def _parallel(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--parallel takes a number or 'auto', not {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError("--parallel must be >= 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="sweep spec YAML (configs/sweeps/*.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides for every trial, after the spec's (data.root=... train.seed=1)",
    )
    p.add_argument("--study-name", default=None, help="Optuna study name (default: spec name)")
    p.add_argument(
        "--storage",
        default=None,
        help="study storage: sqlite:///file.db (one machine), an RDB URL "
        "(postgresql://...) or journal:<file on shared storage> (default: the spec's, else "
        "sqlite:///<output_dir>/<study>/optuna.db)",
    )
    p.add_argument("--n-trials", type=int, default=None, help="finished trials to reach")
    p.add_argument(
        "--parallel", type=_parallel, default=None, help="trials at once (a number or auto)"
    )
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-spec", action="store_true", help="print the validated spec and exit")


def run(args: argparse.Namespace) -> int:
    from tuning.spec import SweepSpecError, load_spec

    try:
        spec = load_spec(args.spec, list(args.overrides))
        if args.n_trials is not None and args.n_trials < 1:
            raise SweepSpecError(f"--n-trials must be >= 1 (got {args.n_trials})")
    except SweepSpecError as exc:
        print(f"lstc sweep: {exc}", file=sys.stderr)
        return 2
    if args.print_spec:
        print(json.dumps(spec.model_dump(mode="json"), indent=2))
        return 0

    from pipelines.mlops.tracking import ClusterTrackingError
    from tuning.storage import StudyStorageError
    from tuning.sweep import SweepError, run_sweep

    try:
        result = run_sweep(
            spec,
            study_name=args.study_name,
            storage=args.storage,
            n_trials=args.n_trials,
            parallel=args.parallel,
            address=args.address,
            progress=not args.no_progress,
        )
    except (StudyStorageError, ClusterTrackingError) as exc:
        print(f"lstc sweep: {exc}", file=sys.stderr)
        return 2
    except SweepError as exc:
        print(f"lstc sweep: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0
