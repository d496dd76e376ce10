"""The records every benchmark reader produces (docs/INTERFACES.md, section 1).

A reader never decodes pixels: it yields :class:`Sample` records that say *where* the
frames and the mask of one referring sample live, and :class:`Reject` records for the
input it had to skip. Decoding happens later, inside the Ray tasks of ``lstc prep``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

VideoKind = Literal["mp4", "frames"]
MaskKind = Literal["a2d_h5", "jhmdb_mat", "palette_png", "binary_png"]


class DatasetRootError(ValueError):
    """The dataset root does not hold the layout the reader expects.

    Raised once, before any work, with a message that lists what was expected and what is
    missing, so that a wrong ``--root`` is fixed in one go.
    """


@dataclass(frozen=True)
class VideoRef:
    """Where the frames of a video come from.

    ``kind="mp4"``: ``path`` is a video file decoded with decord.
    ``kind="frames"``: ``frames`` is the ordered tuple of image files (frame ``i`` of the
    video is ``frames[i]``); ``path`` is their folder.
    """

    kind: VideoKind
    path: str
    frames: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "frames": list(self.frames)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoRef:
        return cls(kind=d["kind"], path=d["path"], frames=tuple(d.get("frames", ())))


@dataclass(frozen=True)
class MaskRef:
    """Where the ground-truth mask of one object in one frame comes from.

    * ``a2d_h5``: ``path`` is an A2D ``<frame>.h5``; ``object_id`` selects the instance.
    * ``jhmdb_mat``: ``path`` is a ``puppet_mask.mat``; ``frame`` indexes its last axis.
    * ``palette_png``: ``path`` is a palette PNG; pixels equal to ``int(object_id)`` are the object.
    * ``binary_png``: ``path`` is a PNG; every non-zero pixel is the object.

    ``png``: the mask already encoded (uint8 {0,1} PNG, original size) when the reader had to
    open the file anyway (A2D: the instance list and ``reMask`` live in the same ``.h5``), so
    the prep tasks do not read the file a second time. Empty: load it from ``path``.
    """

    kind: MaskKind
    path: str
    object_id: str = ""
    frame: int = -1
    png: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "object_id": self.object_id,
            "frame": self.frame,
            "png": base64.b64encode(self.png).decode() if self.png else "",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MaskRef | None:
        if d is None:
            return None
        return cls(
            kind=d["kind"],
            path=d["path"],
            object_id=d["object_id"],
            frame=int(d["frame"]),
            png=base64.b64decode(d["png"]) if d.get("png") else b"",
        )


@dataclass(frozen=True)
class Sample:
    """One referring sample: an expression about one object in one target frame of a video."""

    dataset: str
    split: str
    video_id: str
    target_frame: int
    object_id: str
    expression: str
    expression_id: str
    video: VideoRef
    mask: MaskRef | None
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def clip_key(self) -> tuple[str, str, int]:
        """Samples with the same key share one stored clip (one shard row)."""
        return (self.split, self.video_id, self.target_frame)

    def meta_json(self) -> str:
        return json.dumps(dict(self.meta), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Reject:
    """Input that was skipped: ``source`` (reader or stage), ``item`` (file/row), ``reason``.

    ``reason`` is one readable sentence that names the file and says what to do about it.
    """

    source: str
    item: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "item": self.item, "reason": self.reason}
