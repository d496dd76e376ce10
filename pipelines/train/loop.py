"""The Ray Train worker function: DDP training, validation, checkpoints, rank-0 tracking.

``train_loop_per_worker(config)`` runs on every worker of the ``TorchTrainer`` (see
``pipelines/train.py`` for the driver). Per epoch ``e`` (0-based; logs and checkpoints say
``e + 1``):

1. reseed python/numpy/torch from ``(seed, e, rank)`` — so a resumed epoch draws exactly what
   the uninterrupted one drew; augmentation draws come from ``(seed, e, sample key)``
   (``pipelines.data``) and the local shuffle from ``(seed, e)``;
2. train on ``get_dataset_shard("train").iter_torch_batches(...)`` (collate + joint
   augmentation in Ray Data's prefetch threads; clips stay uint8 until the device, where they
   are scaled to [0, 1]), optionally compiled (``train.compile``) and channels-last
   (``train.channels_last``; :mod:`pipelines.train.speed`), gradient accumulation with ``no_sync``,
   bf16 autocast on CUDA (fp32 on CPU; bf16 needs no loss scaling), gradient clipping,
   per-step LR schedule; worker callbacks' ``on_step_end`` after each optimizer step;
3. validate: rank-0 BatchNorm buffers are broadcast, each rank evaluates its own clips of the
   held-out split with ``pipelines.inference.evaluate`` on the bare module, the
   ``ReferringMetrics`` states are ``all_gather``-ed and merged (equal to one process);
4. rank 0 writes a checkpoint (with its ``_COMPLETE`` marker, ``pipelines.checkpoint``) into a
   local temporary folder and every rank calls ``ray.train.report`` (rank 0 with
   ``Checkpoint.from_directory(tmp)``): Ray uploads it to the run's storage (a local folder,
   a shared mount or an object store, whatever node this worker is on) and records it in
   its checkpoint manager once the upload is done - no other process ever reads the
   worker's local copy. Rank 0 logs metrics, an overlay grid of fixed validation samples and
   the metric curves to MLflow;
5. worker callbacks' ``on_epoch_end`` (:mod:`pipelines.train.callbacks`; the tests inject
   worker faults through them), then their ``should_stop`` on rank 0, broadcast to every rank:
   a stop ends the loop after this epoch (event ``stopped_early``; sweeps prune this way).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

EVENTS_FILE = "events.jsonl"
#: on object stores: one object per event under this prefix of the run folder
EVENTS_DIR = "events"
#: keys of the epoch metrics that are bookkeeping, not MLflow metrics (``epoch`` is the step)
BOOKKEEPING_KEYS = frozenset({"epoch", "global_step"})


def append_event(run_dir: str | os.PathLike | None, event: str, **fields: Any) -> None:
    """Record one event of the run's journal (rank 0 and the driver write it).

    Local run folder: one JSON line appended to ``<run_dir>/events.jsonl`` (an ``O_APPEND``
    write of one line). Object store (``s3://...``): objects cannot be appended to, and a
    read + rewrite of one journal object would cost O(events) per event and lose events when
    the driver and rank 0 write at the same moment (the last PUT wins); so each event is its
    own object ``<run_dir>/events/<time ns>-<pid>-<random>.json`` - one PUT, atomic, no
    lost update - and :func:`read_events` lists them in name (= time) order.
    """
    if not run_dir:
        return
    import secrets

    from data_prep.storage import write_json
    from pipelines.train.resume import child, run_location

    now = time.time_ns()
    rec = {"event": event, "time": now / 1e9, **fields}
    loc = run_location(run_dir)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
        with open(loc / EVENTS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        return
    name = f"{now:020d}-{os.getpid()}-{secrets.token_hex(3)}.json"
    write_json(child(loc, EVENTS_DIR, name), rec)


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's journal in order (``[]`` when there is none); see :func:`append_event`."""
    from data_prep.storage import list_files, read_bytes
    from pipelines.train.resume import child, run_location

    loc = run_location(run_dir)
    if isinstance(loc, Path):
        path = loc / EVENTS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    folder = child(loc, EVENTS_DIR)
    names = [n for n in list_files(folder) if n.endswith(".json") and "/" not in n]
    return [json.loads(read_bytes(child(folder, n))) for n in sorted(names)]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _make_collate_fn(recipe: Any, epoch: int, uint8: bool = True) -> Any:
    from ray.data.collate_fn import NumpyBatchCollateFn

    from pipelines.data import collate, collate_kwargs, epoch_seed, rows_from_batch

    kw = collate_kwargs(recipe)
    seed = epoch_seed(recipe.train.seed, epoch)

    class _Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return collate(rows_from_batch(batch), train=True, rng=seed, uint8=uint8, **kw)

    return _Collate()


def _train_batches(shard: Any, recipe: Any, epoch: int, *, uint8: bool = True) -> Any:
    """The epoch's training batches: local shuffle seeded by (seed, epoch), collate with
    augmentation in Ray Data's prefetch threads, last partial batch dropped (equal steps);
    uint8 clips (``uint8=False``: the float collate of earlier versions, for benchmarks)."""
    from pipelines.data import epoch_seed

    es = epoch_seed(recipe.train.seed, epoch)
    return shard.iter_torch_batches(
        batch_size=recipe.data.batch_size,
        collate_fn=_make_collate_fn(recipe, epoch, uint8),
        drop_last=True,
        local_shuffle_buffer_size=recipe.data.shuffle_buffer or None,
        local_shuffle_seed=es if recipe.data.shuffle_buffer else None,
        prefetch_batches=recipe.data.prefetch_batches,
    )


def _loader_pass(shard: Any, recipe: Any, epoch: int, world: int, device: Any) -> float:
    """Samples/s of one loader-only pass over this epoch's data (all workers together)."""
    t0 = time.perf_counter()
    n = 0
    for batch in _train_batches(shard, recipe, epoch):
        n += len(batch["text"])
    dt = time.perf_counter() - t0
    total = _all_mean(float(n), 1.0, device) * world
    return total / max(_all_max(dt, device), 1e-9)


def _all_max(value: float, device: Any) -> float:
    import torch

    dist = _dist()
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_mean(value: float, count: float, device: Any) -> float:
    """Global mean of per-rank sums (``value`` = local sum, ``count`` = local count)."""
    import torch

    dist = _dist()
    t = torch.tensor([value, count], dtype=torch.float64, device=device)
    if dist is not None:
        dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def _broadcast_buffers(module: Any) -> None:
    dist = _dist()
    if dist is None:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def validate(
    core: Any,
    recipe: Any,
    own_rows: Any,
    *,
    world: int,
    rank: int,
    device: Any,
    keep: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Distributed validation on this rank's clip rows (``pipelines.data.select_val_rows``);
    metric states are gathered and merged on every rank (equal to a single process). Masks
    follow the recipe's ``eval.threshold`` / ``eval.threshold_rule``; the result has every
    metric overall and per label (``<label>/<metric>``, :func:`pipelines.inference.summarize`:
    the labels travel in the states, so they are reduced across ranks like the totals)."""
    from lstc.metrics import ReferringMetrics
    from pipelines.data import decode_val_rows, eval_batches
    from pipelines.inference import evaluate, summarize

    samples: Iterator[dict[str, Any]] = decode_val_rows(own_rows)
    if keep is not None and not keep and rank == 0 and recipe.tracking.num_overlays > 0:
        samples = _tee_first(samples, keep, recipe.tracking.num_overlays)
    local = evaluate(
        core,
        eval_batches(samples, recipe),
        device=device,
        threshold=recipe.eval.threshold,
        rule=recipe.eval.threshold_rule,
    )
    dist = _dist()
    if dist is None:
        states = [local.state()]
    else:
        states = [None] * world
        dist.all_gather_object(states, local.state())
    merged = ReferringMetrics.merge(states)
    return summarize(merged)


def _tee_first(it: Iterator[dict[str, Any]], keep: list, n: int) -> Iterator[dict[str, Any]]:
    """Pass `it` through, keeping the first sample of each of the first `n` distinct videos
    (the fixed overlay samples; one per video so that the grid shows different scenes)."""
    videos: set[Any] = set()
    for s in it:
        video = s.get("video_id")
        if len(keep) < n and video not in videos:
            videos.add(video)
            keep.append(s)
        yield s


OVERLAY_MIN_SIDE = 192


def _overlay_grid(core: Any, recipe: Any, samples: list[dict[str, Any]]) -> np.ndarray | None:
    from PIL import Image

    from lstc.visualize import overlay, overlay_grid
    from pipelines.data import collate, collate_kwargs
    from pipelines.inference import predict_masks

    if not samples:
        return None
    was = core.training
    core.eval()
    try:
        batch = collate(samples, train=False, **collate_kwargs(recipe))
        preds = predict_masks(
            core, batch, threshold=recipe.eval.threshold, rule=recipe.eval.threshold_rule
        )
    finally:
        core.train(was)
    tiles = []
    for s, p in zip(samples, preds):
        frame = np.asarray(s["clip"])[int(s["target_index"])]
        gt = s.get("mask")
        # shown at the original frame size (the masks' size), at least OVERLAY_MIN_SIDE px on
        # the short side, so that small training sizes (the tiny recipe's 64x64) stay readable
        h, w = np.asarray(p).shape[-2:]
        f = max(1.0, OVERLAY_MIN_SIDE / min(h, w))
        size = (round(w * f), round(h * f))
        frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        tiles.append(overlay(frame, p, gt, str(s["text"])))
    return overlay_grid(tiles, ncols=min(4, len(tiles)))


def _epoch_bar(epoch: int, epochs: int, total: int) -> Any:
    """A progress bar drawn on the driver (Ray's distributed tqdm); None when unavailable."""
    try:
        from ray.experimental import tqdm_ray

        return tqdm_ray.tqdm(desc=f"train epoch {epoch}/{epochs}", total=total, unit="batch")
    except Exception:  # pragma: no cover - progress is cosmetic, never fail training on it
        return None


def _epoch_summary(metrics: Mapping[str, Any], epochs: int) -> str:
    """One line per epoch for the driver's console, metrics in percent like ``lstc eval``'s
    table (the full set goes to MLflow)."""
    parts = [
        f"epoch {metrics['epoch']}/{epochs}",
        f"train loss {metrics['train/epoch/loss']:.4f}",
        f"{metrics['train/epoch/samples_per_s']:.1f} samples/s",
        f"lr {metrics['train/epoch/lr']:.2e}",
    ]
    val = [
        f"{name} {100 * metrics[key]:.1f}"
        for name, key in (
            ("mean IoU", "val/mean_iou"),
            ("overall IoU", "val/overall_iou"),
            ("J&F", "val/J_and_F"),
            ("mAP", "val/mAP_at_0.5-0.95"),
        )
        if key in metrics
    ]
    if val:
        parts.append("val " + ", ".join(val))
    parts.append(
        f"({metrics['train/epoch/time_s']:.0f} s train, "
        f"{metrics['train/epoch/val_time_s']:.0f} s val)"
    )
    return "lstc train: " + " | ".join(parts)


def _autocast(device: Any, enabled: bool) -> Any:
    import torch

    if enabled and getattr(device, "type", str(device)) == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """Ray Train worker entry point (``config`` built by ``pipelines.train.driver``)."""
    import ray.train
    import ray.train.torch
    import torch

    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.checkpoint import (
        load_model_state,
        load_train_state,
        require_checkpoint,
        save_checkpoint,
        set_rng_state,
        unwrap,
    )
    from pipelines.config import Recipe
    from pipelines.data import epoch_seed, select_val_rows
    from pipelines.mlops.tracking import Tracker, metric_key
    from pipelines.train.callbacks import call_hook
    from pipelines.train.ddp import ddp_kwargs, describe_unused
    from pipelines.train.optim import build_optimizer, build_scheduler
    from pipelines.train.speed import compile_modules, eager, model_input, to_channels_last

    recipe = Recipe.from_dict(config["recipe"])
    run_dir = config.get("run_dir")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tr = recipe.train
    steps_per_epoch = max(1, int(config.get("steps_per_epoch") or 1))
    callbacks = list(config.get("callbacks") or ())

    seed_everything(tr.seed)
    model = build_model(recipe.model)
    start_epoch, global_step = 0, 0
    state: dict[str, Any] | None = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        # Ray hands over only checkpoints it recorded after their upload finished; the marker
        # (when the checkpoint has one) is checked on the downloaded files all the same. Each
        # rank downloads into a folder of its own: ``Checkpoint.as_directory`` shares one
        # download folder between the ranks of a node, and a rank was seen reading a
        # half-written model.pt from it under load
        with tempfile.TemporaryDirectory(prefix=f"lstc-resume-rank{rank}-") as tmp:
            d = ckpt.to_directory(tmp)
            require_checkpoint(d, need_marker=False)
            model.load_state_dict(load_model_state(d))
            state = load_train_state(d)
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
    model.to(device)
    loss_fn = SegmentationLoss(recipe.loss).to(device)
    ddp_args: dict[str, Any] = {"find_unused_parameters": tr.find_unused_parameters}
    if world > 1:  # ablations leave parameters without gradient: DDP must know (see ddp.py)
        ddp_args, unused = ddp_kwargs(model, loss_fn, device, force=tr.find_unused_parameters)
        if unused and rank == 0:
            print(f"lstc train: {describe_unused(unused)}", flush=True)
    if tr.channels_last:
        to_channels_last(model)
    # compiled in place before DDP wraps it (PyTorch's advice for DDP); eager stays the default
    compile_modules(model, loss_fn, mode=tr.compile, backend=tr.compile_backend)
    model = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs=ddp_args
    )
    core = unwrap(model)
    optimizer = build_optimizer(core, recipe)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    use_amp = bool(tr.amp and device.type == "cuda")
    extra: dict[str, Any] = {}
    if state is not None:
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        extra = dict(state.get("extra") or {})
    history: dict[str, list[float]] = {k: list(v) for k, v in extra.get("history", {}).items()}

    tracker = (
        Tracker.start(
            recipe,
            run_id=config.get("run_id"),
            tracking_uri=config.get("tracking_uri"),
            system_metrics=recipe.tracking.system_metrics,
        )
        if rank == 0 and config.get("tracking_uri")
        else Tracker.disabled()
    )
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    overlay_samples: list[dict[str, Any]] = []
    val_rows_cache: list[dict[str, Any]] | None = None
    accum = recipe.optim.accumulation
    log_every = recipe.tracking.log_every_steps
    params = [p for p in core.parameters() if p.requires_grad]
    if rank == 0:
        append_event(run_dir, "attempt_start", start_epoch=start_epoch + 1, world=world)

    for epoch in range(start_epoch, tr.epochs):
        es = epoch_seed(tr.seed, epoch)
        seed_everything(es * 1009 + rank)
        if rank == 0:
            append_event(run_dir, "epoch_start", epoch=epoch + 1, global_step=global_step)
        loader_rate = (
            _loader_pass(train_shard, recipe, epoch, world, device) if tr.measure_loader else None
        )
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_batches, n_samples = 0.0, 0, 0
        batches = _train_batches(train_shard, recipe, epoch)
        optimizer.zero_grad(set_to_none=True)
        micro = 0
        bar = _epoch_bar(epoch + 1, tr.epochs, steps_per_epoch * accum) if rank == 0 else None
        for batch in batches:
            # uint8 from the collate; / 255 on the device (mean/std: the encoders, same device)
            clip = model_input(batch["clip"], device, channels_last=tr.channels_last)
            target = batch["mask"].to(device, non_blocking=True)
            tok = core.tokenizer(batch["text"])
            ids, attn = tok["input_ids"].to(device), tok["attention_mask"].to(device)
            micro += 1
            sync = micro % accum == 0
            no_sync = world > 1 and not sync and hasattr(model, "no_sync")
            with model.no_sync() if no_sync else contextlib.nullcontext():
                with _autocast(device, use_amp):
                    out = model(clip, ids, attn)
                    loss, _parts = loss_fn(out, target)
                (loss / accum).backward()
            loss_sum += float(loss.detach())
            n_batches += 1
            n_samples += clip.shape[0]
            if bar is not None:
                bar.set_description(
                    f"train epoch {epoch + 1}/{tr.epochs} loss {loss_sum / n_batches:.4f}"
                )
                bar.update(1)
                sys.stdout.flush()  # the bar's state travels as a stdout line to the driver
            if not sync:
                continue
            if recipe.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            global_step += 1
            if global_step % log_every == 0:
                step_loss = _all_mean(float(loss.detach()), 1.0, device)
                if rank == 0:
                    tracker.log_metrics(
                        {"train/step/loss": step_loss, "train/step/lr": scheduler.get_last_lr()[0]},
                        step=global_step,
                        axis="step",
                    )
            call_hook(callbacks, "on_step_end", epoch + 1, global_step, rank, str(run_dir or ""))
        if bar is not None:
            bar.close()
            sys.stdout.flush()
        train_time = time.perf_counter() - t0
        train_loss = _all_mean(loss_sum, n_batches, device)
        samples_total = _all_mean(float(n_samples), 1.0, device) * world

        # ---- validation (all ranks), then checkpoint + report
        _broadcast_buffers(core)
        t1 = time.perf_counter()
        if val_rows_cache is not None:
            own_rows = val_rows_cache
        else:
            own_rows = select_val_rows(
                val_shard.iter_rows(), rank=rank, world_size=world, limit=recipe.data.val_limit
            )
            if recipe.data.cache_val:
                own_rows = val_rows_cache = list(own_rows)
        with eager():  # validation runs the eager code of a compiled model (no recompiles)
            val = validate(
                core,
                recipe,
                own_rows,
                rank=rank,
                world=world,
                device=device,
                keep=overlay_samples,
            )
        val_time = time.perf_counter() - t1
        # keys: docs/INTERFACES.md "Metric keys" (one step axis per key; the same names in
        # MLflow, Ray Train's reports and the checkpoint's metrics.json)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "train/epoch/loss": train_loss,
            "train/epoch/lr": scheduler.get_last_lr()[0],
            "train/epoch/samples_per_s": samples_total / train_time if train_time > 0 else 0.0,
            "train/epoch/time_s": train_time,
            "train/epoch/val_time_s": val_time,
        }
        if loader_rate is not None:
            metrics["train/epoch/loader_samples_per_s"] = loader_rate
        for k, v in val.items():
            metrics[f"val/{metric_key(k)}"] = float(v)
        for k in ("train/epoch/loss", *[f"val/{metric_key(k)}" for k in val]):
            history.setdefault(k, []).append(float(metrics[k]))

        if rank == 0:
            print(_epoch_summary(metrics, tr.epochs), flush=True)
            tracker.log_metrics(
                {k: v for k, v in metrics.items() if k not in BOOKKEEPING_KEYS},
                step=epoch + 1,
                axis="epoch",
            )
            with eager():
                grid = _overlay_grid(core, recipe, overlay_samples)
            if grid is not None:
                tracker.log_image(grid, f"overlays/epoch_{epoch + 1:03d}.png")
            _log_curves(tracker, history)
            append_event(
                run_dir,
                "epoch_end",
                epoch=epoch + 1,
                global_step=global_step,
                train_loss=train_loss,
                val=dict(val),
            )
        extra = {"history": history}
        with tempfile.TemporaryDirectory(prefix="lstc-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                path = save_checkpoint(
                    Path(tmp) / "checkpoint",
                    model=core,
                    recipe=recipe,
                    epoch=epoch + 1,
                    global_step=global_step,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    metrics=metrics,
                    extra=extra,
                )
                checkpoint = ray.train.Checkpoint.from_directory(str(path))
            _report(
                metrics,
                checkpoint=checkpoint,
                checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}",
            )
        call_hook(callbacks, "on_epoch_end", epoch + 1, rank, str(run_dir or ""), metrics)
        stop = _stop_requested(callbacks, epoch + 1, rank, str(run_dir or ""), metrics, device)
        if stop and epoch + 1 < tr.epochs:  # asked after the last epoch too (it sees every one)
            if rank == 0:
                append_event(run_dir, "stopped_early", epoch=epoch + 1, global_step=global_step)
                print(f"lstc train: stopped early after epoch {epoch + 1}", flush=True)
            break
    if rank == 0:
        append_event(run_dir, "train_end", epoch=tr.epochs, global_step=global_step)
        tracker.end("FINISHED")


