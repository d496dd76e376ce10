"""MLflow tracking for training and evaluation runs: the `Tracker` (INTERFACES.md section 5).

Where runs go:

* ``MLFLOW_TRACKING_URI`` in the environment wins; else the recipe's ``tracking.uri``; else the
  embedded default, a SQLite database ``sqlite:///<cwd>/mlflow.db`` with artifacts in
  ``<cwd>/mlartifacts`` (beside the database). Relative SQLite paths are made absolute, so the
  URI can be handed to Ray workers whose working directory differs: resolve it once in the
  driver with :func:`resolve_tracking_uri` and pass the result on.
* Experiments are created once, in the driver (:meth:`Tracker.start` creates it when absent;
  a race with another creator is tolerated).
* On a Ray cluster of several nodes a file store (``sqlite:``, ``file:``, a plain path) is
  refused before training starts (:func:`check_cluster_tracking`): rank 0 may run on another
  node, where that file is not. Use a tracking server (``MLFLOW_TRACKING_URI=http://...``).

Failure policy: tracking never kills training. Every call is wrapped; the first failure emits
ONE ``RuntimeWarning``; after a failure the tracker skips calls for a cooldown (``cooldown_s``,
doubled after every further consecutive failure up to ``MAX_COOLDOWN_S``), so a dead or hung
server costs one short timeout per cooldown, not per step; then it tries again. Metrics
logged while tracking is unavailable are buffered (bounded) and replayed on recovery; params,
tags and artifacts of that window are dropped. HTTP timeouts/retries are shortened through
MLflow's own environment variables (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``) unless the user set
them; they hold for the whole process, except inside :func:`patient_http` (model registration
runs there, with MLflow's own timeout and retries).

MLflow restricts metric/param names to ``[A-Za-z0-9_\\-. /:]``; :func:`metric_key` maps the
metric names of ``lstc.metrics`` (``P@0.5``, ``J&F``, ``mAP@0.5:0.95``) onto valid keys
(``P_at_0.5``, ``J_and_F``, ``mAP_at_0.5-0.95``). Every logging method applies it.

One step axis per metric key (so that two runs can be compared on any chart): every key
belongs to a family of :data:`METRIC_FAMILIES` (``train/step/``: global optimizer step,
``train/epoch/`` and ``val/``: epoch, ``best/``: one summary point at the best epoch,
``eval/``: step 0, ``system/``: MLflow's own sample counter). :meth:`Tracker.log_metrics` takes
the axis the caller logs on (``axis="epoch"``) and raises :class:`MetricAxisError` - before any
I/O - for a family key logged on another axis (or without one), a ``system/`` key, or any key
this tracker already logged on another axis. That is a programming error, the only one the
tracker raises.

Dataset lineage: :func:`shard_dataset` describes one split of a shard root as an MLflow dataset
(name ``<manifest dataset>/<split>``, digest = the manifest's sha256, source = the shard root,
profile = split counts + prep config hash); :meth:`Tracker.log_inputs` logs them with a context
(``training`` / ``validation`` / ``evaluation``), so the same shards have the same dataset
identity in training and evaluation runs; :func:`dataset_tags` gives the matching run tags
``dataset.root``, ``dataset.manifest_sha256`` and ``dataset.config_hash``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
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


def is_file_store(uri: str) -> bool:
    """True for a tracking store that is a file of one machine: ``sqlite:``, ``file:`` or a
    plain path (MLflow reads a plain path as a file store)."""
    text = uri.strip()
    if text.startswith(("sqlite:", "file:")):
        return True
    if text == "databricks" or text.startswith("databricks-uc"):
        return False  # MLflow's names for a Databricks workspace
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) is None  # no scheme: a path


class ClusterTrackingError(RuntimeError):
    """A file-based tracking store was given for a run on a Ray cluster of several nodes."""


def check_cluster_tracking(uri: str, alive_nodes: int) -> None:
    """Refuse a file tracking store (:func:`is_file_store`) when the Ray cluster has more
    than one alive node: rank 0 logs from whatever node it runs on, so a SQLite file or a
    folder of the driver's machine would get the driver's part of the run and another
    node's file (or nothing) the rest. Raises :class:`ClusterTrackingError`, whose message
    says how to point every process at a tracking server."""
    if alive_nodes <= 1 or not is_file_store(uri):
        return
    raise ClusterTrackingError(
        f"the MLflow tracking URI {uri} is a file on this machine, but the Ray cluster has "
        f"{alive_nodes} nodes: training workers on other nodes cannot log into it. Run a "
        "tracking server that every node can reach, e.g. `mlflow server --host 0.0.0.0 "
        "--port 5000 --backend-store-uri postgresql://USER:PASSWORD@DBHOST/mlflow "
        "--artifacts-destination s3://BUCKET/mlartifacts`, and point the run at it with "
        "MLFLOW_TRACKING_URI=http://<host>:5000 (or tracking.uri=http://<host>:5000); "
        "`lstc submit` forwards MLFLOW_TRACKING_URI to the job"
    )


def metric_key(name: str) -> str:
    """Map a metric/param/tag name onto MLflow's allowed characters (see module docstring)."""
    key = str(name).replace("@", "_at_").replace("&", "_and_").replace(":", "-")
    key = _INVALID_KEY_CHARS.sub("_", key)
    return key.strip("/") or "_"


