"""Process set-up shared by every Ray worker of an LSTC job (``worker_process_setup_hook``).

Ray Train V2 starts a ``PlacementGroupCleaner`` actor that polls the Ray State API every
second; on a local instance started without the dashboard (our default: it costs a process
and memory on small machines) that API is absent and the actor logs a warning per poll, which
floods the console. Only that logger is quieted; everything else keeps Ray's defaults.
"""

from __future__ import annotations

import logging

_NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

WORKER_SETUP_HOOK = "pipelines.ray_setup.setup_worker"


def setup_worker() -> None:
    """Runs once in every Ray worker process of the job."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def runtime_env() -> dict[str, str]:
    """The job-level ``runtime_env`` for ``ray.init``."""
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK}
