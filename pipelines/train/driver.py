"""The training driver: ``lstc train --config configs/<recipe>.yaml [key=value ...]``.

Runs a Ray Train V2 ``TorchTrainer`` (worker function in :mod:`pipelines.train.loop`) and owns
the run's bookkeeping:

* **Run directory** ``<train.storage_path>/<train.run_name>/`` is Ray Train's own experiment
  folder (its checkpoints ``checkpoint_epoch_NNNN`` and state live there). Beside them the
  driver keeps ``recipe.yaml`` (the resolved recipe, which a rerun must keep),
  ``mlflow_run_id`` (so a rerun re-attaches to the same MLflow run), ``events.jsonl`` (rank
  0's journal of attempts/epochs; ``events/`` on object stores, see
  :func:`pipelines.train.loop.append_event`), ``best/`` and ``last/`` (copies of the best and
  last checkpoints, each ending with its ``_COMPLETE`` marker) and ``summary.json``.
* **Storage**: ``train.storage_path`` is a local folder, a shared mount or a URI
  (``s3://bucket/runs``, ``gs://...``, ``file://...``; endpoints and credentials as in
  :mod:`data_prep.storage`). Ray Train gets ``RunConfig(storage_path=<path on the
  filesystem>, storage_filesystem=<pyarrow filesystem>)`` resolved from it, and every file
  the driver and rank 0 write goes through :mod:`data_prep.storage` on that filesystem. Rank
  0 writes each checkpoint into a local temporary folder and reports it; Ray uploads it and
  records it (the driver never reads a worker's local path, which may be on another node);
  the ``best/`` and ``last/`` copies are made from ``Checkpoint.path`` on
  ``Checkpoint.filesystem``. On a cluster of several nodes the storage must be shared (an
  object store or a mount every node sees), and a file tracking store is refused before
  anything starts (:func:`pipelines.mlops.tracking.check_cluster_tracking`).
* **Resume**: rerunning with the same ``run_name``/``storage_path`` makes Ray Train restore its
  controller state and hand the latest checkpoint to ``ray.train.get_checkpoint()``; a worker
  failure inside a run is retried ``train.max_failures`` times from the latest checkpoint.
  A rerun whose recipe changed (beyond :data:`pipelines.train.resume.RESUMABLE_KEYS`) stops
  with :class:`pipelines.train.resume.RecipeChangedError` before anything starts;
  ``new_run=True`` (``lstc train --new-run``) moves the old run directory aside and starts
  afresh. A resumed run says so on the console (epoch, checkpoint, MLflow run).
* **Callbacks**: ``train(recipe, callbacks=[...])`` hands worker callbacks
  (:mod:`pipelines.train.callbacks`: notifications, tests' fault injection) to every worker.
* **MLflow**: the run is created (or re-attached) here, in the driver, with the flattened
  recipe as params, the resolved recipe as artifact, the train/validation splits as dataset
  inputs (``pipelines.mlops.tracking.shard_dataset``) and tags (git commit,
  ``dataset.manifest_sha256``, ``dataset.config_hash``, recipe hash, Ray cluster resources,
  number of workers); rank 0 logs step/epoch metrics (keys and step axes: INTERFACES.md),
  overlays and curves into it; the driver registers the best checkpoint at the end
  (``pipelines.mlops.registry.register_checkpoint``). Tracking failures never stop training.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.ray_setup import SignalStop

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.config import Recipe

RUN_ID_FILE = "mlflow_run_id"
_DATA_CONTEXT_LOCK = threading.Lock()
SUMMARY_FILE = "summary.json"


@dataclass
class TrainResult:
    """What a finished run left: locations are ``Path`` for local storage, URIs otherwise."""

    run_name: str
    run_dir: Path | str
    mlflow_run_id: str | None
    best_checkpoint: Path | str | None
    last_checkpoint: Path | str | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    registered: tuple[str, str] | None = None  # (version, alias)
    #: a callback's ``should_stop`` ended training before ``train.epochs`` (sweep pruning)
    stopped_early: bool = False

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
            "stopped_early": self.stopped_early,
        }


# ------------------------------------------------------------------------------- helpers


def run_dir_of(recipe: Recipe) -> Path | str:
    """``<train.storage_path>/<train.run_name>``: a resolved ``Path`` for local storage, the
    URI (query kept) for an object store."""
    from pipelines.train.resume import child, run_location

    return child(run_location(recipe.train.storage_path), recipe.train.run_name)


def ray_storage(recipe: Recipe) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` of ``train.storage_path``: what Ray Train's
    ``RunConfig(storage_filesystem=..., storage_path=...)`` takes (a path without scheme when
    the filesystem is given)."""
    from data_prep.storage import resolve

    fs, path = resolve(recipe.train.storage_path)
    return fs, path.rstrip("/") or "/"


