"""Process set-up shared by every Ray worker of an LSTC job (``worker_process_setup_hook``).

Ray Train V2 starts a ``PlacementGroupCleaner`` actor that polls the Ray State API every
second; on a local instance started without the dashboard (our default: it costs a process
and memory on small machines) that API is absent and the actor logs a warning per poll, which
floods the console. That logger and the per-report INFO lines of the worker context are
quieted; everything else keeps Ray's defaults. Workers get ``RAY_ADDRESS`` = their own
cluster, so that the cleaner's State API client does not look for "the" Ray instance among
the processes of the machine (a second instance there makes it fail with a traceback).

The job also turns off Ray Train's ``print`` patch (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``): the
patch sends each ``print`` both to a logger and to stdout, so the driver receives every
line twice. Progress bars (Ray's distributed tqdm, whose state travels as stdout lines) then
re-open a bar from the duplicate of its "closed" message and never close it.

A local instance (started by :func:`init_ray`) also turns off Ray Train's preemption watcher
(``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``, Ray Train's own switch for it). The watcher polls
Ray for nodes being drained (spot reclaims announced by an autoscaler), which never happens
to the one node of a local instance; and Ray Train creates it as a restartable actor whose
constructor arguments hold actor handles, which Ray Core reports with an error-level
``core_worker.cc`` line on every run (ray-project/ray#53727). On a cluster the watcher stays
on: there it lets preemptions retry without using up ``train.max_failures``.

Signals: :class:`SignalStop` turns SIGTERM/SIGINT into an orderly stop of the work under way,
reported as :class:`StoppedBySignal` (the CLI exits with 128 + the signal number). How long
the orderly stop may take before it counts as a second signal: ``LSTC_STOP_GRACE_S`` seconds
(default 10; :func:`stop_grace_s`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

_QUIET_LOGGERS = {
    # a warning per second while the State API is absent (no dashboard)
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}
#: "Reporting training result N: TrainingReport(<every metric>)" per worker and epoch
#: (`lstc train` prints its own one-line epoch summary); that module names its logger by
#: its file path, relative to the ray package here
_QUIET_LOGGER_FILES = {"train/v2/_internal/execution/context.py": logging.WARNING}

#: object store of a local instance started by init_ray (Ray takes 30% of RAM otherwise)
LOCAL_OBJECT_STORE_BYTES = 1024**3

WORKER_SETUP_HOOK = "pipelines.ray_setup.setup_worker"
#: Ray Train's switch for its node-drain (preemption) watcher actor
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def setup_worker() -> None:
    """Runs once in every Ray worker process of the job."""
    import os

    import ray

    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for rel, level in _QUIET_LOGGER_FILES.items():
        logging.getLogger(os.path.join(os.path.dirname(ray.__file__), rel)).setLevel(level)
    # The State API client (used by the PlacementGroupCleaner) finds its cluster through
    # RAY_ADDRESS, else by looking for Ray processes on the machine; with a second Ray instance
    # there it raises ConnectionError and the cleaner's thread dies with a traceback.
    if not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def runtime_env(*, local: bool = False) -> dict[str, object]:
    """The job-level ``runtime_env`` for ``ray.init``; ``local``: for a single-node instance
    this process starts (no node is ever drained there, so no preemption watcher)."""
    env_vars = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if local:
        env_vars[PREEMPTION_WATCHER_ENV] = "0"
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": env_vars}


#: set by Ray in the driver of a Ray Job: the job's config, runtime env included (JSON)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _beside_job(ours: dict[str, Any]) -> dict[str, Any]:
    """``ours`` without the fields and environment variables the Ray Job this process runs
    in already sets (``lstc submit`` puts :func:`runtime_env` into the job's): Ray refuses a
    ``ray.init`` runtime env that repeats a field or variable of the job's."""
    import json
    import os

    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return ours
    job = json.loads(raw).get("runtime_env") or {}
    out: dict[str, Any] = {}
    for key, value in ours.items():
        if key == "env_vars":
            extra = {k: v for k, v in value.items() if k not in (job.get("env_vars") or {})}
            if extra:
                out[key] = extra
        elif key not in job:
            out[key] = value
    return out


def init_ray(address: str | None = None, *, min_cpus: float = 0) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local instance with a capped
    object store and at least ``min_cpus`` logical CPUs (training workers hold their CPUs for
    the whole run, so Ray Data needs CPUs of its own beside them, or reading starves).
    No-op when Ray is already initialised in this process."""
    import math
    import os

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=_beside_job(runtime_env()))
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=True,
            runtime_env=runtime_env(local=True),
        )


def alive_nodes() -> int:
    """Number of alive nodes of the Ray cluster this process is connected to."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def shutdown_ray() -> None:
    """Disconnect from Ray, stopping the local instance this process started, and close the
    progress bars drawn here for workers (an aborted run leaves them open, and tqdm would
    redraw them at exit, after any last message); no-op when Ray is not initialised."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    ray.shutdown()
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()


# ---------------------------------------------------------------------------------- signals


class StoppedBySignal(Exception):
    """Work stopped in an orderly way by a signal; ``exit_code`` is the shell convention
    128 + signal number (143 for SIGTERM, 130 for SIGINT). The message says where the work
    stood and how to go on. ``forced``: the orderly stop did not finish in time (Ray's own
    processes probably got the signal too), so shutting Ray down may hang as well."""

    def __init__(self, signum: int, message: str, *, forced: bool = False) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.forced = forced

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: environment variable: seconds an orderly stop may take (:class:`SignalStop`'s ``grace_s``)
STOP_GRACE_ENV = "LSTC_STOP_GRACE_S"
DEFAULT_STOP_GRACE_S = 10.0


def stop_grace_s() -> float:
    """``LSTC_STOP_GRACE_S`` (seconds, > 0) or :data:`DEFAULT_STOP_GRACE_S`. An orderly stop
    (a Ray Train abort) that takes longer, e.g. on a heavily loaded machine, counts as a second
    signal: the forced stop."""
    raw = os.environ.get(STOP_GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_STOP_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also NaN
        warnings.warn(
            f"{STOP_GRACE_ENV}={raw!r} is not a number of seconds > 0 (how long a stop on "
            f"SIGTERM/SIGINT may take before it is forced): using {DEFAULT_STOP_GRACE_S:g}; "
            "set it to e.g. 60 or unset it",
            RuntimeWarning,
            stacklevel=2,
        )
        return DEFAULT_STOP_GRACE_S
    return value


class SignalStop:
    """SIGTERM and SIGINT (what ``kill``, Slurm, Kubernetes and Ctrl-C send) as a request to
    stop, while :meth:`install`-ed in the main thread.

    The first signal is recorded in :attr:`signum`; then :attr:`graceful`, when set, is called
    to start an orderly stop (e.g. abort the Ray Train controller, after which the blocking
    call returns with an error) and, if it returns true, the handler returns. Otherwise, and
    on any further signal, the handler raises ``KeyboardInterrupt``: the one exception Ray's
    blocking calls (``ray.get`` and what waits on it) pass on from a signal handler, so the
    work under way ends at once. An orderly stop that has not ended the blocking call after
    ``grace_s`` (default :func:`stop_grace_s`; :meth:`settled` not called) counts as a second
    signal (:attr:`grace_expired`): when the signal went to the whole process group or job (Slurm
    signals every process of a job), Ray's own processes are gone and nothing would ever
    answer. The caller then sees :attr:`signum` set and reports the stop
    (as :class:`StoppedBySignal`), after running the callbacks given to :meth:`on_stop`
    (:meth:`run_on_stop`). :meth:`restore` puts the previous handlers back.

    Install it after ``ray.init``: Ray installs its own SIGTERM handler there (on a local
    head node it kills the Ray processes under the connected driver and raises ``SystemExit``
    from inside the blocking call; the interpreter then crashes at exit: exit code 134).
    Outside the main thread (where Python cannot set handlers) it does nothing.
    """

    def __init__(
        self,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        *,
        grace_s: float | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.grace_s = stop_grace_s() if grace_s is None else grace_s
        self.signum: int | None = None
        self.graceful: Callable[[], bool] | None = None
        self.graceful_started = False
        self.grace_expired = False
        self._previous: dict[int, Any] = {}
        self._on_stop: list[Callable[[], None]] = []
        self._lock = threading.RLock()  # the handler runs in the main thread too
        self._timer: threading.Timer | None = None

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def install(self) -> bool:
        """Handle the signals from now on; returns False outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            if sig not in self._previous:  # keep the first (outermost) handler for restore
                self._previous[sig] = previous if previous is not None else signal.SIG_DFL
        return True

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        self.settled()
        with self._lock:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()

    def settled(self) -> None:
        """The blocking call an orderly stop was waiting for has returned: no grace timeout."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Have :meth:`run_on_stop` call ``callback`` (e.g. mark a tracking run killed)."""
        self._on_stop.append(callback)

    def run_on_stop(self) -> None:
        """Call the :meth:`on_stop` callbacks, most recent first, each once."""
        while self._on_stop:
            self._on_stop.pop()()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            if self.graceful is not None and self.graceful():
                self.graceful_started = True
                with self._lock:
                    self._timer = threading.Timer(self.grace_s, self._expire)
                    self._timer.daemon = True
                    self._timer.start()
                return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _expire(self) -> None:
        """Timer thread: the orderly stop took too long; signal the main thread again (a real
        signal, so that a blocking system call there returns)."""
        with self._lock:
            if self._timer is None or not self._previous or self.signum is None:
                return  # settled or restored meanwhile
            self._timer = None
            self.grace_expired = True
            signal.pthread_kill(threading.main_thread().ident, self.signum)
