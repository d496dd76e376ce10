"""The served model: an MLflow pyfunc that segments the referred object in the frames of a video.

:class:`LSTCPyfunc` takes a DataFrame (or the ``{"inputs": ...}`` / ``dataframe_split`` JSON of
``mlflow models serve``) with, per row:

* ``video`` - a video file or frame folder on the serving host, or the name of the bundled
  example (``example``), **or** ``video_b64`` - the video file's bytes, base64-encoded (what a
  REST client sends);
* ``expression`` - the sentence (required, not blank);
* ``frames`` - optional ``"A:B"`` range of target frames (0-based, ``B`` excluded; default:
  every frame), or the older ``target_frame`` (one frame).

It returns one row per (input row, target frame): ``row`` (input row index), ``frame``,
``mask_png`` (base64 of a 0/255 PNG at the video's size), ``height``, ``width``, ``score``,
``area``. Rows that share a video and range are predicted in one pass over the video
(:func:`pipelines.predict.predict_video`: clips cut and resized like ``lstc prep``, collated
like eval), so serving sees what eval sees and ``lstc predict`` writes the same masks.

Bad input raises ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: the scoring server
answers HTTP 400 with the message (blank expression, unreadable or non-video bytes, no video
given, frame range outside the video).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from data_prep.clipspec import ClipSpec

ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_SERVING = "serving"
EXAMPLE_VIDEO = "example"
SERVING_FILE = "serving.json"
OUTPUT_COLUMNS = ["row", "frame", "mask_png", "height", "width", "score", "area"]


@dataclass(frozen=True)
class ServingSpec:
    """How a served clip is cut (the shards' clip spec), thresholded (None: the recipe's
    ``eval.threshold`` and ``eval.threshold_rule``) and batched."""

    clip: ClipSpec = field(default_factory=ClipSpec)
    threshold: float | None = None
    batch_size: int = 8

    @classmethod
    def from_shards(
        cls, root: str | os.PathLike | None, *, threshold: float | None = None
    ) -> ServingSpec:
        """The clip spec in ``<root>/manifest.json`` (defaults of ``lstc prep`` when absent);
        ``root`` is a folder or a URI (``s3://...``)."""
        if root:
            from data_prep.storage import join, read_bytes

            try:
                manifest = json.loads(read_bytes(join(root, "manifest.json")))
                return cls(clip=_clip_from(manifest["config"]["clip"]), threshold=threshold)
            except (OSError, KeyError, TypeError, ValueError):
                pass
        return cls(threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": dataclasses.asdict(self.clip),
            "threshold": self.threshold,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingSpec:
        """Also reads the flat layout of models registered before the spec was nested."""
        clip = data.get("clip", data)
        return cls(
            clip=_clip_from(clip),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            batch_size=int(data.get("batch_size", 8)),
        )


def _clip_from(d: Mapping[str, Any]) -> ClipSpec:
    names = {f.name for f in dataclasses.fields(ClipSpec)}
    return ClipSpec(**{k: int(v) for k, v in d.items() if k in names})


def example_frames(num_frames: int = 10, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """A tiny clip: a red square moving right on grey (RGB ``uint8`` frames)."""
    h, w = size
    frames = []
    for t in range(num_frames):
        frame = np.full((h, w, 3), 96, np.uint8)
        x = 4 + 3 * t
        frame[16:32, x : x + 16] = (220, 30, 30)
        frames.append(frame)
    return frames


def write_example_video(
    folder: Path, num_frames: int = 10, size: tuple[int, int] = (48, 64)
) -> None:
    """:func:`example_frames` as a folder of PNG frames."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(example_frames(num_frames, size)):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")


def encode_mask_png(mask: np.ndarray) -> str:
    """A bool mask as the base64 text of a 0/255 PNG (a ``mask_png`` cell)."""
    from pipelines.predict import mask_png

    return base64.b64encode(mask_png(mask)).decode("ascii")


def decode_mask_png(data: str | bytes) -> np.ndarray:
    """A ``mask_png`` cell of the pyfunc output (base64 text, or raw PNG bytes) as a bool
    ``[H, W]`` array."""
    from PIL import Image

    raw = data.encode("ascii") if isinstance(data, str) else bytes(data)
    if not raw.startswith(b"\x89PNG"):
        raw = base64.b64decode(raw)
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im) > 0


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def _cell(rec: Mapping[str, Any], name: str) -> Any:
    v = rec.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _row_frames(rec: Mapping[str, Any]) -> str | None:
    frames = _cell(rec, "frames")
    tf = _cell(rec, "target_frame")
    if frames is not None and str(frames).strip():
        return str(frames)
    if tf is not None:
        return f"{int(tf)}:{int(tf) + 1}"
    return None


class LSTCPyfunc(mlflow.pyfunc.PythonModel):
    """Referring segmentation of the frames of a video (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from pipelines.checkpoint import load_model_from_checkpoint

        self.artifacts = dict(context.artifacts)
        self.model, self.recipe = load_model_from_checkpoint(
            self.artifacts[ARTIFACT_CHECKPOINT],
            need_marker=False,  # registered: complete
        )
        serving = Path(self.artifacts[ARTIFACT_SERVING])
        self.spec = ServingSpec.from_dict(json.loads((serving / SERVING_FILE).read_text()))
        self.examples = {EXAMPLE_VIDEO: str(serving / EXAMPLE_VIDEO)}

    def _video_of(self, rec: Mapping[str, Any], i: int, tmp: Path) -> str:
        b64 = _cell(rec, "video_b64")
        video = _cell(rec, "video")
        if b64 is not None and str(b64).strip():
            try:
                data = base64.b64decode(str(b64), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _invalid(f"row {i}: video_b64 is not valid base64 ({exc})") from exc
            if not data:
                raise _invalid(f"row {i}: video_b64 is empty: send the video file's bytes")
            path = tmp / f"row{i}.video"
            path.write_bytes(data)
            return str(path)
        if video is not None and str(video).strip():
            return self.examples.get(str(video), str(video))
        raise _invalid(
            f"row {i}: no video: give 'video' (a path on the serving host) or 'video_b64' "
            "(the video file's bytes, base64-encoded)"
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from pipelines.predict import (
            PredictInputError,
            check_expression,
            open_source,
            parse_frames,
            predict_video,
        )

        records = pd.DataFrame(model_input).to_dict("records")
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="lstc-serve-") as tmp:
            groups: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
            try:
                for i, rec in enumerate(records):
                    text = check_expression(_cell(rec, "expression"))
                    key = (self._video_of(rec, i, Path(tmp)), _row_frames(rec))
                    groups.setdefault(key, []).append((i, text))
                for (video, frames), members in groups.items():
                    source = open_source(video)
                    texts = list(dict.fromkeys(t for _, t in members))
                    for result in predict_video(
                        self.model,
                        self.recipe,
                        source,
                        texts,
                        spec=self.spec.clip,
                        frames=parse_frames(frames, source.num_frames),
                        batch_size=self.spec.batch_size,
                        threshold=self.spec.threshold,
                    ):
                        h, w = result.image.shape[:2]
                        for i, text in members:
                            pred = result.predictions[text]
                            rows.append(
                                {
                                    "row": i,
                                    "frame": result.frame,
                                    "mask_png": encode_mask_png(pred.mask),
                                    "height": int(h),
                                    "width": int(w),
                                    "score": float(pred.score),
                                    "area": int(pred.mask.sum()),
                                }
                            )
            except PredictInputError as exc:
                raise _invalid(str(exc)) from exc
        out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
        return out.sort_values(["row", "frame"], kind="stable").reset_index(drop=True)


#: "models from code" entry point logged with the model (no pickled Python object)
PYFUNC_CODE = """\
import mlflow.models

from pipelines.mlops.serving import LSTCPyfunc

mlflow.models.set_model(LSTCPyfunc())
"""


def model_signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "video", required=False),
            ColSpec("string", "video_b64", required=False),
            ColSpec("string", "expression"),
            ColSpec("string", "frames", required=False),
            ColSpec("long", "target_frame", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "row"),
            ColSpec("long", "frame"),
            ColSpec("string", "mask_png"),
            ColSpec("long", "height"),
            ColSpec("long", "width"),
            ColSpec("double", "score"),
            ColSpec("long", "area"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)
