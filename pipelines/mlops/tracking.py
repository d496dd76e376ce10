"""MLflow tracking for training and evaluation runs: the `Tracker` (INTERFACES.md section 5).

Where runs go:

* ``MLFLOW_TRACKING_URI`` in the environment wins; else the recipe's ``tracking.uri``; else the
  embedded default, a SQLite database ``sqlite:///<cwd>/mlflow.db`` with artifacts in
  ``<cwd>/mlartifacts`` (beside the database). Relative SQLite paths are made absolute, so the
  URI can be handed to Ray workers whose working directory differs: resolve it once in the
  driver with :func:`resolve_tracking_uri` and pass the result on.
* Experiments are created once, in the driver (:meth:`Tracker.start` creates it when absent;
  a race with another creator is tolerated).

Failure policy: tracking never kills training. Every call is wrapped; the first failure emits
ONE ``RuntimeWarning``; after a failure the tracker skips calls for a cooldown (``cooldown_s``,
doubled after every further consecutive failure up to ``MAX_COOLDOWN_S``), so a dead or hung
server costs one short timeout per cooldown, not per step; then it tries again. Metrics
logged while tracking is unavailable are buffered (bounded) and replayed on recovery; params,
tags and artifacts of that window are dropped. HTTP timeouts/retries are shortened through
MLflow's own environment variables (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``) unless the user set
them.

MLflow restricts metric/param names to ``[A-Za-z0-9_\\-. /:]``; :func:`metric_key` maps the
metric names of ``lstc.metrics`` (``P@0.5``, ``J&F``, ``mAP@0.5:0.95``) onto valid keys
(``P_at_0.5``, ``J_and_F``, ``mAP_at_0.5-0.95``). Every logging method applies it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "lstc"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"

# Short HTTP behaviour for a tracking server (seconds / counts); user settings win.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}

MAX_COOLDOWN_S = 600.0
_MAX_BATCH = 100  # MLflow limit on params/tags per log_batch call
_MAX_METRICS_BATCH = 1000
_MAX_PARAM_LEN = 6000
_MAX_PENDING_METRICS = 20_000
_INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


# --------------------------------------------------------------------------- helpers


def resolve_tracking_uri(uri: str | None = None, *, cwd: str | os.PathLike | None = None) -> str:
    """The tracking URI to use: env ``MLFLOW_TRACKING_URI`` > ``uri`` > ``sqlite:///<cwd>/mlflow.db``.

    SQLite URIs with a relative path are made absolute (against ``cwd``, default the current
    directory) so every process of a run writes to the same database.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    chosen = os.environ.get("MLFLOW_TRACKING_URI") or uri
    if not chosen or chosen in {"default", "embedded"}:
        return f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"
    chosen = chosen.replace("<cwd>", str(base))
    if chosen.startswith("sqlite:///"):
        path = chosen[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(base / path).resolve()}"
    return chosen


def is_local_uri(uri: str) -> bool:
    """True for an embedded store (SQLite / other database URI, or a plain path)."""
    return not uri.startswith(("http://", "https://", "databricks"))


def default_artifact_location(uri: str) -> str | None:
    """``<folder of the SQLite db>/mlartifacts`` for SQLite URIs; ``None`` (server decides) else."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
    return None


def metric_key(name: str) -> str:
    """Map a metric/param/tag name onto MLflow's allowed characters (see module docstring)."""
    key = str(name).replace("@", "_at_").replace("&", "_and_").replace(":", "-")
    key = _INVALID_KEY_CHARS.sub("_", key)
    return key.strip("/") or "_"


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested mappings/dataclasses into ``{"a.b.c": "value"}`` strings (lists kept as text)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        if isinstance(v, Mapping):
            if v:
                out.update(flatten(v, key, sep))
            else:
                out[key] = "{}"
        else:
            out[key] = "None" if v is None else str(v)
    return out


