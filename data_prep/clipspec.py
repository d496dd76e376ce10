"""How a clip is cut from a video and resized: the one definition shared by prep and serving.

``lstc prep`` stores clips cut and resized with :class:`ClipSpec` / :func:`resize_frame`;
the served model (:mod:`pipelines.mlops.serving`) and ``lstc predict`` call :func:`read_clip`,
which applies the same cut and the same resize to any video file or frame folder, so a served
input matches what the network was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.decode import open_video
from data_prep.samples import VideoRef
from data_prep.schema import clip_frame_indices

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut and encoded (part of the config hash)."""

    num_frames: int = 8
    stride: int = 2
    height: int = 320
    width: int = 320
    jpeg_quality: int = 90
    min_video_frames: int = 1


def resize_frame(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Resize one RGB frame to the prep size (aspect not kept), deterministically.

    OpenCV ``INTER_AREA`` (area averaging: antialiased when shrinking, ~2-4x faster than
    PIL's bilinear filter); single-threaded, parallelism comes from the Ray tasks.
    """
    if frame.shape[:2] == (spec.height, spec.width):
        return frame
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2.resize(frame, (spec.width, spec.height), interpolation=cv2.INTER_AREA)


def frame_files(folder: str | Path) -> list[str]:
    """Image files of a frame folder in natural order (``2.png`` before ``10.png``)."""

    def natural(p: Path) -> tuple[object, ...]:
        return tuple(int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name))

    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    return [str(p) for p in sorted(files, key=natural)]


def video_ref(video: str | Path) -> VideoRef:
    """A :class:`VideoRef` for a video file or a folder of frame images."""
    path = Path(video)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(
                f"video folder {path} holds no frame images ({sorted(IMAGE_SUFFIXES)})"
            )
        return VideoRef(kind="frames", path=str(path), frames=tuple(files))
    if path.is_file():
        return VideoRef(kind="mp4", path=str(path))
    raise FileNotFoundError(f"video {str(video)!r} is neither a video file nor a frame folder")


def read_clip(
    video: str | Path, target_frame: int | None, spec: ClipSpec
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Cut the clip around ``target_frame`` (default: the middle frame) like ``lstc prep``.

    Returns ``(frames uint8 [T, h, w, 3] at the prep size, target index in them, original
    (H, W))``.
    """
    src = open_video(video_ref(video))
    n = src.num_frames
    t = n // 2 if target_frame is None else int(target_frame)
    if not 0 <= t < n:
        raise ValueError(f"target_frame {t} is outside the {n} frames of {video}")
    idx, t_idx = clip_frame_indices(t, n, spec.num_frames, spec.stride)
    frames = src.get(idx)
    orig = (int(frames.shape[1]), int(frames.shape[2]))
    return np.stack([resize_frame(f, spec) for f in frames]), t_idx, orig
