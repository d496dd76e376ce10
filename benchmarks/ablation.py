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
lasp_off       ``model.lasp=off`` (the decoder then reads no language: with the default
               ``update_feeds=decoder`` no CMAM+ update is read either, so this is CMAM
               without LASP)
cstm           ``model.preset=tiny_cstm`` (the CSTM release's architecture at tiny size)
feeds_all      ``model.update_feeds=all``, only with ``--variants`` (CMAM+ whose updated words the next CMAMs read too,
               docs/MOTION.md section 7)
============== =============================================================================

Usage (after ``lstc synth --scale demo`` and ``lstc prep ... --frames 4 --stride 3 --size 64
64``, or ``make demo``, which leaves the shards in ``data/refer_shapes/shards``)::

    python benchmarks/ablation.py --shards data/refer_shapes/shards --seeds 0 1 2
    python benchmarks/ablation.py --variants lstc spatial_only --seeds 0 1 2 -- train.epochs=2
    python benchmarks/ablation.py --jobs 2 --seeds 0 1 2 -- train.num_workers=1
    python benchmarks/ablation.py --table-only train.num_workers=1

Finished (variant, seed) runs are not run again, so an interrupted study resumes where it
stopped, and a changed recipe is trained afresh. A run is identified by its variant, its seed
and a settings key: a hash of the recipe file's text, the schema's defaults, the overrides and
the shards' content (their manifest's checksums, not their path). Each finished run is
recorded, with its validation metrics, run id and commit, as one line of the ledger
``docs/ablation_runs.jsonl``, which is committed next to the table: the table is computed from
the ledger, and a study begun in one checkout or machine is continued in another (with the same
shards, rebuilt by the same commands) without retraining what the ledger holds. Runs the MLflow
store has and the ledger lacks are added to it.

``--jobs N`` trains N (variant, seed) runs at once, each in a subprocess of this script with
its own local Ray instance (on 2 cores: ``--jobs 2 train.num_workers=1`` keeps both cores
busy with one single-threaded worker per run). Their logs go to ``outputs/ablation_logs/``.
``--table-only`` writes the table from the finished runs without training the missing ones.

Below the table, the script checks the paper's orderings on the seed means: LSTC over
spatial-only on motion-only expressions by >= 10 points, LSTC over temporal-only on
appearance-only ones, LSTC >= the CSTM anchor overall.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
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
    "feeds_all": ("model.update_feeds=all",),
}
#: the issue's ablations; ``feeds_all`` (a reading of CMAM+, not an ablation) on request
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "feeds_all")
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


def _finished_run(client: Any, exp_id: str, variant: str, seed: int, key: str) -> Any | None:
    """The FINISHED MLflow run of (variant, seed) under these settings, or None."""
    runs = client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.ablation_variant = '{variant}' and tags.ablation_seed = '{seed}' "
            f"and tags.ablation_key = '{key}' and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return runs[0] if runs else None


def _finished(client: Any, exp_id: str, variant: str, seed: int, key: str) -> dict | None:
    """The metrics of :func:`_finished_run`, or None."""
    run = _finished_run(client, exp_id, variant, seed, key)
    return dict(run.data.metrics) if run else None


# --- the ledger: the study's finished runs, committed next to the table -----------------------
#
# The MLflow store (``outputs/ablation.db``) is the full record of each run but stays on the
# machine that trained it. The ledger keeps, per finished (variant, seed, settings key), the
# run's last validation metrics and provenance as one JSON line; it is committed with
# ``docs/ablation.md``, so a study started on one machine (or in one checkout) is finished on
# another without retraining what is done, and the table is always computed from the ledger.

LEDGER = REPO / "docs" / "ablation_runs.jsonl"
_LEDGER_FIELDS = ("variant", "seed", "key", "metrics")


def read_ledger(path: Path) -> list[dict]:
    """The ledger's rows (none when the file does not exist). A line that is not a JSON object
    with the ledger's fields stops the script with its file and line number."""
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row, problem = None, f"is not JSON ({exc.msg})"
        else:
            problem = "lacks one of the fields " + ", ".join(_LEDGER_FIELDS)
        if not isinstance(row, dict) or not set(_LEDGER_FIELDS) <= row.keys():
            raise SystemExit(
                f"{path}:{n} {problem}: fix or delete that line (a deleted run is trained "
                "again, or taken back from the MLflow store if it is there)"
            )
        rows.append(row)
    return rows


def ledger_metrics(rows: Sequence[Mapping], variant: str, seed: int, key: str) -> dict | None:
    """The metrics the ledger holds for (variant, seed) under these settings, or None."""
    for row in rows:
        if row["variant"] == variant and row["seed"] == seed and row["key"] == key:
            return dict(row["metrics"])
    return None