def _without_credentials(value: Any) -> Any:
    """``value`` (nested dicts/lists) with every URI string stripped of credentials, for what
    goes to MLflow (``pipelines.checkpoint.describe``)."""
    from data_prep.storage import is_uri
    from pipelines.checkpoint import describe

    if isinstance(value, dict):
        return {k: _without_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_credentials(v) for v in value]
    return describe(value) if isinstance(value, str) and is_uri(value) else value


def _best_effort(what: str, fn: Any) -> None:
    """Run ``fn``; a failure (e.g. the object store is unreachable) warns instead of raising,
    so that the error being reported is not replaced by a bookkeeping one."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"{what} failed ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)


def _dataset_inputs(recipe: Recipe) -> list[tuple[Any, str]]:
    """The MLflow dataset inputs of a training run: the train split (context ``training``) and
    the validation split (``validation``) of ``data.root``; none (with a warning) when the
    manifest cannot be read."""
    from pipelines.mlops.tracking import shard_dataset

    d = recipe.data
    try:
        return [
            (shard_dataset(d.root, d.train_split), "training"),
            (shard_dataset(d.root, d.val_split), "validation"),
        ]
    except (OSError, KeyError, ValueError) as exc:
        warnings.warn(f"dataset lineage not logged: {d.root}: {exc}", RuntimeWarning, stacklevel=3)
        return []


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


def _mlflow_run_id(run_dir: Path | str) -> str | None:
    from pipelines.train.resume import child, read_text

    text = read_text(child(run_dir, RUN_ID_FILE))
    return (text or "").strip() or None


def _cluster_tags() -> dict[str, str]:
    import ray

    try:
        res = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
    except Exception:  # noqa: BLE001
        return {}
    return {"ray.cluster_resources": json.dumps(res, sort_keys=True), "ray.nodes": str(nodes)}


# --------------------------------------------------------------------------------- driver


def train(
    recipe: Recipe,
    *,
    register: bool | None = None,
    callbacks: Sequence[Any] = (),
    new_run: bool = False,
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``recipe`` on Ray (resuming a run of the same name), then register the best model.

    A rerun of an existing run name must keep its recipe (up to
    :data:`pipelines.train.resume.RESUMABLE_KEYS`), else :class:`RecipeChangedError` is raised
    before Ray, MLflow or any file is touched. ``new_run=True`` starts afresh under the same
    name: the old run directory is renamed to ``<name>.prev-<UTC time>`` and a new MLflow run
    is created.

    ``callbacks``: worker callbacks (:mod:`pipelines.train.callbacks`), called on every rank
    after each optimizer step / epoch; they must pickle (they travel to the workers). A
    callback's ``should_stop`` may end training early (``TrainResult.stopped_early``).

    ``tags``: extra MLflow tags of the run (e.g. a sweep's ``mlflow.parentRunId``).

    SIGTERM / SIGINT (main thread, once Ray is up) stop the run in order: the Ray Train run is
    aborted, the MLflow run marked KILLED, and :class:`pipelines.train.stopping.TrainingStopped`
    raised with where the run stands (:mod:`pipelines.train.stopping`).
    """
    import time

    from pipelines.train.stopping import stopped_error

    started = time.time()
    stop = SignalStop()
    try:
        return _train(
            recipe, stop, register=register, callbacks=callbacks, new_run=new_run, tags=tags
        )
    except BaseException as exc:
        if stop.signum is None:
            raise
        stop.run_on_stop()  # the driver_stopped event, MLflow run KILLED
        raise stopped_error(
            stop.signum,
            recipe.train.run_name,
            run_dir_of(recipe),
            started,
            forced=stop.grace_expired,
        ) from exc
    finally:
        stop.restore()