# --------------------------------------------------------------------------- metric axes

STEP_AXIS = "step"  # global optimizer step, 1-based
EPOCH_AXIS = "epoch"  # epoch number, 1-based
SUMMARY_AXIS = "summary"  # one value per run, at the epoch it comes from
ONCE_AXIS = "once"  # one value per run, step 0
SYSTEM_AXIS = "system"  # MLflow's system-metrics sample counter (MLflow logs these itself)
TRIAL_AXIS = "trial"  # a sweep's parent run: Optuna trial number, 0-based
AXES = (STEP_AXIS, EPOCH_AXIS, SUMMARY_AXIS, ONCE_AXIS, SYSTEM_AXIS, TRIAL_AXIS)


@dataclasses.dataclass(frozen=True)
class MetricFamily:
    """Metric keys starting with ``prefix`` are logged on ``axis`` by ``logged_by``."""

    prefix: str
    axis: str
    logged_by: str


#: The step axis of every metric key the pipeline logs (docs/INTERFACES.md, "Metric keys").
METRIC_FAMILIES: tuple[MetricFamily, ...] = (
    MetricFamily("train/step/", STEP_AXIS, "training loop, rank 0, every log_every_steps steps"),
    MetricFamily("train/epoch/", EPOCH_AXIS, "training loop, rank 0, end of every epoch"),
    MetricFamily("val/", EPOCH_AXIS, "training loop, rank 0, after every epoch's validation"),
    MetricFamily("best/", SUMMARY_AXIS, "training driver, end of the run (best checkpoint)"),
    MetricFamily("eval/", ONCE_AXIS, "lstc eval (pipelines.eval.runner)"),
    MetricFamily("system/", SYSTEM_AXIS, "MLflow's system-metrics monitor (training rank 0)"),
    MetricFamily("sweep/", TRIAL_AXIS, "lstc sweep, parent run, as each trial finishes"),
)


class MetricAxisError(ValueError):
    """A metric key logged on a step axis other than its own (a programming error)."""


def metric_family(key: str) -> MetricFamily | None:
    """The family of a (sanitised) metric key; ``None`` for keys outside the scheme."""
    k = metric_key(key)
    for fam in METRIC_FAMILIES:
        if k.startswith(fam.prefix):
            return fam
    return None


def check_metric_axis(key: str, step: int | None, axis: str | None) -> None:
    """Raise :class:`MetricAxisError` unless ``key`` may be logged at ``step`` on ``axis``."""
    fam = metric_family(key)
    if axis is not None and axis not in AXES:
        raise MetricAxisError(f"{key}: unknown step axis {axis!r}; axes are {list(AXES)}")
    if fam is not None:
        if fam.axis == SYSTEM_AXIS:
            raise MetricAxisError(f"{key}: system/ metrics are logged by MLflow's monitor only")
        if axis != fam.axis:
            raise MetricAxisError(
                f"{key} is a {fam.prefix}* metric: log it with axis={fam.axis!r} "
                f"(got axis={axis!r}; see docs/INTERFACES.md, metric keys)"
            )
    if axis == TRIAL_AXIS and (step is None or int(step) < 0):
        raise MetricAxisError(f"{key}: axis 'trial' is the trial number (>= 0), got {step}")
    if axis == ONCE_AXIS and step not in (None, 0):
        raise MetricAxisError(f"{key}: axis 'once' is logged at step 0, got step {step}")
    if axis in (STEP_AXIS, EPOCH_AXIS, SUMMARY_AXIS) and (step is None or int(step) < 1):
        raise MetricAxisError(f"{key}: axis {axis!r} counts from 1, got step {step}")


