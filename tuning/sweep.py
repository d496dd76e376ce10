"""The sweep driver: ``lstc sweep configs/sweeps/<spec>.yaml``.

Optuna owns the trial state (ask/tell on a persistent study); each trial is one full training
run, :func:`pipelines.train.driver.train`, with its own Ray Train workers, its own run name
``<sweep>-trial-<number>`` (a fresh run directory: trials never resume each other's
checkpoints) and registration off. ``parallel`` trials run at once, each trial's driver call
in a thread of this process (Ray Train V2 runs ``fit()`` outside the main thread, as under
Ray Tune; the trials' workers take the cluster's resources, the threads none);
``parallel: auto`` = cluster CPUs // (workers x CPUs per worker + 1 for the trial's Ray Data
tasks), capped by GPUs // workers for GPU recipes.

* **Pruning**: every trial carries a :class:`tuning.pruning.OptunaPruning` callback; rank 0
  reports each epoch's objective and the run stops cleanly when the pruner says so; the trial
  is told ``PRUNED`` (value: its last reported one).
* **Trial value**: the objective at the trial's best epoch (the trial recipe's registry
  selection is set to the objective, so its best checkpoint is that epoch's).
* **Resume**: rerunning with the same study name continues the study: COMPLETE and PRUNED
  trials are kept. On an RDB or SQLite study (``heartbeat_s`` set, the default) the driver
  records a heartbeat of each trial it runs (:mod:`tuning.heartbeat`); a RUNNING trial whose
  heartbeat stopped for ``grace_s`` (its driver killed, its node lost) is failed and its
  params enqueued once (Optuna's ``RetryHeartbeatStaleTrialCallback``, system attrs
  ``failed_trial``/``retry_history``), checked at start and every ``heartbeat_s`` while the
  sweep runs; trials of live drivers keep beating and are left alone, so several drivers can
  share a study. A driver counts the study's RUNNING trials (its own and others') toward
  ``n_trials`` and, once it has nothing left to start, waits for the others' to finish or go
  stale (and then retries them). On a journal study (no heartbeats in the installed Optuna) or
  with ``heartbeat_s: null`` a rerun fails every RUNNING trial at its start and enqueues its
  params (user attr ``lstc.retry_of``): one sweep driver per such study at a time.
  The sweep ends when COMPLETE + PRUNED trials reach ``n_trials``.
* **Failures**: a trial that raises is told FAIL, its error kept as the user attr
  ``lstc.error`` and as the MLflow child run's tag ``lstc.error`` (run status FAILED), and the
  sweep goes on with new samples: failed trials do not count toward ``n_trials`` and are not
  retried with the same params (the params may be the cause). More than
  ``max_failed_trials`` failures in one invocation (default ``n_trials``) stop the sweep with
  :class:`SweepError`.
* **MLflow**: one parent run per study (run name = sweep name, id kept in the study's user
  attrs, re-attached on rerun); every trial's run is its child (``mlflow.parentRunId``,
  ``lstc.sweep``, ``lstc.trial_number``, ``lstc.trial_state``). The parent gets
  ``sweep/trial_value`` per trial, ``sweep/best_value``, and :mod:`tuning.report`'s table,
  best trial and plots; then the best trial's best checkpoint is registered
  (:func:`pipelines.mlops.registry.register_checkpoint`, champion/challenger as in training).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuning.report import (
    ATTR_CHECKPOINT,
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_METRICS,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    ATTR_RUN_NAME,
    log_report,
)
from tuning.spec import SweepSpec, params_to_overrides

STUDY_ATTR_PARENT = "lstc.mlflow_parent_run_id"
STUDY_ATTR_REGISTERED = "lstc.registered"
LEFT_RUNNING = "left RUNNING by a sweep driver that stopped; retried as a new trial"


class SweepError(RuntimeError):
    """The sweep cannot go on (too many failed trials); the message says why."""


@dataclass
class TrialOutcome:
    """What one trial's training left (filled in its thread, told in the main thread)."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None = None
    run_name: str = ""
    mlflow_run_id: str | None = None
    epochs_run: int = 0
    best_checkpoint: str | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    lost: bool = False  # failed as stale by a driver before this one told it (retried there)


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str | None
    counts: dict[str, int]
    best: dict[str, Any] | None
    registered: tuple[str, str] | None
    trial_epochs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "parent_run_id": self.parent_run_id,
            "counts": self.counts,
            "best": self.best,
            "registered": list(self.registered) if self.registered else None,
            "trial_epochs": self.trial_epochs,
        }


