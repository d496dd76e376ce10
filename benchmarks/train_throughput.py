"""Training throughput of the tiny recipe: 1 vs 2 Ray Train workers, loader-only vs training.

    python benchmarks/train_throughput.py [--epochs 2] [--videos 32] [--shards DIR] [--no-cache]

Builds tiny-resolution synthetic refer-shapes shards (64x64, 4 frames; ``--videos`` videos) or
uses ``--shards``, then trains
``configs/refer_shapes_tiny.yaml`` with 1 and with 2 CPU workers on one local Ray instance.
With ``train.measure_loader`` every epoch first makes one loader-only pass over the epoch's data
(Ray Data shard -> ``iter_torch_batches`` -> collate with joint augmentation, no model), then
trains on the same data, so both rates come from the same run, the same workers and the same
data path. Figures are the last epoch's (the first one includes worker warm-up):

* ``train samples/s`` = samples trained in the epoch / epoch wall time (rank 0, all workers);
* ``loader samples/s`` = samples delivered by the loader-only pass / its wall time (slowest rank);
* ``loader/train`` must be >= 3 (the loader is not the bottleneck).

Nothing is downloaded; tracking goes to a throw-away SQLite store; nothing is registered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_shards(out: Path, videos: int) -> Path:
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate

    generate(out / "source", config_for("tiny", seed=0, num_videos=videos))
    run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(out / "source"),
            out=str(out / "shards"),
            clip=ClipSpec(num_frames=4, stride=2, height=64, width=64),
            clips_per_shard=8,
            progress=False,
        )
    )
    return out / "shards"


def run_one(shards: Path, work: Path, workers: int, epochs: int, cache: bool) -> dict:
    from pipelines.config import load_recipe
    from pipelines.train.driver import train

    name = f"bench_w{workers}_{'cached' if cache else 'stream'}"
    recipe = load_recipe(
        REPO / "configs" / "refer_shapes_tiny.yaml",
        [
            f"data.root={shards}",
            f"data.cache_train={str(cache).lower()}",
            f"train.num_workers={workers}",
            f"train.epochs={epochs}",
            f"train.storage_path={work / 'runs'}",
            f"train.run_name={name}",
            "train.measure_loader=true",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            "tracking.system_metrics=false",
            "tracking.num_overlays=0",
        ],
    )
    t0 = time.perf_counter()
    result = train(recipe, register=False)
    wall = time.perf_counter() - t0
    m = result.last_metrics
    return {
        "workers": workers,
        "cache_train": cache,
        "train_samples_per_s": m["train/epoch/samples_per_s"],
        "loader_samples_per_s": m["train/epoch/loader_samples_per_s"],
        "ratio": m["train/epoch/loader_samples_per_s"] / m["train/epoch/samples_per_s"],
        "epoch_train_s": m["train/epoch/time_s"],
        "run_wall_s": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--shards", default=None, help="tiny shard root (default: build one)")
    ap.add_argument(
        "--videos",
        type=int,
        default=32,
        help="synthetic videos when building shards (default 32: ~180 training samples, so "
        "per-epoch start-up costs do not dominate either rate)",
    )
    ap.add_argument(
        "--no-cache",
        action="store_true",
        help="also measure with data.cache_train=false (decode from the shards every epoch)",
    )
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import ray

    work = Path(tempfile.mkdtemp(prefix="lstc-train-bench-"))
    from pipelines.ray_setup import runtime_env

    ray.init(
        num_cpus=4,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        runtime_env=runtime_env(local=True),
    )
    shards = Path(args.shards) if args.shards else make_shards(work, args.videos)
    rows = []
    configs = [(1, True), (2, True)] + ([(2, False)] if args.no_cache else [])
    for workers, cache in configs:
        rows.append(run_one(shards, work, workers, args.epochs, cache))
    ray.shutdown()

    print(f"\ntrain throughput, tiny recipe, {os.cpu_count()} cores, last of {args.epochs} epochs")
    print(f"{'workers':>7} {'cache':>6} {'train/s':>9} {'loader/s':>9} {'loader/train':>12}")
    for r in rows:
        print(
            f"{r['workers']:>7} {str(r['cache_train']):>6} {r['train_samples_per_s']:>9.2f} "
            f"{r['loader_samples_per_s']:>9.2f} {r['ratio']:>12.1f}"
        )
    one = next(r for r in rows if r["workers"] == 1)
    two = next(r for r in rows if r["workers"] == 2 and r["cache_train"])
    print(f"2-worker speed-up: {two['train_samples_per_s'] / one['train_samples_per_s']:.2f}x")
    ok = all(r["ratio"] >= 3 for r in rows)
    print(f"loader >= 3x training rate: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