def _train(
    recipe: Recipe,
    stop: SignalStop,
    *,
    register: bool | None,
    callbacks: Sequence[Any],
    new_run: bool,
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """The body of :func:`train`; ``stop`` handles signals from the moment Ray is up."""
    import ray.cloudpickle
    import ray.data
    import ray.train
    from ray.data import ExecutionOptions

    from data_prep.storage import write_text
    from pipelines.checkpoint import describe
    from pipelines.data import build_train_dataset, build_val_clips
    from pipelines.mlops.tracking import (
        Tracker,
        check_cluster_tracking,
        dataset_tags,
        resolve_tracking_uri,
    )
    from pipelines.ray_setup import alive_nodes, init_ray
    from pipelines.train.loop import append_event, train_loop_per_worker
    from pipelines.train.resume import (
        check_rerun,
        child,
        describe_changes,
        move_aside,
        resume_message,
        write_recipe,
    )
    from pipelines.train.stopping import trainer_class

    tr = recipe.train
    callbacks = list(callbacks)
    try:
        ray.cloudpickle.dumps(callbacks)
    except Exception as exc:
        raise TypeError(
            f"train callbacks must pickle to reach the workers ({type(exc).__name__}: {exc}); "
            "define them in an importable module or register theirs with "
            "ray.cloudpickle.register_pickle_by_value"
        ) from exc
    run_dir = run_dir_of(recipe)
    # a rerun with a changed recipe stops here (RecipeChangedError), before anything starts
    previous_dir = move_aside(run_dir) if new_run else None
    point = None if new_run else check_rerun(recipe, run_dir)
    init_ray(tr.ray_address, min_cpus=tr.num_workers * tr.cpus_per_worker + 2)
    stop.install()  # after ray.init, which installs Ray's own SIGTERM handler
    tracking_uri = resolve_tracking_uri(recipe.tracking.uri)
    # on a multi-node cluster a SQLite/file store stops the run here, before anything is written
    check_cluster_tracking(tracking_uri, alive_nodes())
    if isinstance(run_dir, Path):
        run_dir.mkdir(parents=True, exist_ok=True)
    n_train, steps_per_epoch = _steps_per_epoch(recipe)
    if n_train < tr.num_workers * recipe.data.batch_size:
        raise ValueError(
            f"{recipe.data.root} split {recipe.data.train_split!r} has {n_train} training samples:"
            f" fewer than num_workers x batch_size = {tr.num_workers * recipe.data.batch_size}"
        )

    write_recipe(run_dir, recipe)  # what the next rerun is compared with
    previous_id = _mlflow_run_id(run_dir)
    changed = point.changed if point is not None else {}
    extra_tags = dict(tags or {})
    tags = {
        "lstc.recipe_hash": recipe.hash(),
        "lstc.recipe_source": recipe.source,
        "lstc.run_name": tr.run_name,
        "lstc.run_dir": describe(run_dir),
        "lstc.num_workers": str(tr.num_workers),
        "lstc.use_gpu": str(tr.use_gpu),
        "lstc.train_samples": str(n_train),
        **dataset_tags(recipe.data.root),
        **_cluster_tags(),
        **extra_tags,
    }
    if changed:
        tags["lstc.resume_changes"] = describe_changes(changed)
    if previous_dir is not None:
        tags["lstc.previous_run_dir"] = describe(previous_dir)
        tags["lstc.previous_mlflow_run_id"] = _mlflow_run_id(previous_dir) or "none"
    tracker = Tracker.start(
        recipe, run_id=previous_id, tags=tags, tracking_uri=tracking_uri, system_metrics=False
    )
    run_id = tracker.run_id
    stop.on_stop(lambda: tracker.end("KILLED"))
    if run_id and run_id != previous_id:
        write_text(child(run_dir, RUN_ID_FILE), run_id + "\n")
    # MLflow params are immutable: keys changed on resume are recorded in lstc.resume_changes;
    # URIs are logged without credentials
    tracker.log_params(
        _without_credentials({k: v for k, v in recipe.flatten().items() if k not in changed})
    )
    tracker.log_dict(_without_credentials(recipe.to_dict()), "config/recipe.yaml")
    tracker.log_inputs(_dataset_inputs(recipe))
    append_event(
        run_dir,
        "driver_start",
        resumed=point is not None,
        mlflow_run_id=run_id,
        resume_epoch=point.epoch if point is not None else None,
        changed={k: list(v) for k, v in changed.items()},
        previous_run_dir=describe(previous_dir) if previous_dir is not None else None,
    )
    stop.on_stop(
        lambda: _best_effort(
            "recording the driver_stopped event",
            lambda: append_event(
                run_dir,
                "driver_stopped",
                signal=stop.signal_name,
                aborted_ray_train=stop.graceful_started and not stop.grace_expired,
            ),
        )
    )
    if point is not None:
        print(f"lstc train: {resume_message(tr.run_name, point, run_id)}", flush=True)
        if changed:
            print(f"lstc train: changed on resume: {describe_changes(changed)}", flush=True)

    loop_config = {
        "recipe": recipe.to_dict(),
        "run_dir": str(run_dir),
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "steps_per_epoch": steps_per_epoch,
        "callbacks": callbacks,
    }
    # Datasets snapshot the DataContext when created: build them with deterministic block order
    # (and no progress bars in worker logs), then give the caller's context back.
    # The context is process-wide: runs started from threads (sweeps) take turns.
    with _DATA_CONTEXT_LOCK:
        data_ctx = ray.data.DataContext.get_current()
        saved = (data_ctx.enable_progress_bars, data_ctx.execution_options.preserve_order)
        data_ctx.enable_progress_bars = False
        data_ctx.execution_options.preserve_order = True
        try:
            train_ds = build_train_dataset(recipe)
            val_ds = build_val_clips(recipe)
        finally:
            data_ctx.enable_progress_bars, data_ctx.execution_options.preserve_order = saved
    if recipe.data.cache_train:
        train_ds = train_ds.materialize()
    storage_fs, storage_path = ray_storage(recipe)
    trainer = trainer_class(stop)(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tr.num_workers,
            use_gpu=tr.use_gpu,
            resources_per_worker={"CPU": tr.cpus_per_worker, **({"GPU": 1} if tr.use_gpu else {})},
            placement_strategy=tr.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=tr.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=tr.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=tr.log_level),
        ),
        datasets={"train": train_ds, "val": val_ds},
        # Only "train" is split (equal shards); every worker reads the val clip rows and keeps
        # its own (pipelines.data.select_val_rows). preserve_order makes the split and the
        # order of rows deterministic, hence a resumed epoch sees the same data.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    try:
        result = trainer.fit()
        out = _finish(recipe, result, run_dir, run_id, tracker, register)
    except BaseException:
        if stop.signum is None:  # else train() reports the stop
            _best_effort(
                "recording the driver_failed event", lambda: append_event(run_dir, "driver_failed")
            )
            tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return out


