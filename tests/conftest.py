"""Shared fixtures: one real local Ray instance and environment hygiene for the whole session.

Expensive fixtures are session-scoped and shared across test modules (one Ray instance,
one prepared tiny dataset). Add new shared fixtures below, each in its own block.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

# Environment for every test: offline, no telemetry, Ray without auth and with its own temp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="lstc-ray-", dir="/tmp"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def free_port() -> int:
    """A free TCP port on loopback (never hard-code ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance on 127.0.0.1 for the whole test session.

    4 logical CPUs on a 2-core machine so that 2 training workers and Ray Data tasks can
    be scheduled side by side; the object store is capped so tests stay small.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=400 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")
