"""Worker callbacks: a plug-in point of the training loop, for users and tests.

``pipelines.train.driver.train(recipe, callbacks=[...])`` carries the callbacks to every Ray
Train worker (inside the ``train_loop_config``), and :func:`pipelines.train.loop.
train_loop_per_worker` calls their hooks on every rank:

* ``on_step_end(epoch, step, rank, run_dir)`` after each optimizer step (``step`` = global
  step, 1-based, counted across epochs);
* ``on_epoch_end(epoch, rank, run_dir, metrics)`` after the epoch's checkpoint has been
  reported to Ray Train (``metrics`` = the epoch's reported metrics: losses and validation
  metrics are global, times are this rank's).
* ``should_stop(epoch, rank, run_dir, metrics) -> bool`` after ``on_epoch_end``, called on
  rank 0 only: true ends training cleanly after this epoch (the decision is broadcast to every
  rank; the run finishes normally, its checkpoints kept, and the driver's ``TrainResult`` says
  ``stopped_early``). Early stopping and sweep pruning (``tuning.pruning``) plug in here.

``epoch`` is 1-based, ``run_dir`` the run's folder (``<train.storage_path>/<train.run_name>``).
Subclass :class:`WorkerCallback` and override the hooks you need (a plain object with some of
these methods works too), e.g. to post a notification when rank 0 ends an epoch::

    class Notify(WorkerCallback):
        def on_epoch_end(self, epoch, rank, run_dir, metrics):
            if rank == 0:
                post(f"epoch {epoch}: val mean IoU {metrics['val/mean_iou']:.3f}")

Callbacks travel to the workers by pickle (Ray's cloudpickle): define them in an importable
module, or register a test-side module with ``ray.cloudpickle.register_pickle_by_value``.
An exception raised by a hook fails that worker like any training error (Ray Train then
restarts the run from the last checkpoint, up to ``train.max_failures`` times); catch what
must not stop training. Hooks run inside the training loop: keep them short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HOOKS = ("on_step_end", "on_epoch_end")
#: the decision hook (rank 0 only; see :func:`wants_stop`), apart from the notification hooks
STOP_HOOK = "should_stop"


class WorkerCallback:
    """Base class with no-op hooks (see the module docstring)."""

    def on_step_end(self, epoch: int, step: int, rank: int, run_dir: str) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, epoch: int, rank: int, run_dir: str, metrics: Mapping[str, Any]) -> None:
        """After the epoch's checkpoint and report."""

    def should_stop(self, epoch: int, rank: int, run_dir: str, metrics: Mapping[str, Any]) -> bool:
        """Rank 0 after ``on_epoch_end``: true stops training after this epoch."""
        return False


def call_hook(callbacks: Iterable[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on each callback that defines it, in order."""
    if hook not in HOOKS:
        raise ValueError(f"unknown callback hook {hook!r}; known: {', '.join(HOOKS)}")
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def has_stop_hook(callbacks: Iterable[Any]) -> bool:
    """Whether any callback defines ``should_stop`` (else the loop skips the broadcast)."""
    return any(callable(getattr(cb, STOP_HOOK, None)) for cb in callbacks)


def wants_stop(
    callbacks: Iterable[Any], epoch: int, rank: int, run_dir: str, metrics: Mapping[str, Any]
) -> bool:
    """True when any callback's ``should_stop`` says so (every callback is asked, in order, so
    each sees every epoch)."""
    votes = [
        bool(fn(epoch, rank, run_dir, metrics))
        for cb in callbacks
        if callable(fn := getattr(cb, STOP_HOOK, None))
    ]
    return any(votes)


__all__ = ["HOOKS", "STOP_HOOK", "WorkerCallback", "call_hook", "has_stop_hook", "wants_stop"]
