"""Process set-up shared by every Ray worker of an LSTC job (``worker_process_setup_hook``).

Ray Train V2 starts a ``PlacementGroupCleaner`` actor that polls the Ray State API every
second; on a local instance started without the dashboard (our default: it costs a process
and memory on small machines) that API is absent and the actor logs a warning per poll, which
floods the console. That logger and the per-report INFO lines of the worker context are
quieted; everything else keeps Ray's defaults.

The job also turns off Ray Train's ``print`` patch (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``): the
patch sends each ``print`` both to a logger and to stdout, so the driver receives every
line twice. Progress bars (Ray's distributed tqdm, whose state travels as stdout lines) then
re-open a bar from the duplicate of its "closed" message and never close it.
"""

from __future__ import annotations

import logging

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


def setup_worker() -> None:
    """Runs once in every Ray worker process of the job."""
    import os

    import ray

    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for rel, level in _QUIET_LOGGER_FILES.items():
        logging.getLogger(os.path.join(os.path.dirname(ray.__file__), rel)).setLevel(level)


def runtime_env() -> dict[str, object]:
    """The job-level ``runtime_env`` for ``ray.init``."""
    return {
        "worker_process_setup_hook": WORKER_SETUP_HOOK,
        "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
    }


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
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env())
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=True,
            runtime_env=runtime_env(),
        )
