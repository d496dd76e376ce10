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

    from pipelines.ray_setup import runtime_env

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=400 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env(local=True),
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


# --- data_prep: the tiny refer-shapes benchmark, prepared once per session ---------------
# Clip settings of `tiny_shards` (T frames at a stride around the target, resized to SIZE).
TINY_SHARDS_FRAMES = 4
TINY_SHARDS_STRIDE = 2
TINY_SHARDS_SIZE = (64, 64)


@pytest.fixture(scope="session")
def tiny_shards(ray_local, tmp_path_factory) -> Path:
    """Shard root of the tiny refer-shapes benchmark (seed 0), prepared with `lstc prep`.

    8 videos (6 train / 2 test) of 24 frames at 72x96, 3 annotated frames each; clips of
    TINY_SHARDS_FRAMES frames at stride TINY_SHARDS_STRIDE resized to TINY_SHARDS_SIZE
    (target at index TINY_SHARDS_FRAMES // 2); masks at 72x96. Splits: "train", "test".
    Read it with data_prep.shards.read_samples(root, split) / read_clips / load_manifest.
    """
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate

    base = tmp_path_factory.mktemp("tiny_refer_shapes")
    generate(base / "source", config_for("tiny", seed=0))
    run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(base / "source"),
            out=str(base / "shards"),
            clip=ClipSpec(
                num_frames=TINY_SHARDS_FRAMES,
                stride=TINY_SHARDS_STRIDE,
                height=TINY_SHARDS_SIZE[0],
                width=TINY_SHARDS_SIZE[1],
            ),
            clips_per_shard=8,
            progress=False,
        )
    )
    return base / "shards"