def ledger_row(
    run: Any, variant: str, seed: int, key: str, data: str, extra: Sequence[str]
) -> dict:
    """One ledger line for a finished MLflow run: its validation metrics and where it came
    from (run id and name, end time, the commit and whether the checkout was dirty)."""
    tags = run.data.tags
    end = run.info.end_time or run.info.start_time
    return {
        "variant": variant,
        "seed": seed,
        "key": key,
        "data": data,
        "overrides": [*VARIANTS.get(variant, ()), *extra],
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith("val/")},
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "end_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end / 1000.0)),
        "commit": tags.get("git.commit", ""),
        "dirty": tags.get("git.dirty", ""),
        "cpu": cpu_model(),
    }


def append_ledger(path: Path, row: Mapping) -> None:
    """Append one row (one line, flushed and synced: a killed script loses at most the run
    it was recording, which the next call takes back from the MLflow store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
    tags["ablation_key"] = _key(extra, shards_id(shards))
    result = train(recipe, register=False, new_run=True, tags=tags)
    return dict(result.last_metrics)


def _schema_defaults() -> list[tuple[str, str]]:
    """Every recipe key with its default: a new key or a changed default (a model change
    such as ``model.update_bound``) changes what the same recipe file trains."""
    from pipelines.config import recipe_keys

    return [(k.key, repr(k.default)) for k in recipe_keys()]


def shards_id(shards: str) -> str:
    """What the shards hold, not where they are: a hash of their manifest's byte config and
    every shard's path and sha256 (``lstc prep`` writes the same bytes from the same inputs
    and config, so the same benchmark prepared on another machine or folder has the same id).
    Without a readable manifest (``--table-only`` on a machine without the shards), the path
    itself (a table of such a key finds no ledger rows made from real shards)."""
    import hashlib

    from data_prep.shards import ShardError, load_manifest

    try:
        manifest = load_manifest(shards)
    except ShardError:
        return str(shards)
    content = {
        "config_hash": manifest.get("config_hash"),
        "shards": sorted((s["path"], s["sha256"]) for s in manifest["shards"]),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return "shards:" + digest[:16]


def _key(extra: Sequence[str], data: str, recipe: Path = RECIPE) -> str:
    """Settings key of a study: the recipe file's text, the schema's defaults, the overrides
    and the data (:func:`shards_id`)."""
    import hashlib

    text = recipe.read_text()
    settings = (text, _schema_defaults(), sorted(extra), str(data))
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:12]


#: the paper's orderings: (claim, variant a, variant b, metric key, margin in points, whether
#: a difference equal to the margin holds)
CLAIMS: tuple[tuple[str, str, str, str, float, bool], ...] = (
    (
        "LSTC > spatial-only on motion-only expressions by >= 10 points",
        "lstc",
        "spatial_only",
        "val/motion/mean_iou",
        10.0,
        True,
    ),
    (
        "LSTC > temporal-only on appearance-only expressions",
        "lstc",
        "temporal_only",
        "val/appearance/mean_iou",
        0.0,
        False,
    ),
    ("LSTC >= the CSTM anchor on overall IoU", "lstc", "cstm", "val/overall_iou", 0.0, True),
)


def claims(results: Mapping[str, Sequence[Mapping[str, float]]]) -> str:
    """One line per claim: the difference of the seed means (points) and whether it clears the
    margin, or which side has no finished run."""
    lines = []
    for text, a, b, key, margin, inclusive in CLAIMS:
        va = [100.0 * r[key] for r in results.get(a, ()) if key in r]
        vb = [100.0 * r[key] for r in results.get(b, ()) if key in r]
        if not va or not vb:
            lines.append(f"- {text}: not measured ({a}: {len(va)} seeds, {b}: {len(vb)} seeds)")
            continue
        diff = math.fsum(va) / len(va) - math.fsum(vb) / len(vb)
        holds = diff >= margin if inclusive else diff > margin
        verdict = "holds" if holds else "does NOT hold"
        lines.append(
            f"- {text}: {diff:+.1f} points ({a} {len(va)} seeds, {b} {len(vb)} seeds): {verdict}"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture: the same seed can train
    to other figures on another CPU (floating-point kernels differ), so runs say where they ran."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def trained_on(rows: Sequence[Mapping], key: str, pairs: Sequence[tuple[str, int]]) -> str:
    """Where the table's runs trained, from their ledger rows: "CPU (n runs), ..." (a study
    can span machines, and the same seed trains to other figures on another CPU)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["key"] == key and (row["variant"], row["seed"]) in pairs:
            cpu = row.get("cpu") or "unknown CPU"
            counts[cpu] = counts.get(cpu, 0) + 1
    return ", ".join(f"{cpu} ({n} runs)" for cpu, n in counts.items()) or "no runs yet"


def write_doc(
    path: Path, body: str, command: str, *, key: str, data: str, ledger: Path, runs_on: str
) -> None:
    import torch

    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads in the driver, {platform.platform()}, "
        f"torch {torch.__version__}"
    )
    path.write_text(
        "# Ablations on refer-shapes\n\n"
        "Written by `benchmarks/ablation.py` (do not edit by hand). Values: mean ± sample "
        "standard deviation over seeds, in %, of the last epoch's validation on the `test` "
        "split; per-kind columns are the mean IoU of the expressions of that kind "
        "(`motion`: only motion tells the referred shape from an identical one; "
        "`appearance`: only colour/shape; `fast`: fast-moving objects).\n\n"
        f"{body}\n\n"
        f"Runs trained on: {runs_on}. Table written on: {machine}. "
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n"
        f"Command: `{command}`\n\n"
        f"Settings key: {key} (recipe text, schema defaults, overrides and the shards' content "
        f"{data}). The runs behind the table, with their run ids, commits and every "
        f"validation metric, are the rows of this key in {_shown(ledger)}.\n"
    )


