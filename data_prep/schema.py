"""The versioned Arrow schema of the prepared shards (docs/INTERFACES.md, section 2).

One row per clip = (video, target frame). The clip's frames are stored once; every object
of that frame with its expressions is nested in ``objects``. Bump :data:`SCHEMA_VERSION`
whenever a column changes, and update the contract in the same commit.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

EXPRESSION_TYPE = pa.struct(
    [
        pa.field("expression_id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("meta", pa.string()),  # JSON object of Sample.meta
    ]
)
OBJECT_TYPE = pa.struct(
    [
        pa.field("object_id", pa.string()),
        pa.field(
            "mask", pa.binary()
        ),  # PNG uint8 {0,1} at the original size; b"" = no ground truth
        pa.field("expressions", pa.list_(EXPRESSION_TYPE)),
    ]
)

CLIP_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("clip_id", pa.string()),
        pa.field("target_frame", pa.int32()),
        pa.field("target_index", pa.int32()),
        pa.field("frame_indices", pa.list_(pa.int32())),
        pa.field("orig_height", pa.int32()),
        pa.field("orig_width", pa.int32()),
        pa.field("frames", pa.list_(pa.binary())),  # JPEG (RGB) at the prep size
        pa.field("objects", pa.list_(OBJECT_TYPE)),
    ],
    metadata={b"lstc.schema_version": str(SCHEMA_VERSION).encode()},
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("item", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def clip_id(video_id: str, target_frame: int) -> str:
    """Unique id of a clip inside a dataset."""
    return f"{video_id}#{target_frame:06d}"


def clip_frame_indices(
    target: int, num_frames: int, length: int, stride: int
) -> tuple[list[int], int]:
    """Indices of a ``length``-frame clip at ``stride`` around ``target``, clamped to the video.

    The target sits at clip position ``length // 2`` (CSTM: 8 frames, target at index 4).
    Returns ``(indices, target_index)``.
    """
    t_idx = length // 2
    idx = [min(max(target + (i - t_idx) * stride, 0), num_frames - 1) for i in range(length)]
    return idx, t_idx
