"""``lstc runs``: list and compare MLflow runs (an experiment, a sweep's trials, chosen ids).

`list` prints a table of the chosen runs (run id, name, status, start, duration, chosen params,
final metrics), sorted, and saves it as runs.csv. `compare` does the same and overlays each
metric's curves of all chosen runs in one PNG per metric (x axis: the step axis the metric is
logged on, the epoch for val/* metrics), plus curves.json with the plotted data; --log-to RUN_ID
(or --log with --parent) uploads them to that MLflow run as artifacts.

Runs: exactly one of --experiment NAME, --parent RUN_ID (its child runs, e.g. a sweep's
trials), --runs ID [ID ...]. Default params: those with several values among the runs that log them; default
metrics: every val/* metric. Works against a SQLite store and a tracking server alike.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lstc runs list --experiment lstc-refer-shapes
  lstc runs list --parent 3f2a9c0d5e6b4a7f8e9d0c1b2a3f4e5d --sort val/mean_iou --out outputs/sweep
  lstc runs compare --runs 3f2a9c0d5e6b4a7f8e9d0c1b2a3f4e5d 9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b \\
      --metrics val/mean_iou val/overall_iou --params optim.lr model.cmam
  lstc runs compare --parent 3f2a9c0d5e6b4a7f8e9d0c1b2a3f4e5d --log \\
      --tracking-uri http://127.0.0.1:5000"""

DEFAULT_OUT = "outputs/runs"


def _common(q: argparse.ArgumentParser) -> None:
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", metavar="NAME", help="every active run of this experiment")
    which.add_argument(
        "--parent", metavar="RUN_ID", help="the child runs of this run (a sweep's trials)"
    )
    which.add_argument("--runs", nargs="+", metavar="ID", help="these run ids")
    q.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI, e.g. http://host:5000 or sqlite:///path/mlflow.db "
        "(default: env MLFLOW_TRACKING_URI, else ./mlflow.db, as in training)",
    )
    q.add_argument(
        "--params",
        nargs="+",
        metavar="KEY",
        help="param columns, e.g. optim.lr model.cmam (default: params that differ among the runs that log them)",
    )
    q.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="metric columns (final values), e.g. val/mean_iou (default: every val/* metric)",
    )
    q.add_argument(
        "--sort",
        metavar="COLUMN",
        help="sort by this metric, param or column (default: the first metric)",
    )
    q.add_argument(
        "--ascending", action="store_true", help="smallest first (default: largest first)"
    )
    q.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for runs.csv (and the plots) (default: {DEFAULT_OUT})",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser(
        "list",
        help="table of params and final metrics, printed and saved as runs.csv",
        description="Table of the chosen runs' params and final metrics, sorted, printed and "
        "saved as DIR/runs.csv.",
    )
    _common(q)
    q.set_defaults(func=run)
    q = sub.add_parser(
        "compare",
        help="the table plus each metric's curves of all runs overlaid in one PNG",
        description="The `list` table plus, per metric, the curves of all chosen runs overlaid "
        "in DIR/curves/<metric>.png on the metric's step axis (epoch for val/*), and the plotted "
        "data in DIR/curves.json.",
    )
    _common(q)
    log = q.add_mutually_exclusive_group()
    log.add_argument(
        "--log-to", metavar="RUN_ID", help="log runs.csv, curves.json and the PNGs to this run"
    )
    log.add_argument(
        "--log", action="store_true", help="log them to the --parent run (the sweep's run)"
    )
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from pipelines.mlops import runs

    compare = args.action == "compare"
    log_to = getattr(args, "log_to", None)
    if getattr(args, "log", False):
        if not args.parent:
            print(
                "lstc runs: --log logs to the --parent run; without --parent use --log-to RUN_ID",
                file=sys.stderr,
            )
            return 2
        log_to = args.parent
    try:
        client = runs.make_client(args.tracking_uri)
        report = runs.build_report(
            client,
            experiment=args.experiment,
            parent=args.parent,
            run_ids=args.runs,
            params=args.params,
            metrics=args.metrics,
            sort=args.sort,
            ascending=args.ascending,
            curves=compare,
        )
        files = runs.write_report(report, args.out)
        print(runs.format_table(report.table))
        print(f"\n{len(report.table)} runs; table: {files[0]}")
        for metric in report.curves:
            png = next(f for f in files if f.name == runs.png_name(metric))
            print(f"{metric} ({report.axes[metric]}, {len(report.curves[metric])} curves): {png}")
        if log_to:
            where = runs.log_report(client, log_to, files, args.out)
            print(f"logged {len(files)} files to {where}")
    except runs.RunsError as exc:
        print(f"lstc runs: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # store unreachable or refusing: say where, no traceback
        print(
            f"lstc runs: MLflow at {args.tracking_uri or 'the default tracking URI'} failed: "
            f"{exc}\ncheck --tracking-uri / MLFLOW_TRACKING_URI and that the server is up",
            file=sys.stderr,
        )
        return 2
    return 0
