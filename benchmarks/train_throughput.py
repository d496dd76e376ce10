"""Training throughput of the tiny recipe: 1 vs 2 Ray Train workers, loader-only vs training.

    python benchmarks/train_throughput.py [--epochs 2] [--videos 32] [--shards DIR] [--no-cache]
    python benchmarks/train_throughput.py --loader-only [--videos 24] [--cpus 2]

``--loader-only`` (issue 13): the training data path alone at paper resolution (8 x 320 x 320
clips, the a2d_paper recipe's augmentation), float collate vs uint8 collate; reports samples/s
and samples per CPU-second (= per fully busy core; the target for a 16-core GPU node feeding
200 samples/s is 12.5).

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


# ------------------------------------------------------------------ --loader-only (issue 13)
#: paper resolution: 8 frames of 320x320 per clip (A2D-like 320-pixel-high source videos)
PAPER_CLIP = {"num_frames": 8, "stride": 2, "height": 320, "width": 320}


def make_paper_shards(out: Path, videos: int) -> Path:
    """Synthetic refer-shapes at paper resolution: 320x428 source videos, clips of 8 frames
    resized to 320x320 (JPEG, as ``lstc prep`` stores every benchmark)."""
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate

    cfg = config_for(
        "tiny",
        seed=0,
        num_videos=videos,
        num_frames=32,
        height=320,
        width=428,
        annotated_per_video=4,
        expressions_per_object=2,
    )
    generate(out / "source", cfg)
    run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(out / "source"),
            out=str(out / "shards"),
            clip=ClipSpec(**PAPER_CLIP),
            clips_per_shard=8,
            progress=False,
        )
    )
    return out / "shards"


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and every live descendant (raylet, GCS,
    Ray workers doing the reads/decodes), plus reaped children."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    t = me.cpu_times()
    return total + t.children_user + t.children_system


def loader_only(shards: Path, epochs: int, uint8: bool) -> dict:
    """The training data path alone, as a training worker consumes it: Ray Data shard reads +
    JPEG decode (read tasks) -> local shuffle -> ``iter_torch_batches`` with the training
    collate (crop/flip augmentation, resize to 320x320) in the prefetch threads. The last
    epoch is timed (the first one starts Ray's worker processes)."""
    from pipelines.config import load_recipe
    from pipelines.data import build_train_dataset
    from pipelines.train.loop import _train_batches

    recipe = load_recipe(REPO / "configs" / "a2d_paper.yaml", [f"data.root={shards}"])
    assert recipe.data.augment.enabled and tuple(recipe.model.input_size) == (320, 320)
    ds = build_train_dataset(recipe)
    out = {}
    for epoch in range(epochs):
        c0, t0, n = _cpu_seconds(), time.perf_counter(), 0
        for batch in _train_batches(ds, recipe, epoch, uint8=uint8):
            n += len(batch["text"])
            assert batch["clip"].shape[1:] == (3, 8, 320, 320)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        out = {
            "collate": "uint8" if uint8 else "float32 (before issue 13)",
            "samples": n,
            "wall_s": wall,
            "cpu_s": cpu,
            "samples_per_s": n / wall,
            "samples_per_cpu_s": n / cpu,
            "batch_size": recipe.data.batch_size,
            "prefetch_batches": recipe.data.prefetch_batches,
        }
    return out


def main_loader_only(args: argparse.Namespace) -> int:
    import ray

    from pipelines.ray_setup import runtime_env

    work = Path(tempfile.mkdtemp(prefix="lstc-loader-bench-"))
    ray.init(
        num_cpus=args.cpus,
        object_store_memory=1024 * 1024**2,
        include_dashboard=False,
        runtime_env=runtime_env(local=True),
    )
    shards = Path(args.shards) if args.shards else make_paper_shards(work, args.videos)
    rows = [loader_only(shards, args.epochs, uint8) for uint8 in (False, True)]
    ray.shutdown()
    print(
        f"\nloader only, paper resolution (8 x 320 x 320 clips, a2d_paper augmentation), "
        f"Ray num_cpus={args.cpus} on {os.cpu_count()} cores, last of {args.epochs} epochs"
    )
    print(
        f"{'collate':>26} {'samples':>8} {'wall s':>8} {'CPU s':>8} {'samples/s':>10} "
        f"{'samples/CPU-s':>14}"
    )
    for r in rows:
        print(
            f"{r['collate']:>26} {r['samples']:>8d} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
            f"{r['samples_per_s']:>10.1f} {r['samples_per_cpu_s']:>14.1f}"
        )
    best = rows[-1]["samples_per_cpu_s"]
    print(
        "samples/CPU-s = samples per second per fully busy core (CPU time of the driver, "
        "raylet/GCS and Ray workers; wall time on a shared machine says little)"
    )
    print(f"per-core target >= 12.5 samples/s: {'yes' if best >= 12.5 else 'NO'} ({best:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


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
    ap.add_argument(
        "--loader-only",
        action="store_true",
        help="only the training data path at paper resolution (8x320x320, augmentation on): "
        "samples/s and samples per CPU-second, float vs uint8 collate (default --videos 24)",
    )
    ap.add_argument("--cpus", type=int, default=2, help="--loader-only: Ray num_cpus")
    args = ap.parse_args()
    if args.loader_only:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return main_loader_only(args)

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
