"""Where a study lives: Optuna storage URLs, opened the same way by the sweep driver and by
the rank-0 workers that report pruning values.

* ``sqlite:///<path>`` (the default, ``<output_dir>/<sweep>/optuna.db``): one machine only;
  refused on a Ray cluster of several nodes (workers elsewhere would not see the file, and
  SQLite breaks under writers on a shared file system).
* an RDB URL (``postgresql://user:pw@host/db``, ``mysql+pymysql://...``): clusters.
* ``journal:<file>``: Optuna's ``JournalStorage`` over a file on storage every node mounts.

RDB and SQLite studies keep trial heartbeats (:mod:`tuning.heartbeat`); the installed Optuna's
journal storage has none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal:"
#: seconds a SQLite writer waits for the lock (the driver and rank-0 workers write at once)
SQLITE_TIMEOUT_S = 60


class StudyStorageError(RuntimeError):
    """The study storage cannot serve this cluster; the message says what to use instead."""


def default_storage(output_dir: str | Path, sweep: str) -> str:
    """``sqlite:///<absolute output_dir>/<sweep>/optuna.db`` (folder created)."""
    folder = Path(output_dir).expanduser().resolve() / sweep
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def normalize_storage(url: str) -> str:
    """Relative SQLite / journal paths made absolute (workers run in other folders)."""
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{JOURNAL_PREFIX}{path}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = Path(url[len("sqlite:///") :]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return url


def describe_storage(url: str) -> str:
    """The URL without a password (for tags and messages)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def check_cluster_storage(url: str, alive_nodes: int) -> None:
    """Refuse a SQLite study on a cluster of more than one node."""
    if url.startswith("sqlite") and alive_nodes > 1:
        raise StudyStorageError(
            f"the study storage {url} is a SQLite file, but the Ray cluster has {alive_nodes} "
            "nodes: workers on other nodes cannot reach it and SQLite breaks under parallel "
            "writers. Use an RDB URL (--storage postgresql://user:password@host/db) or a "
            "journal file on storage every node mounts (--storage journal:/shared/sweep.log)"
        )


def supports_heartbeat(url: str) -> bool:
    """Whether Optuna keeps trial heartbeats in this storage (RDB and SQLite: yes; the
    installed Optuna's journal storage: no)."""
    return not url.startswith(JOURNAL_PREFIX)


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    on_stale: Callable[[Any, Any], None] | None = None,
) -> Any:
    """The Optuna storage object of ``url``. With ``heartbeat_s`` an RDB storage keeps trial
    heartbeats (Optuna's ``heartbeat_interval``; ``grace_s`` = its ``grace_period``, None:
    2 x heartbeat_s) and calls ``on_stale(study, trial)`` for each trial it fails as stale;
    a journal storage ignores them (see :func:`supports_heartbeat`)."""
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len(JOURNAL_PREFIX) :]))
    engine_kwargs = (
        {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    )
    if heartbeat_s is None:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    from tuning.heartbeat import quiet_experimental

    with quiet_experimental():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=int(heartbeat_s),
            grace_period=int(grace_s) if grace_s is not None else None,
            heartbeat_stale_trial_callback=on_stale,
        )


__all__ = [
    "JOURNAL_PREFIX",
    "StudyStorageError",
    "check_cluster_storage",
    "default_storage",
    "describe_storage",
    "normalize_storage",
    "open_storage",
    "supports_heartbeat",
]
