"""The served model: an MLflow pyfunc that segments the referred object in one frame per row.

:class:`LSTCPyfunc` takes a DataFrame with columns ``video`` (a video file, a folder of frame
images, or the name of a bundled example), ``expression`` and optional ``target_frame``
(0-based; default: the middle frame) and returns ``mask_png`` (PNG bytes, 0/255 at the
original size), ``height``, ``width``, ``score``, ``area``. Clips are cut and resized by
:func:`data_prep.clipspec.read_clip` with the shards' :class:`~data_prep.clipspec.ClipSpec`
(stored in ``serving.json``), the function ``lstc prep`` uses, and collated by
``pipelines.data.collate`` (no augmentation), so serving sees what eval sees.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from data_prep.clipspec import ClipSpec, read_clip

ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_SERVING = "serving"
EXAMPLE_VIDEO = "example"
SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class ServingSpec:
    """How a served clip is cut (the shards' clip spec) and thresholded."""

    clip: ClipSpec = field(default_factory=ClipSpec)
    threshold: float = 0.5

    @classmethod
    def from_shards(cls, root: str | os.PathLike | None, *, threshold: float = 0.5) -> ServingSpec:
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
        return {"clip": dataclasses.asdict(self.clip), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingSpec:
        """Also reads the flat layout of models registered before the spec was nested."""
        clip = data.get("clip", data)
        return cls(clip=_clip_from(clip), threshold=float(data.get("threshold", 0.5)))


def _clip_from(d: Mapping[str, Any]) -> ClipSpec:
    names = {f.name for f in dataclasses.fields(ClipSpec)}
    return ClipSpec(**{k: int(v) for k, v in d.items() if k in names})


def write_example_video(
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
        self.model, self.recipe = load_model_from_checkpoint(
            self.artifacts[ARTIFACT_CHECKPOINT],
            need_marker=False,  # registered: complete
        )
        serving = Path(self.artifacts[ARTIFACT_SERVING])
        self.spec = ServingSpec.from_dict(json.loads((serving / SERVING_FILE).read_text()))
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
            frames, t_idx, orig = read_clip(video, tf, self.spec.clip)
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

from pipelines.mlops.serving import LSTCPyfunc

mlflow.models.set_model(LSTCPyfunc())
"""


def model_signature() -> Any:
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
