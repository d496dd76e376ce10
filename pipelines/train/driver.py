"""The training driver: ``lstc train --config configs/<recipe>.yaml [key=value ...]``.

Runs a Ray Train V2 ``TorchTrainer`` (worker function in :mod:`pipelines.train.loop`) and owns
the run's bookkeeping:

* **Run directory** ``<train.storage_path>/<train.run_name>/`` is Ray Train's own experiment
  folder (its checkpoints ``checkpoint_epoch_NNNN`` and state live there). Beside them the
  driver keeps ``mlflow_run_id`` (so a rerun re-attaches to the same MLflow run),
  ``events.jsonl`` (rank 0's journal of attempts/epochs), ``best/`` and ``last/`` (copies of the
  best and last checkpoints, written atomically) and ``summary.json``.
* **Resume**: rerunning with the same ``run_name``/``storage_path`` makes Ray Train restore its
  controller state and hand the latest checkpoint to ``ray.train.get_checkpoint()``; a worker
  failure inside a run is retried ``train.max_failures`` times from the latest checkpoint.
* **MLflow**: the run is created (or re-attached) here, in the driver, with the flattened
  recipe as params, the resolved recipe as artifact and tags (git commit, dataset manifest
  hash, recipe hash, Ray cluster resources, number of workers); rank 0 logs step/epoch metrics,
  overlays and curves into it; the driver registers the best checkpoint at the end
  (``pipelines.mlops.registry.register_checkpoint``). Tracking failures never stop training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.config import Recipe

RUN_ID_FILE = "mlflow_run_id"
SUMMARY_FILE = "summary.json"


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path
    mlflow_run_id: str | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    registered: tuple[str, str] | None = None  # (version, alias)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "run_dir": str(self.run_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best_metrics": self.best_metrics,
            "last_metrics": self.last_metrics,
            "registered": list(self.registered) if self.registered else None,
        }


# ------------------------------------------------------------------------------- helpers


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.train.storage_path).expanduser().resolve() / recipe.train.run_name


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _copy_dir_atomic(src: Path, dst: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    from pipelines.checkpoint import replace_dir

    replace_dir(tmp, dst)
    return dst


def manifest_hash(root: str) -> str | None:
    """Hash of the dataset manifest (identifies the exact shards trained on)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _steps_per_epoch(recipe: Recipe) -> tuple[int, int]:
    from pipelines.data import count_samples

    n = count_samples(recipe.data.root, recipe.data.train_split)
    per_worker = n // recipe.train.num_workers
    batches = per_worker // recipe.data.batch_size
    return n, max(1, batches // recipe.optim.accumulation)


def _selection_key(recipe: Recipe) -> str:
    from pipelines.mlops.tracking import metric_key

    return f"val/{metric_key(recipe.registry.selection_metric)}"


def _pick_best(recipe: Recipe, candidates: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict]:
    import math

    key = _selection_key(recipe)
    sign = 1.0 if recipe.registry.mode == "max" else -1.0

    def score(item: tuple[Any, dict[str, Any]]) -> tuple[float, int]:
        v = item[1].get(key)
        v = float(v) if v is not None and math.isfinite(float(v)) else -math.inf
        return (sign * v if v != -math.inf else -math.inf, int(item[1].get("epoch", 0)))

    return max(candidates, key=score)


def _mlflow_run_id(run_dir: Path) -> str | None:
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        return text or None
    return None


def _cluster_tags() -> dict[str, str]:
    import ray

    try:
        res = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
    except Exception:  # noqa: BLE001
        return {}
    return {"ray.cluster_resources": json.dumps(res, sort_keys=True), "ray.nodes": str(nodes)}


# --------------------------------------------------------------------------------- driver


def train(recipe: Recipe, *, register: bool | None = None) -> TrainResult:
    """Train ``recipe`` on Ray (resuming a run of the same name), then register the best model."""
    import ray.data
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from pipelines.data import build_train_dataset, build_val_clips
    from pipelines.mlops.tracking import Tracker, resolve_tracking_uri
    from pipelines.ray_setup import init_ray
    from pipelines.train.loop import append_event, train_loop_per_worker

    tr = recipe.train
    init_ray(tr.ray_address, min_cpus=tr.num_workers * tr.cpus_per_worker + 2)
    run_dir = run_dir_of(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(recipe.tracking.uri)
    n_train, steps_per_epoch = _steps_per_epoch(recipe)
    if n_train < tr.num_workers * recipe.data.batch_size:
        raise ValueError(
            f"{recipe.data.root} split {recipe.data.train_split!r} has {n_train} training samples:"
            f" fewer than num_workers x batch_size = {tr.num_workers * recipe.data.batch_size}"
        )

    previous_id = _mlflow_run_id(run_dir)
    tags = {
        "lstc.recipe_hash": recipe.hash(),
        "lstc.recipe_source": recipe.source,
        "lstc.run_name": tr.run_name,
        "lstc.run_dir": str(run_dir),
        "lstc.num_workers": str(tr.num_workers),
        "lstc.use_gpu": str(tr.use_gpu),
        "lstc.train_samples": str(n_train),
        "dataset.root": str(Path(recipe.data.root).resolve()),
        "dataset.manifest_hash": manifest_hash(recipe.data.root) or "none",
        **_cluster_tags(),
    }
    tracker = Tracker.start(
        recipe, run_id=previous_id, tags=tags, tracking_uri=tracking_uri, system_metrics=False
    )
    run_id = tracker.run_id
    if run_id and run_id != previous_id:
        _write_text_atomic(run_dir / RUN_ID_FILE, run_id + "\n")
    tracker.log_params(recipe.flatten())
    tracker.log_dict(recipe.to_dict(), "config/recipe.yaml")
    append_event(run_dir, "driver_start", resumed=previous_id is not None, mlflow_run_id=run_id)

    fail_at = tr.fail_at_epoch
    if fail_at is None and os.environ.get("LSTC_FAIL_AT_EPOCH"):
        fail_at = int(os.environ["LSTC_FAIL_AT_EPOCH"])
    loop_config = {
        "recipe": recipe.to_dict(),
        "run_dir": str(run_dir),
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "steps_per_epoch": steps_per_epoch,
        "fail_at_epoch": fail_at,
    }
    # Datasets snapshot the DataContext when created: build them with deterministic block order
    # (and no progress bars in worker logs), then give the caller's context back.
    data_ctx = ray.data.DataContext.get_current()
    saved = (data_ctx.enable_progress_bars, data_ctx.execution_options.preserve_order)
    data_ctx.enable_progress_bars = False
    data_ctx.execution_options.preserve_order = True
    try:
        train_ds = build_train_dataset(recipe)
        if recipe.data.cache_train:
            train_ds = train_ds.materialize()
        val_ds = build_val_clips(recipe)
    finally:
        data_ctx.enable_progress_bars, data_ctx.execution_options.preserve_order = saved
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tr.num_workers,
            use_gpu=tr.use_gpu,
            resources_per_worker={"CPU": tr.cpus_per_worker, **({"GPU": 1} if tr.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=tr.run_name,
            storage_path=str(run_dir.parent),
            failure_config=ray.train.FailureConfig(max_failures=tr.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=tr.log_level),
        ),
        datasets={"train": train_ds, "val": val_ds},
        # Only "train" is split (equal shards); every worker reads the val clip rows and keeps
        # its own (pipelines.data.iter_val_samples). preserve_order makes the split and the
        # order of rows deterministic, hence a resumed epoch sees the same data.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    try:
        result = trainer.fit()
    except BaseException:
        append_event(run_dir, "driver_failed")
        tracker.end("FAILED")
        raise
    out = _finish(recipe, result, run_dir, run_id, tracker, register)
    tracker.end("FINISHED")
    return out


def _finish(
    recipe: Recipe,
    result: Any,
    run_dir: Path,
    run_id: str | None,
    tracker: Any,
    register: bool | None,
) -> TrainResult:
    from pipelines.checkpoint import load_metrics

    candidates = [(c, dict(m)) for c, m in (result.best_checkpoints or [])]
    if not candidates and result.checkpoint is not None:
        candidates = [(result.checkpoint, load_metrics(result.checkpoint.path))]
    out = TrainResult(recipe.train.run_name, run_dir, run_id, None, None)
    if candidates:
        last_ckpt, last_m = max(candidates, key=lambda cm: int(cm[1].get("epoch", 0)))
        best_ckpt, best_m = _pick_best(recipe, candidates)
        out.last_checkpoint = _copy_dir_atomic(Path(last_ckpt.path), run_dir / "last")
        out.best_checkpoint = _copy_dir_atomic(Path(best_ckpt.path), run_dir / "best")
        out.best_metrics, out.last_metrics = best_m, last_m
        tracker.set_tags(
            {
                "lstc.best_epoch": str(best_m.get("epoch")),
                "lstc.best_checkpoint": str(out.best_checkpoint),
                "lstc.last_checkpoint": str(out.last_checkpoint),
            }
        )
        tracker.log_metrics(
            {f"best/{k.split('/', 1)[1]}": v for k, v in best_m.items() if k.startswith("val/")},
            step=int(best_m.get("epoch", 0)),
        )
    do_register = recipe.registry.register if register is None else register
    if do_register and out.best_checkpoint is not None and run_id:
        out.registered = _register(recipe, out, run_id)
    _write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(out.to_dict(), indent=2, default=str))
    return out


def _register(recipe: Recipe, out: TrainResult, run_id: str) -> tuple[str, str] | None:
    """Register the best checkpoint; a registry failure warns (the checkpoint stays on disk)."""
    try:
        from pipelines.mlops.registry import register_checkpoint

        version, alias = register_checkpoint(
            out.best_checkpoint, recipe=recipe, run_id=run_id, metrics=out.best_metrics
        )
    except Exception as exc:  # noqa: BLE001 - the trained model is safe in out.best_checkpoint
        warnings.warn(
            f"registering {out.best_checkpoint} in MLflow failed ({type(exc).__name__}: {exc}); "
            f"the checkpoint is kept on disk; register it later with the registry module",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return str(version), str(alias)


__all__ = ["RUN_ID_FILE", "TrainResult", "run_dir_of", "train"]
