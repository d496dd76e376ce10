"""Pruning a trial from its per-epoch validation: a worker callback (rank 0 side).

:class:`OptunaPruning` rides along with a trial's training run
(``pipelines.train.driver.train(callbacks=[...])``). After each epoch the training loop asks
``should_stop`` on rank 0 only and broadcasts the answer to every rank
(:mod:`pipelines.train.callbacks`); here rank 0 opens the study by its storage URL, reports the
epoch's objective as the trial's intermediate value (step = epoch) and returns the pruner's
verdict (the pattern of optuna-integration's ``TorchDistributedTrial``: one rank talks to
Optuna, the decision reaches all). The run then ends cleanly after that epoch and the sweep
driver tells Optuna ``PRUNED`` (value = the last reported one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.train.callbacks import WorkerCallback
from tuning.spec import PrunerSpec


def build_pruner(spec: PrunerSpec, epochs: int) -> Any:
    """The Optuna pruner of ``spec`` (hyperband's max resource = the budget's epochs)."""
    import optuna

    # steps are epoch numbers, 1-based; Optuna prunes once ``step >= n_warmup_steps``, so
    # "the first n epochs are never pruned" is Optuna's n_warmup_steps = n + 1 (passing n
    # as it is left epoch n prunable: n_warmup_steps 1 protected nothing)
    warmup = spec.n_warmup_steps + 1
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.n_startup_trials, n_warmup_steps=warmup
        )
    if spec.kind == "percentile":
        return optuna.pruners.PercentilePruner(
            spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=warmup
        )
    if spec.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource,
            reduction_factor=spec.reduction_factor,
            min_early_stopping_rate=spec.min_early_stopping_rate,
        )
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=epochs,
            reduction_factor=spec.reduction_factor,
        )
    return optuna.pruners.NopPruner()


@dataclass
class OptunaPruning(WorkerCallback):
    """Report ``metric`` of every epoch to trial ``trial_id`` of ``study_name`` in ``storage``
    and stop the run when the pruner says so."""

    storage: str
    study_name: str
    trial_id: int
    metric: str
    pruner: dict[str, Any]
    epochs: int
    _trial: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trial": None}  # the storage connection stays behind

    def _optuna_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from tuning.storage import open_storage

            study = optuna.load_study(
                study_name=self.study_name,
                storage=open_storage(self.storage),
                pruner=build_pruner(PrunerSpec(**self.pruner), self.epochs),
            )
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def should_stop(self, epoch: int, rank: int, run_dir: str, metrics: Mapping[str, Any]) -> bool:
        if rank != 0:
            return False
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return False  # nothing to compare: never prune on a missing value
        try:
            trial = self._optuna_trial()
            trial.report(float(value), step=int(epoch))
            return bool(trial.should_prune())
        except Exception as exc:  # noqa: BLE001 - the study being unreachable never fails a run
            import warnings

            self._trial = None  # reconnect next epoch
            warnings.warn(
                f"epoch {epoch}: reporting to Optuna trial {self.trial_id} failed "
                f"({type(exc).__name__}: {exc}); not pruned",
                RuntimeWarning,
                stacklevel=2,
            )
            return False


__all__ = ["OptunaPruning", "build_pruner"]