# --------------------------------------------------------------------------- dataset lineage

DATASET_CONTEXTS = ("training", "validation", "evaluation")
_MAX_DIGEST = 32  # MLflow stores at most 36 characters of a dataset digest


@dataclasses.dataclass(frozen=True)
class ShardDataset:
    """One split of a prepared shard root, as an MLflow dataset (see :func:`shard_dataset`)."""

    name: str  # "<manifest dataset>/<split>"
    digest: str  # first 32 hex digits of manifest_sha256
    source: str  # the shard root (absolute path or URI)
    split: str
    manifest_sha256: str  # sha256 of the bytes of <root>/manifest.json
    config_hash: str  # the prep config hash recorded in the manifest
    counts: dict[str, int]  # the split's clips / objects / samples / shards

    @property
    def profile(self) -> dict[str, Any]:
        return {
            "split": self.split,
            **self.counts,
            "config_hash": self.config_hash,
            "manifest_sha256": self.manifest_sha256,
        }

    def to_entity(self) -> Any:
        """The ``mlflow.entities.Dataset`` (source resolved by MLflow's source registry)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset

        with warnings.catch_warnings():
            # local paths match MLflow's local source class twice ("" and "file" schemes)
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            source = resolve_dataset_source(self.source)
        meta = MetaDataset(source, name=self.name, digest=self.digest)
        d = meta.to_dict()
        return Dataset(
            name=d["name"],
            digest=d["digest"],
            source_type=d["source_type"],
            source=d["source"],
            profile=json.dumps(self.profile, sort_keys=True),
        )


def _read_manifest_bytes(root: str) -> bytes:
    from data_prep.storage import resolve

    fs, path = resolve(root)
    with fs.open_input_stream(path.rstrip("/") + "/manifest.json") as fh:
        return fh.read()


def _shard_source(root: str) -> str:
    """The shard root as a dataset source: URIs as given (credentials left out), plain paths
    made absolute."""
    from data_prep.storage import is_uri, resolve
    from pipelines.checkpoint import describe

    if not is_uri(root):
        return resolve(root)[1]
    head, sep, query = describe(root).partition("?")
    return head.rstrip("/") + sep + query


def shard_dataset(root: str | os.PathLike, split: str) -> ShardDataset:
    """The MLflow dataset identity of ``split`` of the shard root ``root``.

    Raises ``OSError`` when the manifest cannot be read and ``KeyError`` when it does not list
    ``split``.
    """
    root = str(root)
    raw = _read_manifest_bytes(root)
    manifest = json.loads(raw)
    sha = hashlib.sha256(raw).hexdigest()
    counts = manifest.get("counts", {})
    if split not in counts:
        raise KeyError(f"split {split!r} is not in {root} (splits: {sorted(counts)})")
    return ShardDataset(
        name=f"{manifest.get('dataset', 'shards')}/{split}",
        digest=sha[:_MAX_DIGEST],
        source=_shard_source(root),
        split=split,
        manifest_sha256=sha,
        config_hash=str(manifest.get("config_hash", "")),
        counts={k: int(v) for k, v in counts[split].items()},
    )


def dataset_tags(root: str | os.PathLike) -> dict[str, str]:
    """Run tags naming the shards: ``dataset.root``, ``dataset.manifest_sha256`` (sha256 of
    ``manifest.json``) and ``dataset.config_hash`` (the prep config hash); ``"none"`` when the
    manifest cannot be read."""
    root = str(root)
    try:
        raw = _read_manifest_bytes(root)
        sha = hashlib.sha256(raw).hexdigest()
        config_hash = str(json.loads(raw).get("config_hash", "")) or "none"
    except (OSError, ValueError):
        sha = config_hash = "none"
    return {
        "dataset.root": _shard_source(root),
        "dataset.manifest_sha256": sha,
        "dataset.config_hash": config_hash,
    }


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested mappings/dataclasses into ``{"a.b.c": "value"}`` strings: the same text as
    ``Recipe.flatten`` (``null`` for None, JSON lists; see ``pipelines.config.flatten_params``)."""
    from pipelines.config import flatten_params

    return flatten_params(d, prefix, sep)


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


