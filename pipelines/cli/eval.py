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
from typing import Any

EPILOG = """examples:
  lstc eval --model models:/lstc-refer-shapes-tiny@champion --data data/refer_shapes/shards
  lstc eval --model outputs/ckpt --data data/ytvos/shards --split valid --submission sub.zip
  lstc eval --config configs/davis_eval.yaml
  lstc eval --config configs/jhmdb_eval.yaml --model outputs/ray_results/a2d_paper/best"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="RECIPE",
        help="an evaluation recipe (e.g. configs/davis_eval.yaml): the defaults of --model "
        "(models:/<registry.model_name>@champion), --data (data.root), --split "
        "(data.val_split), --batch-size, --threshold/--threshold-rule (eval.*), --experiment "
        "and --tracking-uri (tracking.*); flags given here win",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the --config recipe (data.root=/mnt/davis/shards)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="models:/<name>@<alias>, models:/<name>/<version> or a checkpoint dir "
        "(required without --config)",
    )
    p.add_argument(
        "--data", default=None, help="shard root written by `lstc prep` (required without --config)"
    )
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

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config, overrides = given.pop("config"), given.pop("overrides")
    if config is not None:
        from pipelines.config import ConfigError, load_recipe

        try:
            recipe = load_recipe(config, overrides)
        except ConfigError as exc:
            print(f"lstc eval: {exc}", file=sys.stderr)
            return 2
        given = {**recipe_defaults(recipe), **{k: v for k, v in given.items() if v is not None}}
    elif overrides:
        print(f"lstc eval: {overrides[0]!r}: KEY=VALUE overrides need --config", file=sys.stderr)
        return 2
    missing = [f"--{k}" for k in ("model", "data") if given.get(k) is None]
    if missing:
        print(
            f"lstc eval: {' and '.join(missing)} required (or --config RECIPE, which supplies "
            "them: models:/<registry.model_name>@champion and data.root)",
            file=sys.stderr,
        )
        return 2
    opts = EvalOptions(**given)
    try:
        run_eval(opts)
    except EvalError as exc:
        print(f"lstc eval: {exc}", file=sys.stderr)
        return 2
    return 0


def recipe_defaults(recipe: Any) -> dict[str, Any]:
    """The :class:`pipelines.eval.runner.EvalOptions` fields an evaluation recipe supplies.

    ``data.val_limit`` is not one of them: it bounds validation during training, an
    evaluation scores the whole split unless ``--limit`` says otherwise.
    """
    return {
        "model": f"models:/{recipe.registry.model_name}@champion",
        "data": recipe.data.root,
        "split": recipe.data.val_split,
        "batch_size": recipe.data.eval_batch_size,
        "threshold": recipe.eval.threshold,
        "threshold_rule": recipe.eval.threshold_rule,
        "experiment": recipe.tracking.experiment,
        "tracking_uri": recipe.tracking.uri,
    }
