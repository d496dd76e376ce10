"""``lstc demo``: the whole pipeline on embedded defaults, offline, on this machine.

Generate the synthetic refer-shapes benchmark, prepare its shards with Ray Data, train the
tiny LSTC recipe with Ray Train (tracked in MLflow, best model registered), then evaluate
the registered model. Offline, CPU, resumable: rerun the same command to finish an
interrupted demo (finished stages are kept). Ends by writing <workdir>/demo_summary.md and
demo_summary.json: metrics, timings, machine, git commit, command line, MLflow run ids.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.demo import DEFAULT_RECIPE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default="data/refer_shapes", help="where data goes (default %(default)s)"
    )
    p.add_argument("--scale", default="demo", choices=["tiny", "demo"], help="benchmark scale")
    p.add_argument("--videos", type=int, default=None, help="override the number of videos")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark and training")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="training recipe YAML")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides (e.g. train.epochs=2 model.lasp=off)",
    )
    p.add_argument("--stride", type=int, default=3, help="frame stride inside a clip (default 3)")
    p.add_argument("--skip-train", action="store_true", help="stop after the shards")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError
    from pipelines.demo import DemoOptions, run_demo
    from pipelines.eval.loading import EvalError
    from pipelines.train.resume import RecipeChangedError

    opts = DemoOptions(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
    try:
        return run_demo(opts)
    except (ConfigError, EvalError) as exc:
        print(f"lstc demo: {exc}", file=sys.stderr)
        return 2
    except RecipeChangedError as exc:
        print(
            f"lstc demo: {exc}\n(the demo has no --new-run: pass another train.run_name=..., "
            f"or delete {exc.run_dir} to start that run afresh)",
            file=sys.stderr,
        )
        return 2
