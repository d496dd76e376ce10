"""``lstc eval``: score a registered model or a checkpoint on prepared shards.

Every metric of ``lstc.metrics`` is computed with the function training-time validation uses
(so the numbers reproduce the logged validation metrics), printed as a table and logged to a
new MLflow run tagged with the model; every metric also per label of the samples (refer-shapes
expression kind, A2D actor and action, J-HMDB action, Ref-DAVIS17 expression set) as
eval/<label>/<metric>. Ref-DAVIS17 shards are also scored with the published protocol (objects
merged per expression set, DAVIS-2017 J and F, averaged over the sets: davis17/J&F).
``--submission`` writes, validates and zips a Ref-YouTube-VOS submission.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lstc eval --model models:/lstc-refer-shapes-tiny@champion --data data/refer_shapes/shards
  lstc eval --model outputs/ckpt --data data/ytvos/shards --split valid --submission sub.zip"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version> or a checkpoint dir",
    )
    p.add_argument("--data", required=True, help="shard root written by `lstc prep`")
    p.add_argument(
        "--split", default=None, help="split to evaluate (default: the recipe's val split)"
    )
    p.add_argument(
        "--submission", default=None, metavar="ZIP", help="write a Ref-YouTube-VOS submission zip"
    )
    p.add_argument(
        "--meta-expressions",
        default=None,
        metavar="JSON",
        help="validate the submission against this meta_expressions.json (videos of the split only)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="eval batch size (default: recipe data.eval_batch_size)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask threshold on p = sigmoid(logits) (default: the model recipe's eval.threshold)",
    )
    p.add_argument(
        "--threshold-rule",
        choices=("absolute", "relative"),
        default=None,
        help="absolute: p > threshold; relative: p > threshold * max(p) of each prediction, as "
        "the CSTM release (default: the model recipe's eval.threshold_rule)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N clips")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help=">1: evaluate clips in parallel with a Ray Data actor pool",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: env / recipe / ./mlflow.db)",
    )
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the recipe's)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--output", default=None, metavar="JSON", help="also write the metrics to this JSON file"
    )


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.loading import EvalError
    from pipelines.eval.runner import EvalOptions, run_eval

    opts = EvalOptions(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
    try:
        run_eval(opts)
    except EvalError as exc:
        print(f"lstc eval: {exc}", file=sys.stderr)
        return 2
    return 0
