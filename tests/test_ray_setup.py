"""The job-wide Ray worker set-up (pipelines.ray_setup) reaches real Ray workers."""

from __future__ import annotations

import logging
import os


def test_worker_setup_hook_and_env_reach_workers(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0)
    def probe() -> tuple[int, int, str | None]:
        ctx = os.path.join(os.path.dirname(ray.__file__), "train/v2/_internal/execution/context.py")
        cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        return (
            logging.getLogger(cleaner).level,
            logging.getLogger(ctx).level,
            os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH"),
        )

    cleaner_level, context_level, patch = ray.get(probe.remote())
    assert cleaner_level == logging.ERROR
    assert context_level == logging.WARNING
    assert patch == "0"  # one copy of every printed line (progress bars close on the driver)