def git_tags(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Git commit / branch / dirty flag of the checkout at ``path`` (empty dict outside git)."""
    where = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", where, *args], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit, "git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch:
        tags["mlflow.source.git.branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["git.dirty"] = "true" if status else "false"
    return tags


def _recipe_get(recipe: Any, dotted: str, default: Any = None) -> Any:
    """``recipe.tracking.uri`` for a dataclass recipe or a nested dict; ``default`` when absent."""
    node = recipe
    for part in dotted.split("."):
        if node is None:
            return default
        if isinstance(node, Mapping):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
    return default if node is None else node


def _apply_http_defaults(uri: str) -> None:
    if is_local_uri(uri):
        return
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _to_float(value: Any) -> float | None:
    try:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool):
            return float(value)
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f


_REJECTED_CODES = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS"}
)


def _is_rejected(exc: BaseException) -> bool:
    """An answer from a working store that refuses the request (not an outage)."""
    return getattr(exc, "error_code", None) in _REJECTED_CODES


def _system_metrics_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- tracker


class Tracker:
    """Rank-0 MLflow logger that never raises. Build with :meth:`start` (or :meth:`disabled`)."""

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        enabled: bool = True,
        cooldown_s: float = 30.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.enabled = enabled and tracking_uri is not None
        self.cooldown_s = cooldown_s
        self.experiment_id: str | None = None
        self.failures = 0
        self.dropped = 0
        self._run_id = run_id
        self._reattach = run_id is not None
        self._start_tags = dict(tags or {})
        self._client: Any = None
        self._run_ready = False
        self._retry_at = 0.0
        self._warned = False
        self._failing = False
        self._consecutive = 0
        self._ended = False
        self._lock = threading.RLock()
        self._pending: collections.deque = collections.deque(maxlen=_MAX_PENDING_METRICS)
        self._monitor: Any = None

    # ---- construction

    @classmethod
    def start(
        cls,
        recipe: Any = None,
        *,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        system_metrics: bool | None = None,
        cooldown_s: float = 30.0,
    ) -> Tracker:
        """Create (or re-attach to, when ``run_id`` is given) a run; never raises.

        ``recipe`` may be a ``Recipe`` or a nested dict; used keys: ``tracking.uri``,
        ``tracking.experiment``, ``tracking.system_metrics`` (default on) and
        ``train.run_name``. Explicit keyword arguments win over the recipe.
        """
        uri = resolve_tracking_uri(tracking_uri or _recipe_get(recipe, "tracking.uri"))
        given = {k: str(v) for k, v in (tags or {}).items()}
        all_tags = given if run_id is not None else {**git_tags(), **given}
        tracker = cls(
            tracking_uri=uri,
            experiment=experiment
            or _recipe_get(recipe, "tracking.experiment")
            or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or DEFAULT_EXPERIMENT,
            run_id=run_id,
            run_name=run_name or _recipe_get(recipe, "train.run_name"),
            tags=all_tags,
            cooldown_s=cooldown_s,
        )
        _apply_http_defaults(uri)
        tracker._call("start run", lambda: None)
        if system_metrics is None:
            system_metrics = bool(_recipe_get(recipe, "tracking.system_metrics", True))
        if system_metrics and os.environ.get("LSTC_SYSTEM_METRICS", "1") not in {"0", "false"}:
            tracker._start_system_metrics()
        return tracker

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker whose every call is a no-op (non-zero ranks, ``--no-tracking``)."""
        return cls(tracking_uri=None, enabled=False)

    # ---- state

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def healthy(self) -> bool:
        """False while the tracker is in a failure cooldown."""
        return self.enabled and not self._failing

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _ensure_run(self) -> None:
        if self._run_ready:
            return
        from mlflow.exceptions import MlflowException

        client = self.client
        if self._run_id is not None:
            run = client.get_run(self._run_id)
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")
            if self._start_tags:
                self._log_tags_now(self._start_tags)
        else:
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self.experiment_id = client.create_experiment(
                        self.experiment,
                        artifact_location=default_artifact_location(self.tracking_uri or ""),
                    )
                except MlflowException:  # created meanwhile by another process
                    exp = client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
            run = client.create_run(
                self.experiment_id,
                run_name=self.run_name,
                tags={metric_key(k): v for k, v in self._start_tags.items()},
            )
            self._run_id = run.info.run_id
        self._run_ready = True

    # ---- failure handling

    def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn`` against the tracking store unless disabled or cooling down; never raises."""
        if not self.enabled or self._ended:
            return None
        with self._lock:
            if self._failing and time.monotonic() < self._retry_at:
                self.dropped += 1
                return None
            try:
                self._ensure_run()
                self._flush_pending()
                result = fn()
            except Exception as exc:  # noqa: BLE001 - tracking must never kill training
                if _is_rejected(exc):
                    self._on_rejected(what, exc)
                else:
                    self._on_failure(what, exc)
                return None
            self._consecutive = 0
            if self._failing:
                _log.warning(
                    "MLflow tracking recovered (%s); %d calls were dropped", what, self.dropped
                )
                self._failing = False
            return result

    def _on_failure(self, what: str, exc: BaseException) -> None:
        """Store unreachable / failing: warn once, cool down, keep buffering metrics."""
        self.failures += 1
        self.dropped += 1
        self._failing = True
        self._consecutive += 1
        wait = min(
            self.cooldown_s * 2 ** (self._consecutive - 1), max(MAX_COOLDOWN_S, self.cooldown_s)
        )
        self._retry_at = time.monotonic() + wait
        msg = (
            f"MLflow tracking failed during '{what}' ({type(exc).__name__}: {exc}); "
            f"tracking URI {self.tracking_uri}. Training goes on: tracking calls are skipped "
            f"for {self.cooldown_s:g} s (doubling while it stays down) and metrics are buffered "
            "until it recovers."
        )
        self._warn(msg)

    def _on_rejected(self, what: str, exc: BaseException) -> None:
        """The store answered but refused the data (bad name, changed param): drop it, go on."""
        self.failures += 1
        self.dropped += 1
        self._warn(f"MLflow rejected '{what}' ({exc}); that data is dropped, tracking goes on.")

    def _warn(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        else:
            _log.debug(msg)

    # ---- metrics

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        items = list(self._pending)
        for i in range(0, len(items), _MAX_METRICS_BATCH):
            batch = items[i : i + _MAX_METRICS_BATCH]
            try:
                self.client.log_batch(self._run_id, metrics=batch)
            except Exception as exc:
                if not _is_rejected(exc):
                    raise
                self._on_rejected("log_metrics", exc)
            for _ in batch:
                self._pending.popleft()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (non-numeric values are skipped, keys sanitised)."""
        if not self.enabled or self._ended:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        entities = []
        for k, v in metrics.items():
            f = _to_float(v)
            if f is None:
                continue
            if math.isinf(f):
                f = math.copysign(1.7976931348623157e308, f)
            entities.append(Metric(metric_key(k), f, ts, int(step or 0)))
        if not entities:
            return
        self._pending.extend(entities)
        self._call("log_metrics", lambda: None)  # flushes the pending queue, this batch included

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    # ---- params / tags

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested mappings are flattened with dots; values truncated to 6000 chars)."""
        flat = flatten(params)
        if not flat:
            return

        def do() -> None:
            from mlflow.entities import Param

            items = [Param(metric_key(k), v[:_MAX_PARAM_LEN]) for k, v in flat.items()]
            for i in range(0, len(items), _MAX_BATCH):
                self.client.log_batch(self._run_id, params=items[i : i + _MAX_BATCH])

        self._call("log_params", do)

    def _log_tags_now(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [
            RunTag(metric_key(k) if not k.startswith("mlflow.") else k, str(v))
            for k, v in tags.items()
        ]
        for i in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(self._run_id, tags=items[i : i + _MAX_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self._call("set_tags", lambda: self._log_tags_now(tags))

    # ---- artifacts

    def log_image(self, image: Any, artifact_file: str) -> None:
        """Log a uint8 image ``[H,W]``/``[H,W,3]`` (numpy or torch) as a PNG artifact."""

        def do() -> None:
            import numpy as np

            arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            name = (
                artifact_file if artifact_file.lower().endswith(".png") else f"{artifact_file}.png"
            )
            self.client.log_image(self._run_id, arr, artifact_file=name)

        self._call("log_image", do)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or a whole directory."""

        def do() -> None:
            p = Path(path)
            if p.is_dir():
                self.client.log_artifacts(self._run_id, str(p), artifact_path)
            else:
                self.client.log_artifact(self._run_id, str(p), artifact_path)

        self._call("log_artifact", do)

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """Log a dict as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        self._call("log_dict", lambda: self.client.log_dict(self._run_id, dict(d), artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", lambda: self.client.log_text(self._run_id, text, artifact_file))

    # ---- system metrics

    def _start_system_metrics(self) -> None:
        if not self.enabled or not _system_metrics_available() or self._run_id is None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
            self._monitor = SystemMetricsMonitor(
                self._run_id,
                sampling_interval=interval,
                resume_logging=self._reattach,
                tracking_uri=self.tracking_uri,
            )
            self._monitor.start()
        except Exception as exc:  # noqa: BLE001
            self._monitor = None
            _log.warning("system metrics logging disabled: %s", exc)

    # ---- end

    def end(self, status: str = "FINISHED") -> None:
        """Stop system metrics, flush buffered metrics and mark the run terminated."""
        if not self.enabled or self._ended:
            return
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:  # noqa: BLE001
                _log.debug("system metrics monitor did not stop cleanly: %s", exc)
            self._monitor = None
        self._retry_at = 0.0  # one last try even inside a cooldown
        self._call("end run", lambda: self.client.set_terminated(self._run_id, status=status))
        self._ended = True

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")