TEARDOWN_WAIT_S = 120.0  # how long a worker waits for Ray Train to stop it (see _report)


def group_torn_down(exc: BaseException) -> bool:
    """Whether ``exc`` says that Ray Train killed the worker group's synchronization actor:
    the controller is tearing the group down (an abort on ``lstc train``'s SIGINT/SIGTERM, or a
    restart after another worker failed) and kills the workers next. A node that dies takes the
    actor with another message (the node's death), which is a real failure."""
    from ray.exceptions import ActorDiedError

    text = str(exc)
    return (
        isinstance(exc, ActorDiedError)
        and "class_name: SynchronizationActor" in text
        and "killed by `ray.kill`" in text
    )


def _report(metrics: Mapping[str, Any], **kwargs: Any) -> None:
    """``ray.train.report``, quiet when the worker group is being torn down.

    The report syncs the checkpoint's name across ranks through the group's synchronization
    actor. When the controller aborts (Ctrl-C) it kills that actor and the workers one by one
    (``ray.kill`` is asynchronous), so a worker inside a report may see the actor die before
    its own kill lands and Ray would print the error's traceback on the user's terminal. Such a
    worker waits, bounded by :data:`TEARDOWN_WAIT_S`, to be killed; any other error, or no kill
    within the bound, raises as usual."""
    import threading

    import ray.train

    try:
        ray.train.report(metrics, **kwargs)
    except Exception as exc:
        if not group_torn_down(exc):
            raise
        threading.Event().wait(TEARDOWN_WAIT_S)  # Ray Train kills this worker meanwhile
        raise