def resolve_parallel(parallel: int | str, recipe: Any, n_trials: int) -> int:
    """``parallel`` as a number of trials (``auto``: from the connected cluster's resources)."""
    import ray

    if parallel != "auto":
        return max(1, int(parallel))
    res = ray.cluster_resources()
    tr = recipe.train
    per_trial = tr.num_workers * tr.cpus_per_worker + 1  # + its Ray Data tasks
    k = int(res.get("CPU", 1) // per_trial)
    if tr.use_gpu:
        k = min(k, int(res.get("GPU", 0) // tr.num_workers))
    return max(1, min(k, n_trials))


def _start_thread(fn: Callable[..., Any], *args: Any, name: str) -> concurrent.futures.Future:
    """Run ``fn(*args)`` in a daemon thread (a stopped sweep does not wait for its trials:
    they are failed and retried by the next invocation)."""
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def body() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            fut.set_exception(exc)

    threading.Thread(target=body, name=name, daemon=True).start()
    return fut


class Sweep:
    """One invocation of a sweep over a study (see the module docstring)."""

    def __init__(
        self,
        spec: SweepSpec,
        *,
        study_name: str | None = None,
        storage: str | None = None,
        address: str | None = None,
        callbacks: Sequence[Any] = (),
        progress: bool = True,
        on_trial_start: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.on_trial_start = on_trial_start
        self.study_name = study_name or spec.name
        self.storage_arg = storage or spec.storage
        self.address = address
        self.callbacks = list(callbacks)
        self.progress = progress
        self.base = spec.base_recipe()
        self._lock = threading.Lock()
        self.heartbeat: Any = None
        self.stale_failed = 0

    # -- setup -----------------------------------------------------------------------------
    def _open_study(self) -> Any:
        import optuna

        from pipelines.ray_setup import alive_nodes
        from tuning.heartbeat import RetryStale
        from tuning.pruning import build_pruner
        from tuning.storage import (
            check_cluster_storage,
            default_storage,
            normalize_storage,
            open_storage,
            supports_heartbeat,
        )

        url = self.storage_arg or default_storage(self.spec.output_dir, self.study_name)
        self.storage_url = normalize_storage(url)
        check_cluster_storage(self.storage_url, alive_nodes())
        self.heartbeat_on = self.spec.heartbeat_s is not None and supports_heartbeat(
            self.storage_url
        )
        if self.heartbeat_on:
            self.optuna_storage = open_storage(
                self.storage_url,
                heartbeat_s=self.spec.heartbeat_s,
                grace_s=self.spec.grace_s,
                on_stale=RetryStale(self._stale_failed),
            )
        else:
            self.optuna_storage = open_storage(self.storage_url)
        s = self.spec.sampler
        sampler = (
            optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
            if s.kind == "tpe"
            else optuna.samplers.RandomSampler(seed=s.seed)
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(
            study_name=self.study_name,
            storage=self.optuna_storage,
            sampler=sampler,
            pruner=build_pruner(self.spec.pruner, self.spec.budget.epochs),
            direction=self.spec.objective.direction,
            load_if_exists=True,
        )

    def _parent_tracker(self, study: Any) -> Any:
        from pipelines.mlops.tracking import Tracker
        from tuning.storage import describe_storage

        parent_id = study.user_attrs.get(STUDY_ATTR_PARENT)
        tracker = Tracker.start(
            self.base,
            run_id=parent_id,
            run_name=self.study_name,
            tracking_uri=self.tracking_uri,
            system_metrics=False,
            tags={
                "lstc.sweep": self.study_name,
                "lstc.sweep_spec": self.spec.path,
                "lstc.study_storage": describe_storage(self.storage_url),
            },
        )
        tracker.log_params(
            {
                "sweep.recipe": str(self.spec.recipe_path()),
                "sweep.objective": self.spec.metric,
                "sweep.direction": self.spec.objective.direction,
                "sweep.space": json.dumps(
                    {k: v.model_dump(exclude_none=True) for k, v in self.spec.space.items()},
                    sort_keys=True,
                ),
                "sweep.sampler": json.dumps(self.spec.sampler.model_dump(), sort_keys=True),
                "sweep.pruner": json.dumps(self.spec.pruner.model_dump(), sort_keys=True),
                "sweep.budget_epochs": str(self.spec.budget.epochs),
            }
        )
        if tracker.run_id and tracker.run_id != parent_id:
            study.set_user_attr(STUDY_ATTR_PARENT, tracker.run_id)
        return tracker

    def _stale_failed(self, trial: Any) -> None:
        """A trial this driver failed for its stopped heartbeat: its MLflow run failed too."""
        from tuning.report import HEARTBEAT_STOPPED

        with self._lock:
            self.stale_failed += 1
        print(
            f"lstc sweep: trial {trial.number}: {HEARTBEAT_STOPPED}; failed"
            + (
                ", retried once"
                if len(trial.system_attrs.get("retry_history") or []) < 1
                else ", already a retry: not retried again"
            ),
            flush=True,
        )
        self._mark_child(self._find_child(trial.number), "FAIL", HEARTBEAT_STOPPED)

    def _recover(self, study: Any) -> int:
        """Trials a stopped driver left RUNNING: with heartbeats, fail (and retry once) the
        stale ones and give the others a heartbeat (:func:`tuning.heartbeat.adopt_running`);
        without, fail every RUNNING trial and enqueue its params again."""
        import optuna
        from optuna.trial import TrialState

        if self.heartbeat_on:
            from tuning.heartbeat import adopt_running, fail_stale

            fail_stale(study)
            others = adopt_running(study, self.optuna_storage)
            if others:
                print(
                    f"lstc sweep: trials {others} are RUNNING: left to their drivers while "
                    f"they beat; failed and retried here after {self._grace_s()} s of silence",
                    flush=True,
                )
            return self.stale_failed
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            optuna.trial.Trial(study, t._trial_id).set_user_attr(ATTR_ERROR, LEFT_RUNNING)
            study.tell(t.number, state=TrialState.FAIL)
            self._mark_child(t.user_attrs.get(ATTR_RUN_ID), "FAIL", LEFT_RUNNING)
            if t.params:
                study.enqueue_trial(dict(t.params), user_attrs={ATTR_RETRY_OF: t.number})
            n += 1
        return n

    def _grace_s(self) -> int:
        hb = int(self.spec.heartbeat_s or 0)
        return int(self.spec.grace_s) if self.spec.grace_s is not None else 2 * hb

    def _running_elsewhere(self, study: Any, ours: Any) -> list[int]:
        """RUNNING trials of other drivers (heartbeat studies only; else none are waited on)."""
        if not self.heartbeat_on:
            return []
        from optuna.trial import TrialState

        mine = {t.number for t in ours}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t.number for t in running if t.number not in mine]

    def _ask(self, study: Any) -> Any:
        """A new trial (an enqueued one first), beating from now on when heartbeats are on."""
        from tuning.heartbeat import quiet_experimental

        with quiet_experimental():
            trial = study.ask()
        if self.heartbeat is not None:
            self.heartbeat.add(trial._trial_id)
        return trial

    # -- one trial -------------------------------------------------------------------------
    def _trial_recipe(self, number: int, params: dict[str, Any]) -> Any:
        return self.base.replace(
            [*params_to_overrides(params), f"train.run_name={self.study_name}-trial-{number}"]
        )

    def _run_trial(self, number: int, trial_id: int, params: dict[str, Any]) -> TrialOutcome:
        """Train one trial (in its thread); never raises: errors become a FAIL outcome."""
        from pipelines.train.driver import train
        from tuning.pruning import OptunaPruning

        out = TrialOutcome(number, "FAIL", run_name=f"{self.study_name}-trial-{number}")
        try:
            recipe = self._trial_recipe(number, params)
            pruning = OptunaPruning(
                storage=self.storage_url,
                study_name=self.study_name,
                trial_id=trial_id,
                metric=self.spec.metric,
                pruner=self.spec.pruner.model_dump(),
                epochs=self.spec.budget.epochs,
            )
            result = train(
                recipe,
                register=False,
                callbacks=[pruning, *self.callbacks],
                new_run=True,
                tags={
                    "mlflow.parentRunId": self.parent_run_id or "",
                    "lstc.sweep": self.study_name,
                    "lstc.trial_number": str(number),
                    "lstc.trial_state": "RUNNING",
                },
            )
        except Exception as exc:  # noqa: BLE001 - a failed trial never stops the sweep
            out.error = f"{type(exc).__name__}: {exc}"[:4000]
            print(f"lstc sweep: trial {number} failed:", file=sys.stderr)
            traceback.print_exc()
            out.mlflow_run_id = self._find_child(number)
            return out
        out.mlflow_run_id = result.mlflow_run_id
        out.epochs_run = int(result.last_metrics.get("epoch") or 0)
        out.best_checkpoint = str(result.best_checkpoint) if result.best_checkpoint else None
        out.best_metrics = {
            k: float(v) for k, v in result.best_metrics.items() if k.startswith("val/")
        }
        value = result.best_metrics.get(self.spec.metric)
        if result.stopped_early:
            out.state = "PRUNED"
        elif value is None or not math.isfinite(float(value)):
            out.error = f"the objective {self.spec.metric} was not reported (got {value!r})"
        else:
            out.state, out.value = "COMPLETE", float(value)
        return out

    def _find_child(self, number: int) -> str | None:
        """The MLflow run of trial ``number`` under the parent (None when none was created)."""
        try:
            from mlflow import MlflowClient

            runs = MlflowClient(self.tracking_uri).search_runs(
                [self.parent_tracker.experiment_id],
                filter_string=(
                    f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                    f"tags.`lstc.trial_number` = '{number}'"
                ),
                max_results=1,
            )
        except Exception:  # noqa: BLE001
            return None
        return runs[0].info.run_id if runs else None

    def _mark_child(self, run_id: str | None, state: str, error: str | None = None) -> None:
        """Set the trial state (and error) on a child run; a failure only warns."""
        if not run_id:
            return
        import warnings

        try:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            client.set_tag(run_id, "lstc.trial_state", state)
            if error:
                client.set_tag(run_id, "lstc.error", error[:4000])
            if state == "FAIL" and client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"MLflow run {run_id}: trial state not recorded ({exc})", stacklevel=2)

    def _tell(self, study: Any, trial: Any, out: TrialOutcome) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        attrs = {
            ATTR_RUN_NAME: out.run_name,
            ATTR_RUN_ID: out.mlflow_run_id,
            ATTR_EPOCHS: out.epochs_run,
            ATTR_CHECKPOINT: out.best_checkpoint,
            ATTR_METRICS: out.best_metrics,
            ATTR_ERROR: out.error,
        }
        try:
            for k, v in attrs.items():
                if v is not None:
                    trial.set_user_attr(k, v)
        except UpdateFinishedTrialError:
            pass  # failed as stale meanwhile: told below (skip_if_finished)
        if out.state == "COMPLETE":
            frozen = study.tell(trial, out.value, skip_if_finished=True)
        else:
            frozen = study.tell(trial, state=TrialState[out.state], skip_if_finished=True)
        if self.heartbeat is not None:
            self.heartbeat.remove(trial._trial_id)
        if frozen.state.name != out.state:
            # its heartbeat was late by more than grace_s: a driver failed it and retried it
            out.error = (
                f"finished {out.state} but was already {frozen.state.name} in the study (its "
                f"heartbeat was late by more than grace_s={self._grace_s()}); its retry counts"
            )
            out.state, out.lost = frozen.state.name, True
        out.value = frozen.value  # a pruned trial's: its last reported value
        self._mark_child(out.mlflow_run_id, out.state, out.error)
        value = frozen.value
        self.parent_tracker.log_metrics(
            {"sweep/trial_value": value if value is not None else float("nan")},
            step=trial.number,
            axis="trial",
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self, *, n_trials: int | None = None, parallel: int | str | None = None) -> SweepResult:
        """Run trials until COMPLETE + PRUNED reach ``n_trials`` (default: the spec's)."""
        from optuna.trial import TrialState

        from pipelines.mlops.tracking import check_cluster_tracking, resolve_tracking_uri
        from pipelines.ray_setup import alive_nodes, init_ray

        n_trials = n_trials or self.spec.n_trials
        tr = self.base.train
        init_ray(self.address or tr.ray_address, min_cpus=tr.num_workers * tr.cpus_per_worker + 2)
        self.tracking_uri = resolve_tracking_uri(self.base.tracking.uri)
        check_cluster_tracking(self.tracking_uri, alive_nodes())
        study = self._open_study()
        self.parent_tracker = self._parent_tracker(study)
        self.parent_run_id = self.parent_tracker.run_id
        self.parent_tracker.set_tags({"lstc.n_trials": str(n_trials)})
        if self.heartbeat_on:
            from tuning.heartbeat import Heartbeat

            self.heartbeat = Heartbeat(self.optuna_storage, float(self.spec.heartbeat_s or 1))
        recovered = self._recover(study)
        k = resolve_parallel(parallel or self.spec.parallel, self.base, n_trials)
        max_failed = (
            self.spec.max_failed_trials if self.spec.max_failed_trials is not None else n_trials
        )
        finished_states = (TrialState.COMPLETE, TrialState.PRUNED)

        def finished() -> int:
            return len(study.get_trials(deepcopy=False, states=finished_states))

        print(
            f"lstc sweep: study {self.study_name!r}: {finished()}/{n_trials} trials finished, "
            f"{k} in parallel" + (f", {recovered} left running retried" if recovered else ""),
            flush=True,
        )
        bar = self._bar(n_trials, finished())
        running: dict[concurrent.futures.Future, Any] = {}
        failed_now = 0
        last_error = None
        poll_s = float(self.spec.heartbeat_s) if self.heartbeat_on else None
        waiting_for: list[int] = []
        try:
            while True:
                if self.heartbeat is not None:
                    from tuning.heartbeat import fail_stale

                    self.heartbeat.beat_now()  # ours are fresh, whatever the thread's delay
                    fail_stale(study)  # other drivers' trials that went silent
                elsewhere = self._running_elsewhere(study, running.values())
                while (
                    len(running) < k
                    and finished() + len(running) + len(elsewhere) < n_trials
                    and failed_now <= max_failed
                ):
                    trial = self._ask(study)
                    params = self._suggest(trial)
                    if self.on_trial_start is not None:
                        self.on_trial_start(trial.number, dict(params))
                    fut = _start_thread(
                        self._run_trial,
                        trial.number,
                        trial._trial_id,
                        params,
                        name=f"lstc-sweep-trial-{trial.number}",
                    )
                    running[fut] = trial
                if not running:
                    if not elsewhere or finished() >= n_trials or failed_now > max_failed:
                        break
                    if elsewhere != waiting_for:
                        waiting_for = elsewhere
                        print(
                            f"lstc sweep: waiting for trials {elsewhere} of other drivers "
                            f"(retried here if silent for {self._grace_s()} s)",
                            flush=True,
                        )
                    threading.Event().wait(poll_s)
                    continue
                done, _ = concurrent.futures.wait(
                    running, timeout=poll_s, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for fut in done:
                    trial = running.pop(fut)
                    out = fut.result()
                    self._tell(study, trial, out)
                    if out.state == "FAIL" and not out.lost:
                        failed_now += 1
                        last_error = out.error
                    self._announce(study, out, finished(), n_trials, bar)
        except KeyboardInterrupt:
            # the trials still running are failed and retried by the next invocation
            self.parent_tracker.end("KILLED")
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.heartbeat is not None:
                self.heartbeat.close()
                self.heartbeat = None
        if failed_now > max_failed:
            log_report(study, self.parent_tracker)
            self.parent_tracker.end("FAILED")
            raise SweepError(
                f"{failed_now} trials failed in this run of sweep {self.study_name!r} (more "
                f"than max_failed_trials={max_failed}); last error: {last_error}. Fix the "
                "cause and rerun the same command: finished trials are kept"
            )
        return self._finish(study)

    def _suggest(self, trial: Any) -> dict[str, Any]:
        from tuning.space import suggest

        return suggest(trial, self.spec.space)

    def _bar(self, total: int, initial: int) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=f"sweep {self.study_name}", unit="trial")

    def _announce(self, study: Any, out: TrialOutcome, done: int, total: int, bar: Any) -> None:
        value = "-" if out.value is None else f"{out.value:.4f}"
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        msg = (
            f"lstc sweep: trial {out.number} {out.state} value {value} after {out.epochs_run} "
            f"epochs; {done}/{total} finished, {best}"
        )
        if out.error:
            msg += f"; error: {out.error.splitlines()[0][:200]}"
        print(msg, flush=True)
        if bar is not None:
            bar.n = done
            bar.refresh()

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, study: Any) -> SweepResult:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
        best = log_report(study, self.parent_tracker)
        if best is not None:
            self.parent_tracker.log_metrics(
                {
                    "sweep/best_value": best["value"],
                    "sweep/finished_trials": float(counts["COMPLETE"] + counts["PRUNED"]),
                },
                step=max(t.number for t in trials),
                axis="trial",
            )
        registered = self._register_best(study)
        self.parent_tracker.end("FINISHED")
        return SweepResult(
            study_name=self.study_name,
            storage=self.storage_url,
            parent_run_id=self.parent_run_id,
            counts={k: v for k, v in counts.items() if v},
            best=best,
            registered=registered,
            trial_epochs=sum(int(t.user_attrs.get(ATTR_EPOCHS) or 0) for t in trials),
        )

    def _register_best(self, study: Any) -> tuple[str, str] | None:
        """Register the best trial's best checkpoint once (a rerun with the same best trial
        keeps the earlier registration)."""
        import warnings

        try:
            best = study.best_trial
        except ValueError:
            return None
        done = study.user_attrs.get(STUDY_ATTR_REGISTERED)
        if done and done.get("trial") == best.number:
            return tuple(done["version_alias"])  # type: ignore[return-value]
        ckpt = best.user_attrs.get(ATTR_CHECKPOINT)
        if not ckpt:
            return None
        from pipelines.mlops.registry import register_checkpoint

        recipe = self._trial_recipe(best.number, dict(best.params))
        try:
            version, alias = register_checkpoint(
                ckpt,
                recipe=recipe,
                run_id=best.user_attrs.get(ATTR_RUN_ID),
                metrics=best.user_attrs.get(ATTR_METRICS) or {},
                tracking_uri=self.tracking_uri,
            )
        except Exception as exc:  # noqa: BLE001 - the checkpoint stays on disk
            warnings.warn(
                f"registering the best trial's checkpoint {ckpt} failed "
                f"({type(exc).__name__}: {exc}); rerun lstc sweep to try again",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        pair = (str(version), str(alias))
        study.set_user_attr(STUDY_ATTR_REGISTERED, {"trial": best.number, "version_alias": pair})
        self.parent_tracker.set_tags(
            {"lstc.registered_version": pair[0], "lstc.registered_alias": pair[1]}
        )
        print(
            f"lstc sweep: registered trial {best.number} ({best.value:.4f}) as "
            f"{recipe.registry.model_name} version {pair[0]} @{pair[1]}",
            flush=True,
        )
        return pair


def run_sweep(
    spec: SweepSpec,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    parallel: int | str | None = None,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    on_trial_start: Callable[[int, dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or continue) the sweep of ``spec``; see the module docstring.

    ``callbacks``: extra worker callbacks given to every trial (after the pruning one).
    ``on_trial_start(number, params)``: called in this process as each trial (a retry too)
    starts, its state already RUNNING in the study, before its workers are launched.
    """
    sweep = Sweep(
        spec,
        study_name=study_name,
        storage=storage,
        address=address,
        callbacks=callbacks,
        progress=progress,
        on_trial_start=on_trial_start,
    )
    return sweep.run(n_trials=n_trials, parallel=parallel)


__all__ = ["SweepError", "SweepResult", "TrialOutcome", "resolve_parallel", "run_sweep"]
