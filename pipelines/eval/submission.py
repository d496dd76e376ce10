"""Ref-YouTube-VOS submission: writer, layout validator and zipper.

The benchmark server expects a zip whose root holds::

    Annotations/<video_id>/<exp_id>/<frame_name>.png

one PNG per frame listed for the video in ``meta_expressions/valid/meta_expressions.json``, for
every expression of the video; each PNG is single-channel, values 0 (background) and 255
(the referred object), at the video's original frame size.

:class:`SubmissionWriter` writes masks into that layout, :func:`validate_submission` checks a
folder against the expected ``{video: {exp_id: [frame, ...]}}`` (from the evaluated samples,
or from the official json with :func:`expected_from_meta_expressions`), and
:func:`zip_submission` validates before zipping: a broken layout is never zipped.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.storage import atomic_path

ANNOTATIONS = "Annotations"
#: at most this many problems are spelled out in an error message
MAX_LISTED = 20

Expected = Mapping[str, Mapping[str, Iterable[str]]]


class SubmissionError(ValueError):
    """The submission folder does not have the layout the benchmark server expects."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = problems
        shown = "\n  - ".join(problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        super().__init__(
            f"invalid Ref-YouTube-VOS submission in {root} ({len(problems)} problem(s)); expected "
            f"{ANNOTATIONS}/<video>/<exp_id>/<frame>.png, single-channel 0/255 PNGs at the "
            f"original frame size for every listed frame:\n  - {shown}{more}"
        )


def frame_stem(frame: str | int) -> str:
    """File stem of a frame name (``"00005"``, ``"00005.jpg"`` → ``"00005"``; ints → 5 digits)."""
    if isinstance(frame, int):
        return f"{frame:05d}"
    return Path(str(frame)).stem


class SubmissionWriter:
    """Writes masks as ``<root>/Annotations/<video>/<exp_id>/<frame>.png`` (0/255, mode ``L``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.expected: dict[str, dict[str, list[str]]] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        (self.root / ANNOTATIONS).mkdir(parents=True, exist_ok=True)

    def add(self, video_id: str, exp_id: str, frame: str | int, mask: Any) -> Path:
        """Write one mask (bool / 0-1 / 0-255, ``[H, W]``, at the original frame size)."""
        from PIL import Image

        arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ValueError(f"mask for {video_id}/{exp_id}/{frame} has shape {arr.shape}")
        png = np.where(arr > 0, 255, 0).astype(np.uint8)
        stem = frame_stem(frame)
        path = self.root / ANNOTATIONS / str(video_id) / str(exp_id) / f"{stem}.png"
        frames = self.expected.get(str(video_id), {}).get(str(exp_id), [])
        if stem in frames:
            raise ValueError(
                f"two masks for {video_id}/{exp_id}/{stem}.png: expression ids must be unique "
                "within a video (Ref-YouTube-VOS layout)"
            )
        with atomic_path(path) as tmp:
            Image.fromarray(png, mode="L").save(tmp, format="PNG")
        self.expected.setdefault(str(video_id), {}).setdefault(str(exp_id), []).append(stem)
        self.sizes.setdefault(str(video_id), (png.shape[0], png.shape[1]))
        return path


def expected_from_meta_expressions(
    path: str | os.PathLike, videos: Iterable[str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """``{video: {exp_id: frames}}`` from a ``meta_expressions.json`` (restricted to ``videos``);
    ``path`` is a local file or a URI."""
    from data_prep.storage import read_bytes

    data = json.loads(read_bytes(path))
    keep = None if videos is None else set(videos)
    out: dict[str, dict[str, list[str]]] = {}
    for vid, entry in data["videos"].items():
        if keep is not None and vid not in keep:
            continue
        frames = [frame_stem(f) for f in entry["frames"]]
        out[vid] = {str(exp_id): list(frames) for exp_id in entry["expressions"]}
    return out


def _check_png(path: Path, size: tuple[int, int] | None) -> tuple[str | None, tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode, (w, h) = im.mode, im.size
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a layout problem
        return f"{path}: not a readable PNG ({exc})", (0, 0)
    if mode not in {"L", "1"}:
        return f"{path}: mode {mode!r}, expected a single-channel 8-bit (L) PNG", (h, w)
    values = sorted(set(np.unique(arr).astype(np.int64).tolist()) - {0, 255})
    if mode == "L" and values:
        return f"{path}: holds values {values[:6]}, expected only 0 and 255", (h, w)
    if size is not None and (h, w) != tuple(size):
        return f"{path}: size {h}x{w}, expected the original {size[0]}x{size[1]}", (h, w)
    return None, (h, w)


def validate_submission(
    root: str | os.PathLike,
    expected: Expected,
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Raise :class:`SubmissionError` listing every problem; return quietly when valid.

    Checks: ``Annotations/`` exists and is the only entry at the root; one folder per expected
    video and expression, no extra folders or files; a PNG for every listed frame; each PNG is
    single-channel with values in {0, 255}; all frames of a video share one size, equal to
    ``sizes[video]`` when given (the original frame size).
    """
    root = Path(root)
    problems: list[str] = []
    ann = root / ANNOTATIONS
    if not ann.is_dir():
        raise SubmissionError(root, [f"{ann} is missing"])
    extra_root = sorted(p.name for p in root.iterdir() if p.name != ANNOTATIONS)
    problems += [f"{root / n}: unexpected entry beside {ANNOTATIONS}/" for n in extra_root]
    exp_norm = {
        str(v): {str(e): [frame_stem(f) for f in frames] for e, frames in exps.items()}
        for v, exps in expected.items()
    }
    present_videos = {p.name for p in ann.iterdir()}
    for vid in sorted(present_videos - set(exp_norm)):
        problems.append(f"{ann / vid}: video not in the expected set")
    for vid in sorted(exp_norm):
        vdir = ann / vid
        if not vdir.is_dir():
            problems.append(f"{vdir}: missing video folder ({len(exp_norm[vid])} expressions)")
            continue
        want_size = None if sizes is None else sizes.get(vid)
        seen_size: tuple[int, int] | None = None
        present_exps = {p.name for p in vdir.iterdir()}
        for exp in sorted(present_exps - set(exp_norm[vid])):
            problems.append(f"{vdir / exp}: expression id not listed for video {vid}")
        for exp, frames in sorted(exp_norm[vid].items()):
            edir = vdir / exp
            if not edir.is_dir():
                problems.append(f"{edir}: missing expression folder ({len(frames)} frames)")
                continue
            present = {p.name for p in edir.iterdir()}
            wanted = {f"{f}.png" for f in frames}
            for name in sorted(present - wanted):
                problems.append(f"{edir / name}: unexpected file (not a listed frame)")
            missing = sorted(wanted - present)
            if missing:
                problems.append(
                    f"{edir}: {len(missing)} listed frame(s) missing, e.g. {', '.join(missing[:3])}"
                )
            for name in sorted(wanted & present):
                err, hw = _check_png(edir / name, want_size or seen_size)
                if err:
                    problems.append(err)
                elif seen_size is None:
                    seen_size = hw
    if problems:
        raise SubmissionError(root, problems)


def zip_submission(
    root: str | os.PathLike,
    out_zip: str | os.PathLike,
    expected: Expected,
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> Path | str:
    """Validate the local folder ``root`` and zip its ``Annotations/`` tree into ``out_zip``:
    a local path (written atomically; returned as a ``Path``) or a URI such as
    ``s3://bucket/sub.zip`` (zipped locally, then uploaded in one piece; returned as given)."""
    from data_prep.storage import is_uri

    root = Path(root)
    validate_submission(root, expected, sizes=sizes)
    out: Path | str = os.fspath(out_zip) if is_uri(out_zip) else Path(out_zip)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((root / ANNOTATIONS).rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(root).as_posix())
    return out
