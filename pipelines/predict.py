"""Prediction on any video: every frame (or a range) is a target frame with its clip around it.

:func:`predict_video` is the one loop behind ``lstc predict`` and the served model
(:mod:`pipelines.mlops.serving`):

* the video (a file decord/PyAV reads, or a folder of frame images) is opened **once**, whatever
  the number of expressions, and read in windows of ``batch_size`` target frames: a window
  decodes the union of its clips' frames (``data_prep.schema.clip_frame_indices``: the clip spec's
  ``num_frames`` frames at ``stride`` around the target, indices clamped to ``[0, n)``), resizes
  them with the prep resize (``data_prep.clipspec.resize_frame``) and keeps, for the next window,
  only the frames it still needs. Memory is ``O(batch_size + num_frames·stride)`` frames whatever
  the video length; each frame is decoded once.
* every window is collated like evaluation (``pipelines.data.collate``, no augmentation) and
  forwarded once per expression (:func:`pipelines.inference.predict`, bf16 autocast on CUDA):
  ``mask = binarize(sigmoid(resize(logits, (H0, W0))))`` (the recipe's eval threshold rule) at the
  video's native size,
  ``score`` = mean foreground probability (maximum probability when the mask is empty).

Inputs are checked first (:class:`PredictInputError`, a ``ValueError`` whose message says what
is wrong and how to fix it): an empty/blank expression, a missing or unreadable file, a video
with no decodable frame (the minimum is **one** frame: clips are clamped at the edges, so a
1-frame video gives a clip of that frame repeated), a frame range outside the video.

:class:`PredictionWriter` writes one expression's outputs: ``masks/00000.png`` (0/255 at the
native size, named by frame index), ``overlay.mp4`` (prediction tint + caption + legend), a
``preview.png`` strip and ``scores.csv`` (``frame,score,area``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.clipspec import ClipSpec, resize_frame, video_ref
from data_prep.decode import DecodeError, FrameSource, open_video
from data_prep.schema import clip_frame_indices
from pipelines.inference import Prediction, model_device, predict

#: fewest frames a video must have (clips are clamped: one frame gives a repeated clip)
MIN_VIDEO_FRAMES = 1
#: frame rate of the overlay video when the input has none (a frame folder)
DEFAULT_FPS = 25.0
#: overlays kept for the preview strip
PREVIEW_FRAMES = 6

VIDEO_HINT = (
    "give a video file (mp4, avi, mkv, mpg, webm...) that decord or PyAV can decode, or a "
    "folder of frame images (.jpg/.png)"
)


class PredictInputError(ValueError):
    """Input that cannot be predicted on (blank expression, unreadable video, bad range)."""


@dataclass
class PredictStats:
    """What a prediction pass did (for tests and progress reports)."""

    decoder_opens: int = 0
    frames_decoded: int = 0
    max_frames_held: int = 0
    target_frames: int = 0


@dataclass(frozen=True)
class FrameResult:
    """One target frame: its native RGB frame and the prediction of every expression."""

    frame: int
    image: np.ndarray  # uint8 [H0, W0, 3]
    predictions: dict[str, Prediction] = field(default_factory=dict)


# ------------------------------------------------------------------------------ inputs


def check_expression(expression: Any) -> str:
    """The expression stripped; a missing or blank one is a :class:`PredictInputError`."""
    text = "" if expression is None else str(expression)
    if isinstance(expression, float) and expression != expression:  # NaN from a DataFrame
        text = ""
    text = text.strip()
    if not text:
        raise PredictInputError(
            "the expression is empty: give a sentence naming the object to segment, "
            'e.g. "the dog jumping over the fence"'
        )
    return text


def parse_frames(spec: str | None, num_frames: int) -> range:
    """Target frames of ``"A:B"`` (0-based, ``A`` included, ``B`` excluded; ``"A:"`` to the
    end, ``":B"`` from the start, ``"A"`` one frame); ``None``/``""``: every frame."""
    n = int(num_frames)
    if spec is None or str(spec).strip() in ("", ":"):
        return range(n)
    text = str(spec).strip()
    m = re.fullmatch(r"\s*(\d*)\s*(?::\s*(\d*)\s*)?", text)
    if m is None:
        raise PredictInputError(
            f"frame range {text!r} is not A:B (0-based, B excluded, e.g. 0:100, 25:, :10 or 7)"
        )
    start = int(m.group(1)) if m.group(1) else 0
    if ":" in text:
        stop = int(m.group(2)) if m.group(2) else n
    else:
        stop = start + 1
    if not 0 <= start < stop <= n:
        raise PredictInputError(
            f"frame range {text!r} is outside the video's {n} frames "
            f"(valid: 0 <= A < B <= {n}, e.g. 0:{n})"
        )
    return range(start, stop)


def open_source(video: str | os.PathLike, stats: PredictStats | None = None) -> FrameSource:
    """The decoder of ``video`` (file or frame folder); errors become :class:`PredictInputError`."""
    path = str(video)
    try:
        source = open_video(video_ref(path))
        if stats is not None:
            stats.decoder_opens += 1
    except (DecodeError, FileNotFoundError, ValueError, OSError) as exc:
        raise PredictInputError(f"cannot read video {path!r}: {exc}. {VIDEO_HINT}") from exc
    n = source.num_frames
    if n < MIN_VIDEO_FRAMES:
        raise PredictInputError(
            f"video {path!r} has {n} frames; at least {MIN_VIDEO_FRAMES} is needed. {VIDEO_HINT}"
        )
    return source


def video_fps(video: str | os.PathLike) -> float:
    """Average frame rate of a video file (PyAV probe); :data:`DEFAULT_FPS` for a frame folder
    or a stream without a rate."""
    if Path(video).is_dir():
        return DEFAULT_FPS
    try:
        import av

        with av.open(str(video)) as container:
            rate = container.streams.video[0].average_rate
        return float(rate) if rate else DEFAULT_FPS
    except Exception:  # noqa: BLE001 - the rate only paces the overlay video
        return DEFAULT_FPS


def slugify(expression: str, taken: set[str] | None = None) -> str:
    """A folder name for an expression (``the red dog`` -> ``the-red-dog``), unique in ``taken``."""
    base = re.sub(r"[^a-z0-9]+", "-", expression.lower()).strip("-")[:60].strip("-") or "expr"
    slug, k = base, 2
    while taken is not None and slug in taken:
        slug, k = f"{base}-{k}", k + 1
    if taken is not None:
        taken.add(slug)
    return slug


# ------------------------------------------------------------------------------ the loop


def windows(targets: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive chunks of ``batch_size`` target frames."""
    if batch_size < 1:
        raise PredictInputError(f"batch size must be >= 1, got {batch_size}")
    for i in range(0, len(targets), batch_size):
        yield list(targets[i : i + batch_size])


