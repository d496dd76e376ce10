"""Frame decoding behind one small interface.

``open_video(ref)`` returns a :class:`FrameSource` whatever the storage: decord for video
files (the fast path), PIL for folders of frame images, PyAV as a fallback for video files
when decord is missing or fails to open a file (set ``LSTC_DECODER=pyav`` to force it).
Every source returns RGB ``uint8`` arrays ``[k, H, W, 3]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from data_prep.samples import VideoRef


class DecodeError(RuntimeError):
    """A video or frame could not be decoded; the message names the file."""


class FrameSource(Protocol):
    """Random access to the frames of one video."""

    path: str

    @property
    def num_frames(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        ...

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``uint8 [k, H, W, 3]``."""
        ...


class DecordSource:
    """Video file decoded with decord (single-threaded: parallelism comes from Ray tasks)."""

    def __init__(self, path: str, num_threads: int = 1) -> None:
        import decord

        self.path = path
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as exc:  # decord raises RuntimeError/DECORDError subclasses
            raise DecodeError(f"cannot open video {path}: {_short(exc)}") from exc
        self._n = len(self._vr)
        if self._n == 0:
            raise DecodeError(f"video {path} has no decodable frames")
        self._size: tuple[int, int] | None = None

    @property
    def num_frames(self) -> int:
        return self._n

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            h, w = self.get([0]).shape[1:3]
            self._size = (int(h), int(w))
        return self._size

    def get(self, indices: Sequence[int]) -> np.ndarray:
        uniq = sorted(set(int(i) for i in indices))
        try:
            batch = self._vr.get_batch(uniq).asnumpy()
        except Exception as exc:
            raise DecodeError(
                f"cannot decode frames {uniq[:3]}... of {self.path}: {_short(exc)}"
            ) from exc
        pos = {f: k for k, f in enumerate(uniq)}
        return batch[[pos[int(i)] for i in indices]]


class PyAVSource:
    """Video file decoded sequentially with PyAV (fallback; decodes every frame once)."""

    def __init__(self, path: str) -> None:
        import av

        self.path = path
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "NONE"
                self._frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except Exception as exc:
            raise DecodeError(f"cannot decode video {path}: {_short(exc)}") from exc
        if not self._frames:
            raise DecodeError(f"video {path} has no decodable frames")

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self._frames[0].shape[:2]
        return (int(h), int(w))

    def get(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self._frames[int(i)] for i in indices])


class FrameFolderSource:
    """A video stored as one image file per frame (YTVOS, DAVIS, J-HMDB)."""

    def __init__(self, path: str, frames: Sequence[str]) -> None:
        self.path = path
        self._files = list(frames)
        if not self._files:
            raise DecodeError(f"frame folder {path} lists no frames")
        self._size: tuple[int, int] | None = None

    @property
    def num_frames(self) -> int:
        return len(self._files)

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            self._size = self._read(0).shape[:2]
        return self._size

    def _read(self, i: int) -> np.ndarray:
        from PIL import Image

        f = self._files[i]
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise DecodeError(f"cannot read frame {f}: {_short(exc)}") from exc
        if self._size is None:
            self._size = (int(arr.shape[0]), int(arr.shape[1]))
        elif arr.shape[:2] != self._size:
            raise DecodeError(
                f"frame {f} is {arr.shape[1]}x{arr.shape[0]}, other frames of {self.path} are "
                f"{self._size[1]}x{self._size[0]}; re-extract the frames at one size"
            )
        return arr

    def get(self, indices: Sequence[int]) -> np.ndarray:
        cache: dict[int, np.ndarray] = {}
        out = []
        for i in indices:
            i = int(i)
            if i not in cache:
                cache[i] = self._read(i)
            out.append(cache[i])
        return np.stack(out)


def open_video(ref: VideoRef) -> FrameSource:
    """Open a video reference with the right decoder (raises :class:`DecodeError`)."""
    if ref.kind == "frames":
        return FrameFolderSource(ref.path, ref.frames)
    if not os.path.isfile(ref.path):
        raise DecodeError(f"video file {ref.path} does not exist")
    if os.environ.get("LSTC_DECODER", "decord") == "pyav":
        return PyAVSource(ref.path)
    try:
        return DecordSource(ref.path)
    except ImportError:
        return PyAVSource(ref.path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
