"""Stopping a training run on SIGTERM / SIGINT, and saying where it stands.

Schedulers (Slurm, Kubernetes), ``kill`` and Ctrl-C stop ``lstc train`` with SIGTERM or
SIGINT. The driver (:func:`pipelines.train.driver.train`) handles both with a
:class:`pipelines.ray_setup.SignalStop`:

* during ``trainer.fit()`` the first signal aborts the Ray Train controller - the path Ray
  Train itself takes on Ctrl-C: it shuts the worker group down and releases its placement
  group, then exits, so ``fit()`` returns with an error. :func:`trainer_class` hands the
  controller to the ``SignalStop`` (Ray Train passes it to ``_register_sigint_handler``, which
  would otherwise install Ray's own SIGINT handler over ours);
* before or after ``fit()`` (datasets, MLflow, registration), on a second signal, or when the
  abort has not ended ``fit()`` within ``SignalStop.grace_s`` (the signal went to the whole
  job, Ray's own processes with it, so nothing answers), the handler raises
  ``KeyboardInterrupt`` and the work under way ends there.

Either way the driver marks the MLflow run KILLED, writes a ``driver_stopped`` event and raises
:class:`TrainingStopped`, whose message says in which epoch the run stopped and which
checkpoint a rerun of the same command resumes from (:func:`stopped_error`). The CLI prints it
and exits with 128 + the signal number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.ray_setup import SignalStop, StoppedBySignal


class TrainingStopped(StoppedBySignal):
    """A training run stopped by a signal; a rerun of the same command resumes it from
    ``checkpoint`` (epoch ``checkpoint_epoch``; ``None``: from epoch 1)."""

    def __init__(
        self,
        signum: int,
        message: str,
        *,
        run_name: str,
        run_dir: Path,
        epoch: int | None,
        checkpoint_epoch: int | None,
        checkpoint: Path | None,
        forced: bool = False,
    ) -> None:
        super().__init__(signum, message, forced=forced)
        self.run_name = run_name
        self.run_dir = run_dir
        self.epoch = epoch  # epoch in progress when stopped (None: none was)
        self.checkpoint_epoch = checkpoint_epoch
        self.checkpoint = checkpoint


def _abort(controller: Any) -> bool:
    """Ask the Ray Train controller to abort (non-blocking: runs inside a signal handler)."""
    controller.abort.remote()
    return True


def trainer_class(stop: SignalStop) -> type:
    """``TorchTrainer`` whose ``fit()`` lets ``stop`` abort its controller on a signal."""
    from ray.train.torch import TorchTrainer

    class StoppableTorchTrainer(TorchTrainer):
        def _register_sigint_handler(self, controller: Any) -> None:
            # Ray Train calls this in fit(), in the main thread, once the controller exists;
            # its own version installs a SIGINT handler that aborts the controller.
            stop.graceful = lambda: _abort(controller)

        def fit(self) -> Any:
            try:
                return super().fit()
            finally:
                stop.graceful = None  # the controller is gone
                stop.settled()

    return StoppableTorchTrainer


def _position(events: list[dict[str, Any]], since: float, checkpoint_epoch: int) -> tuple:
    """``(phrase, epoch in progress)`` from this driver's events (those from ``since`` on)."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "driver_start"]
    if not starts or float(events[starts[-1]].get("time", 0.0)) < since:
        return "before training started", None
    mine = events[starts[-1] :]
    if any(e.get("event") == "train_end" for e in mine):
        return "after the last epoch, while saving the results", None
    epochs = [int(e["epoch"]) for e in mine if e.get("event") == "epoch_start"]
    if not epochs:
        return "before training started", None
    if epochs[-1] > checkpoint_epoch:
        return f"during epoch {epochs[-1]}", epochs[-1]
    return f"after epoch {epochs[-1]}", None


def stopped_error(
    signum: int, run_name: str, run_dir: Path, since: float, *, forced: bool = False
) -> TrainingStopped:
    """The :class:`TrainingStopped` of a run stopped by ``signum``, read from ``run_dir``
    (``events.jsonl`` from ``since`` on, and Ray Train's latest checkpoint)."""
    import signal

    from pipelines.train.loop import read_events
    from pipelines.train.resume import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    ckpt_epoch, ckpt = latest if latest else (0, None)
    where, epoch = _position(read_events(run_dir), since, ckpt_epoch)
    name = signal.Signals(signum).name
    if ckpt is None:
        then = "no epoch was checkpointed yet; rerun the same command to start again"
    else:
        then = (
            f"the last checkpoint is epoch {ckpt_epoch} ({ckpt}); rerun the same command to resume"
        )
    return TrainingStopped(
        signum,
        f"stopped by {name} {where}; {then}",
        run_name=run_name,
        run_dir=run_dir,
        epoch=epoch,
        checkpoint_epoch=ckpt_epoch if ckpt is not None else None,
        checkpoint=ckpt,
        forced=forced,
    )


__all__ = ["TrainingStopped", "stopped_error", "trainer_class"]