def _stop_requested(
    callbacks: list[Any], epoch: int, rank: int, run_dir: str, metrics: Any, device: Any
) -> bool:
    """Rank 0 asks the callbacks' ``should_stop`` (:mod:`pipelines.train.callbacks`); the
    decision is broadcast so that every rank leaves the loop after the same epoch."""
    import torch

    from pipelines.train.callbacks import has_stop_hook, wants_stop

    if not has_stop_hook(callbacks):  # the same callbacks on every rank: all skip alike
        return False
    flag = torch.tensor(
        [1.0 if rank == 0 and wants_stop(callbacks, epoch, rank, run_dir, metrics) else 0.0],
        device=device,
    )
    dist = _dist()
    if dist is not None:
        dist.broadcast(flag, src=0)
    return bool(flag[0] > 0)


def _log_curves(tracker: Any, history: Mapping[str, list[float]]) -> None:
    from lstc.visualize import plot_curves

    keys = [  # overall validation metrics only (not the per-label ones, val/<label>/<metric>)
        k
        for k in history
        if k == "train/epoch/loss" or (k.count("/") == 1 and k.split("/")[-1] in _CURVE_KEYS)
    ]
    if not keys or not tracker.enabled:
        return
    with tempfile.TemporaryDirectory(prefix="lstc-curves-") as tmp:
        try:
            path = plot_curves({k: history[k] for k in keys}, Path(tmp) / "metric_curves.png")
        except Exception:  # noqa: BLE001 - a plot must never stop training
            return
        tracker.log_artifact(path, "curves")


_CURVE_KEYS = {"overall_iou", "mean_iou", "mAP_at_0.5-0.95", "J_and_F", "P_at_0.5"}

__all__ = [
    "EVENTS_DIR",
    "EVENTS_FILE",
    "append_event",
    "read_events",
    "train_loop_per_worker",
    "validate",
]
