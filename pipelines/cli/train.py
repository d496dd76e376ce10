"""``lstc train``: distributed training of a recipe with Ray Train, tracked in MLflow.

Train the LSTC network described by a YAML recipe on Ray Train workers (CPU or GPU, DDP),
streaming the shards through Ray Data. Every epoch is validated and checkpointed; rerunning
the same command (same train.run_name and train.storage_path) resumes the run and
re-attaches to its MLflow run (a changed recipe stops with the list of changed keys; --new-run
starts afresh). At the end the best checkpoint is registered in the MLflow model registry
(alias champion or challenger).
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """example:
  lstc train --config configs/refer_shapes_tiny.yaml data.root=data/refer_shapes/shards \\
      train.epochs=2 optim.lr=1e-3"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="recipe YAML (e.g. configs/refer_shapes_tiny.yaml)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted recipe overrides, values parsed as YAML (train.epochs=3 model.lasp=off)",
    )
    p.add_argument("--name", default=None, help="run name (same as train.run_name=...)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--no-register", action="store_true", help="do not register the best model")
    p.add_argument(
        "--new-run",
        action="store_true",
        help="start afresh under the same run name even if a run of that name exists (its "
        "folder is kept as <name>.prev-<time>; a new MLflow run is created). Without it, "
        "rerunning a name resumes the run, and stops with an error if the recipe changed",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError, load_recipe

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"train.run_name={args.name}")
    if args.address:
        overrides.append(f"train.ray_address={args.address}")
    try:
        recipe = load_recipe(args.config, overrides)
    except ConfigError as exc:
        print(f"lstc train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(recipe.to_yaml(), end="")
        return 0

    from pipelines.mlops.tracking import ClusterTrackingError
    from pipelines.train.driver import train
    from pipelines.train.resume import RecipeChangedError

    try:
        result = train(recipe, register=False if args.no_register else None, new_run=args.new_run)
    except (RecipeChangedError, ClusterTrackingError) as exc:
        print(f"lstc train: {exc}", file=sys.stderr)
        return 2
    best = result.best_metrics
    print(
        json.dumps(
            {
                "run_name": result.run_name,
                "run_dir": str(result.run_dir),
                "mlflow_run_id": result.mlflow_run_id,
                "best_checkpoint": str(result.best_checkpoint),
                "best_epoch": best.get("epoch"),
                "registered": result.registered,
                "best": {k: v for k, v in best.items() if k.startswith("val/")},
            },
            indent=2,
            default=str,
        )
    )
    return 0
