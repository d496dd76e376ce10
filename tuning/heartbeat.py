"""Trial heartbeats of a sweep driver, on Optuna's RDB heartbeat (SQLite files included).

A driver that runs trials through ask/tell (not ``Study.optimize``) records the heartbeats
itself: :class:`Heartbeat` is one thread that calls ``RDBStorage.record_heartbeat`` for every
trial the driver runs, every ``heartbeat_s`` seconds, the first beat at once when the trial is
added. :func:`fail_stale` is Optuna's ``fail_stale_trials``: a RUNNING trial whose last
heartbeat is older than ``grace_s`` (its driver was killed or lost its node) is set FAIL by the
one driver whose state change wins, which then calls :class:`RetryStale`: the trial's MLflow
run is marked failed and Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)`` enqueues
its params once (system attrs ``failed_trial`` / ``retry_history``). Trials of live drivers
keep beating and are never touched, so several drivers can share one study.

:func:`adopt_running` gives every RUNNING trial a heartbeat once, when a driver starts: a trial
left by a driver that never beat (``heartbeat_s: null``, or killed between creating the trial
and its first beat) then goes stale ``grace_s`` later instead of staying RUNNING for ever.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: a retried trial is retried at most this often (a second stale failure ends it)
MAX_RETRY = 1


def heartbeat_enabled(storage: Any) -> bool:
    """Whether ``storage`` (an Optuna storage object) records heartbeats."""
    import optuna

    return (
        isinstance(storage, optuna.storages.RDBStorage)
        and storage.get_heartbeat_interval() is not None
    )


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna's ExperimentalWarning (the heartbeat API) and its heartbeat-with-ask warning
    not shown inside (this driver is the ask/tell loop the warning asks for)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


class Heartbeat:
    """Record a heartbeat of every added trial every ``interval_s`` seconds (one thread)."""

    def __init__(self, storage: Any, interval_s: float) -> None:
        self.storage = storage
        self.interval_s = float(interval_s)
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lstc-sweep-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
            warnings.warn(
                f"heartbeat of Optuna trial id {trial_id} not recorded "
                f"({type(exc).__name__}: {exc}); retrying in {self.interval_s:g} s",
                RuntimeWarning,
                stacklevel=2,
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat_now()

    def beat_now(self) -> None:
        """Beat for every added trial at once (the driver does so right before it looks for
        stale trials, so a late heartbeat thread never makes it fail its own live trials)."""
        with self._lock:
            ids = sorted(self._ids)
        for trial_id in ids:
            self._beat(trial_id)

    def add(self, trial_id: int) -> None:
        """Beat for ``trial_id`` now and from now on."""
        self._beat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def close(self) -> None:
        """Stop beating (the trials still added go stale ``grace_s`` later)."""
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))


@dataclass
class RetryStale:
    """Optuna's ``heartbeat_stale_trial_callback``: ``on_fail(trial)`` (record it), then retry
    the trial's params once through ``RetryHeartbeatStaleTrialCallback(max_retry=1)``."""

    on_fail: Callable[[Any], None] | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        if self.on_fail is not None:
            self.on_fail(trial)
        with quiet_experimental():
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def fail_stale(study: Any) -> None:
    """Fail the study's RUNNING trials whose heartbeat is older than the grace period (and run
    the storage's stale-trial callback on each); nothing without heartbeats."""
    import optuna

    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def adopt_running(study: Any, storage: Any) -> list[int]:
    """Record one heartbeat for every RUNNING trial of ``study`` (see the module docstring);
    returns their numbers. Call it after :func:`fail_stale`, so trials already stale are
    failed at once rather than given another grace period."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in trials:
        storage.record_heartbeat(t._trial_id)
    return [t.number for t in trials]


def retried_trial_number(trial: Any) -> int | None:
    """The number of the stale trial that ``trial`` retries (None when it is no retry)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet_experimental():
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


__all__ = [
    "MAX_RETRY",
    "Heartbeat",
    "RetryStale",
    "adopt_running",
    "fail_stale",
    "heartbeat_enabled",
    "quiet_experimental",
    "retried_trial_number",
]