def predict_video(
    model: Any,
    recipe: Any,
    source: FrameSource,
    expressions: Sequence[str],
    *,
    spec: ClipSpec,
    frames: range | None = None,
    batch_size: int = 8,
    threshold: float | None = None,
    rule: str | None = None,
    stats: PredictStats | None = None,
    on_window: Callable[[int], None] | None = None,
) -> Iterator[FrameResult]:
    """Yield a :class:`FrameResult` per target frame, in order (see the module docstring).

    ``source``: an opened video (:func:`open_source`), read once for all ``expressions``;
    ``frames``: the target frames (default: all); ``threshold``/``rule``: the binarisation
    (default: the recipe's ``eval.threshold`` / ``eval.threshold_rule``, as ``lstc eval``);
    ``on_window(k)`` is called after each window of ``k`` target frames (progress bars).
    """
    from pipelines.data import collate, collate_kwargs

    texts = [check_expression(e) for e in expressions]
    if not texts:
        raise PredictInputError("no expression given: pass at least one sentence")
    n = source.num_frames
    targets = list(frames if frames is not None else range(n))
    st = stats if stats is not None else PredictStats()
    kw = collate_kwargs(recipe)
    kw.pop("augment", None)
    amp = model_device(model).type == "cuda"
    ev = getattr(recipe, "eval", None)
    th = float(threshold if threshold is not None else getattr(ev, "threshold", 0.5))
    rl = rule or getattr(ev, "threshold_rule", "absolute")
    # frame index -> (native frame, frame at the prep size), for the current window only
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for window in windows(targets, batch_size):
        clips = {t: clip_frame_indices(t, n, spec.num_frames, spec.stride) for t in window}
        needed = sorted({i for idx, _ in clips.values() for i in idx} | set(window))
        for i in [i for i in cache if i not in needed]:
            del cache[i]
        fresh = [i for i in needed if i not in cache]
        if fresh:
            for i, img in zip(fresh, source.get(fresh)):
                cache[i] = (img, resize_frame(img, spec))
            st.frames_decoded += len(fresh)
        st.max_frames_held = max(st.max_frames_held, len(cache))
        results = {t: FrameResult(t, cache[t][0]) for t in window}
        for text in texts:
            samples = [
                {
                    "clip": np.stack([cache[i][1] for i in clips[t][0]]),
                    "mask": None,
                    "text": text,
                    "video_id": "video",
                    "clip_id": f"frame{t:05d}",
                    "object_id": "0",
                    "expression_id": "0",
                    "target_index": clips[t][1],
                    "orig_size": cache[t][0].shape[:2],
                    "meta": "",
                }
                for t in window
            ]
            batch = collate(samples, train=False, **kw)
            preds = predict(model, batch, threshold=th, rule=rl, amp=amp)
            for t, p in zip(window, preds):
                results[t].predictions[text] = p
        st.target_frames += len(window)
        if on_window is not None:
            on_window(len(window))
        for t in window:
            yield results[t]


# ------------------------------------------------------------------------------ outputs


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as a 0/255 greyscale PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