_shortened: set[str] = set()  # names of HTTP_DEFAULTS this process set (never a user's)
_patient_lock = threading.Lock()
_patient_depth = 0
_patient_saved: dict[str, str] = {}


def _apply_http_defaults(uri: str) -> None:
    if is_local_uri(uri):
        return
    with _patient_lock:
        if _patient_depth:  # inside patient_http(): its exit puts the short values back
            return
        for name, value in HTTP_DEFAULTS.items():
            if name not in os.environ:
                os.environ[name] = value
                _shortened.add(name)


@contextlib.contextmanager
def patient_http() -> Iterator[None]:
    """MLflow's own HTTP timeout and retries (120 s, 7 retries) for the calls inside, where a
    :class:`Tracker` shortened them (:data:`HTTP_DEFAULTS`, process-wide, so that tracking
    fails fast); a user's settings stay. For work that must not give up after 10 s of a busy
    server, such as logging and registering a model at the end of training. Thread-safe and
    reentrant; the short values come back when the last one leaves."""
    global _patient_depth
    with _patient_lock:
        if _patient_depth == 0:
            for name in sorted(_shortened):
                if os.environ.get(name) == HTTP_DEFAULTS[name]:
                    _patient_saved[name] = os.environ.pop(name)
        _patient_depth += 1
    try:
        yield
    finally:
        with _patient_lock:
            _patient_depth -= 1
            if _patient_depth == 0:
                for name, value in _patient_saved.items():
                    os.environ.setdefault(name, value)
                _patient_saved.clear()


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
        self._axes: dict[str, str | None] = {}  # key -> step axis it was logged on

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

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, *, axis: str | None = None
    ) -> None:
        """Log numeric metrics at ``step`` on the step ``axis`` (non-numeric values are skipped,
        keys sanitised). Raises :class:`MetricAxisError` (before any I/O) for a key logged on
        another axis than its family's, or than this tracker logged it on before."""
        keys = [metric_key(k) for k in metrics]
        for key in keys:
            check_metric_axis(key, step, axis)
            seen = self._axes.setdefault(key, axis)
            if seen != axis:
                raise MetricAxisError(
                    f"{key} was logged on axis {seen!r} by this run; now on {axis!r}: "
                    "use a distinct key per step axis"
                )
        if not self.enabled or self._ended:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        entities = []
        for key, v in zip(keys, metrics.values()):
            f = _to_float(v)
            if f is None:
                continue
            if math.isinf(f):
                f = math.copysign(1.7976931348623157e308, f)
            entities.append(Metric(key, f, ts, int(step or 0)))
        if not entities:
            return
        self._pending.extend(entities)
        self._call("log_metrics", lambda: None)  # flushes the pending queue, this batch included

    # ---- dataset inputs

    def log_inputs(self, inputs: Sequence[tuple[ShardDataset, str]]) -> None:
        """Log ``(dataset, context)`` pairs as the run's dataset inputs (context one of
        :data:`DATASET_CONTEXTS`, stored as MLflow's ``mlflow.data.context`` input tag).
        Logging the same dataset again is a no-op (MLflow keeps one input per name + digest)."""
        for _, context in inputs:
            if context not in DATASET_CONTEXTS:
                raise ValueError(f"dataset context {context!r}: use one of {DATASET_CONTEXTS}")
        if not inputs:
            return

        def do() -> None:
            from mlflow.entities import DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            items = [
                DatasetInput(ds.to_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
                for ds, context in inputs
            ]
            self.client.log_inputs(self._run_id, datasets=items)

        self._call("log_inputs", do)

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