def _finish(
    recipe: Recipe,
    result: Any,
    run_dir: Path | str,
    run_id: str | None,
    tracker: Any,
    register: bool | None,
) -> TrainResult:
    from data_prep.storage import write_json
    from pipelines.checkpoint import copy_checkpoint, describe, load_metrics
    from pipelines.train.resume import child

    def where(ckpt: Any) -> tuple[Any, str]:
        # Ray's checkpoint on the storage filesystem (never a worker's local path)
        return ckpt.filesystem, ckpt.path

    candidates = [(c, dict(m)) for c, m in (result.best_checkpoints or [])]
    if not candidates and result.checkpoint is not None:
        candidates = [(result.checkpoint, load_metrics(where(result.checkpoint)))]
    out = TrainResult(recipe.train.run_name, run_dir, run_id, None, None)
    if candidates:
        last_ckpt, last_m = max(candidates, key=lambda cm: int(cm[1].get("epoch", 0)))
        best_ckpt, best_m = _pick_best(recipe, candidates)
        out.last_checkpoint, out.best_checkpoint = child(run_dir, "last"), child(run_dir, "best")
        copy_checkpoint(where(last_ckpt), out.last_checkpoint)
        copy_checkpoint(where(best_ckpt), out.best_checkpoint)
        out.best_metrics, out.last_metrics = best_m, last_m
        out.stopped_early = int(last_m.get("epoch") or 0) < recipe.train.epochs
        tracker.set_tags(
            {
                "lstc.best_epoch": str(best_m.get("epoch")),
                "lstc.best_checkpoint": describe(out.best_checkpoint),
                "lstc.last_checkpoint": describe(out.last_checkpoint),
            }
        )
        tracker.log_metrics(
            {f"best/{k.split('/', 1)[1]}": v for k, v in best_m.items() if k.startswith("val/")},
            step=int(best_m.get("epoch") or 1),
            axis="summary",
        )
    do_register = recipe.registry.register if register is None else register
    if do_register and out.best_checkpoint is not None and run_id:
        out.registered = _register(recipe, out, run_id)
    write_json(child(run_dir, SUMMARY_FILE), out.to_dict(), indent=2, sort_keys=False, default=str)
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


__all__ = ["RUN_ID_FILE", "TrainResult", "ray_storage", "run_dir_of", "train"]