class VideoWriter:
    """Frames to an H.264 (``libx264``; ``mpeg4`` when absent) ``yuv420p`` file with PyAV.

    Odd frame sizes are padded by one edge pixel (the codecs need even sizes).
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        import av

        self.path = str(path)
        self._container = av.open(self.path, mode="w")
        self._rate = Fraction(fps).limit_denominator(1001)
        self._stream: Any = None
        self.frames = 0

    def _open_stream(self, h: int, w: int) -> None:
        import av

        for codec in ("libx264", "mpeg4"):
            try:
                stream = self._container.add_stream(codec, rate=self._rate)
                break
            except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError):
                continue
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        import av

        h, w = frame.shape[:2]
        if self._stream is None:
            self._open_stream(h, w)
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(vf))
        self.frames += 1

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float) -> None:
    """Write RGB ``uint8 [H, W, 3]`` frames as a video file (:class:`VideoWriter`)."""
    writer = VideoWriter(path, fps)
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.close()


class PredictionWriter:
    """The files of one expression under ``folder`` (see the module docstring)."""

    def __init__(
        self, folder: Path, expression: str, *, fps: float, preview_at: Sequence[int] = ()
    ) -> None:
        self.folder = Path(folder)
        self.expression = expression
        (self.folder / "masks").mkdir(parents=True, exist_ok=True)
        self.video = VideoWriter(self.folder / "overlay.mp4", fps)
        self._csv_file = open(self.folder / "scores.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "score", "area"])
        self._preview_at = set(preview_at)
        self._preview: list[np.ndarray] = []

    def add(self, frame: int, image: np.ndarray, pred: Prediction) -> None:
        from lstc.visualize import overlay

        (self.folder / "masks" / f"{frame:05d}.png").write_bytes(mask_png(pred.mask))
        shown = overlay(image, pred.mask, text=self.expression)  # one size for every frame
        self.video.write(shown)
        self._csv.writerow([frame, f"{pred.score:.6f}", int(pred.mask.sum())])
        if frame in self._preview_at:
            self._preview.append(shown)

    def close(self) -> None:
        from PIL import Image

        from lstc.visualize import overlay_grid

        self.video.close()
        self._csv_file.close()
        if self._preview:
            strip = overlay_grid(self._preview, ncols=len(self._preview))
            Image.fromarray(strip).save(self.folder / "preview.png")


def preview_frames(targets: Sequence[int], k: int = PREVIEW_FRAMES) -> list[int]:
    """``k`` target frames evenly spread over ``targets`` (first and last included)."""
    if not targets:
        return []
    k = min(k, len(targets))
    pos = np.linspace(0, len(targets) - 1, k).round().astype(int)
    return sorted({int(targets[p]) for p in pos})


@dataclass
class PredictReport:
    """What :func:`run_predict` wrote: one folder per expression, and how fast."""

    video: str
    frames: list[int]
    folders: dict[str, str]
    seconds: float
    stats: PredictStats

    @property
    def frames_per_second(self) -> float:
        return len(self.frames) / self.seconds if self.seconds > 0 else float("nan")


def run_predict(
    model: Any,
    recipe: Any,
    video: str | os.PathLike,
    expressions: Sequence[str],
    out: str | os.PathLike,
    *,
    spec: ClipSpec,
    frames: str | None = None,
    batch_size: int = 8,
    threshold: float | None = None,
    progress: bool = False,
    source: FrameSource | None = None,
) -> PredictReport:
    """Predict every target frame of ``video`` for each expression and write the outputs under
    ``out/<expression slug>/`` (:class:`PredictionWriter`); the video is decoded once
    (``source``: ``video`` already opened with :func:`open_source`)."""
    import time

    from tqdm.auto import tqdm

    texts = [check_expression(e) for e in expressions]
    if not texts:
        raise PredictInputError("no expression given: pass at least one sentence")
    stats = PredictStats(decoder_opens=1 if source is not None else 0)
    source = source if source is not None else open_source(video, stats)
    targets = parse_frames(frames, source.num_frames)
    fps = video_fps(video)
    taken: set[str] = set()
    slugs = {t: slugify(t, taken) for t in dict.fromkeys(texts)}
    root = Path(out)
    shown = preview_frames(list(targets))
    writers = {
        t: PredictionWriter(root / slug, t, fps=fps, preview_at=shown) for t, slug in slugs.items()
    }
    bar = tqdm(
        total=len(targets),
        unit="frame",
        desc=f"predict {Path(video).name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    try:
        for result in predict_video(
            model,
            recipe,
            source,
            list(slugs),
            spec=spec,
            frames=targets,
            batch_size=batch_size,
            threshold=threshold,
            stats=stats,
            on_window=bar.update,
        ):
            for text, writer in writers.items():
                writer.add(result.frame, result.image, result.predictions[text])
    finally:
        for writer in writers.values():
            writer.close()
        bar.close()
    seconds = time.perf_counter() - start
    return PredictReport(
        str(video), list(targets), {t: str(root / s) for t, s in slugs.items()}, seconds, stats
    )


__all__ = [
    "PredictReport",
    "run_predict",
    "DEFAULT_FPS",
    "MIN_VIDEO_FRAMES",
    "FrameResult",
    "PredictInputError",
    "PredictStats",
    "PredictionWriter",
    "VideoWriter",
    "check_expression",
    "mask_png",
    "open_source",
    "parse_frames",
    "predict_video",
    "preview_frames",
    "slugify",
    "video_fps",
    "windows",
    "write_video",
]