def _run_in_subprocess(args: argparse.Namespace, variant: str, seed: int, log_dir: Path) -> int:
    """Train one (variant, seed) in a child of this script (its own local Ray instance)."""
    log = log_dir / f"{variant}-s{seed}.log"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--no-table", "--jobs", "1",
        "--shards", args.shards, "--tracking-uri", args.tracking_uri,
        "--variants", variant, "--seeds", str(seed), "--", *args.overrides,
    ]  # fmt: skip
    with log.open("w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", default=str(REPO / "data" / "refer_shapes" / "shards"))
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'outputs' / 'ablation.db'}")
    p.add_argument("--out", default=str(REPO / "docs" / "ablation.md"))
    p.add_argument(
        "--ledger", default=str(LEDGER),
        help="JSON-lines record of the finished runs, committed with the table (default "
        "docs/ablation_runs.jsonl); the table is computed from it",
    )  # fmt: skip
    p.add_argument(
        "--jobs", type=int, default=1,
        help="(variant, seed) runs trained at once, each in a subprocess with its own local "
        "Ray instance (default 1: one after another in this process)",
    )  # fmt: skip
    p.add_argument(
        "--table-only", action="store_true",
        help="write the table from the finished runs; train nothing",
    )  # fmt: skip
    p.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "overrides", nargs="*",
        help="recipe key=value overrides for every variant (after --seeds, separate them with --)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    data = shards_id(args.shards)
    key = _key(args.overrides, data)
    ledger = Path(args.ledger)
    # a --no-table child only trains: its parent owns the ledger (one writer)
    rows = [] if args.no_table else read_ledger(ledger)

    def done(variant: str, seed: int) -> dict | None:
        """The finished run's metrics: from the ledger, else from the MLflow store (and then
        recorded in the ledger)."""
        got = ledger_metrics(rows, variant, seed, key)
        if got is not None:
            return got
        run = _finished_run(client, exp_id, variant, seed, key)
        if run is None:
            return None
        if args.no_table:
            return dict(run.data.metrics)
        row = ledger_row(run, variant, seed, key, data, args.overrides)
        append_ledger(ledger, row)
        rows.append(row)
        return row["metrics"]

    # seed-major: an interrupted study has every variant at its first seeds
    pairs = [(v, s) for s in args.seeds for v in args.variants]
    pending = [(v, s) for v, s in pairs if done(v, s) is None]
    print(f"{len(pairs) - len(pending)} of {len(pairs)} runs finished already", flush=True)
    failed: list[tuple[str, int]] = []
    if pending and not args.table_only:
        if args.jobs == 1:
            for n, (variant, seed) in enumerate(pending, 1):
                print(f"== [{n}/{len(pending)}] {variant} seed {seed}", flush=True)
                run_variant(args.shards, variant, seed, args.overrides, args.tracking_uri)
                done(variant, seed)
        else:
            log_dir = REPO / "outputs" / "ablation_logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            print(f"training {len(pending)} runs, {args.jobs} at a time; logs in {log_dir}")
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = {
                    pool.submit(_run_in_subprocess, args, v, s, log_dir): (v, s) for v, s in pending
                }
                for n, fut in enumerate(as_completed(futures), 1):
                    (variant, seed), rc = futures[fut], fut.result()
                    if rc != 0:
                        failed.append((variant, seed))
                    state = f"FAILED (exit {rc}; {variant}-s{seed}.log)"
                    if rc == 0:
                        got = done(variant, seed) or {}
                        state = "done: " + ", ".join(
                            f"{h} {100.0 * got[k]:.1f}" for h, k in COLUMNS if k in got
                        )
                    print(f"== [{n}/{len(pending)}] {variant} seed {seed}: {state}", flush=True)
    if args.no_table:
        return 1 if failed else 0
    results: dict[str, list[dict]] = {}
    missing = []
    for variant in args.variants:
        for seed in args.seeds:
            got = done(variant, seed)
            if got is None:
                missing.append(f"({variant}, seed {seed})")
            else:
                results.setdefault(variant, []).append(got)
    body = table(results) + "\n\nThe paper's orderings (seed means):\n\n" + claims(results)
    if missing:
        how = "without --table-only " if args.table_only else ""
        body += f"\n\nNot finished yet (rerun the command {how}to train them): " + ", ".join(
            missing
        )
    print(body)
    command = " ".join(
        ["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)]
    )
    runs_on = trained_on(rows, key, pairs)
    write_doc(Path(args.out), body, command, key=key, data=data, ledger=ledger, runs_on=runs_on)
    print(f"table written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
