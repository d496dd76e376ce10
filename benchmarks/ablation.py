"""The paper's ablations on refer-shapes, over seeds: one MLflow experiment, one table.

Each variant is the tiny recipe (``configs/refer_shapes_tiny.yaml``) plus recipe overrides,
trained with ``lstc train``'s own driver (Ray Train workers, MLflow tracking, registration
off) once per seed; its last-epoch validation metrics on the ``test`` split (overall and per
expression kind, ``val/<kind>/...``) are collected, and the script writes a markdown table of
mean ± sample standard deviation per variant to ``docs/ablation.md`` with the machine, the
date and the command.

Variants (the paper's Tables 3-5, and the CSTM anchor):

============== =============================================================================
lstc           the recipe as is (both streams, CMAM+, LASP)
spatial_only   ``model.streams=spatial``
temporal_only  ``model.streams=temporal``
cmam           ``model.cmam=cmam`` (CMAM instead of CMAM+)
lasp_off       ``model.lasp=off``
cstm           ``model.preset=tiny_cstm`` (the CSTM release's architecture at tiny size)
============== =============================================================================

Usage (after ``lstc synth --scale demo`` and ``lstc prep ... --frames 4 --stride 3 --size 64
64``, or ``make demo``, which leaves the shards in ``data/refer_shapes/shards``)::

    python benchmarks/ablation.py --shards data/refer_shapes/shards --seeds 0 1 2
    python benchmarks/ablation.py --variants lstc spatial_only --seeds 0 1 2 train.epochs=2

Finished (variant, seed) runs are found in the MLflow experiment by their tags and not run
again, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPE = REPO / "configs" / "refer_shapes_tiny.yaml"
EXPERIMENT = "lstc-ablation"
VARIANTS: dict[str, tuple[str, ...]] = {
    "lstc": (),
    "spatial_only": ("model.streams=spatial",),
    "temporal_only": ("model.streams=temporal",),
    "cmam": ("model.cmam=cmam",),
    "lasp_off": ("model.lasp=off",),
    "cstm": ("model.preset=tiny_cstm",),
}
KINDS = ("motion", "appearance", "fast")
#: table columns: (header, metric key of the run's last validation)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("overall IoU", "val/overall_iou"),
    ("mean IoU", "val/mean_iou"),
    ("mAP", "val/mAP_at_0.5-0.95"),
    *((f"{k} mIoU", f"val/{k}/mean_iou") for k in KINDS),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for a single value)."""
    m = math.fsum(values) / len(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: Mapping[str, Sequence[Mapping[str, float]]]) -> str:
    """Markdown table: one row per variant, ``mean ± std`` in percent over its seeds."""
    head = "| variant | seeds | " + " | ".join(h for h, _ in COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for variant, runs in results.items():
        cells = []
        for _, key in COLUMNS:
            vals = [100.0 * r[key] for r in runs if key in r]
            if not vals:
                cells.append("–")
                continue
            m, s = mean_std(vals)
            cells.append(f"{m:.1f} ± {s:.1f}")
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finished(client: Any, exp_id: str, variant: str, seed: int, key: str) -> dict | None:
    runs = client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.ablation_variant = '{variant}' and tags.ablation_seed = '{seed}' "
            f"and tags.ablation_key = '{key}' and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return dict(runs[0].data.metrics) if runs else None


def run_variant(shards: str, variant: str, seed: int, extra: Sequence[str], uri: str) -> dict:
    from pipelines.config import load_recipe
    from pipelines.train.driver import train

    overrides = [
        *VARIANTS[variant],
        *extra,
        f"data.root={shards}",
        f"train.seed={seed}",
        f"train.run_name=ablation-{variant}-s{seed}",
        f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}",
    ]
    recipe = load_recipe(RECIPE, overrides)
    tags = {"ablation_variant": variant, "ablation_seed": str(seed)}
    tags["ablation_key"] = _key(extra, shards)
    result = train(recipe, register=False, new_run=True, tags=tags)
    return dict(result.last_metrics)


def _key(extra: Sequence[str], shards: str) -> str:
    import hashlib

    return hashlib.sha256(repr((sorted(extra), str(shards))).encode()).hexdigest()[:12]


def write_doc(path: Path, body: str, command: str) -> None:
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{platform.platform()}, torch {torch.__version__}"
    )
    path.write_text(
        "# Ablations on refer-shapes\n\n"
        "Written by `benchmarks/ablation.py` (do not edit by hand). Values: mean ± sample "
        "standard deviation over seeds, in %, of the last epoch's validation on the `test` "
        "split; per-kind columns are the mean IoU of the expressions of that kind "
        "(`motion`: only motion tells the referred shape from an identical one; "
        "`appearance`: only colour/shape; `fast`: fast-moving objects).\n\n"
        f"{body}\n\n"
        f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n"
        f"Command: `{command}`\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", default=str(REPO / "data" / "refer_shapes" / "shards"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'outputs' / 'ablation.db'}")
    p.add_argument("--out", default=str(REPO / "docs" / "ablation.md"))
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides for every variant")
    args = p.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    key = _key(args.overrides, args.shards)
    results: dict[str, list[dict]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            done = _finished(client, exp_id, variant, seed, key)
            if done is None:
                print(f"== {variant} seed {seed}", flush=True)
                done = run_variant(args.shards, variant, seed, args.overrides, args.tracking_uri)
            else:
                print(f"== {variant} seed {seed}: finished run found, kept", flush=True)
            results.setdefault(variant, []).append(done)
    body = table(results)
    print(body)
    command = " ".join(["python", "benchmarks/ablation.py", *sys.argv[1:]])
    write_doc(Path(args.out), body, command)
    print(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
