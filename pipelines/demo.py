"""The demo behind ``lstc demo``: the whole pipeline on embedded defaults, offline, on this machine.

Steps (each one resumable, so rerunning the command finishes an interrupted demo):

1. ``lstc synth``  — generate the refer-shapes benchmark in the A2D Sentences layout;
2. ``lstc prep``   — Ray Data + decord → Parquet shards, manifest, rejects;
3. ``lstc train``  — Ray Train (2 CPU workers, DDP) on the tiny recipe, tracked in MLflow
   (SQLite ``./mlflow.db``), best model registered with alias champion/challenger;
4. ``lstc eval``   — the registered model re-evaluated from the registry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "refer_shapes_tiny.yaml"


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """Knobs of ``lstc demo`` (one field per command-line flag)."""

    workdir: str = "data/refer_shapes"
    scale: str = "demo"  # tiny | demo
    videos: int | None = None
    seed: int = 0
    recipe: str = str(DEFAULT_RECIPE)
    overrides: list[str] = field(default_factory=list)
    stride: int = 2
    skip_train: bool = False


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run_demo(args: DemoOptions) -> int:
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate
    from pipelines.config import load_recipe

    work = Path(args.workdir)
    raw, shards = work / "raw", work / "shards"
    recipe = load_recipe(
        args.recipe, [f"data.root={shards}", f"train.seed={args.seed}", *args.overrides]
    )
    model_cfg = recipe.model
    # One Ray instance for every step, sized so that Ray Data can still read while the
    # training workers hold their CPUs (a 2-core laptop would otherwise starve the reader).
    from pipelines.ray_setup import init_ray

    tr = recipe.train
    init_ray(tr.ray_address, min_cpus=tr.num_workers * tr.cpus_per_worker + 2)
    timings: dict[str, float] = {}

    t0 = _step(f"1/4 synthetic benchmark ({args.scale}) -> {raw}")
    done_marker = raw / ".complete.json"
    synth_cfg = config_for(
        args.scale, args.seed, **({"num_videos": args.videos} if args.videos else {})
    )
    wanted = json.dumps({"scale": args.scale, "seed": args.seed, "videos": synth_cfg.num_videos})
    if done_marker.exists() and done_marker.read_text() == wanted:
        print("already generated (delete the folder to regenerate)")
    else:
        counts = generate(raw, synth_cfg)
        done_marker.write_text(wanted)
        print(
            f"{counts['videos']} videos ({counts['train']} train / {counts['test']} test), "
            f"{counts['expressions']} expressions"
        )
    timings["synth"] = time.perf_counter() - t0

    t0 = _step(f"2/4 prepare shards (Ray Data + decord) -> {shards}")
    summary = run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(raw),
            out=str(shards),
            clip=ClipSpec(
                num_frames=recipe.num_frames,
                stride=args.stride,
                height=model_cfg.input_size[0],
                width=model_cfg.input_size[1],
            ),
        )
    )
    print(summary.text())
    timings["prep"] = time.perf_counter() - t0
    if args.skip_train:
        return 0

    from pipelines.train.driver import train

    t0 = _step(f"3/4 train {recipe.train.run_name} ({recipe.train.num_workers} Ray Train workers)")
    result = train(recipe)
    timings["train"] = time.perf_counter() - t0
    best = {k: v for k, v in result.best_metrics.items() if k.startswith("val/")}
    print(
        json.dumps({"best_checkpoint": str(result.best_checkpoint), **best}, indent=2, default=str)
    )

    t0 = _step("4/4 evaluate the registered model")
    from pipelines.eval.runner import EvalOptions, run_eval

    if result.registered:
        version, alias = result.registered
        model_uri = f"models:/{recipe.registry.model_name}/{version}"
        print(f"registered {recipe.registry.model_name} version {version} (alias {alias})")
    else:
        print("model was not registered (see warnings above); evaluating the best checkpoint")
        model_uri = str(result.best_checkpoint)
    run_eval(EvalOptions(model=model_uri, data=str(shards)))
    rc = 0
    timings["eval"] = time.perf_counter() - t0

    print("\n=== done ===")
    print("  ".join(f"{k}: {v:.0f}s" for k, v in timings.items()))
    print(
        "Browse runs, overlays and the registry:  .venv/bin/mlflow ui --backend-store-uri "
        "sqlite:///mlflow.db   (then open http://127.0.0.1:5000)"
    )
    return rc
